"""Flow and name records in files: JSON lines, CSV, Parquet, nfdump CSV, and the hive-partitioned export.

Writers (``open_writer``) and readers (``read_records``) round-trip every field of the contract
exactly: µs timestamps (ISO strings with six decimals in JSON lines and CSV, UTC ``TIMESTAMP`` in
Parquet), ``cname_chain`` (a list in JSON and Parquet, joined with `` > `` in CSV). The fields come
from ``hostflow.records``; nothing here lists them.

The probe imports this module on a Raspberry Pi without pyarrow, so pyarrow is imported only
when a Parquet file is written or read.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import ipaddress
import itertools
import json
import os
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

from hostflow.records import (
    CHAIN_SEPARATOR,
    FLOW_FIELDS,
    FLOW_TIME_FIELDS,
    FLOW_TYPES,
    NAME_FIELDS,
    NAME_TIME_FIELDS,
    NAME_TYPES,
    ContractError,
    Flow,
    Name,
    flow_from_dict,
    flow_to_dict,
    name_from_dict,
    name_to_dict,
    to_us,
)

# file kinds, as `sniff_kind` names them
JSONL = "jsonl"
CSV = "csv"
PARQUET = "parquet"
NFDUMP_CSV = "nfdump-csv"
PCAP = "pcap"
PCAPNG = "pcapng"
UNKNOWN = "unknown"

STDOUT = "-"
ROW_GROUP_ROWS = 65_536
_PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

Record = Flow | Name


class RecordWriter(Protocol):
    flows_written: int
    names_written: int

    def write_flows(self, flows: Iterable[Flow]) -> None: ...

    def write_names(self, names: Iterable[Name]) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- paths and kinds


def names_path(path: str | Path) -> Path:
    """``X.csv`` → ``X.names.csv``; ``X.parquet`` → ``X.names.parquet`` (the names file beside)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.names{path.suffix}")


def kind_from_suffix(path: str | Path) -> str:
    if str(path) == STDOUT:
        return JSONL
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return JSONL
    if suffix == ".csv":
        return CSV
    if suffix in (".parquet", ".pq"):
        return PARQUET
    return UNKNOWN


def sniff_kind(path: str | Path) -> str:
    """What a file holds, from its first bytes (never from its name alone)."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head[:4] in _PCAP_MAGICS:
        return PCAP
    if head[:4] == _PCAPNG_MAGIC:
        return PCAPNG
    if head[:4] == b"PAR1":
        return PARQUET
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    first = text.lstrip().split("\n", 1)[0].strip()
    if first.startswith("{"):
        return JSONL
    header = [cell.strip() for cell in first.split(",")]
    if header[: len(NFDUMP_HEADER_START)] == list(NFDUMP_HEADER_START) or _is_nfdump_row(header):
        return NFDUMP_CSV
    if {"flow_start", "src_addr", "dst_addr"} <= set(header) or {"ts", "addr", "name"} <= set(header):
        return CSV
    return UNKNOWN


# ---------------------------------------------------------------- writers


def open_writer(path: str | Path, kind: str | None = None) -> RecordWriter:
    """A writer for ``path``: ``.jsonl`` or ``-`` → JSON lines, ``.csv`` → CSV (+ ``X.names.csv``),
    ``.parquet`` → Parquet (+ ``X.names.parquet``)."""
    kind = kind or kind_from_suffix(path)
    if kind == JSONL:
        return JsonLinesWriter(path)
    if kind == CSV:
        return CsvWriter(path)
    if kind == PARQUET:
        return ParquetWriter(path)
    raise ValueError(f"{path}: unknown output format (use a name ending in .jsonl, .csv or .parquet, or -)")


class JsonLinesWriter:
    """One JSON object per line, ``"kind": "flow"`` or ``"name"``, ISO timestamps."""

    def __init__(self, path: str | Path | IO[str]) -> None:
        self.flows_written = 0
        self.names_written = 0
        self._owned = True
        if isinstance(path, io.TextIOBase):
            self._out: IO[str] = path
            self._owned = False
        elif str(path) == STDOUT:
            self._out = sys.stdout
            self._owned = False
        else:
            self._out = open(path, "w", encoding="utf-8", newline="\n")

    def _write(self, kind: str, rows: Iterable[dict[str, Any]]) -> int:
        lines = [json.dumps({"kind": kind, **row}, ensure_ascii=False, separators=(",", ":")) for row in rows]
        if lines:
            self._out.write("\n".join(lines) + "\n")
            self._out.flush()
        return len(lines)

    def write_flows(self, flows: Iterable[Flow]) -> None:
        self.flows_written += self._write("flow", (flow_to_dict(flow) for flow in flows))

    def write_names(self, names: Iterable[Name]) -> None:
        self.names_written += self._write("name", (name_to_dict(name) for name in names))

    def write_rows(self, kind: str, rows: Iterable[dict[str, Any]]) -> None:
        """Rows already in file form (export: flow fields plus extra columns)."""
        self.flows_written += self._write(kind, rows)

    def close(self) -> None:
        if self._owned:
            self._out.close()
        else:
            self._out.flush()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return CHAIN_SEPARATOR.join(str(part) for part in value)
    return value


class _CsvTable:
    def __init__(self, path: Path, columns: Iterable[str]) -> None:
        self.handle = open(path, "w", encoding="utf-8", newline="")
        self.writer = csv.writer(self.handle)  # CRLF (RFC 4180): a lone CR or LF in a value gets quoted
        self.columns = tuple(columns)
        self.writer.writerow(self.columns)

    def write(self, rows: Iterable[dict[str, Any]]) -> int:
        count = 0
        for row in rows:
            self.writer.writerow([_csv_cell(row.get(col, "")) for col in self.columns])
            count += 1
        self.handle.flush()
        return count


class CsvWriter:
    """``X.csv`` holds flows, ``X.names.csv`` beside it holds names; both always exist after close."""

    def __init__(self, path: str | Path, extra_columns: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.flows_written = 0
        self.names_written = 0
        self._flows = _CsvTable(self.path, (*FLOW_FIELDS, *extra_columns))
        self._names = _CsvTable(names_path(self.path), NAME_FIELDS)

    def write_flows(self, flows: Iterable[Flow]) -> None:
        self.flows_written += self._flows.write(flow_to_dict(flow) for flow in flows)

    def write_names(self, names: Iterable[Name]) -> None:
        self.names_written += self._names.write(name_to_dict(name) for name in names)

    def write_rows(self, kind: str, rows: Iterable[dict[str, Any]]) -> None:
        self.flows_written += self._flows.write(rows)

    def close(self) -> None:
        self._flows.handle.close()
        self._names.handle.close()


# ---------------------------------------------------------------- Parquet


def arrow_type(sql_type: str) -> Any:
    """The Arrow type for a column type of records.FLOW_TYPES / NAME_TYPES."""
    import pyarrow as pa

    simple = {
        "VARCHAR": pa.string(),
        "TIMESTAMP": pa.timestamp("us", tz="UTC"),
        "UTINYINT": pa.uint8(),
        "USMALLINT": pa.uint16(),
        "UINTEGER": pa.uint32(),
        "UBIGINT": pa.uint64(),
        "BIGINT": pa.int64(),
        "INTEGER": pa.int32(),
        "DOUBLE": pa.float64(),
    }
    if sql_type.endswith("[]"):
        return pa.list_(arrow_type(sql_type[:-2]))
    return simple[sql_type]


def arrow_schema(types: dict[str, str]) -> Any:
    import pyarrow as pa

    return pa.schema([(name, arrow_type(sql_type)) for name, sql_type in types.items()])


def _arrow_table(rows: list[dict[str, Any]], types: dict[str, str], schema: Any) -> Any:
    import pyarrow as pa

    columns: dict[str, list[Any]] = {name: [] for name in types}
    for row in rows:
        for name in types:
            columns[name].append(row.get(name))
    return pa.Table.from_pydict(columns, schema=schema)


class _ParquetTable:
    """Rows buffered into row groups, written to a temp name and moved into place at close."""

    def __init__(self, path: Path, types: dict[str, str], time_fields: Iterable[str]) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self.types = types
        self.time_fields = tuple(time_fields)
        self.schema = arrow_schema(types)
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self.pending: list[dict[str, Any]] = []

    def add(self, rows: Iterable[dict[str, Any]]) -> int:
        count = 0
        for row in rows:
            for key in self.time_fields:
                row[key] = _us_to_datetime(row[key])
            self.pending.append(row)
            count += 1
        if len(self.pending) >= ROW_GROUP_ROWS:
            self.flush()
        return count

    def flush(self) -> None:
        if self.pending:
            self.writer.write_table(_arrow_table(self.pending, self.types, self.schema))
            self.pending = []

    def close(self) -> None:
        self.flush()
        self.writer.close()
        os.replace(self.tmp, self.path)


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def _us_to_datetime(us: Any) -> _dt.datetime:
    if isinstance(us, _dt.datetime):
        return us
    return _EPOCH + _dt.timedelta(microseconds=int(us))


class ParquetWriter:
    """``X.parquet`` holds flows, ``X.names.parquet`` names; each appears complete or not at all."""

    def __init__(self, path: str | Path, extra_types: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.flows_written = 0
        self.names_written = 0
        self._flows = _ParquetTable(self.path, {**FLOW_TYPES, **(extra_types or {})}, FLOW_TIME_FIELDS)
        self._names = _ParquetTable(names_path(self.path), NAME_TYPES, NAME_TIME_FIELDS)

    def write_flows(self, flows: Iterable[Flow]) -> None:
        self.flows_written += self._flows.add(flow_to_dict(flow, iso_times=False) for flow in flows)

    def write_names(self, names: Iterable[Name]) -> None:
        self.names_written += self._names.add(name_to_dict(name, iso_times=False) for name in names)

    def close(self) -> None:
        self._flows.close()
        self._names.close()


# ---------------------------------------------------------------- readers


def read_records(path: str | Path, kind: str | None = None) -> Iterator[Record]:
    """Flows and names from one of our files (JSON lines, CSV with its names file, Parquet with its
    names file). Raises ContractError("FILE: line N: reason") on the first bad record."""
    kind = kind or sniff_kind(path)
    if kind == UNKNOWN and os.path.getsize(path) == 0:
        kind = kind_from_suffix(path)  # an empty file holds no records, whatever its kind
    if kind == JSONL:
        yield from _read_jsonl(Path(path))
    elif kind == CSV:
        yield from _read_csv_pair(Path(path))
    elif kind == PARQUET:
        yield from _read_parquet_pair(Path(path))
    elif kind == NFDUMP_CSV:
        yield from read_nfdump_csv(path)
    else:
        raise ContractError(f"{path}: not a hostflow JSON lines, CSV or Parquet file")


def _read_jsonl(path: Path) -> Iterator[Record]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ContractError(f"{path}: line {number}: not JSON ({exc.msg})") from None
            if not isinstance(data, dict):
                raise ContractError(f"{path}: line {number}: not a JSON object")
            kind = data.get("kind")
            try:
                if kind == "flow":
                    yield flow_from_dict(data)
                elif kind == "name":
                    yield name_from_dict(data)
                else:
                    raise ContractError(f'"kind" must be "flow" or "name", got {kind!r}')
            except ContractError as exc:
                raise ContractError(f"{path}: line {number}: {exc}") from None


def _read_csv_pair(path: Path) -> Iterator[Record]:
    header = _csv_header(path)
    if "flow_start" in header:
        yield from _read_csv(path, flow_from_dict)
        beside = names_path(path)
        if beside.exists():
            yield from _read_csv(beside, name_from_dict)
    else:
        yield from _read_csv(path, name_from_dict)


def _csv_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return next(csv.reader(handle), [])


def _read_csv(path: Path, build: Callable[[dict[str, Any]], Record]) -> Iterator[Record]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise ContractError(
                    f"{path}: line {reader.line_num}: {len(row)} cells where the header has {len(header)}"
                )
            try:
                yield build(dict(zip(header, row, strict=True)))
            except ContractError as exc:
                raise ContractError(f"{path}: line {reader.line_num}: {exc}") from None


def _read_parquet_pair(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    build: Callable[[dict[str, Any]], Record] = flow_from_dict if "flow_start" in names else name_from_dict
    yield from _read_parquet(path, build)
    beside = names_path(path)
    if build is flow_from_dict and beside.exists():
        yield from _read_parquet(beside, name_from_dict)


def _read_parquet(path: Path, build: Callable[[dict[str, Any]], Record]) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise ContractError(f"{path}: not a readable Parquet file ({exc})") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=ROW_GROUP_ROWS):
        for row in batch.to_pylist():
            number += 1
            try:
                yield build(row)
            except ContractError as exc:
                raise ContractError(f"{path}: row {number}: {exc}") from None


# ---------------------------------------------------------------- nfdump CSV

# `nfdump -o csv` of nfdump 1.7 starts its header with these columns (the rest varies by version)
NFDUMP_HEADER_START = ("ts", "te", "td", "sa", "da", "sp", "dp", "pr", "flg")
# nfdump's protocol names (its own table, not /etc/protocols) for the protocols it names most
_NFDUMP_PROTOCOLS = {
    "ICMP": 1,
    "IGMP": 2,
    "IPIP": 4,
    "TCP": 6,
    "UDP": 17,
    "IPV6": 41,
    "RSVP": 46,
    "GRE": 47,
    "ESP": 50,
    "AH": 51,
    "ICMP6": 58,
    "EIGRP": 88,
    "OSPF": 89,
    "PIM": 103,
    "VRRP": 112,
    "L2TP": 115,
    "SCTP": 132,
}
# the whole header of nfdump 1.7's `-o csv`; `-q` leaves the header out, so rows of this width
# without a header are read with it
NFDUMP_17_COLUMNS = (
    *NFDUMP_HEADER_START,
    *"fwd,stos,ipkt,ibyt,opkt,obyt,in,out,sas,das,smk,dmk,dtos,dir,nh,nhb,svln,dvln".split(","),
    *"ismc,odmc,idmc,osmc".split(","),
    *(f"mpls{n}" for n in range(1, 11)),
    *"cl,sl,al,ra,eng,exid,tr".split(","),
)
_TCP_FLAG_LETTERS = "CEUAPRSF"  # nfdump's flag string, most significant bit first


def _nfdump_protocol(text: str) -> int:
    text = text.strip()
    if text.isdigit():
        return int(text)
    if text.upper() in _NFDUMP_PROTOCOLS:
        return _NFDUMP_PROTOCOLS[text.upper()]
    try:
        return socket.getprotobyname(text.lower())
    except OSError:
        raise ContractError(f"pr: unknown protocol name {text!r}") from None


def _nfdump_flags(text: str) -> int:
    text = text.strip()
    if text.startswith("0x"):
        return int(text, 16)
    if text.isdigit():
        return int(text)
    flags = 0
    for position, letter in enumerate(text[:8]):
        if letter != ".":
            flags |= 0x80 >> position
    return flags


def _nfdump_addr(text: str) -> str:
    address = ipaddress.ip_address(text.strip())
    # nfdump prints an IPv4 flow whose template also carries (empty) IPv6 fields as "::a.b.c.d";
    # IPv4-compatible IPv6 addresses are deprecated and never real, so they are the IPv4 address.
    if address.version == 6 and int(address) >> 32 == 0 and int(address) > 0xFFFF:
        return str(ipaddress.IPv4Address(int(address)))
    return str(address)


def _nfdump_port(text: str) -> int:
    text = text.strip()
    if "." in text:  # ICMP "type.code"
        icmp_type, icmp_code = text.split(".", 1)
        return int(icmp_type) * 256 + int(icmp_code)
    return int(float(text))


def _nfdump_mac(text: str) -> str:
    text = text.strip().lower()
    return "" if text in ("", "00:00:00:00:00:00") else text


def _nfdump_time(text: str, tz: _dt.tzinfo) -> int:
    moment = _dt.datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return to_us(moment)


def nfdump_flow(row: dict[str, str], tz: _dt.tzinfo = _dt.UTC, probe_id: str | None = None) -> Flow:
    """One row of ``nfdump -o csv`` as a Flow. nfdump prints local time: pass the zone it ran in."""
    try:
        protocol = _nfdump_protocol(row["pr"])
        src_addr = _nfdump_addr(row["sa"])
        dst_port = _nfdump_port(row["dp"])
        exporter = row.get("ra", "").strip()
        data: dict[str, Any] = {
            "probe_id": probe_id if probe_id is not None else exporter,
            "flow_start": _nfdump_time(row["ts"], tz),
            "flow_end": _nfdump_time(row["te"], tz),
            "ip_version": 6 if ":" in src_addr else 4,
            "protocol": protocol,
            "src_addr": src_addr,
            "src_port": _nfdump_port(row["sp"]),
            "dst_addr": _nfdump_addr(row["da"]),
            "dst_port": dst_port,
            "packets": int(row["ipkt"]),
            "bytes": int(row["ibyt"]),
            "tcp_flags": _nfdump_flags(row.get("flg", "0")) if protocol == 6 else 0,
            "tos": int(row.get("stos") or 0),
            "vlan": int(row.get("svln") or 0),
            "src_mac": _nfdump_mac(row.get("ismc", "")),
            "dst_mac": _nfdump_mac(row.get("idmc", "")),
            "end_reason": "exporter",
            "sampling": 1,  # nfcapd has already multiplied sampled counts; the rate is not in the CSV
        }
    except KeyError as exc:
        raise ContractError(f"missing column {exc.args[0]}") from None
    except ValueError as exc:
        raise ContractError(str(exc)) from None
    return flow_from_dict(data)


def read_nfdump_csv(
    path: str | Path, tz: _dt.tzinfo = _dt.UTC, probe_id: str | None = None
) -> Iterator[Flow]:
    """Flows from ``nfdump -o csv`` (nfdump 1.7): the header line, one line per flow, then an
    optional "Summary" block, which ends the flows. ``probe_id`` defaults to the exporter (``ra``)."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        first = [cell.strip() for cell in next(reader, [])]
        if tuple(first[: len(NFDUMP_HEADER_START)]) == NFDUMP_HEADER_START:
            header, rows = first, reader
        elif _is_nfdump_row(first):
            header, rows = list(NFDUMP_17_COLUMNS), itertools.chain([first], reader)
        else:
            raise ContractError(f"{path}: line 1: not an `nfdump -o csv` header or row")
        for row in rows:
            if not row or not "".join(row).strip():
                continue
            if row[0].strip() in ("Summary", "No matched flows"):
                break
            if len(row) != len(header):
                raise ContractError(
                    f"{path}: line {reader.line_num}: {len(row)} cells where the header has {len(header)}"
                )
            try:
                yield nfdump_flow(dict(zip(header, row, strict=True)), tz, probe_id)
            except ContractError as exc:
                raise ContractError(f"{path}: line {reader.line_num}: {exc}") from None


def _is_nfdump_row(cells: list[str]) -> bool:
    if len(cells) != len(NFDUMP_17_COLUMNS):
        return False
    try:
        _dt.datetime.fromisoformat(cells[0].strip().replace(" ", "T", 1))
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- hive-partitioned export


class HivePartitionWriter:
    """Rows into ``DIR/date=YYYY-MM-DD/hour=HH/part-N.parquet`` by the UTC hour of ``time_column``.

    Every part is written under a temp name and moved into place with ``os.replace``, so a reader
    (DuckDB, Spark, ClickHouse) never sees half a file; new parts never overwrite old ones.
    """

    def __init__(
        self,
        directory: str | Path,
        types: dict[str, str],
        time_column: str = "flow_start",
        rows_per_part: int = 500_000,
    ) -> None:
        self.directory = Path(directory)
        self.types = types
        self.time_column = time_column
        self.rows_per_part = rows_per_part
        self.time_fields = tuple(name for name, sql_type in types.items() if sql_type == "TIMESTAMP")
        self.schema = arrow_schema(types)
        self.pending: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.parts: list[Path] = []
        self.rows_written = 0

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            for key in self.time_fields:
                row[key] = _us_to_datetime(to_us(row[key]) if isinstance(row[key], str) else row[key])
            moment = row[self.time_column]
            key = (moment.strftime("%Y-%m-%d"), moment.strftime("%H"))
            bucket = self.pending.setdefault(key, [])
            bucket.append(row)
            if len(bucket) >= self.rows_per_part:
                self._write(key)

    def _write(self, key: tuple[str, str]) -> None:
        import pyarrow.parquet as pq

        rows = self.pending.pop(key, [])
        if not rows:
            return
        folder = self.directory / f"date={key[0]}" / f"hour={key[1]}"
        folder.mkdir(parents=True, exist_ok=True)
        number = 0
        while (folder / f"part-{number}.parquet").exists():
            number += 1
        final = folder / f"part-{number}.parquet"
        tmp = folder / f".part-{number}.parquet.tmp-{os.getpid()}"
        pq.write_table(_arrow_table(rows, self.types, self.schema), tmp, compression="zstd")
        os.replace(tmp, final)
        self.parts.append(final)
        self.rows_written += len(rows)

    def close(self) -> list[Path]:
        for key in sorted(self.pending):
            self._write(key)
        return self.parts
