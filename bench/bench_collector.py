"""Collector throughput and query latency, ours beside a bare-DuckDB reference, in one run.

    .venv/bin/python bench/bench_collector.py [--rows 100000000] [--db big.duckdb] [--batch-rows 5000,100000]

(--db keeps the generated table: 100M rows take ~11 minutes to generate on a busy 2-core machine.)

1. Probe batches through the real daemon's HTTP API (JSON, validated, one transaction each): rows/s,
   for 5,000- and 100,000-row batches.
   Reference: the same rows inserted into DuckDB from Arrow with no validation or bookkeeping.
2. Store.ingest_columns (Arrow, atomic, idempotent): rows/s, goal ≥ 1,000,000. Same reference.
3. host_peers for one host-hour on a generated --rows table (DuckDB SQL generates it: 1000 hosts,
   30 days, sorted by time as the store writes it): median / p95 ms, goal ≤ 50 ms median.
   Reference: the bare SQL group-by for that host-hour (no classification, attribution, folding).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
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
from hostflow.records import FLOW_FIELDS, SCHEMA_VERSION  # noqa: E402
from tests.plugins.common import free_port  # noqa: E402

S = 1_000_000
T0 = 1_700_000_000 * S


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


def batch_body(table: pa.Table, batch_id: str) -> bytes:
    rows = table.to_pylist()
    flows = [[row[k] if k not in ("flow_start", "flow_end") else None for k in FLOW_FIELDS] for row in rows]
    starts = table.column("flow_start").cast(pa.int64()).to_pylist()
    ends = table.column("flow_end").cast(pa.int64()).to_pylist()
    for row, start, end in zip(flows, starts, ends, strict=True):
        row[1], row[2] = start, end
    return orjson.dumps(
        {"schema_version": SCHEMA_VERSION, "batch_id": batch_id, "probe_id": "bench", "sent_at": None,
         "flow_fields": list(FLOW_FIELDS), "name_fields": [], "flows": flows, "names": [], "health": {}}
    )  # fmt: skip


def reference_insert(path: str, table: pa.Table) -> float:
    con = duckdb.connect(path)
    con.register("incoming", table)
    con.execute("CREATE TABLE flows AS SELECT * FROM incoming LIMIT 0")
    started = time.perf_counter()
    con.execute("INSERT INTO flows SELECT * FROM incoming")
    elapsed = time.perf_counter() - started
    con.close()
    return elapsed


def bench_http(work: Path, batch_rows: int, batches: int) -> tuple[float, float]:
    tables = [arrow_flows(batch_rows, T0 + k * batch_rows * 1000) for k in range(batches)]
    bodies = [batch_body(t, f"bench:{k}") for k, t in enumerate(tables)]
    port = free_port()
    db = work / f"http{batch_rows}.duckdb"
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "serve", "--db", str(db), "--http-port", str(port), "--netflow-port", "0",
         "--ipfix-port", "0", "--token", "bench-token=bench", "--max-body", str(1 << 30), "--log-level", "warning"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        started = time.perf_counter()
        for body in bodies:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/v1/batches", data=body,
                headers={"Authorization": "Bearer bench-token", "Content-Type": "application/json"},
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=600) as answer:
                reply = json.loads(answer.read())
                assert reply["flows"] == batch_rows, reply
        ours = batch_rows * batches / (time.perf_counter() - started)
    finally:
        proc.terminate()
        proc.wait()
    reference = (
        batch_rows
        * batches
        / sum(reference_insert(str(work / f"ref{batch_rows}_{k}.duckdb"), t) for k, t in enumerate(tables))
    )
    return ours, reference


def bench_columns(work: Path, rows: int) -> tuple[float, float]:
    table = arrow_flows(rows)
    store = Store(str(work / "columns.duckdb"))
    started = time.perf_counter()
    result = store.ingest_columns("bench:columns", "bench", table)
    ours = rows / (time.perf_counter() - started)
    store.close()
    assert result.flows == rows
    return ours, rows / reference_insert(str(work / "ref_columns.duckdb"), table)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000_000, help="rows of the generated query table")
    parser.add_argument(
        "--batch-rows",
        default="5000,100000",
        help="HTTP batch sizes (comma-separated), each sent --batch-total rows",
    )
    parser.add_argument("--batch-total", type=int, default=500_000)
    parser.add_argument("--column-rows", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--dir", help="work directory (default: a temporary one; needs ~10 GB for 100M rows)")
    parser.add_argument("--db", help="keep the generated query table in this file and reuse it on later runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        print(f"{'measure':44} {'hostflow':>14} {'bare DuckDB':>14} {'ratio':>7}")
        for batch_rows in (int(v) for v in args.batch_rows.split(",")):
            ours, ref = bench_http(work, batch_rows, max(1, args.batch_total // batch_rows))
            label = f"HTTP ingest, {batch_rows:,}-row batches, rows/s"
            print(f"{label:44} {ours:14,.0f} {ref:14,.0f} {ours / ref:7.2f}", flush=True)
        ours, ref = bench_columns(work, args.column_rows)
        print(
            f"{'Store.ingest_columns, rows/s (goal 1M)':44} {ours:14,.0f} {ref:14,.0f} {ours / ref:7.2f}",
            flush=True,
        )
        ours_ms, ref_ms = bench_query(work, args.rows, args.repeats, args.db)
        for label, pick in (("median", statistics.median), ("p95", lambda v: float(np.percentile(v, 95)))):
            a, b = pick(ours_ms), pick(ref_ms)
            print(
                f"{f'host_peers host-hour {label} ms, {args.rows:,} rows':44} {a:14.1f} {b:14.1f} {a / b:7.2f}"
            )


if __name__ == "__main__":
    main()
