"""`migrate-to-clickhouse` copies a real DuckDB history into the two-shard cluster, survives being
killed half-way, resumes, and proves the copy by row counts and byte sums per hour; afterwards
every named query answers the same on the cluster as on the file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collector import __main__ as collector_main
from collector.ch_migrate import duck_hour_totals, house_hour_totals
from collector.clickhouse import ClickHouseSettings, ClickHouseStore
from collector.store import Store
from hostflow.records import Flow
from tests import test_collector_queries as lab1
from tests import ui_scenario as lab2
from tests.plugins.common import ROOT
from tests.test_clickhouse import compare, drop, lab_cases

pytestmark = pytest.mark.clickhouse
S = 1_000_000
HOUR = 3600 * S
HISTORY_START = lab2.HOUR - 40 * HOUR
HISTORY_HOURS = 36


def history(hour: int) -> list[Flow]:
    """A busy hour of one host talking to many peers (deterministic)."""
    start = HISTORY_START + hour * HOUR
    return [
        Flow("lab-pi", start + i * 2_000_000, start + i * 2_000_000 + 500_000, 4, 6 if i % 3 else 17,
             f"192.168.1.{20 + i % 7}", 40_000 + i % 20_000, f"198.51.100.{i % 200}", 443 if i % 3 else 53,
             1 + i % 9, 60 + (i * 37 + hour) % 1400, initiator="src", end_reason="idle")
        for i in range(1500)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def history_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("migrate") / "site-a.duckdb"
    with Store(str(path)) as store:
        store.ingest("lab:1", "probe", lab1.FLOWS, lab1.NAMES)
        for _token, batch in lab2.batches(lab2.build()):
            flows = [Flow(*row) for row in batch["flows"]]
            from hostflow.records import Name

            names = [Name(*row) for row in batch["names"]]
            store.ingest(
                batch["batch_id"], "probe", flows, names, batch["health"], probe_id=batch["probe_id"]
            )
        for hour in range(HISTORY_HOURS):
            store.ingest(f"lab-pi:h{hour:06d}", "probe", history(hour), [], probe_id="lab-pi")
        netflow = [f for f in history(HISTORY_HOURS) if f.protocol == 17]
        for flow in netflow:
            flow.probe_id = "192.0.2.1"
        store.ingest(None, "192.0.2.1", netflow, [])  # as the NetFlow path writes (no batch id)
    return path


def migrate_command(db: Path, url: str, *extra: str) -> list[str]:
    if "collector.ch_migrate" in collector_main.EXTENSION_MODULES:
        return [
            sys.executable,
            "-m",
            "collector",
            "migrate-to-clickhouse",
            "--db",
            str(db),
            "--clickhouse",
            url,
            *extra,
        ]
    return [sys.executable, "-m", "collector.ch_migrate", "--db", str(db), "--clickhouse", url, *extra]


def run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_killed_half_way_resumes_and_checks_every_hour(
    history_file: Path, clickhouse_cluster, tmp_path
) -> None:
    settings = ClickHouseSettings(
        hosts=tuple(clickhouse_cluster.hosts),
        database=f"mig{os.getpid()}",
        cluster=clickhouse_cluster.cluster,
    )
    url = f"clickhouse://{','.join(settings.hosts)}/{settings.database}"
    try:
        with Store(str(history_file), read_only=True) as duck:
            want = duck_hour_totals(duck, "flows")
            total = sum(n for n, _ in want.values())
        assert len(want) >= HISTORY_HOURS + 2
        # 1. killed after a few hours are in
        log = tmp_path / "first.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                migrate_command(history_file, url, "--chunk-rows", "300"),
                cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            deadline = time.monotonic() + 120
            while log.read_text().count("event=hour_copied") < 4 and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        probe = ClickHouseStore(settings, create=False)
        partial = house_hour_totals(probe, "flows", "migrate:site-a:flows:")
        assert 4 <= len(partial) < len(want)
        assert sum(n for n, _ in partial.values()) < total
        # 2. the same command again finishes the copy and checks it
        second = run(migrate_command(history_file, url))
        assert second.returncode == 0, second.stdout + second.stderr
        skipped = int(second.stdout.split("hours copied")[1].split(",")[1].split()[0])
        assert skipped >= 3, second.stdout  # hours complete before the kill were not copied again
        assert "check: every hour's row count and byte sum equal" in second.stdout
        assert house_hour_totals(probe, "flows", "migrate:site-a:flows:") == want
        # 3. a third run has nothing left to do
        third = run(migrate_command(history_file, url))
        assert third.returncode == 0 and f"flows: {total} rows in the file; 0 hours copied" in third.stdout
        # every named query answers as the file does, sources and health included
        with Store(str(history_file), read_only=True) as duck:
            cases = lab_cases() + [("hosts", {"start": HISTORY_START, "end": lab2.HOUR})]
            cases += [
                ("host_peers", {"host": "192.168.1.21", "start": HISTORY_START + 5 * HOUR, "end": lab2.HOUR})
            ]
            assert compare(duck, probe, cases, keep_last_seen=True) > 300
            assert probe.counts() == duck.counts()
        # a probe resending a batch the file already had is told "duplicate"
        assert probe.ingest("lab-pi:h000003", "probe", history(3), [], probe_id="lab-pi").duplicate
        probe.close()
    finally:
        drop(clickhouse_cluster, settings.database)


def test_bad_arguments_are_one_line(tmp_path: Path) -> None:
    missing = run(migrate_command(tmp_path / "nope.duckdb", "clickhouse://127.0.0.1:1/x"))
    assert missing.returncode == 2 and missing.stderr.strip().endswith("no such DuckDB file")
    Store(str(tmp_path / "a.duckdb")).close()
    bad_url = run(migrate_command(tmp_path / "a.duckdb", "http://127.0.0.1:8123"))
    assert bad_url.returncode == 2 and "clickhouse://" in bad_url.stderr
    down = run(migrate_command(tmp_path / "a.duckdb", "clickhouse://127.0.0.1:1/x"))
    assert down.returncode == 1 and len(down.stderr.strip().splitlines()) == 1, down.stderr


def test_an_hour_copied_again_with_another_chunk_size_collapses(
    history_file: Path, clickhouse_cluster
) -> None:
    check_hour_copied_again(history_file, clickhouse_cluster)


def check_hour_copied_again(history_file: Path, cluster) -> None:
    """A kill mid-hour leaves part of that hour in the cluster; the rerun copies the whole hour again,
    perhaps with another --chunk-rows. Row identities must not depend on the chunks, or rows double."""
    from collector.ch_migrate import copy_hour
    from tests.test_clickhouse import new_database

    house = new_database(cluster)
    try:
        with Store(str(history_file), read_only=True) as duck:
            want = duck_hour_totals(duck, "flows")
            hour = min(want)
            prefix = "migrate:test:flows:"
            copy_hour(duck, house, "flows", hour, prefix, chunk_rows=300)
            copy_hour(duck, house, "flows", hour, prefix, chunk_rows=1_000)  # the rerun, other chunks
            copy_hour(duck, house, "flows", hour, prefix, chunk_rows=7)
        assert house_hour_totals(house, "flows", prefix) == {hour: want[hour]}
    finally:
        drop(cluster, house.settings.database)
