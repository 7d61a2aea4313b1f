"""`python -m collector export`: stored flows, each with the names attributed to its two addresses.

Rows are the contract's flow fields (``probe_id`` is the probe, or ``nf:<exporter>:<domain>`` for
NetFlow; ``sampling`` the exporter's rate, counts already multiplied by it) plus ``EXTRA_TYPES``:
the name of each side as the other side would have known it (collector/attribution.py rules).

Formats: JSON lines (``"kind": "flow"``, ISO times; our importer reads them back), CSV (one table,
header = the columns), Parquet (hive-partitioned ``DIR/date=YYYY-MM-DD/hour=HH/part-N.parquet`` by
the UTC hour of ``flow_start``; DuckDB, Spark and pyarrow read the directory as one table).

From a database file the export reads DuckDB directly; from a running collector (``--collector
URL``, or a live ``<db>.collector.json``) it asks the query API: the ``export_flows`` named query
when the collector offers it, else the ``flows`` query (every flow once, under its host: the peer
side's name is filled, as that host knew it), else ``hosts`` + ``host_flows`` per host (the "sent"
side of each host, so every flow comes once). The query API paths cannot see tos, vlan and MAC
columns (left empty), nor the host side's own name.
"""

from __future__ import annotations

import csv
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from hostflow import fileio
from hostflow.records import FLOW_FIELDS, FLOW_TIME_FIELDS, FLOW_TYPES, to_us, us_to_iso

EXTRA_TYPES: dict[str, str] = {
    "src_name": "VARCHAR",
    "src_name_source": "VARCHAR",
    "dst_name": "VARCHAR",
    "dst_name_source": "VARCHAR",
}
EXPORT_TYPES: dict[str, str] = {**FLOW_TYPES, **EXTRA_TYPES}
EXPORT_COLUMNS: tuple[str, ...] = tuple(EXPORT_TYPES)
FORMATS = ("jsonl", "csv", "parquet")
CHUNK_US = 6 * 3600 * 1_000_000  # flows are read and attributed one time slice at a time
FAR_FUTURE = 253_402_300_799_999_999


class ExportFailed(Exception):
    """One line for the user: what went wrong and what to do."""


# ---------------------------------------------------------------- rows from a database file


def export_rows(
    store: Any,
    start: int | None = None,
    end: int | None = None,
    host: str | None = None,
    probe_id: str | None = None,
    rules: Any = None,
) -> Iterator[dict[str, Any]]:
    """Flows with ``flow_start`` in [start, end), oldest first, with both sides' attributed names."""
    from collector.attribution import Attributor, Rules

    rules = rules or Rules()
    bounds = store.sql("SELECT epoch_us(min(flow_start)) AS lo, epoch_us(max(flow_start)) AS hi FROM flows")
    lo, hi = bounds.column("lo")[0].as_py(), bounds.column("hi")[0].as_py()
    if lo is None:
        return
    lo = max(lo, start) if start is not None else lo
    hi = min(hi + 1, end) if end is not None else hi + 1
    times = ", ".join(f"epoch_us({f}) AS {f}" if f in FLOW_TIME_FIELDS else f for f in FLOW_FIELDS)
    where = "flow_start >= make_timestamp(?) AND flow_start < make_timestamp(?)"
    extra: list[Any] = []
    if host:
        where += " AND (src_addr = ? OR dst_addr = ?)"
        extra += [host, host]
    if probe_id:
        where += " AND probe_id = ?"
        extra.append(probe_id)
    order = ", ".join(("flow_start", "flow_end", "src_addr", "dst_addr", "src_port", "dst_port", "protocol"))
    for slice_start in range(lo, hi, CHUNK_US):
        slice_end = min(slice_start + CHUNK_US, hi)
        rows = store.sql(
            f"SELECT {times} FROM flows WHERE {where} ORDER BY {order}", [slice_start, slice_end, *extra]
        ).to_pylist()
        if not rows:
            continue
        addrs = {r["src_addr"] for r in rows} | {r["dst_addr"] for r in rows}
        last = max(r["flow_end"] for r in rows) + 1
        names = store.name_candidates(sorted(addrs), max(0, slice_start - rules.lookback_us()), last)
        attributor = Attributor(names, rules)
        for row in rows:
            for side, other in (("src", "dst"), ("dst", "src")):
                hit = attributor.lookup(
                    row[f"{side}_addr"], row[f"{other}_addr"], row["flow_start"], row["flow_end"]
                )
                row[f"{side}_name"] = hit.name if hit else ""
                row[f"{side}_name_source"] = hit.source if hit else ""
            yield {column: row[column] for column in EXPORT_COLUMNS}


# ---------------------------------------------------------------- rows from a running collector


def _post_query(url: str, name: str, params: dict[str, Any], token: str | None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"{url}/api/v1/query/{name}", data=json.dumps(params).encode(), method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        raise ExportFailed(
            f"collector at {url}: query {name} failed ({exc.code}): {exc.read()[:300]!r}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ExportFailed(f"collector at {url} did not answer: {exc}") from None


def _records(answer: dict[str, Any]) -> list[dict[str, Any]]:
    columns = answer.get("columns") or []
    return [dict(zip(columns, row, strict=True)) for row in answer.get("rows") or []]


def _offered_queries(url: str, token: str | None) -> set[str]:
    request = urllib.request.Request(
        f"{url}/api/v1/queries", headers={"Authorization": f"Bearer {token}"} if token else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            listed = json.loads(answer.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ExportFailed(f"collector at {url} did not answer: {exc}") from None
    if isinstance(listed, dict) and isinstance(listed.get("queries"), list | dict):
        listed = listed["queries"]
    if isinstance(listed, dict):
        return set(listed)
    return {q["name"] if isinstance(q, dict) else str(q) for q in listed}


def remote_export_rows(
    url: str,
    start: int | None = None,
    end: int | None = None,
    host: str | None = None,
    probe_id: str | None = None,
    token: str | None = None,
) -> Iterator[dict[str, Any]]:
    url = url.rstrip("/")
    window: dict[str, Any] = {
        "start": start if start is not None else 0,
        "end": end if end is not None else FAR_FUTURE,
    }
    if probe_id:
        window["probe_id"] = probe_id
    offered = _offered_queries(url, token)
    if "export_flows" in offered:
        params = dict(window, **({"host": host} if host else {}))
        for row in _records(_post_query(url, "export_flows", params, token)):
            yield {column: row.get(column, _blank(column)) for column in EXPORT_COLUMNS}
        return
    rows: list[dict[str, Any]] = []
    if not host and "flows" in offered:
        # one query: every flow once, under its host, the peer named as that host knew it
        answer = _post_query(url, "flows", dict(window, limit=2**62), token)
        rows = [_from_host_flow(flow["host"], flow) for flow in _records(answer)]
    hosts = (
        [host]
        if host
        else []
        if "flows" in offered
        else [
            r["addr"] for r in _records(_post_query(url, "hosts", dict(window, intranet_only=False), token))
        ]
    )
    for addr in hosts:
        answer = _post_query(url, "host_flows", dict(window, host=addr, limit=100_000_000), token)
        for flow in _records(answer):
            if not host and flow["direction"] != "sent":
                continue  # every flow is some host's "sent" flow: keep that one only
            rows.append(_from_host_flow(addr, flow))
    rows.sort(
        key=lambda r: (
            r["flow_start"],
            r["flow_end"],
            r["src_addr"],
            r["dst_addr"],
            r["src_port"],
            r["dst_port"],
        )
    )
    yield from rows


def _blank(column: str) -> Any:
    return "" if EXPORT_TYPES[column] == "VARCHAR" else 0


def _from_host_flow(host: str, flow: dict[str, Any]) -> dict[str, Any]:
    sent = flow["direction"] == "sent"
    src, dst = (host, flow["peer_addr"]) if sent else (flow["peer_addr"], host)
    src_port, dst_port = (
        (flow["host_port"], flow["peer_port"]) if sent else (flow["peer_port"], flow["host_port"])
    )
    row = {column: _blank(column) for column in EXPORT_COLUMNS}
    row.update(
        {key: flow[key] for key in FLOW_FIELDS if key in flow},
        src_addr=src,
        dst_addr=dst,
        src_port=src_port,
        dst_port=dst_port,
        ip_version=6 if ":" in src else 4,
    )
    side = "dst" if sent else "src"
    row[f"{side}_name"] = flow.get("peer_name") or ""
    row[f"{side}_name_source"] = flow.get("name_source") or ""
    return row


# ---------------------------------------------------------------- writing


def _file_row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in FLOW_TIME_FIELDS:
        out[key] = us_to_iso(out[key])
    return out


def write_export(rows: Iterable[dict[str, Any]], fmt: str, output: str) -> int:
    """Write export rows; returns how many. Parquet needs a directory; the others a file or ``-``."""
    if fmt == "parquet":
        if output == fileio.STDOUT:
            raise ExportFailed("--format parquet writes a directory: give --output DIR")
        writer = fileio.HivePartitionWriter(output, EXPORT_TYPES)
        writer.add(rows)
        writer.close()
        return writer.rows_written
    handle: IO[str] = (
        sys.stdout if output == fileio.STDOUT else open(output, "w", encoding="utf-8", newline="")
    )
    count = 0
    try:
        if fmt == "jsonl":
            for row in rows:
                handle.write(
                    json.dumps({"kind": "flow", **_file_row(row)}, ensure_ascii=False, separators=(",", ":"))
                )
                handle.write("\n")
                count += 1
        else:
            table = csv.writer(handle)
            table.writerow(EXPORT_COLUMNS)
            for row in rows:
                file_row = _file_row(row)
                table.writerow([file_row[column] for column in EXPORT_COLUMNS])
                count += 1
    finally:
        if handle is sys.stdout:
            handle.flush()
        else:
            handle.close()
    return count


def parse_time(value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    try:
        return to_us(value)
    except ValueError:
        raise ExportFailed(
            f"{flag}: {value!r} is not a time (ISO 8601 such as 2024-05-01T10:00Z, or µs)"
        ) from None


def format_for(output: str, fmt: str | None) -> str:
    if fmt:
        return fmt
    if output != fileio.STDOUT and (Path(output).suffix == "" or Path(output).is_dir()):
        return "parquet"
    kind = fileio.kind_from_suffix(output)
    return kind if kind in FORMATS else "jsonl"


def register_cli(register_subcommand: Any) -> None:
    """Adds `python -m collector export` (collector/__main__.py calls this)."""
    from collector import filecli

    register_subcommand("export", filecli.EXPORT_HELP, filecli.add_export_arguments, filecli.run_export)
