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

import dataclasses
import datetime as _dt
from collections.abc import Iterable
from dataclasses import dataclass, field
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
