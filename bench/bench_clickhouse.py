"""ClickHouse backend beside the DuckDB store: ingest rows/s and host-hour Sankey latency.

    .venv/bin/python bench/bench_clickhouse.py [--rows 10000000] [--ingest-rows 400000]
        [--batch-rows 5000] [--queries 40] [--clickhouse clickhouse://h1:9000,h2:9000/db]

Without --clickhouse it starts its own two-node cluster on free loopback ports (as the tests do).

1. Ingest through the store interface (``ingest_columns``: Arrow batches of --batch-rows, each
   idempotent, answered once on its shard): ClickHouse with one writer process, with two writer
   processes at once (two collectors), and DuckDB's Store (one writer by design). rows/s.
2. host_peers (the Sankey's query: scan, attribution, aggregation, top-N) for random host-hours
   on --rows generated flows (200 hosts, 5000 peers, 7 days, 20,000 DNS names), both backends:
   median and p95 ms. The bulk load itself goes through ClickHouse's CSV input (server-side
   parsing), not the collector path, so the figures above are the ingest ones.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collector.clickhouse import ClickHouseSettings, ClickHouseStore  # noqa: E402
from collector.columns import FLOW_SCHEMA, NAME_SCHEMA  # noqa: E402
from collector.store import Store  # noqa: E402
from hostflow.records import FLOW_FIELDS  # noqa: E402

S = 1_000_000
HOUR = 3600 * S
T0 = 1_700_006_400 * S  # 2023-11-15T00:00:00Z
DAYS = 7
HOSTS = np.array([f"192.168.{h // 250}.{h % 250 + 1}" for h in range(200)], dtype=object)
PEERS = np.array(
    [f"{23 + p // 65025}.{(p // 255) % 255}.{p % 255}.{7 + p % 200}" for p in range(5000)], dtype=object
)


def flows(n: int, seed: int, probe: str = "bench", days: float = DAYS) -> pa.Table:
    """n flows over ``days`` days: intranet hosts ⇄ internet peers, both directions, sorted by start."""
    rng = np.random.default_rng(seed)
    start = T0 + np.sort(rng.integers(0, int(days * 24 * HOUR), n))
    host = HOSTS[rng.integers(0, len(HOSTS), n)]
    peer = PEERS[(rng.zipf(1.3, n) - 1) % len(PEERS)]
    sent = rng.random(n) < 0.5
    proto = rng.choice(np.array([6, 6, 6, 17, 17, 1], np.uint8), n)
    service = rng.choice(np.array([443, 443, 80, 53, 123, 8443], np.uint16), n)
    ephemeral = rng.integers(32768, 61000, n).astype(np.uint16)
    columns = {
        "probe_id": pa.array(np.full(n, probe, dtype=object), pa.string()),
        "flow_start": pa.array(start, pa.int64()),
        "flow_end": pa.array(start + rng.integers(0, 60 * S, n), pa.int64()),
        "ip_version": pa.array(np.full(n, 4, np.uint8)),
        "protocol": pa.array(proto),
        "src_addr": pa.array(np.where(sent, host, peer), pa.string()),
        "src_port": pa.array(np.where(sent, ephemeral, service)),
        "dst_addr": pa.array(np.where(sent, peer, host), pa.string()),
        "dst_port": pa.array(np.where(sent, service, ephemeral)),
        "packets": pa.array(rng.integers(1, 2000, n).astype(np.uint64)),
        "bytes": pa.array(rng.integers(40, 2_000_000, n).astype(np.uint64)),
        "tcp_flags": pa.array(np.where(proto == 6, 0x1B, 0).astype(np.uint8)),
        "tos": pa.array(np.zeros(n, np.uint8)),
        "vlan": pa.array(np.zeros(n, np.uint16)),
        "src_mac": pa.array(np.full(n, "", dtype=object), pa.string()),
        "dst_mac": pa.array(np.full(n, "", dtype=object), pa.string()),
        "end_reason": pa.array(np.full(n, "idle", dtype=object), pa.string()),
        "initiator": pa.array(np.where(sent, "src", "dst"), pa.string()),
        "sampling": pa.array(np.ones(n, np.uint32)),
    }
    table = pa.table(columns)
    return pa.Table.from_arrays(
        [table.column(f.name).cast(pa.int64()).cast(f.type) if f.name in ("flow_start", "flow_end")
         else table.column(f.name).cast(f.type) for f in FLOW_SCHEMA],
        schema=FLOW_SCHEMA,
    )  # fmt: skip


def names(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    peer = rng.integers(0, len(PEERS), n)
    ts = T0 + np.sort(rng.integers(-HOUR, DAYS * 24 * HOUR, n))
    return pa.table(
        {
            "probe_id": pa.array(["bench"] * n),
            "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("us")),
            "addr": pa.array(PEERS[peer], pa.string()),
            "name": pa.array([f"svc{p % 900}.example{p % 97}.com" for p in peer]),
            "source": pa.array(["dns"] * n),
            "client_addr": pa.array(HOSTS[rng.integers(0, len(HOSTS), n)], pa.string()),
            "ttl": pa.array(np.full(n, 86_400, np.uint32)),
            "cname_chain": pa.array([[] for _ in range(n)], pa.list_(pa.string())),
            "qtype": pa.array(["A"] * n),
            "rcode": pa.array(np.zeros(n, np.uint8)),
        },
        schema=NAME_SCHEMA,
    )


# ---------------------------------------------------------------- 1. ingest


def _ch_writer(settings: ClickHouseSettings, rows: int, batch_rows: int, seed: int, ready, go) -> None:
    data = flows(rows, seed, probe=f"w{seed}")
    store = ClickHouseStore(settings, create=False)
    ready.put(seed)
    go.get()  # start together
    for number, offset in enumerate(range(0, rows, batch_rows)):
        store.ingest_columns(f"w{seed}:{number}", "probe", data.slice(offset, batch_rows), None)
    store.close()


def ch_ingest(settings: ClickHouseSettings, rows: int, batch_rows: int, writers: int, seed: int) -> float:
    context = multiprocessing.get_context("spawn")
    ready, go = context.Queue(), context.Queue()
    share = rows // writers
    procs = [
        context.Process(target=_ch_writer, args=(settings, share, batch_rows, seed + w, ready, go))
        for w in range(writers)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:  # every writer has its rows and its connection before the clock starts
        ready.get()
    began = time.perf_counter()
    for _ in procs:
        go.put(1)
    for proc in procs:
        proc.join()
    wall = time.perf_counter() - began
    return share * writers / wall


def duck_ingest(path: Path, rows: int, batch_rows: int, seed: int) -> float:
    data = flows(rows, seed)
    store = Store(str(path))
    began = time.perf_counter()
    for number, offset in enumerate(range(0, rows, batch_rows)):
        store.ingest_columns(f"d:{number}", "probe", data.slice(offset, batch_rows), None)
    elapsed = time.perf_counter() - began
    store.close()
    return rows / elapsed


# ---------------------------------------------------------------- 2. host-hour Sankey


def bulk_load_clickhouse(http_url: str, database: str, table: pa.Table) -> None:
    """CSV over HTTP, parsed by the server: only for loading the query benchmark's rows."""
    for offset in range(0, table.num_rows, 1_000_000):
        part = table.slice(offset, 1_000_000)
        part = pa.table(
            {name: part.column(name).cast(pa.int64()) if name in ("flow_start", "flow_end") else part.column(name)
             for name in FLOW_FIELDS}
            | {"batch_id": pa.array([f"bulk:{offset}"] * part.num_rows),
               "row_no": pa.array(np.arange(part.num_rows, dtype=np.uint32))}
        )  # fmt: skip
        sink = io.BytesIO()
        pacsv.write_csv(part, sink, pacsv.WriteOptions(include_header=False))
        query = f"INSERT INTO {database}.flows ({', '.join(part.column_names)}) FORMAT CSV"
        request = urllib.request.Request(
            f"{http_url}/?query={urllib.parse.quote(query)}&insert_distributed_sync=1",
            data=sink.getvalue(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=600) as answer:
            answer.read()


def sankey_latency(store, cases: list[tuple[str, int]]) -> tuple[float, float, int]:
    timings, rows = [], 0
    store.query("host_peers", {"host": cases[0][0], "start": cases[0][1], "end": cases[0][1] + HOUR})  # warm
    for host, hour in cases:
        began = time.perf_counter()
        table = store.query(
            "host_peers", {"host": host, "start": hour, "end": hour + HOUR, "aggregate": "domain"}
        )
        timings.append((time.perf_counter() - began) * 1000)
        rows += table.num_rows
    timings.sort()
    return statistics.median(timings), timings[int(0.95 * (len(timings) - 1))], rows


def sizing(queries: int) -> int:
    """DuckDB skips by time (rows written in time order), so latency follows rows per hour, not history."""
    print("3. sizing: DuckDB host-hour Sankey latency by daily volume (one day generated per point)")
    with tempfile.TemporaryDirectory(prefix="bench-sizing-") as tmp:
        for per_day in (1_500_000, 6_000_000, 24_000_000):
            store = Store(str(Path(tmp) / f"d{per_day}.duckdb"))
            data = flows(per_day, 11, days=1)
            for offset in range(0, per_day, 1_000_000):
                store.ingest_columns(None, "bulk", data.slice(offset, 1_000_000), None, probe_id="bench")
            store.ingest_columns("names", "bulk", None, names(20_000, 8), probe_id="bench")
            rng = np.random.default_rng(5)
            cases = [
                (str(HOSTS[rng.integers(0, len(HOSTS))]), T0 + int(rng.integers(0, 24)) * HOUR)
                for _ in range(queries)
            ]
            median, p95, _rows = sankey_latency(store, cases)
            store.close()
            size = (Path(tmp) / f"d{per_day}.duckdb").stat().st_size / 1e9
            print(
                f"   {per_day:>12,} flows/day ({per_day // 24:>9,}/hour): median {median:7.1f} ms   p95 {p95:7.1f} ms"
                f"   file {size:.2f} GB/day"
            )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--ingest-rows", type=int, default=400_000)
    parser.add_argument("--batch-rows", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--clickhouse", help="an existing cluster (default: start two local nodes)")
    parser.add_argument(
        "--sizing",
        action="store_true",
        help="only: DuckDB host-hour latency at 1.5M, 6M and 24M flows per day",
    )
    args = parser.parse_args()
    if args.sizing:
        return sizing(args.queries)

    cluster = None
    if args.clickhouse:
        settings = ClickHouseSettings.from_url(args.clickhouse)
        http_url = f"http://{settings.hosts[0].rpartition(':')[0]}:8123"
    else:
        from tests.plugins.clickhouse import ClickHouseCluster

        cluster = ClickHouseCluster(Path(tempfile.mkdtemp(prefix="bench-ch-")))
        cluster.start(2)
        settings = ClickHouseSettings(hosts=tuple(cluster.hosts), database="bench")
        http_url = cluster.nodes[0].http_url
    try:
        with tempfile.TemporaryDirectory(prefix="bench-duck-") as tmp:
            base = ClickHouseStore(settings)
            version = base.server_version
            print(f"ClickHouse {version}, {len(settings.hosts)} shards; DuckDB store in {tmp}")
            print(
                f"\n1. ingest, {args.ingest_rows:,} rows in batches of {args.batch_rows:,} (store interface)"
            )
            duck_rate = duck_ingest(Path(tmp) / "ingest.duckdb", args.ingest_rows, args.batch_rows, 1)
            one = ch_ingest(settings, args.ingest_rows, args.batch_rows, 1, 10)
            two = ch_ingest(settings, args.ingest_rows, args.batch_rows, 2, 20)
            print(f"   {'DuckDB store, 1 writer':<34} {duck_rate:>12,.0f} rows/s   (reference)")
            print(f"   {'ClickHouse, 1 collector':<34} {one:>12,.0f} rows/s   ratio {one / duck_rate:.2f}")
            print(
                f"   {'ClickHouse, 2 collectors at once':<34} {two:>12,.0f} rows/s   ratio {two / duck_rate:.2f}"
            )
            for address in settings.hosts:  # start the query benchmark from an empty cluster
                client = base._new_client(address)
                client.execute(f"DROP DATABASE {settings.database}")
                client.disconnect()
            base.close()

            print(f"\n2. host-hour Sankey (host_peers by domain) on {args.rows:,} generated flows")
            data = flows(args.rows, 7)
            name_table = names(20_000, 8)
            began = time.perf_counter()
            duck = Store(str(Path(tmp) / "query.duckdb"))
            for offset in range(0, args.rows, 1_000_000):
                duck.ingest_columns(None, "bulk", data.slice(offset, 1_000_000), None, probe_id="bench")
            duck.ingest_columns("names", "bulk", None, name_table, probe_id="bench")
            duck_load = time.perf_counter() - began
            began = time.perf_counter()
            house = ClickHouseStore(settings)
            bulk_load_clickhouse(http_url, settings.database, data)
            house.ingest_columns("names", "bulk", None, name_table, probe_id="bench")
            house_load = time.perf_counter() - began
            assert house.counts()["flows"] == duck.counts()["flows"] == args.rows
            print(f"   load: DuckDB {duck_load:.1f} s, ClickHouse (CSV bulk) {house_load:.1f} s")
            rng = np.random.default_rng(3)
            cases = [
                (str(HOSTS[rng.integers(0, len(HOSTS))]), T0 + int(rng.integers(0, DAYS * 24)) * HOUR)
                for _ in range(args.queries)
            ]
            d_med, d_p95, d_rows = sankey_latency(duck, cases)
            c_med, c_p95, c_rows = sankey_latency(house, cases)
            same = all(
                duck.query("host_peers", {"host": h, "start": t, "end": t + HOUR}).to_pylist()
                == house.query("host_peers", {"host": h, "start": t, "end": t + HOUR}).to_pylist()
                for h, t in cases[:5]
            )
            print(f"   {'DuckDB store':<34} median {d_med:8.1f} ms   p95 {d_p95:8.1f} ms   (reference)")
            print(
                f"   {'ClickHouse, 2 shards':<34} median {c_med:8.1f} ms   p95 {c_p95:8.1f} ms   "
                f"ratio {c_med / d_med:.2f} / {c_p95 / d_p95:.2f}"
            )
            print(
                f"   answers equal on both: {same and d_rows == c_rows} ({d_rows} peer rows over {len(cases)} queries)"
            )
            disk = 0
            for address in settings.hosts:
                client = house._new_client(address)
                disk += client.execute(
                    "SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND database = %(db)s"
                    " AND table = 'flows_local'",
                    {"db": settings.database},
                )[0][0]
                client.disconnect()
            duck.close()
            duck_disk = (Path(tmp) / "query.duckdb").stat().st_size
            per_million = args.rows / 1e6
            print(
                f"   disk per million flows: DuckDB {duck_disk / per_million / 1e6:.1f} MB,"
                f" ClickHouse (all shards) {disk / per_million / 1e6:.1f} MB"
            )
            house.close()
    finally:
        if cluster is not None:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
