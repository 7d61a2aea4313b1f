"""The ClickHouse backend's SQL on a current ClickHouse release (26.5, PyPI chdb-core-lite, in process).

Debian 12 packages only clickhouse-server 18.16 (tests/test_clickhouse.py runs a real two-shard
cluster of it). chdb is ClickHouse 26.x as a library without a network port, so the real
ClickHouseStore runs on it with only the transport under its clickhouse-driver Client replaced
(tests/plugins/clickhouse.py: the driver's own parameter substitution, the SQL text a server would
get). The server reports 26.5 (26.9 with chdb-core), so the store switches on what newer servers have: LowCardinality,
DoubleDelta codecs, TTL retention. The Distributed tables are real too, over a one-shard cluster
whose replica is the engine itself; sharding over two nodes is proven on 18.16 only.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from collector import clickhouse as ch
from collector.ch_migrate import duck_hour_totals, house_hour_totals, migrate
from collector.store import Store
from hostflow.records import Flow
from tests.test_clickhouse import (
    check_columns_added_later,
    check_lab_queries,
    check_real_captures,
    check_resent_cut_short_and_concurrent,
    compare,
    drop,
    lab_cases,
    lab_pair,
    new_database,
)
from tests.test_clickhouse_migrate import HISTORY_START, HOUR, check_hour_copied_again, history, history_file  # noqa: F401

pytestmark = pytest.mark.clickhouse
S = 1_000_000
DAY = 86_400 * S


def test_a_current_release_gets_the_newer_features(chdb_engine) -> None:
    assert tuple(int(p) for p in chdb_engine.version.split(".")[:2]) >= (26, 5)  # chdb-core(-lite) 26.x
    house = new_database(chdb_engine, retention_days=7)
    try:
        assert house.features.modern and house.server_version == chdb_engine.version
        tables = chdb_engine.sql(
            f"SELECT name, engine, sorting_key, create_table_query FROM system.tables"
            f" WHERE database = '{house.db}' ORDER BY name",
            fmt="TSVRaw",
        )
        rows = {line.split("\t")[0]: line.split("\t")[1:] for line in tables.strip().splitlines()}
        assert rows["flows_local"][:2] == [
            "ReplacingMergeTree",
            "flow_hour, src_addr, dst_addr, flow_start, batch_id, row_no",
        ]
        flows_ddl = rows["flows_local"][2]
        for text in (
            "`probe_id` LowCardinality(String)",
            "`src_addr` String",
            "`flow_start` Int64 CODEC(DoubleDelta, LZ4)",
            "TTL toDateTime(intDiv(flow_end, 1000000)) + toIntervalDay(7)",
        ):
            assert text in flows_ddl, flows_ddl
        assert "TTL toDateTime(intDiv(ts, 1000000)) + toIntervalDay(7)" in rows["names_local"][2]
        for table in ("flows", "names", "batches", "probe_health"):
            assert rows[table][0] == "Distributed"
        assert "Distributed('hostflow'" in rows["flows"][2] and "cityHash64(batch_id)" in rows["flows"][2]
        assert house.schema_versions() == [ch.SCHEMA_VERSION]
        type(house)(house.settings).close()  # a second collector starting on the same schema
    finally:
        house.close()
        drop(chdb_engine, house.db)


def test_columns_added_later(chdb_engine) -> None:
    check_columns_added_later(chdb_engine)


def test_lab_every_named_query_equal(chdb_engine, tmp_path: Path) -> None:
    duck, house = lab_pair(chdb_engine, tmp_path / "lab.duckdb")
    try:
        check_lab_queries(chdb_engine, duck, house)
    finally:
        duck.close()
        house.close()
        drop(chdb_engine, house.db)


def test_real_captures_and_netflow_equal(chdb_engine, tmp_path: Path) -> None:
    check_real_captures(chdb_engine, tmp_path)


def test_resent_cut_short_and_concurrent_batches_count_once(chdb_engine) -> None:
    check_resent_cut_short_and_concurrent(chdb_engine)


def test_ttl_expires_old_rows_and_retention_drops_whole_days(chdb_engine) -> None:
    """TTL (only on servers that have it) against the server's clock; apply_retention by day partition."""
    house = new_database(chdb_engine, retention_days=3)
    now = time.time_ns() // 1000
    today = now - now % DAY

    def flows(day: int, count: int, port: int) -> list[Flow]:
        start = today + day * DAY + 3600 * S
        return [Flow("p", start + i * S, start + i * S, 4, 6, "10.0.0.1", port + i, "10.0.0.2", 80, 1, 100)
                for i in range(count)]  # fmt: skip

    try:
        house.ingest("p:1", "probe", flows(-10, 4, 1000), [])  # past the TTL on arrival
        house.ingest("p:2", "probe", flows(-2, 5, 2000), [])
        house.ingest("p:3", "probe", flows(0, 3, 3000), [])
        chdb_engine.sql(f"OPTIMIZE TABLE {house.db}.flows_local FINAL")
        assert house.counts()["flows"] == 5 + 3
        # three and a half days on, the day of the 5 flows is wholly before the cutoff; today's is not
        later = today + 3 * DAY + 12 * 3600 * S
        assert house.apply_retention(now_us=later) == 5
        assert house.counts()["flows"] == 3
        assert house.apply_retention(now_us=later) == 0
    finally:
        house.close()
        drop(chdb_engine, house.db)


def test_ttl_follows_a_changed_retention(chdb_engine, caplog: pytest.LogCaptureFixture) -> None:
    """CREATE … IF NOT EXISTS keeps a table's TTL: a collector started with another retention_days
    changes it; one without retention (or the migration) leaves it and says so."""
    house = new_database(chdb_engine, retention_days=7)

    def ttls() -> list[str]:
        ddl = chdb_engine.sql(
            f"SELECT create_table_query FROM system.tables WHERE database = '{house.db}'"
            " AND name IN ('flows_local', 'names_local') ORDER BY name",
            fmt="TSVRaw",
        )
        return [line.partition(" TTL ")[2].partition(" SETTINGS")[0] for line in ddl.strip().splitlines()]

    try:
        assert ttls() == [
            "toDateTime(intDiv(flow_end, 1000000)) + toIntervalDay(7)",
            "toDateTime(intDiv(ts, 1000000)) + toIntervalDay(7)",
        ]
        type(house)(house.settings, retention_days=90).close()
        assert ttls() == [
            "toDateTime(intDiv(flow_end, 1000000)) + toIntervalDay(90)",
            "toDateTime(intDiv(ts, 1000000)) + toIntervalDay(90)",
        ]
        with caplog.at_level("WARNING", logger="collector.clickhouse"):
            type(house)(house.settings).close()
        assert ttls()[0].endswith("toIntervalDay(90)")
        kept = [r.getMessage() for r in caplog.records if "event=ttl_kept" in r.getMessage()]
        assert len(kept) == 2 and f"ALTER TABLE {house.db}.flows_local REMOVE TTL" in kept[0]
    finally:
        house.close()
        drop(chdb_engine, house.db)


def test_migration_copies_and_checks_every_hour(history_file: Path, chdb_engine) -> None:  # noqa: F811
    settings = new_database(chdb_engine, store=False)
    try:
        summary = migrate(str(history_file), settings, open_store=chdb_engine.store_class)
        assert summary["mismatches"] == [] and summary["copied"]["flows"] >= 38
        again = migrate(str(history_file), settings, open_store=chdb_engine.store_class)
        assert again["copied"] == {"flows": 0, "names": 0} and again["mismatches"] == []
        house = chdb_engine.store_class(settings, create=False)
        with Store(str(history_file), read_only=True) as duck:
            assert house_hour_totals(house, "flows", "migrate:site-a:flows:") == duck_hour_totals(
                duck, "flows"
            )
            cases = lab_cases() + [("hosts", {"start": HISTORY_START, "end": HISTORY_START + 30 * HOUR})]
            assert compare(duck, house, cases, keep_last_seen=True) > 300
            assert house.counts() == duck.counts()
        assert house.ingest("lab-pi:h000003", "probe", history(3), [], probe_id="lab-pi").duplicate
        house.close()
    finally:
        drop(chdb_engine, settings.database)


def test_an_hour_copied_again_with_another_chunk_size_collapses(history_file: Path, chdb_engine) -> None:  # noqa: F811
    check_hour_copied_again(history_file, chdb_engine)
