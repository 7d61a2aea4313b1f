"""The data contract: the flow record, the name record and the batch envelope.

This is the one place where these fields are defined. The probe, the collector and the app import
it; nothing else redefines the field lists. Standard library only, because the probe on a
Raspberry Pi imports it too.

Conventions (see docs/CONTRACT.md for the wire formats built on them):
- Timestamps are integers, microseconds since the Unix epoch, UTC, inside the program and on the
  probe → collector wire. Files meant for people (JSON lines, CSV) write ISO 8601 UTC strings
  (``2020-02-23T08:54:01.123456Z``); readers accept both.
- Addresses are text in their canonical form (``ipaddress`` ``str()``), MACs lower-case
  ``aa:bb:cc:dd:ee:ff`` or "".
- ``bytes`` counts IP-layer bytes (IP header + payload, as NetFlow does), not frame bytes.
- ICMP/ICMPv6 flows carry ``src_port = 0`` and ``dst_port = type * 256 + code`` (NetFlow's
  convention, so third-party NetFlow lands in the same columns).
- ``sampling`` is the exporter's 1-in-N rate; stored counts are already multiplied by it.
"""

from __future__ import annotations

import array
import dataclasses
import datetime as _dt
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import accumulate, chain, pairwise
from operator import attrgetter
from typing import Any

SCHEMA_VERSION = 1

# end_reason values
END_IDLE = "idle"
END_ACTIVE = "active"
END_FIN = "fin"
END_RST = "rst"
END_EOF = "end-of-capture"
END_EVICTED = "evicted"
END_SHUTDOWN = "shutdown"
END_EXPORTER = "exporter"  # ended by a NetFlow/IPFIX exporter; reason unknown to us
END_REASONS = (END_IDLE, END_ACTIVE, END_FIN, END_RST, END_EOF, END_EVICTED, END_SHUTDOWN, END_EXPORTER)

# initiator values: which side of this unidirectional flow opened the conversation
INIT_SRC = "src"  # src_addr is the client (sent the SYN, or the first packet)
INIT_DST = "dst"  # dst_addr is the client: this flow is the answer direction
INIT_UNKNOWN = ""
INITIATORS = (INIT_SRC, INIT_DST, INIT_UNKNOWN)

# name sources
NAME_SOURCES = ("dns", "mdns", "llmnr", "netbios", "ptr", "sni", "http", "dhcp", "hosts")

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58


@dataclass(slots=True)
class Flow:
    """One unidirectional flow, as a NetFlow v9/IPFIX record would describe it."""

    probe_id: str
    flow_start: int  # µs since epoch, UTC: first packet
    flow_end: int  # µs since epoch, UTC: last packet
    ip_version: int  # 4 or 6
    protocol: int  # IP protocol number
    src_addr: str
    src_port: int
    dst_addr: str
    dst_port: int
    packets: int
    bytes: int  # IP-layer bytes
    tcp_flags: int = 0  # OR of the flags seen
    tos: int = 0
    vlan: int = 0  # outermost 802.1Q id, 0 if none
    src_mac: str = ""
    dst_mac: str = ""
    end_reason: str = ""
    initiator: str = INIT_UNKNOWN
    sampling: int = 1


@dataclass(slots=True)
class Name:
    """One name learned from the wire: ``addr`` is known as ``name`` since ``ts``."""

    probe_id: str
    ts: int  # µs since epoch, UTC: when the answer / hello / request was seen
    addr: str  # the address the name points to
    name: str  # lower-case, no trailing dot; for DNS the name the client asked for
    source: str  # one of NAME_SOURCES
    client_addr: str = ""  # who asked (DNS), who spoke (SNI/HTTP client, DHCP client)
    ttl: int = 0  # seconds; 0 when the source has none
    cname_chain: list[str] = field(default_factory=list)  # queried name → … → canonical name
    qtype: str = ""  # A, AAAA, PTR, HTTPS, SVCB, … (DNS family only)
    rcode: int = 0


FLOW_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Flow))
NAME_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Name))
FLOW_TIME_FIELDS = ("flow_start", "flow_end")
NAME_TIME_FIELDS = ("ts",)

# Column types, shared by every store and file writer (SQL-ish names; DuckDB spells them so).
FLOW_TYPES: dict[str, str] = {
    "probe_id": "VARCHAR",
    "flow_start": "TIMESTAMP",
    "flow_end": "TIMESTAMP",
    "ip_version": "UTINYINT",
    "protocol": "UTINYINT",
    "src_addr": "VARCHAR",
    "src_port": "USMALLINT",
    "dst_addr": "VARCHAR",
    "dst_port": "USMALLINT",
    "packets": "UBIGINT",
    "bytes": "UBIGINT",
    "tcp_flags": "UTINYINT",
    "tos": "UTINYINT",
    "vlan": "USMALLINT",
    "src_mac": "VARCHAR",
    "dst_mac": "VARCHAR",
    "end_reason": "VARCHAR",
    "initiator": "VARCHAR",
    "sampling": "UINTEGER",
}
NAME_TYPES: dict[str, str] = {
    "probe_id": "VARCHAR",
    "ts": "TIMESTAMP",
    "addr": "VARCHAR",
    "name": "VARCHAR",
    "source": "VARCHAR",
    "client_addr": "VARCHAR",
    "ttl": "UINTEGER",
    "cname_chain": "VARCHAR[]",
    "qtype": "VARCHAR",
    "rcode": "UTINYINT",
}
assert tuple(FLOW_TYPES) == FLOW_FIELDS and tuple(NAME_TYPES) == NAME_FIELDS


class ContractError(ValueError):
    """A record or batch that does not follow the contract; the message says which field."""


# ---------------------------------------------------------------- time


def us_to_iso(us: int) -> str:
    """Microseconds since epoch → ``2020-02-23T08:54:01.123456Z``."""
    secs, frac = divmod(int(us), 1_000_000)
    stamp = _dt.datetime.fromtimestamp(secs, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:06d}Z"


def to_us(value: Any) -> int:
    """Accept µs integers, ISO 8601 strings (``Z`` or offset; naive means UTC) or datetimes."""
    if isinstance(value, bool):
        raise ContractError(f"not a timestamp: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(round(value))
    if isinstance(value, _dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=_dt.UTC)
        delta = moment - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            moment = _dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T", 1))
        except ValueError as exc:
            raise ContractError(f"not a timestamp: {value!r}") from exc
        return to_us(moment)
    raise ContractError(f"not a timestamp: {value!r}")


# ---------------------------------------------------------------- rows and dicts


def flow_row(flow: Flow) -> list[Any]:
    """The flow as a list in FLOW_FIELDS order (the batch wire form)."""
    return [getattr(flow, name) for name in FLOW_FIELDS]


def name_row(name: Name) -> list[Any]:
    return [getattr(name, f) for f in NAME_FIELDS]


def flow_to_dict(flow: Flow, *, iso_times: bool = True) -> dict[str, Any]:
    out = {name: getattr(flow, name) for name in FLOW_FIELDS}
    if iso_times:
        for key in FLOW_TIME_FIELDS:
            out[key] = us_to_iso(out[key])
    return out


def name_to_dict(name: Name, *, iso_times: bool = True) -> dict[str, Any]:
    out = {f: getattr(name, f) for f in NAME_FIELDS}
    out["cname_chain"] = list(out["cname_chain"])
    if iso_times:
        out["ts"] = us_to_iso(out["ts"])
    return out


_INT_FLOW = {k for k, t in FLOW_TYPES.items() if "INT" in t}
_INT_NAME = {k for k, t in NAME_TYPES.items() if "INT" in t}


def _int_field(record: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or value is None:
        raise ContractError(f"{record}.{key}: expected an integer, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise ContractError(f"{record}.{key}: expected an integer, got {value!r}") from exc
    if number < 0:
        raise ContractError(f"{record}.{key}: negative value {number}")
    return number


def flow_from_dict(data: dict[str, Any]) -> Flow:
    """Build a Flow from a dict (JSON line, CSV row, API body); raises ContractError."""
    missing = [k for k in ("flow_start", "flow_end", "protocol", "src_addr", "dst_addr") if k not in data]
    if missing:
        raise ContractError(f"flow: missing field(s) {', '.join(missing)}")
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(Flow):
        key = spec.name
        if key not in data or data[key] is None or data[key] == "":
            if key == "probe_id":
                values[key] = ""
                continue
            if spec.default is not dataclasses.MISSING:
                continue
            if key in ("src_port", "dst_port", "packets", "bytes", "ip_version"):
                values[key] = 0
                continue
        raw = data.get(key)
        if key in FLOW_TIME_FIELDS:
            values[key] = to_us(raw)
        elif key in _INT_FLOW:
            values[key] = _int_field("flow", key, raw)
        else:
            values[key] = "" if raw is None else str(raw)
    flow = Flow(**values)
    if not flow.ip_version:
        flow.ip_version = 6 if ":" in flow.src_addr else 4
    validate_flow(flow)
    return flow


def name_from_dict(data: dict[str, Any]) -> Name:
    missing = [k for k in ("ts", "addr", "name", "source") if k not in data]
    if missing:
        raise ContractError(f"name: missing field(s) {', '.join(missing)}")
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(Name):
        key = spec.name
        raw = data.get(key)
        if raw is None or (raw == "" and key != "name"):
            if key == "probe_id":
                values[key] = ""
            continue
        if key == "ts":
            values[key] = to_us(raw)
        elif key in _INT_NAME:
            values[key] = _int_field("name", key, raw)
        elif key == "cname_chain":
            values[key] = _chain(raw)
        else:
            values[key] = str(raw)
    name = Name(**values)
    validate_name(name)
    return name


CHAIN_SEPARATOR = " > "  # how a CNAME chain is written in one CSV cell


def _chain(raw: Any) -> list[str]:
    if isinstance(raw, str):
        return [part.strip() for part in raw.split(CHAIN_SEPARATOR.strip()) if part.strip()]
    if isinstance(raw, Iterable):
        return [str(part) for part in raw]
    raise ContractError(f"name.cname_chain: expected a list, got {raw!r}")


def validate_flow(flow: Flow) -> None:
    if flow.ip_version not in (4, 6):
        raise ContractError(f"flow.ip_version: {flow.ip_version} is not 4 or 6")
    if flow.protocol > 255:
        raise ContractError(f"flow.protocol: {flow.protocol} is over 255")
    for key in ("src_port", "dst_port", "vlan"):
        if getattr(flow, key) > 65535:
            raise ContractError(f"flow.{key}: {getattr(flow, key)} is over 65535")
    if flow.tcp_flags > 255 or flow.tos > 255:
        raise ContractError("flow.tcp_flags / flow.tos: over 255")
    if flow.flow_end < flow.flow_start:
        raise ContractError("flow.flow_end is before flow.flow_start")
    if flow.end_reason and flow.end_reason not in END_REASONS:
        raise ContractError(f"flow.end_reason: unknown value {flow.end_reason!r}")
    if flow.initiator not in INITIATORS:
        raise ContractError(f"flow.initiator: unknown value {flow.initiator!r}")
    if flow.sampling < 1:
        raise ContractError("flow.sampling: must be at least 1")
    if not flow.src_addr or not flow.dst_addr:
        raise ContractError("flow: empty address")


def validate_name(name: Name) -> None:
    if name.source not in NAME_SOURCES:
        raise ContractError(f"name.source: unknown value {name.source!r}")
    if not name.addr:
        raise ContractError("name.addr: empty")
    if name.rcode > 255:
        raise ContractError("name.rcode: over 255")


# ---------------------------------------------------------------- the batch envelope


def make_batch(
    probe_id: str,
    batch_id: str,
    flows: Iterable[Flow],
    names: Iterable[Name],
    health: dict[str, Any] | None = None,
    sent_at: int | None = None,
) -> dict[str, Any]:
    """The probe → collector batch, ready for JSON. Rows are lists in FLOW_FIELDS/NAME_FIELDS order."""
    return {
        "schema_version": SCHEMA_VERSION,
        "batch_id": batch_id,
        "probe_id": probe_id,
        "sent_at": sent_at,
        "flow_fields": list(FLOW_FIELDS),
        "name_fields": list(NAME_FIELDS),
        "flows": [flow_row(f) for f in flows],
        "names": [name_row(n) for n in names],
        "health": health or {},
    }


# ---------------------------------------------------------------- the columnar batch encoding
#
# application/vnd.hostflow.columns+v1 (docs/CONTRACT.md): MAGIC, a little-endian uint32 header
# length, the JSON header (the batch envelope plus, per section, its row count and per column
# name, type, null count and buffer [offset, length] pairs), zero padding to a multiple of 8, then
# the buffers, each 8-byte aligned, laid out as Arrow lays out the column's type. Written with the
# standard library's ``array`` (the probe has no pyarrow); the collector wraps the buffers zero-copy.

COLUMNS_MEDIA_TYPE = "application/vnd.hostflow.columns+v1"
COLUMNS_MAGIC = b"HFC1"
COLUMNS_MAX_ROWS = 50_000_000  # per section; more is refused before any buffer is read

# type → (array typecode size, buffers after the validity bitmap)
_FIXED_WIDTH = {"TIMESTAMP": 8, "UTINYINT": 1, "USMALLINT": 2, "UINTEGER": 4, "UBIGINT": 8}
_SIGNED = {"TIMESTAMP"}
_BUFFER_NAMES = {"VARCHAR": ("offsets", "data"), "VARCHAR[]": ("offsets", "item_offsets", "item_data")}


def _typecode(size: int, signed: bool) -> str:
    for code in "bhilq" if signed else "BHILQ":
        if array.array(code).itemsize == size:
            return code
    raise RuntimeError(f"no array typecode of {size} bytes")


def _le(values: Any) -> bytes:
    if sys.byteorder != "little":
        values = values.__copy__()
        values.byteswap()
    return values.tobytes()


class ColumnsError(ContractError):
    """A columnar batch body that breaks the layout; ``reason`` is its short label."""

    def __init__(self, message: str, reason: str = "bad_columns") -> None:
        super().__init__(message)
        self.reason = reason


def _strings(values: list[str]) -> tuple[bytes, bytes]:
    """Text values → (int32 offsets, utf-8 data), without a per-value Python loop for ASCII."""
    joined = "".join(values)
    if joined.isascii():
        data = joined.encode("ascii")
        lengths: Iterable[int] = map(len, values)
    else:
        # a lone surrogate (undecodable bytes seen on the wire) becomes "?" rather than a refused batch
        encoded = [value.encode("utf-8", "replace") for value in values]
        data = b"".join(encoded)
        lengths = map(len, encoded)
    if len(data) >= 2**31:
        raise ContractError("a text column holds 2 GiB or more: send smaller batches")
    offsets = array.array(_typecode(4, True), accumulate(lengths, initial=0))
    return _le(offsets), data


def _encode_column(kind: str, name: str, sql_type: str, values: list[Any]) -> tuple[list[bytes | None], int]:
    try:
        return _encode_values(sql_type, values, None), 0
    except TypeError:
        if None not in values:  # only looked for when the fast path failed: a scan per column costs
            raise ContractError(f"{kind} column {name}: a value is not of type {sql_type}") from None
    except OverflowError as exc:
        raise ContractError(f"{kind} column {name}: a value does not fit {sql_type}: {exc}") from None
    present = [value is not None for value in values]
    bits = bytearray((len(values) + 7) // 8)
    for index, flag in enumerate(present):
        if flag:
            bits[index >> 3] |= 1 << (index & 7)
    filler: Any = "" if sql_type == "VARCHAR" else ([] if sql_type == "VARCHAR[]" else 0)
    filled = [filler if value is None else value for value in values]
    try:
        return _encode_values(sql_type, filled, bytes(bits)), len(values) - sum(present)
    except (OverflowError, TypeError) as exc:
        raise ContractError(f"{kind} column {name}: cannot be written as {sql_type}: {exc}") from None


def _encode_values(sql_type: str, values: list[Any], validity: bytes | None) -> list[bytes | None]:
    if sql_type in _FIXED_WIDTH:
        return [validity, _le(array.array(_typecode(_FIXED_WIDTH[sql_type], sql_type in _SIGNED), values))]
    if sql_type == "VARCHAR":
        return [validity, *_strings(values)]
    if sql_type == "VARCHAR[]":
        counts = array.array(_typecode(4, True), accumulate(map(len, values), initial=0))
        items = list(chain.from_iterable(values))
        if not all(isinstance(item, str) for item in items):
            raise TypeError("a list item is not text")
        return [validity, _le(counts), *_strings(items)]
    raise ContractError(f"unknown column type {sql_type}")


def encode_columns(
    envelope: dict[str, Any],
    flow_columns: dict[str, list[Any]] | None,
    name_columns: dict[str, list[Any]] | None,
) -> bytes:
    """A columnar batch body. ``envelope``: schema_version, batch_id, probe_id, sent_at, health
    (and source for an import); ``*_columns``: one list per field of FLOW_FIELDS / NAME_FIELDS,
    None for a null. Raises ContractError for a value its column type cannot hold."""
    chunks: list[bytes] = []
    size = 0

    def place(data: bytes | None) -> list[int] | None:
        nonlocal size
        if data is None:
            return None
        span = [size, len(data)]
        chunks.append(data)
        size += len(data)
        if size % 8:
            chunks.append(bytes(8 - size % 8))
            size += 8 - size % 8
        return span

    header = {key: envelope.get(key) for key in ("schema_version", "batch_id", "probe_id", "sent_at")}
    header["health"] = envelope.get("health") or {}
    if "source" in envelope:
        header["source"] = envelope["source"]
    for kind, fields, types, columns in (
        ("flow", FLOW_FIELDS, FLOW_TYPES, flow_columns),
        ("name", NAME_FIELDS, NAME_TYPES, name_columns),
    ):
        columns = columns or {field: [] for field in fields}
        rows = len(columns[fields[0]])
        described = []
        for field_name in fields:
            values = columns[field_name]
            if not isinstance(values, list):
                values = list(values)
            if len(values) != rows:
                raise ContractError(f"{kind} column {field_name}: {len(values)} values, expected {rows}")
            buffers, nulls = _encode_column(kind, field_name, types[field_name], values)
            described.append(
                {"name": field_name, "type": types[field_name], "nulls": nulls,
                 "buffers": [place(buffer) for buffer in buffers]}
            )  # fmt: skip
        header[f"{kind}s"] = {"rows": rows, "columns": described}
    head = json.dumps(header, separators=(",", ":")).encode()
    prefix = COLUMNS_MAGIC + len(head).to_bytes(4, "little") + head
    prefix += bytes(-len(prefix) % 8)
    return b"".join([prefix, *chunks])


def record_columns(records: Iterable[Flow] | Iterable[Name], fields: tuple[str, ...]) -> dict[str, list[Any]]:
    """Records → one list per field (what encode_columns takes)."""
    records = list(records)
    return {field_name: list(map(attrgetter(field_name), records)) for field_name in fields}


def make_columns_batch(
    probe_id: str,
    batch_id: str,
    flows: Iterable[Flow],
    names: Iterable[Name],
    health: dict[str, Any] | None = None,
    sent_at: int | None = None,
) -> bytes:
    """make_batch's twin in the columnar encoding: the body the probe POSTs."""
    envelope = {"schema_version": SCHEMA_VERSION, "batch_id": batch_id, "probe_id": probe_id,
                "sent_at": sent_at, "health": health or {}}  # fmt: skip
    return encode_columns(envelope, record_columns(flows, FLOW_FIELDS), record_columns(names, NAME_FIELDS))


def read_columns_header(body: bytes | memoryview) -> tuple[dict[str, Any], int]:
    """A columnar body's magic, JSON header and schema version only (enough to check the envelope
    and the sender before any buffer is looked at). Returns (header, offset of the data region)."""
    view = memoryview(body)
    if len(view) < 8 or bytes(view[:4]) != COLUMNS_MAGIC:
        raise ColumnsError(f"not a {COLUMNS_MEDIA_TYPE} body (it must start with {COLUMNS_MAGIC!r})")
    head_len = int.from_bytes(view[4:8], "little")
    if head_len > len(view) - 8:
        raise ColumnsError(f"header length {head_len} runs past the end of the {len(view)}-byte body")
    try:
        header = json.loads(bytes(view[8 : 8 + head_len]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ColumnsError(f"header is not valid JSON: {exc}", "bad_header") from None
    if not isinstance(header, dict):
        raise ColumnsError("header must be a JSON object", "bad_header")
    if header.get("schema_version") != SCHEMA_VERSION:
        raise ColumnsError(
            f"schema_version: got {header.get('schema_version')!r}, this collector accepts {SCHEMA_VERSION}",
            "schema_version",
        )
    start = 8 + head_len + (-(8 + head_len) % 8)
    if start > len(view):
        raise ColumnsError("body ends inside the header padding")
    return header, start


def read_columns_layout(body: bytes | memoryview) -> tuple[dict[str, Any], int]:
    """Check a columnar body's structure: magic, header, section and column lists, every buffer's
    bounds and exact length (not the contents of offset buffers: callers check those in bulk).
    Returns (header, offset of the data region). Raises ColumnsError."""
    header, start = read_columns_header(body)
    view = memoryview(body)
    data_size = len(view) - start
    for kind, fields, types in (("flow", FLOW_FIELDS, FLOW_TYPES), ("name", NAME_FIELDS, NAME_TYPES)):
        section = header.get(f"{kind}s")
        if section is None:
            header[f"{kind}s"] = section = {"rows": 0, "columns": None}
        if not isinstance(section, dict):
            raise ColumnsError(f"{kind}s: expected an object with rows and columns")
        rows = section.get("rows")
        if type(rows) is not int or not 0 <= rows <= COLUMNS_MAX_ROWS:
            raise ColumnsError(f"{kind}s.rows: expected an integer 0..{COLUMNS_MAX_ROWS}, got {rows!r}")
        columns = section.get("columns")
        if columns is None and rows == 0:
            continue
        if not isinstance(columns, list) or not all(isinstance(c, dict) for c in columns):
            raise ColumnsError(f"{kind}s.columns: expected a list of objects")
        named = [c.get("name") for c in columns]
        if sorted(map(str, named)) != sorted(fields) or len(set(named)) != len(named):
            missing = sorted(set(fields) - set(map(str, named)))
            extra = sorted(set(map(str, named)) - set(fields))
            raise ColumnsError(
                f"{kind}s.columns: does not match the contract (missing {missing}, unknown {extra})"
            )
        for column in columns:
            _check_column(kind, column, types[column["name"]], rows, view, start, data_size)
    return header, start


def _span(kind: str, column: dict[str, Any], index: int, data_size: int) -> tuple[int, int] | None:
    spans = column["buffers"]
    if index >= len(spans):
        raise ColumnsError(f"{kind} column {column['name']}: buffer {index} missing")
    span = spans[index]
    if span is None:
        return None
    if not isinstance(span, list) or len(span) != 2 or any(type(v) is not int or v < 0 for v in span):
        raise ColumnsError(f"{kind} column {column['name']}: buffer {index}: expected [offset, length]")
    offset, length = span
    if offset % 8:
        raise ColumnsError(f"{kind} column {column['name']}: buffer {index} is not 8-byte aligned")
    if offset + length > data_size:
        raise ColumnsError(
            f"{kind} column {column['name']}: buffer {index} ({offset}+{length}) runs past the end of "
            f"the {data_size}-byte data"
        )
    return offset, length


def _check_column(
    kind: str, column: dict[str, Any], sql_type: str, rows: int, view: memoryview, start: int, data_size: int
) -> None:
    name = column["name"]
    if column.get("type") != sql_type:
        raise ColumnsError(f"{kind} column {name}: type {column.get('type')!r}, the contract says {sql_type}")
    nulls = column.get("nulls", 0)
    if type(nulls) is not int or not 0 <= nulls <= rows:
        raise ColumnsError(f"{kind} column {name}: nulls: expected an integer 0..{rows}")
    expected = 2 if sql_type in _FIXED_WIDTH else 1 + len(_BUFFER_NAMES[sql_type])
    if not isinstance(column.get("buffers"), list) or len(column["buffers"]) != expected:
        raise ColumnsError(f"{kind} column {name}: expected {expected} buffers for {sql_type}")
    validity = _span(kind, column, 0, data_size)
    if validity is None and nulls:
        raise ColumnsError(f"{kind} column {name}: {nulls} nulls but no validity bitmap")
    if validity is not None and validity[1] != (rows + 7) // 8:
        raise ColumnsError(
            f"{kind} column {name}: validity bitmap of {validity[1]} bytes, expected {(rows + 7) // 8}"
        )
    required = [(1, rows * _FIXED_WIDTH[sql_type])] if sql_type in _FIXED_WIDTH else [(1, (rows + 1) * 4)]
    if sql_type == "VARCHAR[]":
        required.append((2, None))  # item offsets: (items + 1) * 4, items from the last list offset
    for index, length in required:
        span = _span(kind, column, index, data_size)
        if span is None:
            raise ColumnsError(f"{kind} column {name}: buffer {index} missing")
        if length is not None and span[1] != length:
            raise ColumnsError(f"{kind} column {name}: buffer {index} of {span[1]} bytes, expected {length}")
    for index in range(1, expected):
        if _span(kind, column, index, data_size) is None:
            raise ColumnsError(f"{kind} column {name}: buffer {index} missing")


def decode_columns(body: bytes) -> dict[str, Any]:
    """A columnar body → the make_batch dict (rows as lists), with the standard library only: the
    probe splits a batch the collector found too large with it. Raises ColumnsError."""
    header, start = read_columns_layout(body)
    data = memoryview(body)[start:]
    batch: dict[str, Any] = {k: v for k, v in header.items() if k not in ("flows", "names")}
    for kind, fields, types in (("flow", FLOW_FIELDS, FLOW_TYPES), ("name", NAME_FIELDS, NAME_TYPES)):
        section = header[f"{kind}s"]
        rows = section["rows"]
        by_name = {column["name"]: column for column in section["columns"] or []}
        columns = [_decode_column(kind, by_name[f], types[f], rows, data) if rows else [] for f in fields]
        batch[f"{kind}_fields"] = list(fields)
        batch[f"{kind}s"] = [list(row) for row in zip(*columns, strict=True)] if rows else []
    return batch


def _decode_column(
    kind: str, column: dict[str, Any], sql_type: str, rows: int, data: memoryview
) -> list[Any]:
    def buffer(index: int) -> memoryview:
        offset, length = column["buffers"][index]
        return data[offset : offset + length]

    def numbers(index: int, size: int, signed: bool) -> list[int]:
        values = array.array(_typecode(size, signed))
        values.frombytes(buffer(index))
        if sys.byteorder != "little":
            values.byteswap()
        return values.tolist()

    def texts(offsets: list[int], raw: memoryview, what: str) -> list[str]:
        if offsets[0] < 0 or offsets[-1] > len(raw) or any(a > b for a, b in pairwise(offsets)):
            raise ColumnsError(f"{kind} column {column['name']}: {what} out of order or out of bounds")
        try:
            return [bytes(raw[a:b]).decode() for a, b in pairwise(offsets)]
        except UnicodeDecodeError as exc:
            raise ColumnsError(f"{kind} column {column['name']}: {exc}", "bad_utf8") from None

    if sql_type in _FIXED_WIDTH:
        values: list[Any] = numbers(1, _FIXED_WIDTH[sql_type], sql_type in _SIGNED)
    elif sql_type == "VARCHAR":
        values = texts(numbers(1, 4, True), buffer(2), "offsets")
    else:
        bounds = numbers(1, 4, True)
        items = numbers(2, 4, True)
        if bounds[0] < 0 or bounds[-1] + 1 != len(items) or any(a > b for a, b in pairwise(bounds)):
            raise ColumnsError(f"{kind} column {column['name']}: list offsets out of order or out of bounds")
        flat = texts(items, buffer(3), "item offsets")
        values = [flat[a:b] for a, b in pairwise(bounds)]
    if column["buffers"][0] is not None:
        bits = buffer(0)
        values = [v if bits[i >> 3] >> (i & 7) & 1 else None for i, v in enumerate(values)]
    return values
