"""`python -m collector migrate-to-clickhouse`: copy a DuckDB history into a ClickHouse cluster.

    python -m collector migrate-to-clickhouse --db var/hostflow.duckdb \\
        --clickhouse clickhouse://ch1:9000,ch2:9000/hostflow [--clickhouse-password-file F]

Stop the collector first (it owns the DuckDB file). The copy goes hour by hour: an hour whose
rows and byte sum in the cluster already equal the file's is skipped, so an interrupted run is
resumed by running the same command again. Rows are copied under identities fixed by the file's
content (batch id ``migrate:<tag>:…`` and row number, in a total order of every column), so an
hour copied twice collapses to one copy like a resent probe batch. At the end every hour is
checked — flows: row count and byte sum; names: row count and name-byte sum — and any
difference is listed (exit 1). Batch ids already in the file are copied as markers, so a probe
resending an old batch to the new backend is still answered "duplicate"; per-source counters
and the probes' latest health come along too.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collector.clickhouse import HOUR_US, ClickHouseConfigError, ClickHouseSettings, ClickHouseStore
from collector.store import Store
from hostflow.records import FLOW_FIELDS, NAME_FIELDS

log = logging.getLogger("collector.ch_migrate")
DEFAULT_CHUNK_ROWS = 200_000


def _tag(db: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(db).stem) or "duckdb"


def duck_hour_totals(duck: Store, kind: str) -> dict[int, tuple[int, int]]:
    """hour (µs) → (rows, checksum): flows sum bytes, names sum the bytes of their names."""
    time_col, checksum = ("flow_start", "sum(bytes)") if kind == "flows" else ("ts", "sum(strlen(name))")
    table = duck.sql(
        f"SELECT (epoch_us({time_col}) // {HOUR_US}) * {HOUR_US} AS hour, count(*)::BIGINT AS n,"
        f" {checksum}::BIGINT AS total FROM {kind} GROUP BY hour"
    )
    return {int(r["hour"]): (int(r["n"]), int(r["total"] or 0)) for r in table.to_pylist()}


def house_hour_totals(house: ClickHouseStore, kind: str, prefix: str) -> dict[int, tuple[int, int]]:
    time_col, checksum = ("flow_start", "sum(bytes)") if kind == "flows" else ("ts", "sum(length(name))")
    rows = house.execute(
        f"SELECT intDiv({time_col}, {HOUR_US}) * {HOUR_US} AS hour, count(), {checksum}"
        f" FROM {house.db}.{kind} FINAL WHERE startsWith(batch_id, %(prefix)s) GROUP BY hour",
        {"prefix": prefix},
    )
    return {int(hour): (int(count), int(total)) for hour, count, total in rows}


def copy_hour(duck: Store, house: ClickHouseStore, kind: str, hour: int, prefix: str, chunk_rows: int) -> int:
    fields = FLOW_FIELDS if kind == "flows" else NAME_FIELDS
    time_col = "flow_start" if kind == "flows" else "ts"
    # a total order over every column: the same file gives the same row numbers on every run
    order = ", ".join(f if f != "cname_chain" else "array_to_string(cname_chain, ' > ')" for f in fields)
    table = duck.sql(
        f"SELECT {', '.join(fields)} FROM {kind} WHERE {time_col} >= make_timestamp(?)"
        f" AND {time_col} < make_timestamp(?) ORDER BY {order}",
        [hour, hour + HOUR_US],
    )
    # one identity per row, (hour, position in the hour), whatever the chunk size: a rerun after a
    # kill mid-hour (even with another --chunk-rows) writes the same identities, which collapse
    for offset in range(0, table.num_rows, chunk_rows):
        house.insert_rows(kind, table.slice(offset, chunk_rows), f"{prefix}{hour}", first_row=offset)
    return table.num_rows


def copy_bookkeeping(duck: Store, house: ClickHouseStore, tag: str) -> tuple[int, int]:
    """Batch ids (as duplicate markers), per-source counters, probe health."""
    batches = duck.sql("SELECT batch_id, probe_id, source, epoch_us(received_at) AS received_at FROM batches")
    markers = [
        (
            row["batch_id"],
            row["probe_id"] or "",
            row["source"] or "",
            0,
            0,
            0,
            int(row["received_at"] or 0),
            1,
        )
        for row in batches.to_pylist()
    ]
    sources = duck.sql(
        "SELECT probe_id, source, epoch_us(last_seen) AS last_seen, batches, flows, names FROM sources"
    ).to_pylist()
    for row in sources:
        markers.append(
            (
                f"migrate:{tag}:sources:{row['probe_id']}:{row['source']}",
                row["probe_id"] or "",
                row["source"] or "",
                int(row["batches"] or 0),
                int(row["flows"] or 0),
                int(row["names"] or 0),
                int(row["last_seen"] or 0),
                0,
            )
        )
    for offset in range(0, len(markers), 100_000):
        house.insert_batch_markers(markers[offset : offset + 100_000])
    health = duck.sql(
        "SELECT probe_id, source, epoch_us(ts) AS ts, epoch_us(received_at) AS received_at, raw FROM probe_health"
    ).to_pylist()
    rows = [
        (h["probe_id"] or "", h["source"] or "", int(h["ts"] or 0), int(h["received_at"] or 0), h["raw"] or "{}",
         f"migrate:{tag}")
        for h in health
    ]  # fmt: skip
    for offset in range(0, len(rows), 100_000):
        house.insert_health_rows(rows[offset : offset + 100_000])
    return len(markers), len(rows)


def migrate(
    db: str,
    settings: ClickHouseSettings,
    *,
    tag: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    open_store: Callable[[ClickHouseSettings], ClickHouseStore] = ClickHouseStore,
) -> dict[str, Any]:
    """Copy (or finish copying) ``db`` into the cluster; returns a summary with the check's result."""
    tag = tag or _tag(db)
    duck = Store(db, read_only=True)
    house = open_store(settings)
    summary: dict[str, Any] = {"tag": tag, "copied": {}, "skipped": {}, "rows": {}, "mismatches": []}
    try:
        for kind in ("flows", "names"):
            prefix = f"migrate:{tag}:{kind}:"
            want = duck_hour_totals(duck, kind)
            have = house_hour_totals(house, kind, prefix)
            copied = skipped = rows = 0
            for hour in sorted(want):
                if have.get(hour) == want[hour]:
                    skipped += 1
                    continue
                began = time.monotonic()
                rows += copy_hour(duck, house, kind, hour, prefix, chunk_rows)
                copied += 1
                log.info(
                    "event=hour_copied kind=%s hour=%s rows=%d seconds=%.2f",
                    kind, time.strftime("%Y-%m-%dT%H:00Z", time.gmtime(hour // 1_000_000)), want[hour][0],
                    time.monotonic() - began,
                )  # fmt: skip
            summary["copied"][kind], summary["skipped"][kind], summary["rows"][kind] = copied, skipped, rows
        summary["markers"], summary["health"] = copy_bookkeeping(duck, house, tag)
        for kind in ("flows", "names"):
            want = duck_hour_totals(duck, kind)
            have = house_hour_totals(house, kind, f"migrate:{tag}:{kind}:")
            for hour in sorted(set(want) | set(have)):
                if want.get(hour) != have.get(hour):
                    summary["mismatches"].append((kind, hour, want.get(hour), have.get(hour)))
            summary[f"{kind}_total"] = sum(n for n, _ in want.values())
    finally:
        house.close()
        duck.close()
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="the DuckDB file (its collector must be stopped)")
    parser.add_argument(
        "--clickhouse",
        required=True,
        metavar="URL",
        help="clickhouse://[user@]host:port[,host:port…]/database",
    )
    parser.add_argument(
        "--clickhouse-password-file", metavar="FILE", help="the ClickHouse password, read from FILE"
    )
    parser.add_argument("--tag", help="names this copy in the cluster (default: the file's stem)")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="rows per insert")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="ts=%(asctime)s level=%(levelname)s %(message)s")
    # the driver logs a traceback per failed connection; the operator gets our one line instead
    logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
    if not Path(args.db).is_file():
        print(f"migrate-to-clickhouse: {args.db}: no such DuckDB file", file=sys.stderr)
        return 2
    try:
        password = None
        if args.clickhouse_password_file:
            password = Path(args.clickhouse_password_file).read_text().strip()
        settings = ClickHouseSettings.from_url(args.clickhouse, password)
    except (ClickHouseConfigError, OSError) as exc:
        print(f"migrate-to-clickhouse: {exc}", file=sys.stderr)
        return 2
    try:
        summary = migrate(args.db, settings, tag=args.tag, chunk_rows=max(1, args.chunk_rows))
    except Exception as exc:  # one line for the operator; the log has the context
        print(f"migrate-to-clickhouse: {type(exc).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    for kind in ("flows", "names"):
        print(
            f"{kind}: {summary[f'{kind}_total']} rows in the file; {summary['copied'][kind]} hours copied"
            f" ({summary['rows'][kind]} rows), {summary['skipped'][kind]} hours already there"
        )
    print(f"batch markers and source counters: {summary['markers']}; health records: {summary['health']}")
    if summary["mismatches"]:
        for kind, hour, want, have in summary["mismatches"]:
            stamp = time.strftime("%Y-%m-%dT%H:00Z", time.gmtime(hour // 1_000_000))
            print(f"MISMATCH {kind} {stamp}: file (rows, sum) {want}, cluster {have}")
        print("check failed: run the command again; if it persists, the file changed between runs")
        return 1
    print("check: every hour's row count and byte sum equal in the file and the cluster")
    return 0


def register_cli(register_subcommand) -> None:
    register_subcommand(
        "migrate-to-clickhouse",
        "copy a DuckDB history into a ClickHouse cluster (resumable)",
        add_arguments,
        run,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m collector.ch_migrate", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
