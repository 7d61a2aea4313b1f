"""The `import` and `export` subcommands of `python -m collector` (register them with ``register``).

Exit codes: 0 done; 1 a file or the store failed (one line on stderr says which file and record);
2 bad usage. Standard output carries data only (export to ``-``); messages go to standard error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from collector import fileexport, fileimport
from collector.fileexport import ExportFailed
from collector.fileimport import ImportFailed

log = logging.getLogger("collector.filecli")

IMPORT_EXAMPLES = """\
examples:
  python -m collector import capture.jsonl --db var/hostflow.duckdb
  python -m collector import flows.csv flows.parquet          (their .names.* files come along)
  nfdump -r nfcapd.202401011200 -o csv > nf.csv && python -m collector import nf.csv
  python -m collector import router-export.pcap               (NetFlow v5/v9/IPFIX export packets)
  python -m collector import template.pcap data.pcap          (templates carry over between files)

Each file is one transaction, identified by its SHA-256: importing a file again stores nothing.
When a collector runs on the database, the records go through its API (admin token needed:
--admin-token or HOSTFLOW_ADMIN_TOKEN). Exit codes: 0 done, 1 a file failed (nothing of that file
is stored; files before it are), 2 bad usage."""

EXPORT_EXAMPLES = """\
examples:
  python -m collector export --db var/hostflow.duckdb --format csv --output flows.csv
  python -m collector export --from 2024-05-01T00:00Z --to 2024-05-02T00:00Z --host 192.168.1.20
  python -m collector export --format parquet --output archive/    (date=YYYY-MM-DD/hour=HH/part-N.parquet)
  python -m collector export --collector http://127.0.0.1:8470 --output - | head
  duckdb -c "SELECT sum(bytes) FROM read_parquet('archive/**/*.parquet', hive_partitioning=true)"

Columns: the flow fields (probe_id is the probe or nf:<exporter>:<domain>; sampling is the rate,
counts are already multiplied by it) plus src_name/dst_name and their sources. Exit codes: 0 done,
1 the export failed, 2 bad usage."""


def _default_db(args: argparse.Namespace) -> str:
    if args.db:
        return args.db
    from collector import config as collector_config

    try:
        return collector_config.load(argparse.Namespace(config=getattr(args, "config", None))).db
    except collector_config.ConfigError as exc:
        raise ImportFailed(f"configuration: {exc}") from None


def _admin_token(args: argparse.Namespace) -> str:
    if args.admin_token:
        return args.admin_token
    if os.environ.get("HOSTFLOW_ADMIN_TOKEN"):
        return os.environ["HOSTFLOW_ADMIN_TOKEN"]
    if getattr(args, "config", None):
        from collector import config as collector_config

        try:
            return collector_config.load(argparse.Namespace(config=args.config)).admin_token
        except collector_config.ConfigError:
            return ""
    return ""


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Import files into the collector's database: hostflow JSON lines / CSV / Parquet, "
        "`nfdump -o csv` output, or pcap/pcapng files of NetFlow v5/v9/IPFIX export packets."
    )
    parser.epilog = IMPORT_EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--db", help="DuckDB database (default: the collector config's db)")
    parser.add_argument("--config", help="collector TOML config (for db and admin token)")
    parser.add_argument("--admin-token", help="admin token of a running collector (or HOSTFLOW_ADMIN_TOKEN)")
    parser.add_argument("--probe-id", help="set this probe_id on every imported record")
    parser.add_argument(
        "--nfdump-tz", default="UTC", help="time zone nfdump ran in (it prints local time); default UTC"
    )
    parser.add_argument("--port", type=int, help="captures: only UDP datagrams to this port")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Export stored flows, each with the names attributed to its addresses."
    parser.epilog = EXPORT_EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--db", help="DuckDB database (default: the collector config's db)")
    source.add_argument("--collector", metavar="URL", help="a running collector's base URL")
    parser.add_argument("--config", help="collector TOML config (for db)")
    parser.add_argument("--query-token", help="query token of the collector, if it needs one")
    parser.add_argument("--from", dest="start", metavar="T", help="flows starting at or after T (ISO or µs)")
    parser.add_argument("--to", dest="end", metavar="T", help="flows starting before T")
    parser.add_argument("--host", metavar="ADDR", help="only flows from or to this address")
    parser.add_argument("--probe-id", help="only this probe's (or exporter's) flows")
    parser.add_argument(
        "--format", choices=fileexport.FORMATS, help="default: from --output's suffix, else jsonl"
    )
    parser.add_argument("--output", default="-", help="file, directory (parquet) or - for stdout (default)")


IMPORT_HELP = "store flow/name files, nfdump CSV, or NetFlow/IPFIX export captures"
EXPORT_HELP = "write stored flows with their names as JSON lines, CSV or hive-partitioned Parquet"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _describe_skips(skipped: dict[str, int]) -> str:
    return "; ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items()))


def run_import(args: argparse.Namespace) -> int:
    try:
        return _run_import(args)
    except ImportFailed as exc:
        _say(f"error: {exc}")
        return 1


def _run_import(args: argparse.Namespace) -> int:
    db = _default_db(args)
    zone = fileimport.parse_zone(args.nfdump_tz)
    url = fileimport.live_collector(db)
    token = ""
    if url:
        token = _admin_token(args)
        if not token:
            raise ImportFailed(
                f"a collector at {url} owns {db}: give its admin token (--admin-token or HOSTFLOW_ADMIN_TOKEN)"
            )
        _say(f"a collector runs on {db}: sending the records to {url}/api/v1/import")
    store = None
    decoder = None
    try:
        for name in args.files:
            path = Path(name)
            if not path.is_file():
                raise ImportFailed(f"{path}: no such file")
            if decoder is None and fileimport.fileio.sniff_kind(path) in ("pcap", "pcapng"):
                decoder = fileimport.new_decoder()
            loaded = fileimport.load_file(
                path, decoder=decoder, nfdump_tz=zone, probe_id=args.probe_id, port=args.port
            )
            skipped = f" (skipped: {_describe_skips(loaded.skipped)})" if loaded.skipped else ""
            if not loaded.flows and not loaded.names:
                _say(f"{path}: no records found, nothing stored{skipped}")
                continue
            if url:
                answer = fileimport.post_import(url, token, loaded)
                flows, names, duplicate = (
                    answer.get("flows", 0),
                    answer.get("names", 0),
                    answer.get("duplicate"),
                )
            else:
                if store is None:
                    store = _open_store(db)
                result = fileimport.store_loaded(store, loaded)
                flows, names, duplicate = result.flows, result.names, result.duplicate
            if duplicate:
                _say(f"{path}: already imported ({loaded.batch_id[:19]}…), nothing stored{skipped}")
            else:
                _say(f"{path}: {loaded.kind}, stored {flows} flows and {names} names{skipped}")
    finally:
        if store is not None:
            store.close()
    return 0


def _open_store(db: str) -> Any:
    from collector.store import Store

    try:
        return Store(db)
    except RuntimeError as exc:
        raise ImportFailed(f"{db}: {exc}") from None
    except Exception as exc:  # duckdb raises its own error types for a file that is not a database
        raise ImportFailed(f"{db}: cannot open the database: {exc}") from None


def run_export(args: argparse.Namespace) -> int:
    try:
        return _run_export(args)
    except (ExportFailed, ImportFailed) as exc:
        _say(f"error: {exc}")
        return 1
    except BrokenPipeError:
        # the reader (head, less) went away: not an error of ours
        sys.stderr.close()
        return 0


def _run_export(args: argparse.Namespace) -> int:
    start = fileexport.parse_time(args.start, "--from")
    end = fileexport.parse_time(args.end, "--to")
    fmt = fileexport.format_for(args.output, args.format)
    url = args.collector
    db = None
    if not url:
        db = _default_db(args)
        if not Path(db).is_file():
            raise ExportFailed(f"{db}: no such database (give --db PATH or --collector URL)")
        url = fileimport.live_collector(db)
        if url:
            _say(f"a collector runs on {db}: exporting through {url}")
    if url:
        rows = fileexport.remote_export_rows(url, start, end, args.host, args.probe_id, args.query_token)
        count = fileexport.write_export(rows, fmt, args.output)
    else:
        from collector.store import Store

        try:
            store = Store(str(db), read_only=True)
        except RuntimeError as exc:
            raise ExportFailed(f"{db}: {exc}") from None
        try:
            rows = fileexport.export_rows(store, start, end, args.host, args.probe_id)
            count = fileexport.write_export(rows, fmt, args.output)
        finally:
            store.close()
    _say(f"exported {count} flows ({fmt}) to {'standard output' if args.output == '-' else args.output}")
    return 0
