# hostflow: `make run` opens the app on the demo database (or PCAP=file), `make test` runs every test.
SHELL := /bin/bash
PY := .venv/bin/python
PCAP ?=
PYTEST_ARGS ?=

.PHONY: run test lint format setup-run setup-test bench demo clean

run: setup-run
	$(PY) -m hostflow.run $(if $(PCAP),--pcap "$(PCAP)")

test: setup-test lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup-test
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup-test
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

setup-run:
	@scripts/setup.sh run

setup-test:
	@scripts/setup.sh test

demo: setup-run
	$(PY) -m hostflow.demo --force

bench: setup-test
	for script in bench/bench_*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf .venv var data/demo.duckdb data/generated

# make install-probe / make install-collector (Raspberry Pi OS / Debian 12 services)
include deploy/install.mk
