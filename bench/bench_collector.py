"""Collector throughput and query latency, ours beside a bare-DuckDB reference, in one run.

    .venv/bin/python bench/bench_collector.py [--batch-rows 10000,100000] [--senders 1,4] [--total 1000000]
                                              [--rows 100000000 | --no-query] [--db big.duckdb]

(--db keeps the generated query table: 100M rows take ~11 minutes to generate on a busy 2-core machine.)

1. Probe-batch ingest, rows/s, goal >= 1,000,000, for each batch size:
   - reference: DuckDB's own INSERT from Arrow, the same batches, one transaction each, no validation;
   - Store.ingest_columns in process (Arrow, atomic, idempotent, health/sources bookkeeping);
   - HTTP JSON batches and HTTP columnar batches (application/vnd.hostflow.columns+v1) to a real
     `python -m collector serve` over loopback, from 1 and several concurrent senders (keep-alive
     connections), each answer checked. Rows/s = rows found in the DuckDB file after the run / time
     from the first request to the last answer. Bodies are built before the clock starts.
   CPU s/1M: CPU seconds per million rows stored (the collector process for HTTP, this process
   otherwise), which a busy machine distorts less than rows/s. Also the probe's encoder
   (hostflow.records.make_columns_batch from Flow records, no pyarrow, then gzip level 1).
2. host_peers for one host-hour on a generated --rows table (DuckDB SQL generates it: 1000 hosts,
   30 days, sorted by time as the store writes it): median / p95 ms, goal <= 50 ms median.
   Reference: the bare SQL group-by for that host-hour (no classification, attribution, folding).
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collector.columns import FLOW_SCHEMA  # noqa: E402
from collector.store import Store  # noqa: E402
from hostflow.records import (  # noqa: E402
    COLUMNS_MEDIA_TYPE,
    FLOW_FIELDS,
    SCHEMA_VERSION,
    Flow,
    encode_columns,
    make_columns_batch,
)
from tests.plugins.common import free_port  # noqa: E402

S = 1_000_000
T0 = 1_700_000_000 * S
GOAL = 1_000_000


def arrow_flows(n: int, start: int = T0) -> pa.Table:
    i = np.arange(n, dtype=np.int64)
    hosts = np.array([f"10.0.{h // 250}.{h % 250 + 1}" for h in range(1000)], dtype=object)
    peers = np.array([f"198.51.{p // 250}.{p % 250 + 1}" for p in range(5000)], dtype=object)
    columns = {
        "probe_id": pa.array(np.full(n, "bench", dtype=object), pa.string()),
        "flow_start": pa.array(start + i * 1000, pa.int64()).cast(pa.timestamp("us")),
        "flow_end": pa.array(start + i * 1000 + 500, pa.int64()).cast(pa.timestamp("us")),
        "ip_version": pa.array(np.full(n, 4, np.uint8)),
        "protocol": pa.array(np.where(i % 3 == 0, 17, 6).astype(np.uint8)),
        "src_addr": pa.array(hosts[i % 1000], pa.string()),
        "src_port": pa.array((1024 + i % 60000).astype(np.uint16)),
        "dst_addr": pa.array(peers[(i * 7) % 5000], pa.string()),
        "dst_port": pa.array(np.where(i % 3 == 0, 53, 443).astype(np.uint16)),
        "packets": pa.array((1 + i % 50).astype(np.uint64)),
        "bytes": pa.array((60 + i % 1500).astype(np.uint64)),
    }
    for spec in FLOW_SCHEMA:
        if spec.name not in columns:
            if pa.types.is_string(spec.type):
                value = "src" if spec.name == "initiator" else ""
                columns[spec.name] = pa.array(np.full(n, value, dtype=object), pa.string())
            else:
                columns[spec.name] = pa.array(np.ones(n) if spec.name == "sampling" else np.zeros(n)).cast(
                    spec.type
                )
    return pa.Table.from_pydict({k: columns[k] for k in FLOW_FIELDS}, schema=FLOW_SCHEMA)


def python_columns(table: pa.Table) -> dict[str, list]:
    """The table as the probe holds it: Python values, times as µs integers."""
    out = {}
    for name in FLOW_FIELDS:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        out[name] = column.to_pylist()
    return out


def json_body(table: pa.Table, batch_id: str) -> bytes:
    columns = python_columns(table)
    flows = [list(row) for row in zip(*(columns[k] for k in FLOW_FIELDS), strict=True)]
    return orjson.dumps(
        {"schema_version": SCHEMA_VERSION, "batch_id": batch_id, "probe_id": "bench", "sent_at": None,
         "flow_fields": list(FLOW_FIELDS), "name_fields": [], "flows": flows, "names": [], "health": {}}
    )  # fmt: skip


def columns_body(table: pa.Table, batch_id: str) -> bytes:
    envelope = {"schema_version": SCHEMA_VERSION, "batch_id": batch_id, "probe_id": "bench", "sent_at": None}
    return encode_columns(envelope, python_columns(table), None)


def count_rows(path: Path) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM flows").fetchone()[0]
    finally:
        con.close()


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used: a figure a busy machine distorts less than wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_reference(work: Path, tables: list[pa.Table]) -> tuple[float, float]:
    path = work / f"ref{len(tables)}_{tables[0].num_rows}.duckdb"
    con = duckdb.connect(str(path))
    con.register("incoming", tables[0])
    con.execute("CREATE TABLE flows AS SELECT * FROM incoming LIMIT 0")
    cpu = time.process_time()
    started = time.perf_counter()
    for table in tables:
        con.execute("BEGIN TRANSACTION")
        con.register("incoming", table)
        con.execute("INSERT INTO flows SELECT * FROM incoming")
        con.execute("COMMIT")
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    con.close()
    rows = count_rows(path)
    return rows / elapsed, cpu / rows * 1e6


def bench_store(work: Path, tables: list[pa.Table]) -> tuple[float, float]:
    path = work / f"store{len(tables)}_{tables[0].num_rows}.duckdb"
    store = Store(str(path))
    cpu = time.process_time()
    started = time.perf_counter()
    for k, table in enumerate(tables):
        store.ingest_columns(f"bench:{k}", "probe", table, probe_id="bench")
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    store.close()
    rows = count_rows(path)
    return rows / elapsed, cpu / rows * 1e6


def bench_http(
    work: Path, bodies: list[bytes], media_type: str, senders: int, label: str
) -> tuple[float, float]:
    port = free_port()
    db = work / f"http-{label}.duckdb"
    log = open(work / f"http-{label}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "serve", "--db", str(db), "--http-port", str(port), "--netflow-port", "0",
         "--ipfix-port", "0", "--token", "bench-token=bench", "--max-body", str(1 << 30), "--log-level", "warning"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stderr=log,  # kept out of the table (DuckDB's nanobind prints "leaked ..." at exit)
    )  # fmt: skip
    failures: list[str] = []
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        headers = {"Authorization": "Bearer bench-token", "Content-Type": media_type}

        def send(share: list[bytes]) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            try:
                for body in share:
                    connection.request("POST", "/api/v1/batches", body, headers)
                    answer = connection.getresponse()
                    reply = answer.read()
                    if answer.status != 200 or json.loads(reply)["duplicate"]:
                        failures.append(f"{answer.status} {reply[:200]!r}")
            finally:
                connection.close()

        threads = [threading.Thread(target=send, args=(bodies[k::senders],)) for k in range(senders)]
        cpu = process_cpu(proc.pid)
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        cpu = process_cpu(proc.pid) - cpu
    finally:
        proc.terminate()
        proc.wait()
        log.close()
    if failures:
        raise SystemExit(f"{label}: {len(failures)} batch(es) failed, first: {failures[0]}")
    rows = count_rows(db)
    return rows / elapsed, cpu / rows * 1e6


def bench_encoder(rows: int) -> tuple[float, int]:
    flows = [
        Flow("pi-lab-1", T0 + i, T0 + i + 500, 4, 6 if i % 3 else 17, f"10.0.{i // 250 % 4}.{i % 250 + 1}",
             1024 + i % 60000, f"198.51.{i % 20}.{i % 250 + 1}", 443, 1 + i % 50, 60 + i % 1500, 0x1B, 0, 0,
             "aa:bb:cc:dd:ee:ff", "11:22:33:44:55:66", "fin", "src")
        for i in range(rows)
    ]  # fmt: skip
    started = time.perf_counter()
    body = make_columns_batch("pi-lab-1", "pi-lab-1:1", flows, [])
    packed = gzip.compress(body, compresslevel=1)
    return rows / (time.perf_counter() - started), len(packed)


def generate(store: Store, rows: int) -> None:
    """rows flows over 30 days, 1000 intranet hosts, 20000 internet peers, in time order."""
    span = 30 * 86_400 * S
    store._con.execute(
        f"""INSERT INTO flows SELECT 'bench', make_timestamp({T0} + i * {span // rows}),
        make_timestamp({T0} + i * {span // rows} + 2000000), 4, CASE WHEN i % 5 = 0 THEN 17 ELSE 6 END,
        '10.0.' || ((i % 1000) // 250) || '.' || (i % 250 + 1), 1024 + i % 60000,
        '198.51.' || ((hash(i) % 20000) // 250) || '.' || (hash(i) % 250 + 1),
        CASE WHEN i % 5 = 0 THEN 53 ELSE 443 END, 1 + i % 40, 60 + i % 9000, 24, 0, 0, '', '', 'fin', 'src', 1
        FROM range({rows}) t(i)"""
    )
    store._con.execute(
        f"""INSERT INTO names SELECT 'bench', make_timestamp({T0} + i * 60000000),
        '198.51.' || ((i % 20000) // 250) || '.' || (i % 250 + 1), 'peer' || (i % 20000) || '.example.com', 'dns',
        '10.0.0.1', 3600, [], 'A', 0 FROM range(43200) t(i)"""
    )
    store.checkpoint()


def bench_query(work: Path, rows: int, repeats: int, db: str | None) -> tuple[list[float], list[float]]:
    store = Store(db or str(work / "big.duckdb"))
    have = store.counts()["flows"]
    if have and have != rows:
        raise SystemExit(f"{db} holds {have:,} flows, not --rows {rows:,}: use another --db")
    if have:
        print(f"reusing {have:,} generated rows in {db}", flush=True)
    else:
        started = time.perf_counter()
        generate(store, rows)
        print(f"generated {rows:,} rows in {time.perf_counter() - started:.1f} s", flush=True)
    rng = np.random.default_rng(1)
    ours, reference = [], []
    for _ in range(repeats):
        host = f"10.0.{rng.integers(0, 4)}.{rng.integers(1, 251)}"
        hour = T0 + int(rng.integers(1, 29 * 24)) * 3600 * S
        params = {"host": host, "start": hour, "end": hour + 3600 * S, "aggregate": "fqdn"}
        began = time.perf_counter()
        table = store.query("host_peers", params)
        ours.append((time.perf_counter() - began) * 1000)
        assert table.num_rows > 0
        began = time.perf_counter()
        store.sql(
            "SELECT dst_addr, dst_port, sum(bytes)::BIGINT, count(*) FROM flows WHERE flow_start >= make_timestamp(?)"
            " AND flow_start < make_timestamp(?) AND (src_addr = ? OR dst_addr = ?) GROUP BY ALL",
            [hour, hour + 3600 * S, host, host],
        )
        reference.append((time.perf_counter() - began) * 1000)
    store.close()
    return ours, reference


def row(label: str, ours: tuple[float, float], reference: tuple[float, float]) -> None:
    (rate, cpu), (ref_rate, ref_cpu) = ours, reference
    print(f"{label:52} {rate:12,.0f} {ref_rate:14,.0f} {rate / ref_rate:6.2f} {rate / GOAL:8.2f} {cpu:9.2f} "
          f"{ref_cpu:9.2f}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-rows", default="10000,100000", help="batch sizes (comma-separated)")
    parser.add_argument("--senders", default="1,4", help="concurrent HTTP senders (comma-separated)")
    parser.add_argument("--total", type=int, default=1_000_000, help="rows sent per measurement")
    parser.add_argument("--encoder-rows", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=100_000_000, help="rows of the generated query table")
    parser.add_argument("--no-query", action="store_true", help="skip the host_peers latency part")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--dir", help="work directory (default: a temporary one; needs ~10 GB for 100M rows)")
    parser.add_argument("--db", help="keep the generated query table in this file and reuse it on later runs")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        rate, size = bench_encoder(args.encoder_rows)
        print(f"probe encoder (Flow records → gzip'd columnar body): {rate:,.0f} rows/s, {size / args.encoder_rows:.1f} "
              "bytes/row", flush=True)  # fmt: skip
        print(
            f"{'rows/s of probe-batch ingest':52} {'hostflow':>12} {'DuckDB INSERT':>14} {'ratio':>6} {'of goal':>8} "
            f"{'CPU s/1M':>9} {'ref CPU':>9}"
        )
        for batch_rows in (int(v) for v in args.batch_rows.split(",")):
            count = max(1, args.total // batch_rows)
            tables = [arrow_flows(batch_rows, T0 + k * batch_rows * 1000) for k in range(count)]
            reference = bench_reference(work, tables)
            row(f"DuckDB INSERT from Arrow, {batch_rows:,}-row batches", reference, reference)
            row(f"Store.ingest_columns, {batch_rows:,}-row batches", bench_store(work, tables), reference)
            for name, media_type, build in (
                ("JSON", "application/json", json_body),
                ("columnar", COLUMNS_MEDIA_TYPE, columns_body),
            ):
                bodies = [build(t, f"bench:{k}") for k, t in enumerate(tables)]
                for senders in (int(v) for v in args.senders.split(",")):
                    label = f"HTTP {name}, {batch_rows:,}-row batches, {senders} sender(s)"
                    ours = bench_http(work, bodies, media_type, senders, f"{name}{batch_rows}x{senders}")
                    row(label, ours, reference)
                del bodies
        print(f"load average {os.getloadavg()[0]:.1f} at the end of the ingest part", flush=True)
        if args.no_query:
            return
        ours_ms, ref_ms = bench_query(work, args.rows, args.repeats, args.db)
        for label, pick in (("median", statistics.median), ("p95", lambda v: float(np.percentile(v, 95)))):
            a, b = pick(ours_ms), pick(ref_ms)
            print(
                f"{f'host_peers host-hour {label} ms, {args.rows:,} rows':52} {a:14.1f} {b:14.1f} {a / b:7.2f}"
            )


if __name__ == "__main__":
    main()
