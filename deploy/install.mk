# Raspberry Pi / Debian service install, included from the Makefile (or: make -f deploy/install.mk).
#   make install-probe               probe: code + venv (probe/requirements.txt only) + unit + config
#   make install-collector           collector: code + venv (requirements.txt) + unit + config
#   make install-probe DESTDIR=/tmp/stage PREFIX=/opt/hostflow    staged, for packaging and tests
DESTDIR ?=
PREFIX ?= /opt/hostflow
SYSCONFDIR ?= /etc/hostflow
STATEDIR ?= /var/lib/hostflow
UNITDIR ?= /etc/systemd/system
SYSUSERSDIR ?= /usr/lib/sysusers.d
INSTALL_PYTHON ?= python3
DEPLOY_ENV = DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" SYSCONFDIR="$(SYSCONFDIR)" STATEDIR="$(STATEDIR)" \
	UNITDIR="$(UNITDIR)" SYSUSERSDIR="$(SYSUSERSDIR)" PYTHON="$(INSTALL_PYTHON)"

.PHONY: install-probe install-collector

install-probe:
	$(DEPLOY_ENV) deploy/install.sh probe

install-collector:
	$(DEPLOY_ENV) deploy/install.sh collector
