"""The ClickHouse backend on a real two-shard cluster (tests/plugins/clickhouse.py), against DuckDB.

The same records — the hand-built lab hours, real captures metered by the probe's CLI and real
NetFlow/IPFIX exports decoded by the collector's decoder — go into a DuckDB Store and into the
cluster; every named query must give the same rows on both. Idempotency is proven with resent
batches, a write cut short before its marker, and two writers storing the same batch at once.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from scapy.utils import RawPcapReader

from collector import clickhouse as ch
from collector.clickhouse import ClickHouseConfigError, ClickHouseSettings, ClickHouseStore, Features
from collector.netflow import NetflowDecoder
from collector.store import Store
from hostflow.fileio import read_records
from hostflow.records import Flow, Name, make_batch
from tests import test_collector_queries as lab1
from tests import ui_scenario as lab2
from tests.plugins.common import FIXTURES, ROOT

pytestmark = pytest.mark.clickhouse
S = 1_000_000
_databases = itertools.count()


def new_database(cluster: Any, store: bool = True, **kwargs: Any) -> ClickHouseStore | ClickHouseSettings:
    """A fresh database on the test cluster (several tests and workers share the cluster), or on the
    chdb engine (its store_class is ClickHouseStore over chdb)."""
    name = f"hf{os.getpid()}_{next(_databases)}"
    settings = ClickHouseSettings(hosts=tuple(cluster.hosts), database=name, cluster=cluster.cluster)
    return getattr(cluster, "store_class", ClickHouseStore)(settings, **kwargs) if store else settings


def drop(cluster: Any, database: str) -> None:
    for node in range(len(cluster.nodes)):
        cluster.sql(f"DROP DATABASE IF EXISTS {database}", node=node)


# ---------------------------------------------------------------- records from real captures


CAPTURES = [
    "ndpi-iphone.pcap",
    "ndpi-sites.pcapng",
    "ndpi-gnutella.pcap",
    "ndpi-http_ipv6.pcap",
    "ndpi-netbios.pcap",
]
NETFLOW = ["pmacct-400-traffic-00.pcap", "graylog-nprobe-netflow9.pcap", "akvorado-nfv5.pcap"]


def probe_records(tmp: Path) -> tuple[list[Flow], list[Name]]:
    """The probe's own CLI meters the captures (as on a Pi reading files)."""
    out = tmp / "captures.jsonl"
    subprocess.run(
        [sys.executable, "-m", "probe", "read", *(str(FIXTURES / "pcap" / f) for f in CAPTURES),
         "--output", str(out), "--probe-id", "cap", "--quiet"],
        cwd=ROOT, check=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    flows, names = [], []
    for record in read_records(out):
        (flows if isinstance(record, Flow) else names).append(record)
    return flows, names


def netflow_flows() -> dict[str, list[Flow]]:
    """Exporter address → flows, from real export captures through the collector's decoder."""
    decoder = NetflowDecoder()
    by_exporter: dict[str, list[Flow]] = {}
    for name in NETFLOW:
        for frame, meta in RawPcapReader(str(FIXTURES / "netflow" / name)):
            offset = 14
            while frame[offset - 2 : offset] == b"\x81\x00":
                offset += 4
            if frame[offset - 2 : offset] != b"\x08\x00" or frame[offset + 9] != 17:
                continue
            exporter = ".".join(str(b) for b in frame[offset + 12 : offset + 16])
            udp = offset + (frame[offset] & 0x0F) * 4
            length = int.from_bytes(frame[udp + 4 : udp + 6], "big")
            stamp = meta.sec * S + meta.usec
            for flow in decoder.feed(bytes(frame[udp + 8 : udp + length]), exporter, stamp):
                flow.probe_id = flow.probe_id or exporter
                by_exporter.setdefault(exporter, []).append(flow)
    return by_exporter


# ---------------------------------------------------------------- query comparison


def lab_cases() -> list[tuple[str, dict[str, Any]]]:
    w1 = lab1.WINDOW
    hour = {"start": lab2.HOUR, "end": lab2.HOUR + 3600 * S}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("time_range", {}),
        ("time_range", {"probe_id": "lab"}),
        ("time_range", {"probe_id": "nobody"}),
        ("probes", {}),
        ("hosts", w1),
        ("hosts", {**w1, "intranet_only": False}),
        ("hosts", {}),
        ("names", {}),
        ("names", {"host": lab2.HOST, "name": "slack"}),
        ("findings_unnamed", w1),
        ("findings_unnamed", hour),
        ("findings_new_peers", hour),
        ("findings_ports", hour),
        ("findings_ports", {}),
        ("flows", w1),
        ("flows", {**hour, "limit": 7, "scopes": ["internet"], "direction": "sent"}),
        ("flows", {"protocols": ["udp", "icmp"], "casts": ["unicast"]}),
    ]
    for host, window in ((lab1.H, w1), (lab2.HOST, hour), (lab2.HOST2, hour), (lab2.HOST3, {})):
        cases += [("host_flows", {**window, "host": host}), ("host_counts", {**window, "host": host})]
        cases += [("host_peers", {**window, "host": host, "aggregate": a}) for a in ch_aggregates()]
        cases += [
            ("host_peers", {**window, "host": host, "top_n": 3, "measure": "packets"}),
            ("host_peers", {**window, "host": host, "protocols": ["udp"], "direction": "sent"}),
            ("host_peers", {**window, "host": host, "scopes": ["internet"], "casts": ["unicast"]}),
            ("timeline", {**window, "host": host, "bucket": 60, "by": "service"}),
            ("timeline", {**window, "host": host, "by": "domain"}),
        ]
    return cases


def ch_aggregates() -> tuple[str, ...]:
    return ("endpoint", "ip", "fqdn", "domain")


def compare(
    duck: Store, house: ClickHouseStore, cases: list[tuple[str, dict[str, Any]]], keep_last_seen: bool = False
) -> int:
    """Assert every case gives the same rows on both; returns the number of rows compared."""
    rows_seen = 0
    for name, params in cases:
        expected = duck.query(name, dict(params)).to_pylist()
        got = house.query(name, dict(params)).to_pylist()
        if name == "probes" and not keep_last_seen:  # last_seen is each store's own receive time
            for row in expected + got:
                row.pop("last_seen")
        assert got == expected, f"{name} {params}: ClickHouse differs from DuckDB"
        rows_seen += len(expected)
    return rows_seen


# ---------------------------------------------------------------- tests without a server


def test_settings_from_url() -> None:
    settings = ClickHouseSettings.from_url(
        "clickhouse://flows:s%40cret@ch1:9000,ch2,[::1]:9440/netflows?cluster=c2"
    )
    assert settings == ClickHouseSettings(
        hosts=("ch1:9000", "ch2:9000", "::1:9440"),
        database="netflows",
        cluster="c2",
        user="flows",
        password="s@cret",
    )
    assert ClickHouseSettings.from_url("clickhouse://ch1", password="file").password == "file"
    assert ClickHouseSettings.from_url("clickhouses://ch1:9440/x").secure
    for bad, message in (
        ("http://ch1:8123", "is not a clickhouse://"),
        ("clickhouse:///db", "names no host"),
        ("clickhouse://ch1:99999/db", "has no valid port"),
        ("clickhouse://ch1/db;drop", "not a plain database"),
        ("clickhouse://ch1/db?replicas=2", "unknown URL option"),
    ):
        with pytest.raises(ClickHouseConfigError, match=message):
            ClickHouseSettings.from_url(bad)


def test_newer_features_only_on_newer_servers() -> None:
    old = " ".join(ch.table_ddl(Features((18, 16, 1)), "hf", "hostflow", retention_days=7))
    new = " ".join(ch.table_ddl(Features((24, 8, 4)), "hf", "hostflow", retention_days=7))
    for feature in ("LowCardinality", "CODEC(", " TTL "):
        assert feature not in old
        assert feature in new
    assert "probe_id LowCardinality(String)" in new and "src_addr String" in new


def test_backend_configuration(tmp_path: Path) -> None:
    from collector import config

    def load(*argv: str, environ: dict[str, str] | None = None) -> config.Config:
        parser = __import__("argparse").ArgumentParser()
        config.add_arguments(parser)
        return config.load(parser.parse_args(list(argv)), environ or {})

    assert load().backend == "duckdb"
    chosen = load("--backend", "clickhouse", "--clickhouse", "clickhouse://ch1:9000,ch2:9000/flows")
    assert (chosen.backend, chosen.clickhouse) == ("clickhouse", "clickhouse://ch1:9000,ch2:9000/flows")
    toml = tmp_path / "collector.toml"
    toml.write_text(
        'backend = "clickhouse"\n[clickhouse]\nurl = "clickhouse://ch1/flows"\npassword_file = "/pw"\n'
    )
    from_file = load("--config", str(toml))
    assert (from_file.backend, from_file.clickhouse_password_file) == ("clickhouse", "/pw")
    from_env = load(environ={"HOSTFLOW_BACKEND": "clickhouse", "HOSTFLOW_CLICKHOUSE": "clickhouse://ch9/x"})
    assert from_env.clickhouse == "clickhouse://ch9/x"
    with pytest.raises(config.ConfigError, match="needs the cluster's URL"):
        load("--backend", "clickhouse")
    with pytest.raises(config.ConfigError, match="no valid port"):
        load("--backend", "clickhouse", "--clickhouse", "clickhouse://ch1:x/db")


def test_collector_with_unreachable_cluster_exits_with_one_line(tmp_path: Path) -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "collector", "serve", "--db", str(tmp_path / "c"), "--http-port", "1",
         "--backend", "clickhouse", "--clickhouse", "clickhouse://hostflow:secret@127.0.0.1:1/x"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert answer.returncode == 1
    lines = [line for line in answer.stderr.splitlines() if line.startswith("collector:")]
    assert lines == [
        "collector: cannot open clickhouse://127.0.0.1:1/x: Code: 210. Connection refused (127.0.0.1:1)"
    ]
    assert "secret" not in answer.stderr


# ---------------------------------------------------------------- the cluster


def test_unreachable_cluster_is_one_clear_error() -> None:
    settings = ClickHouseSettings(hosts=("127.0.0.1:1",), database="x")
    with pytest.raises(Exception, match="127.0.0.1:1") as info:
        ClickHouseStore(settings, connect_timeout=1)
    assert len(str(info.value).splitlines()) == 1


def test_layout_on_every_node(clickhouse_cluster) -> None:
    store = new_database(clickhouse_cluster)
    try:
        for node in range(2):
            tables = clickhouse_cluster.sql(
                f"SELECT name, engine, partition_key, sorting_key FROM system.tables WHERE database = '{store.db}'"
                " ORDER BY name FORMAT TSV",
                node=node,
            )
            rows = {line.split("\t")[0]: line.split("\t")[1:] for line in tables.strip().splitlines()}
            assert rows["flows_local"] == [
                "ReplacingMergeTree",
                "toDate(toDateTime(intDiv(flow_start, 1000000)))",
                "flow_hour, src_addr, dst_addr, flow_start, batch_id, row_no",
            ]
            assert rows["names_local"][0] == "ReplacingMergeTree"
            assert rows["names_local"][2] == "addr, ts, batch_id, row_no"
            for table in ("flows", "names", "batches", "probe_health"):
                assert rows[table][0] == "Distributed"
            full = clickhouse_cluster.sql(
                f"SELECT engine_full FROM system.tables WHERE database = '{store.db}' AND name IN ('flows', 'names')"
                " ORDER BY name FORMAT TSV",
                node=node,
            )
            assert "cityHash64(batch_id)" in full.splitlines()[0]
            assert "cityHash64(addr)" in full.splitlines()[1]
        assert store.schema_versions() == [ch.SCHEMA_VERSION]
        ClickHouseStore(store.settings).close()  # a second collector starting on the same schema
    finally:
        store.close()
        drop(clickhouse_cluster, store.db)


def lab_pair(cluster: Any, path: Path) -> tuple[Store, ClickHouseStore]:
    """Both lab scenarios in DuckDB and in ``cluster``, written through two ClickHouse writers."""
    duck = Store(str(path))
    house = new_database(cluster)
    second = type(house)(house.settings)
    duck.ingest("lab:1", "probe", lab1.FLOWS, lab1.NAMES)
    house.ingest("lab:1", "probe", lab1.FLOWS, lab1.NAMES)
    for index, (_token, batch) in enumerate(lab2.batches(lab2.build())):
        probe = batch["probe_id"]
        flows = [Flow(*row) for row in batch["flows"]]
        names = [Name(*row) for row in batch["names"]]
        duck.ingest(batch["batch_id"], "probe", flows, names, batch["health"], probe_id=probe)
        (house if index % 2 else second).ingest(
            batch["batch_id"], "probe", flows, names, batch["health"], probe_id=probe
        )
    second.close()
    return duck, house


def check_lab_queries(cluster: Any, duck: Store, house: ClickHouseStore) -> None:
    assert compare(duck, house, lab_cases()) > 300
    assert house.counts() == duck.counts()
    per_node = [
        int(cluster.sql(f"SELECT count() FROM {house.db}.names_local", node=n))
        for n in range(len(cluster.nodes))
    ]
    assert sum(per_node) == duck.counts()["names"] and min(per_node) > 0, per_node  # every shard holds names


def check_columns_added_later(cluster: Any) -> None:
    """A table made before records.py gained a column: the next collector adds it on every node,
    to the local and the Distributed table, with the type this server's version calls for."""
    house = new_database(cluster)
    try:
        house.ingest("old:1", "probe", lab1.FLOWS[:5], [])
        for node in range(len(cluster.nodes)):
            for table in ("flows_local", "flows"):
                cluster.sql(f"ALTER TABLE {house.db}.{table} DROP COLUMN vlan", node=node)
                cluster.sql(f"ALTER TABLE {house.db}.{table} DROP COLUMN end_reason", node=node)
        later = type(house)(house.settings)
        later.close()
        expected = {"vlan": "UInt16", "end_reason": house.features.string("end_reason")}
        for node in range(len(cluster.nodes)):
            for table in ("flows_local", "flows"):
                described = cluster.sql(f"DESCRIBE TABLE {house.db}.{table}", node=node)
                types = {line.split("\t")[0]: line.split("\t")[1] for line in described.splitlines()}
                assert {name: types[name] for name in expected} == expected, (node, table)
        rows = house.query("host_flows", {**lab1.WINDOW, "host": lab1.H}).to_pylist()
        assert rows and {row["end_reason"] for row in rows} == {""}  # the old rows read with the default
        house.ingest("new:1", "probe", lab1.FLOWS[5:], [])
        assert house.counts()["flows"] == len(lab1.FLOWS)
    finally:
        house.close()
        drop(cluster, house.db)


def test_columns_added_later_on_every_node(clickhouse_cluster) -> None:
    check_columns_added_later(clickhouse_cluster)


@pytest.fixture(scope="module")
def lab_stores(clickhouse_cluster, tmp_path_factory):
    duck, house = lab_pair(clickhouse_cluster, tmp_path_factory.mktemp("ch-lab") / "lab.duckdb")
    yield duck, house
    duck.close()
    house.close()
    drop(clickhouse_cluster, house.db)


def test_lab_every_named_query_equal(lab_stores, clickhouse_cluster) -> None:
    check_lab_queries(clickhouse_cluster, *lab_stores)


def check_real_captures(cluster: Any, tmp_path: Path) -> None:
    """Real captures (probe CLI) and real NetFlow exports: every named query equal to DuckDB's."""
    flows, names = probe_records(tmp_path)
    exports = netflow_flows()
    assert len(flows) == 2114 and len(names) == 150
    assert sum(len(f) for f in exports.values()) == 657 + 152 + 29
    duck = Store(str(tmp_path / "real.duckdb"))
    house = new_database(cluster)
    other = type(house)(house.settings)
    try:
        step = 500
        for number, offset in enumerate(range(0, len(flows), step)):
            part = flows[offset : offset + step]
            part_names = names if number == 0 else []
            batch_id = f"cap:{number:06d}"
            duck.ingest(batch_id, "probe", part, part_names, probe_id="cap")
            (house if number % 2 else other).ingest(batch_id, "probe", part, part_names, probe_id="cap")
        for exporter, exported in exports.items():  # as the collectors' NetFlow path writes them
            duck.ingest(None, exporter, exported, [])
            other.ingest(None, exporter, exported, [])
        hosts = duck.query("hosts", {"intranet_only": False}).to_pylist()
        busiest = [row["addr"] for row in hosts[:12]]
        cases: list[tuple[str, dict[str, Any]]] = [
            ("time_range", {}),
            ("probes", {}),
            ("hosts", {}),
            ("hosts", {"intranet_only": False}),
            ("names", {}),
            ("findings_unnamed", {}),
            ("findings_new_peers", {}),
            ("findings_ports", {}),
            ("flows", {}),
            ("flows", {"intranet": ["0.0.0.0/0"], "direction": "received", "limit": 100}),
        ]
        for host in busiest:
            cases += [
                ("host_flows", {"host": host}),
                ("host_counts", {"host": host, "aggregate": "domain"}),
                ("host_peers", {"host": host, "aggregate": "fqdn"}),
                ("host_peers", {"host": host, "aggregate": "endpoint", "top_n": 5}),
                ("timeline", {"host": host, "by": "peer"}),
            ]
        assert compare(duck, house, cases) > 2000
        per_node = [
            int(
                cluster.sql(f"SELECT count() FROM {house.db}.flows_local WHERE batch_id LIKE 'cap:%'", node=n)
            )
            for n in range(len(cluster.nodes))
        ]
        assert sum(per_node) == len(flows) and min(per_node) > 0, per_node  # batches spread over both shards
        assert house.counts() == duck.counts() == {"flows": 2114 + 838, "names": 150, "batches": 5}
    finally:
        other.close()
        house.close()
        duck.close()
        drop(cluster, house.db)


def test_real_captures_and_netflow_equal(clickhouse_cluster, tmp_path) -> None:
    check_real_captures(clickhouse_cluster, tmp_path)


def check_resent_cut_short_and_concurrent(cluster: Any) -> None:
    """Resent, cut-short and four-at-once batches: written 1, 2 and 4 times, counted once (FINAL)."""
    house = new_database(cluster)
    barrier = threading.Barrier(4)

    class Racing(type(house)):  # type: ignore[misc]
        def batch_stored(self, batch_id: str) -> bool:
            stored = super().batch_stored(batch_id)
            barrier.wait(30)  # every writer has checked before any writes: the race, made certain
            return stored

    writers = [Racing(house.settings) for _ in range(4)]
    for node in range(len(cluster.nodes)):  # the raw copies stay visible until the test merges them itself
        cluster.sql(f"SYSTEM STOP MERGES {house.db}.flows_local", node=node)
    try:
        flows, names = lab1.FLOWS, lab1.NAMES
        first = house.ingest("lab:1", "probe", flows, names)
        assert not first.duplicate
        assert house.ingest("lab:1", "probe", flows, names).duplicate
        # a collector killed after writing the rows but before the marker: the probe resends
        from collector.columns import table_from_flows, table_from_names

        house.insert_rows("flows", table_from_flows(flows), "lab:2")
        house.insert_rows("names", table_from_names(names), "lab:2")
        assert not house.ingest("lab:2", "probe", flows, names).duplicate
        # four collectors receiving the same batch at the same moment
        errors: list[BaseException] = []

        def write(store: ClickHouseStore) -> None:
            try:
                assert not store.ingest("lab:3", "probe", flows, names).duplicate
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in writers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        raw = int(cluster.sql(f"SELECT count() FROM {house.db}.flows"))
        assert raw == (1 + 2 + 4) * len(flows)  # the rows really were written 1, 2 and 4 times …
        assert house.counts() == {
            "flows": 3 * len(flows),
            "names": 3 * len(names),
            "batches": 3,
        }  # … yet count once
        time_range = house.query("time_range", {}).to_pylist()[0]
        assert time_range["flows"] == 3 * len(flows)
        peers = house.query("host_peers", {**lab1.WINDOW, "host": lab1.H}).to_pylist()
        assert sum(p["flows"] for p in peers) == 3 * 16
        for node in range(len(cluster.nodes)):  # and a merge removes the copies for good
            cluster.sql(f"SYSTEM START MERGES {house.db}.flows_local", node=node)
            cluster.sql(f"OPTIMIZE TABLE {house.db}.flows_local FINAL", node=node)
        assert int(cluster.sql(f"SELECT count() FROM {house.db}.flows")) == 3 * len(flows)
    finally:
        for writer in writers:
            writer.close()
        house.close()
        drop(cluster, house.db)


def test_resent_cut_short_and_concurrent_batches_count_once(clickhouse_cluster) -> None:
    check_resent_cut_short_and_concurrent(clickhouse_cluster)


def test_retention_drops_whole_old_days(clickhouse_cluster) -> None:
    house = new_database(clickhouse_cluster, retention_days=1)
    try:
        day = 86_400 * S
        base = 1_700_006_400 * S  # 2023-11-15T00:00:00Z, a day boundary
        old = [Flow("p", base + i * S, base + i * S, 4, 6, "10.0.0.1", 1000 + i, "10.0.0.2", 80, 1, 100)
               for i in range(5)]  # fmt: skip
        new = [Flow("p", base + 2 * day + i * S, base + 2 * day + i * S, 4, 6, "10.0.0.1", 2000 + i, "10.0.0.2",
                    80, 1, 100) for i in range(3)]  # fmt: skip
        house.ingest("p:1", "probe", old, [])
        house.ingest("p:2", "probe", new, [])
        assert house.apply_retention(now_us=base + 2 * day + 12 * 3600 * S) == 5
        assert house.counts()["flows"] == 3
        assert house.apply_retention(now_us=base + 2 * day + 12 * 3600 * S) == 0
    finally:
        house.close()
        drop(clickhouse_cluster, house.db)


# ---------------------------------------------------------------- the real daemons on the cluster


def clickhouse_args(store: ClickHouseStore, *tokens: str) -> list[str]:
    url = f"clickhouse://{','.join(store.settings.hosts)}/{store.db}"
    return ["--backend", "clickhouse", "--clickhouse", url, *(a for t in tokens for a in ("--token", t))]


def shifted(flows: list[Flow], names: list[Name], probe: str, copies: int) -> tuple[list[Flow], list[Name]]:
    """The capture's records, ``copies`` times a day apart, as one probe's."""
    day = 86_400 * S
    out_flows = [Flow(**{**_fields(f), "probe_id": probe, "flow_start": f.flow_start + c * day,
                         "flow_end": f.flow_end + c * day}) for c in range(copies) for f in flows]  # fmt: skip
    out_names = [
        Name(**{**_fields(n), "probe_id": probe, "ts": n.ts + c * day}) for c in range(copies) for n in names
    ]
    return out_flows, out_names


def _fields(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}


def send_until_stored(process: Any, batch: dict[str, Any], token: str, posting: threading.Event) -> int:
    """POST like the probe's spool does: again and again until the collector answers 200; returns
    the number of attempts."""
    for attempt in range(1, 601):
        posting.set()
        try:
            status, _answer = process.post_batch(batch, token)
        except OSError:
            status = 0
        finally:
            posting.clear()
        if status == 200:
            return attempt
        threading.Event().wait(0.1)
    raise AssertionError(f"batch {batch['batch_id']} never stored")


def send_netflow(port: int) -> int:
    import socket

    datagrams = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        for name in NETFLOW:
            for frame, _meta in RawPcapReader(str(FIXTURES / "netflow" / name)):
                if frame[12:14] != b"\x08\x00" or frame[23] != 17:
                    continue
                udp = 14 + (frame[14] & 0x0F) * 4
                length = int.from_bytes(frame[udp + 4 : udp + 6], "big")
                sock.sendto(bytes(frame[udp + 8 : udp + length]), ("127.0.0.1", port))
                datagrams += 1
                threading.Event().wait(0.002)
    return datagrams


def http_rows(process: Any, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    status, answer = process.query_json(name, **params)
    assert status == 200, (name, params, answer)
    return [dict(zip(answer["columns"], row, strict=True)) for row in answer["rows"]]


@pytest.mark.timeout(300)
def test_two_collectors_one_killed_mid_stream_lose_and_double_nothing(
    clickhouse_cluster, collector_factory, tmp_path
) -> None:
    import socket

    from tests.plugins.common import free_port

    house = new_database(clickhouse_cluster)
    flows, names = probe_records(tmp_path)
    first = shifted(flows, names, "test-probe", 6)
    second = shifted(flows, names, "probe-2", 3)
    batches = {"test-probe": [], "probe-2": []}
    for probe, (fl, nm) in (("test-probe", first), ("probe-2", second)):
        for number, offset in enumerate(range(0, len(fl), 2500)):
            part_names = [
                n for n in nm if fl[offset].flow_start <= n.ts <= fl[min(offset + 2499, len(fl) - 1)].flow_end
            ]
            batches[probe].append(
                make_batch(probe, f"{probe}:{number:06d}", fl[offset : offset + 2500], part_names,
                           {"hostname": probe, "packets_captured": number})
            )  # fmt: skip
    extra = ["--token", "token-2=probe-2"]
    duck_udp, house_udp = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    duck = collector_factory(tmp_path / "ref.duckdb", extra_args=extra, netflow_port=duck_udp)
    one = collector_factory(tmp_path / "one.runtime", extra_args=clickhouse_args(house))
    two = collector_factory(tmp_path / "two.runtime", extra_args=clickhouse_args(house, "token-2=probe-2"),
                            netflow_port=house_udp)  # fmt: skip
    try:
        for probe, token in (("test-probe", "test-token"), ("probe-2", "token-2")):
            for batch in batches[probe]:
                status, answer = duck.post_batch(batch, token)
                assert status == 200 and not answer["duplicate"], answer
        posting = threading.Event()
        acked: list[str] = []
        attempts = {"test-probe": 0, "probe-2": 0}

        def stream(process: Any, probe: str, token: str) -> None:
            for batch in batches[probe]:
                attempts[probe] += send_until_stored(
                    process, batch, token, posting if process is one else threading.Event()
                )
                acked.append(batch["batch_id"])

        senders = [
            threading.Thread(target=stream, args=(one, "test-probe", "test-token")),
            threading.Thread(target=stream, args=(two, "probe-2", "token-2")),
        ]
        for sender in senders:
            sender.start()
        while sum(b.startswith("test-probe") for b in acked) < 2:
            threading.Event().wait(0.01)
        assert posting.wait(30)
        threading.Event().wait(0.03)  # inside the request: parsing, or already writing the shards
        one.kill()  # SIGKILL: no drain, no goodbye
        one.start()  # same settings, a new port: the sender follows it, as a probe's retry would
        for sender in senders:
            sender.join(timeout=240)
        assert sorted(acked) == sorted(b["batch_id"] for bs in batches.values() for b in bs)
        assert attempts["test-probe"] > len(
            batches["test-probe"]
        )  # the kill cut a request: it was sent again
        assert send_netflow(duck_udp) == send_netflow(house_udp) > 0
        expected_flows = len(first[0]) + len(second[0]) + 838
        for process in (duck, one):
            for _ in range(200):
                if http_rows(process, "time_range", {})[0]["flows"] == expected_flows:
                    break
                threading.Event().wait(0.05)
        assert http_rows(one, "time_range", {}) == http_rows(duck, "time_range", {})
        assert http_rows(one, "time_range", {})[0]["flows"] == expected_flows  # none lost, none doubled
        hosts = http_rows(duck, "hosts", {"intranet_only": False})
        cases: list[tuple[str, dict[str, Any]]] = [("hosts", {}), ("names", {}), ("findings_ports", {}),
                                                   ("findings_unnamed", {}), ("findings_new_peers", {})]  # fmt: skip
        for row in hosts[:6]:
            cases += [
                ("host_peers", {"host": row["addr"], "aggregate": "fqdn"}),
                ("host_flows", {"host": row["addr"]}),
            ]
        for name, params in cases:
            assert http_rows(one, name, params) == http_rows(duck, name, params), name
        # probe batches: one row per probe, equal but for the receive time; NetFlow flushes are
        # counted under the first flow's probe id of each flush, which depends on arrival timing
        probes, reference = http_rows(two, "probes", {}), http_rows(duck, "probes", {})
        for rows in (probes, reference):
            for row in rows:
                row.pop("last_seen")
        assert [r for r in probes if r["source"] == "probe"] == [
            r for r in reference if r["source"] == "probe"
        ]
        assert sum(r["flows_stored"] for r in probes if r["source"] != "probe") == 838
        assert sum(r["flows_stored"] for r in reference if r["source"] != "probe") == 838
    finally:
        house.close()
        drop(clickhouse_cluster, house.db)


# ---------------------------------------------------------------- the app on the ClickHouse backend

from tests import test_app_sankey as app_tests  # noqa: E402
from tests.test_app_sankey import app  # noqa: E402, F401  (the page fixture, fed by `collector` below)


@contextmanager
def lab_collector(cluster, runtime: Path) -> Iterator[lab2.Collector]:
    """The app tests' lab collector (tests/ui_scenario.py), a real daemon storing in the cluster."""
    from tests.plugins.collector import CollectorProcess

    house = new_database(cluster)
    tokens = (f"{lab2.TOKEN}={lab2.PROBE}", f"{lab2.TOKEN2}={lab2.PROBE2}")
    process = CollectorProcess(runtime, extra_args=clickhouse_args(house, *tokens))
    try:
        process.start()
        server = lab2.Collector(process.url, process.proc)
        for token, batch in lab2.batches(lab2.build()):
            server.post(token, batch)
        yield server
    finally:
        process.stop()
        house.close()
        drop(cluster, house.db)


@pytest.fixture(scope="module")
def collector(clickhouse_cluster, tmp_path_factory):
    """test_app_sankey's lab collector, but storing in the two-shard cluster."""
    with lab_collector(clickhouse_cluster, tmp_path_factory.mktemp("ch-app") / "app.runtime") as server:
        yield server


test_app_default_view = app_tests.test_default_view_is_the_latest_hour_of_the_busiest_host
test_app_hostile_name = app_tests.test_hostile_name_stays_text_everywhere
test_app_probe_and_host = app_tests.test_probe_and_host_choice
test_app_filters = app_tests.test_each_filter_family
test_app_direction = app_tests.test_direction
test_app_aggregation = app_tests.test_aggregation
test_app_measure_top_n = app_tests.test_measure_min_volume_top_n_and_service_column
test_app_links = app_tests.test_link_parameters_restore_a_view_and_bad_ones_are_named
