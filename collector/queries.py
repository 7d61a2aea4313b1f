"""The named queries of docs/CONTRACT.md, each defined once over a backend's primitive scans.

A backend (the DuckDB Store, later ClickHouse) answers a few filtered scans and group-bys
(collector/backend.py); classification (cast, scope), name attribution, aggregation keys and
top-N folding happen here in Python on those small results, so every backend gives the same
answer. Parameters are validated here: nothing from the network reaches SQL except as a bound value.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pyarrow as pa

from collector.attribution import Attributor, Rules
from collector.config import DEFAULT_INTRANET
from hostflow.records import ContractError, to_us

US = 1_000_000
FAR_FUTURE = 253_402_300_799_999_999  # 9999-12-31
PEER_BUCKET_US = 60 * US  # attribution resolution of aggregated queries (host_flows is exact per flow)
PROTOCOL_CLASSES = ("tcp", "udp", "icmp", "other")
CASTS = ("unicast", "broadcast", "multicast")
SCOPES = ("intranet", "internet")
DIRECTIONS = ("both", "sent", "received")
AGGREGATES = ("endpoint", "ip", "fqdn", "domain", "org", "country")
MEASURES = ("bytes", "packets", "flows")
TIMELINE_BY = ("domain", "service", "peer")


class ParamError(ValueError):
    """A bad query parameter; the message starts with the parameter's name."""


class UnknownQuery(KeyError):
    pass


# ---------------------------------------------------------------- enrichment (hostflow.enrich when present)


def _enrich():
    try:
        from hostflow import enrich  # written by another part; optional until it lands
    except ImportError:
        return None
    return enrich


@lru_cache(maxsize=4096)
def service_name(protocol: int, port: int) -> str | None:
    enrich = _enrich()
    if enrich is not None and hasattr(enrich, "service_name"):
        return enrich.service_name(protocol, port)
    proto = {6: "tcp", 17: "udp"}.get(protocol)
    if proto is None or port == 0:
        return None
    try:
        return socket.getservbyport(port, proto)
    except OSError:
        return None


def protocol_class(protocol: int) -> str:
    return {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}.get(protocol, "other")


def service_label(protocol: int, port: int) -> str:
    """What the app shows as the service: a registered name, else ``proto/port``."""
    cls = protocol_class(protocol)
    if cls == "icmp":
        return "icmp" if protocol == 1 else "icmpv6"
    if cls == "other":
        return f"proto {protocol}"
    return service_name(protocol, port) or f"{cls}/{port}"


_PSL = None


@lru_cache(maxsize=65536)
def registered_domain(name: str) -> str:
    enrich = _enrich()
    if enrich is not None and hasattr(enrich, "registered_domain"):
        return enrich.registered_domain(name)
    global _PSL
    if _PSL is None:
        from publicsuffixlist import PublicSuffixList

        _PSL = PublicSuffixList()
    return _PSL.privatesuffix(name) or name


_GEO: Any = None


def geo(addr: str) -> tuple[str, int, str]:
    """(country, asn, org) or empty values while no GeoASN data is available."""
    global _GEO
    enrich = _enrich()
    if enrich is None or not hasattr(enrich, "GeoASN"):
        return ("", 0, "")
    if _GEO is None:
        _GEO = enrich.GeoASN()
    result = _GEO.lookup(addr)
    if hasattr(result, "country"):
        return (result.country, result.asn, result.org)
    return tuple(result) if result else ("", 0, "")  # type: ignore[return-value]


# ---------------------------------------------------------------- classification


class Classifier:
    """cast and scope of an address, per the contract, for one intranet prefix list."""

    def __init__(self, intranet: tuple[str, ...]) -> None:
        self.networks = [ipaddress.ip_network(p, strict=False) for p in intranet]
        self.broadcasts = {"255.255.255.255"} | {
            str(n.broadcast_address) for n in self.networks if n.version == 4 and n.prefixlen < 31
        }
        self._cache: dict[str, tuple[str, str]] = {}

    def classify(self, addr: str, bcast_mac: bool = False) -> tuple[str, str]:
        key = addr if not bcast_mac else addr + "|b"
        hit = self._cache.get(key)
        if hit:
            return hit
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return ("unicast", "internet")
        if ip.is_multicast:
            cast = "multicast"
        elif addr in self.broadcasts or bcast_mac:
            cast = "broadcast"
        else:
            cast = "unicast"
        inside = cast != "unicast" or any(ip.version == n.version and ip in n for n in self.networks)
        result = (cast, "intranet" if inside else "internet")
        self._cache[key] = result
        return result

    def is_intranet(self, addr: str) -> bool:
        return self.classify(addr)[1] == "intranet"


# ---------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Param:
    kind: str  # time, str, addr, cidrs, int, bool, set:<choices>, enum:<choices>
    doc: str
    default: Any = None
    required: bool = False


def _choices(kind: str) -> tuple[str, ...]:
    return tuple(kind.split(":", 1)[1].split(","))


def _check(name: str, spec: Param, value: Any) -> Any:
    kind = spec.kind
    if kind == "time":
        try:
            result = to_us(value)
        except ContractError:
            raise ParamError(f"{name}: not a timestamp (µs since epoch or ISO 8601): {value!r}") from None
        if not 0 <= result <= FAR_FUTURE:
            raise ParamError(f"{name}: out of range: {value!r}")
        return result
    if kind == "str":
        if not isinstance(value, str) or len(value) > 256:
            raise ParamError(f"{name}: expected text (at most 256 characters)")
        return value
    if kind == "addr":
        try:
            return str(ipaddress.ip_address(str(value).strip()))
        except ValueError:
            raise ParamError(f"{name}: not an IP address: {value!r}") from None
    if kind == "int":
        if isinstance(value, bool):
            raise ParamError(f"{name}: expected an integer, got {value!r}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ParamError(f"{name}: expected an integer, got {value!r}") from None
        if number < 0 or number > 2**62:
            raise ParamError(f"{name}: {number} is out of range")
        return number
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise ParamError(f"{name}: expected true or false, got {value!r}")
    if kind == "cidrs":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ParamError(f"{name}: expected a list of CIDR prefixes")
        out = []
        for item in items:
            try:
                out.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
            except ValueError:
                raise ParamError(f"{name}: not a CIDR prefix: {item!r}") from None
        return tuple(out)
    if kind.startswith("set:"):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ParamError(f"{name}: expected a list of {', '.join(_choices(kind))}")
        bad = [item for item in items if item not in _choices(kind)]
        if bad:
            raise ParamError(f"{name}: unknown value(s) {bad}; choose from {', '.join(_choices(kind))}")
        return frozenset(items)
    if kind.startswith("enum:"):
        if value not in _choices(kind):
            raise ParamError(f"{name}: {value!r} is not one of {', '.join(_choices(kind))}")
        return value
    raise AssertionError(kind)


WINDOW = {
    "start": Param("time", "window start (µs or ISO), inclusive", 0),
    "end": Param("time", "window end (µs or ISO), exclusive", FAR_FUTURE),
}
PROBE = {"probe_id": Param("str", "only this probe's records")}
INTRANET = {"intranet": Param("cidrs", "intranet prefixes (default: the collector's list)")}
FILTERS = {
    "protocols": Param("set:" + ",".join(PROTOCOL_CLASSES), "protocol classes; empty = all"),
    "casts": Param("set:" + ",".join(CASTS), "peer casts; empty = all"),
    "scopes": Param("set:" + ",".join(SCOPES), "peer scopes; empty = all"),
    "direction": Param("enum:" + ",".join(DIRECTIONS), "both, sent or received", "both"),
}
HOST = {"host": Param("addr", "the host's IP address", required=True)}


@dataclass
class Context:
    """What a query needs beside its parameters: the backend and the collector's settings."""

    backend: Any
    intranet: tuple[str, ...] = DEFAULT_INTRANET
    rules: Rules = field(default_factory=Rules)


@dataclass(frozen=True)
class Query:
    name: str
    doc: str
    params: dict[str, Param]
    schema: pa.Schema
    run: Callable[[Context, dict[str, Any]], list[dict[str, Any]]]


REGISTRY: dict[str, Query] = {}


def named(name: str, doc: str, params: dict[str, Param], columns: list[tuple[str, pa.DataType]]):
    def register(func):
        REGISTRY[name] = Query(name, doc, params, pa.schema(columns), func)
        return func

    return register


def validate(query: Query, raw: dict[str, Any], intranet: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ParamError("parameters: expected a JSON object")
    unknown = sorted(set(raw) - set(query.params))
    if unknown:
        raise ParamError(
            f"{unknown[0]}: unknown parameter for {query.name}; known: {', '.join(query.params)}"
        )
    out: dict[str, Any] = {}
    for name, spec in query.params.items():
        value = raw.get(name)
        if value is None or value == "" or value == []:
            if spec.required:
                raise ParamError(f"{name}: required")
            out[name] = spec.default
            if spec.kind.startswith("set:"):
                out[name] = frozenset()
            continue
        out[name] = _check(name, spec, value)
    if "intranet" in query.params and not out.get("intranet"):
        out["intranet"] = intranet
    if "start" in out and "end" in out and out["end"] <= out["start"]:
        raise ParamError("end: must be after start")
    return out


def run(backend: Any, name: str, params: dict[str, Any], context: Context | None = None) -> pa.Table:
    query = REGISTRY.get(name)
    if query is None:
        raise UnknownQuery(name)
    context = context or Context(backend)
    values = validate(query, params or {}, context.intranet)
    rows = query.run(context, values)
    return pa.Table.from_pylist(rows, schema=query.schema)


def describe() -> dict[str, Any]:
    return {
        name: {
            "doc": q.doc,
            "params": {
                p: {"type": spec.kind, "doc": spec.doc, "required": spec.required, "default": spec.default}
                for p, spec in q.params.items()
            },
            "columns": q.schema.names,
        }
        for name, q in REGISTRY.items()
    }


# ---------------------------------------------------------------- helpers


def _fmt_endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _passes(row: dict[str, Any], cast: str, scope: str, params: dict[str, Any]) -> bool:
    if params["protocols"] and protocol_class(row["protocol"]) not in params["protocols"]:
        return False
    if params["casts"] and cast not in params["casts"]:
        return False
    if params["scopes"] and scope not in params["scopes"]:
        return False
    return params["direction"] == "both" or row["direction"] == params["direction"]


def _attributor(ctx: Context, peers: set[str], start: int, end: int) -> Attributor:
    names = ctx.backend.name_candidates(sorted(peers), max(0, start - ctx.rules.lookback_us()), end)
    return Attributor(names, ctx.rules)


def _host_groups(
    ctx: Context, params: dict[str, Any], bucket_us: int
) -> tuple[list[dict], list[dict], Attributor]:
    """(all groups, filtered groups with cast/scope/name attached, attributor)."""
    host = params["host"]
    groups = ctx.backend.host_flow_groups(
        host, params["start"], params["end"], params.get("probe_id"), bucket_us
    ).to_pylist()
    classifier = Classifier(params.get("intranet") or ctx.intranet)
    ambiguous = _ambiguous_endpoints(groups)
    kept = []
    for row in groups:
        row["proto_suffix"] = (row["peer_addr"], row["service_port"]) in ambiguous
        row["cast"], row["scope"] = classifier.classify(row["peer_addr"], row["bcast_mac"])
        if _passes(row, row["cast"], row["scope"], params):
            kept.append(row)
    last = max((r["last_seen"] for r in kept), default=params["start"]) + 1
    attributor = _attributor(ctx, {r["peer_addr"] for r in kept}, params["start"], last)
    for row in kept:
        row["attributed"] = attributor.lookup(row["peer_addr"], host, row["first_seen"], row["last_seen"])
    return groups, kept, attributor


def _ambiguous_endpoints(groups: list[dict[str, Any]]) -> set[tuple[str, int]]:
    """Server endpoints (peer, port) the host reached over more than one protocol in the window
    (53 over UDP and TCP, 443 over TCP and QUIC): their endpoint keys carry the protocol."""
    protocols: dict[tuple[str, int], set[int]] = defaultdict(set)
    for row in groups:
        if row["peer_is_server"] and protocol_class(row["protocol"]) in ("tcp", "udp"):
            protocols[(row["peer_addr"], row["service_port"])].add(row["protocol"])
    return {endpoint for endpoint, seen in protocols.items() if len(seen) > 1}


def _endpoint_id(row: dict[str, Any]) -> tuple:
    return (row["peer_addr"], row["service_port"], row["protocol"], row["peer_is_server"])


def _peer_key(row: dict[str, Any], aggregate: str) -> tuple[str, str]:
    """(aggregation key, label) of a group."""
    addr = row["peer_addr"]
    named_as = row["attributed"].name if row["attributed"] else ""
    if aggregate == "endpoint":
        if row["peer_is_server"] and protocol_class(row["protocol"]) in ("tcp", "udp"):
            suffix = "/" + protocol_class(row["protocol"]) if row.get("proto_suffix") else ""
            key = _fmt_endpoint(addr, row["service_port"]) + suffix
            return key, (_fmt_endpoint(named_as, row["service_port"]) + suffix if named_as else key)
        return addr, named_as or addr
    if aggregate == "ip":
        return addr, named_as or addr
    if aggregate == "fqdn":
        return (named_as, named_as) if named_as else (addr, addr)
    if aggregate == "domain":
        if named_as:
            domain = registered_domain(named_as)
            return domain, domain
        return addr, addr
    country, _asn, org = geo(addr)
    value = org if aggregate == "org" else country
    return (value, value) if value else (addr, addr)


# ---------------------------------------------------------------- the queries

I64 = pa.int64()
STR = pa.string()


@named(
    "time_range", "first and last flow time", PROBE, [("first_seen", I64), ("last_seen", I64), ("flows", I64)]
)
def _time_range(ctx: Context, params: dict[str, Any]) -> list[dict[str, Any]]:
    return [ctx.backend.flow_time_range(params.get("probe_id"))]


@named(
    "probes",
    "every probe and NetFlow exporter with its latest health",
    {},
    [
        ("probe_id", STR),
        ("last_seen", I64),
        ("hostname", STR),
        ("version", STR),
        ("iface", STR),
        ("packets_captured", I64),
        ("kernel_drops", I64),
        ("parse_errors", STR),
        ("flows_exported", I64),
        ("spool_bytes", I64),
        ("spool_batches", I64),
        ("batches", I64),
        ("flows_stored", I64),
        ("source", STR),
    ],
)
def _probes(ctx: Context, params: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for row in ctx.backend.source_summary().to_pylist():
        row["flows_stored"] = row.pop("flows")
        rows.append(row)
    return rows


@named(
    "hosts",
    "intranet hosts (or all addresses) with their traffic, by bytes",
    {**WINDOW, **PROBE, **INTRANET, "intranet_only": Param("bool", "only intranet unicast addresses", True)},
    [
        ("addr", STR),
        ("name", STR),
        ("name_source", STR),
        ("bytes_sent", I64),
        ("bytes_received", I64),
        ("packets", I64),
        ("flows", I64),
        ("peers", I64),
        ("first_seen", I64),
        ("last_seen", I64),
    ],
)
def _hosts(ctx: Context, params: dict[str, Any]) -> list[dict[str, Any]]:
    classifier = Classifier(params["intranet"])
    rows = []
    for row in ctx.backend.address_totals(params["start"], params["end"], params.get("probe_id")).to_pylist():
        cast, scope = classifier.classify(row["addr"])
        if params["intranet_only"] and (cast != "unicast" or scope != "intranet" or not row["bytes_sent"]):
            # an intranet host is an address that sent something: a subnet's directed broadcast
            # (x.x.x.255 of a /24 inside a configured /16) only ever receives, and is no host
            continue
        rows.append(row)
    names = ctx.backend.name_candidates(
        [r["addr"] for r in rows], max(0, params["start"] - ctx.rules.lookback_us()), params["end"]
    ).to_pylist()
    best: dict[str, dict] = {}
    from collector.attribution import SOURCE_RANK

    for name in names:
        current = best.get(name["addr"])
        rank = (SOURCE_RANK.get(name["source"], 9), -name["ts"])
        if current is None or rank < (SOURCE_RANK.get(current["source"], 9), -current["ts"]):
            best[name["addr"]] = name
    for row in rows:
        hit = best.get(row["addr"])
        row["name"] = ((hit["cname_chain"] or [hit["name"]])[0]) if hit else ""
        row["name_source"] = hit["source"] if hit else ""
    rows.sort(key=lambda r: (-(r["bytes_sent"] + r["bytes_received"]), r["addr"]))
    return rows


HOST_FLOW_COLUMNS = [
    ("flow_start", I64),
    ("flow_end", I64),
    ("direction", STR),
    ("host_port", I64),
    ("peer_addr", STR),
    ("peer_port", I64),
    ("protocol", I64),
    ("service", STR),
    ("packets", I64),
    ("bytes", I64),
    ("tcp_flags", I64),
    ("initiator", STR),
    ("end_reason", STR),
    ("scope", STR),
    ("cast", STR),
    ("peer_name", STR),
    ("name_source", STR),
    ("cname_chain", pa.list_(STR)),
    ("domain", STR),
    ("probe_id", STR),
    ("sampling", I64),
]


@named(
    "host_flows",
    "the host's flows, oriented from the host, with the peer's attributed name",
    {
        **HOST,
        **WINDOW,
        **PROBE,
        **INTRANET,
        **FILTERS,
        "limit": Param("int", "at most this many flows", 10000),
    },
    HOST_FLOW_COLUMNS,
)
def _host_flows(ctx: Context, params: dict[str, Any]) -> list[dict[str, Any]]:
    host = params["host"]
    classifier = Classifier(params["intranet"])
    limit = params["limit"]
    rows = ctx.backend.host_flow_rows(
        host, params["start"], params["end"], params.get("probe_id"), limit
    ).to_pylist()
    kept = []
    for row in rows:
        row["cast"], row["scope"] = classifier.classify(
            row["peer_addr"], row.pop("dst_mac") == "ff:ff:ff:ff:ff:ff"
        )
        if _passes(row, row["cast"], row["scope"], params):
            kept.append(row)
    _attribute_flows(ctx, kept, params["start"], host)
    return kept


def _attribute_flows(ctx: Context, rows: list[dict[str, Any]], start: int, host: str | None = None) -> None:
    """Service and the peer's name (as its host knew it) of each host-oriented flow row, in place."""
    last = max((r["flow_end"] for r in rows), default=start) + 1
    attributor = _attributor(ctx, {r["peer_addr"] for r in rows}, start, last)
    for row in rows:
        initiator = row["initiator"]
        if initiator:
            peer_is_server = (initiator == "src") == (row["direction"] == "sent")
        else:
            peer_is_server = row["peer_port"] <= row["host_port"]
        port = row["peer_port"] if peer_is_server else row["host_port"]
        row["service"] = service_label(row["protocol"], port)
        client = host or row["host"]
        hit = attributor.lookup(row["peer_addr"], client, row["flow_start"], row["flow_end"])
        row["peer_name"] = hit.name if hit else ""
        row["name_source"] = hit.source if hit else ""
        row["cname_chain"] = list(hit.cname_chain) if hit else []
        row["domain"] = registered_domain(hit.name) if hit else ""


# every flow once (``flows``): a host flow's columns, with the host it is listed under and the count
FLOW_COLUMNS = [*HOST_FLOW_COLUMNS[:2], ("host", STR), *HOST_FLOW_COLUMNS[2:], ("matched", I64)]


def host_side(row: dict[str, Any], classifier: Classifier) -> str:
    """Which address of a flow ("src" or "dst") is its host (docs/CONTRACT.md, Decisions).

    The intranet unicast side when exactly one side is one; otherwise the side that opened the
    flow (the initiator, else the higher port, as the server is taken to be the lower port)."""
    src_local = classifier.classify(row["src_addr"]) == ("unicast", "intranet")
    dst_local = classifier.classify(row["dst_addr"]) == ("unicast", "intranet")
    if src_local != dst_local:
        return "src" if src_local else "dst"
    initiator = row["initiator"]
    if initiator in ("src", "dst"):
        return initiator
    return "src" if row["src_port"] >= row["dst_port"] else "dst"


def _oriented(row: dict[str, Any], side: str) -> dict[str, Any]:
    other = "dst" if side == "src" else "src"
    return {
        "flow_start": row["flow_start"],
        "flow_end": row["flow_end"],
        "host": row[f"{side}_addr"],
        "direction": "sent" if side == "src" else "received",
        "host_port": row[f"{side}_port"],
        "peer_addr": row[f"{other}_addr"],
        "peer_port": row[f"{other}_port"],
        **{key: row[key] for key in _FLOW_PASSED},
    }


_FLOW_PASSED = ("protocol", "packets", "bytes", "tcp_flags", "initiator", "end_reason", "probe_id")
_FLOW_PASSED += ("sampling",)


@named(
    "flows",
    "every flow of the window once, oriented from its host, with the peer's attributed name",
    {**WINDOW, **PROBE, **INTRANET, **FILTERS, "limit": Param("int", "at most this many flows", 10000)},
    FLOW_COLUMNS,
)
def _flows(ctx: Context, params: dict[str, Any]) -> list[dict[str, Any]]:
    classifier = Classifier(params["intranet"])
    kept: list[dict[str, Any]] = []
    matched = 0
    table = ctx.backend.flow_rows(params["start"], params["end"], params.get("probe_id"))
    # Python rows a chunk at a time, so a long window never holds all its flows as dicts
    for batch in table.to_batches(max_chunksize=65536):
        for flow in batch.to_pylist():
            row = _oriented(flow, host_side(flow, classifier))
            row["cast"], row["scope"] = classifier.classify(
                row["peer_addr"], flow["dst_mac"] == "ff:ff:ff:ff:ff:ff"
            )
            if not _passes(row, row["cast"], row["scope"], params):
                continue
            matched += 1
            if len(kept) < params["limit"]:
                kept.append(row)
    _attribute_flows(ctx, kept, params["start"])
    for row in kept:
        row["matched"] = matched
    return kept


PEER_COLUMNS = [
    ("peer", STR),
    ("label", STR),
    ("service", STR),
    ("scope", STR),
    ("cast", STR),
    ("protocol", I64),
    ("bytes_sent", I64),
    ("bytes_received", I64),
    ("packets_sent", I64),
    ("packets_received", I64),
    ("flows", I64),
    ("endpoints", I64),
    ("first_seen", I64),
    ("last_seen", I64),
    ("name_source", STR),
]
AGGREGATE_PARAMS = {
    "aggregate": Param("enum:" + ",".join(AGGREGATES), "how peers are grouped", "ip"),
    "min_volume": Param("int", "peers under this measure are folded into 'other'", 0),
    "top_n": Param("int", "peers beyond this many are folded into 'other'", 40),
    "measure": Param("enum:" + ",".join(MEASURES), "what ranks peers", "bytes"),
}


def _aggregate_peers(kept: list[dict[str, Any]], aggregate: str) -> dict[str, dict[str, Any]]:
    peers: dict[str, dict[str, Any]] = {}
    for row in kept:
        key, label = _peer_key(row, aggregate)
        peer = peers.get(key)
        if peer is None:
            peer = peers[key] = {
                "peer": key,
                "label": label,
                "bytes_sent": 0,
                "bytes_received": 0,
                "packets_sent": 0,
                "packets_received": 0,
                "flows": 0,
                "_endpoints": set(),
                "first_seen": row["first_seen"],
                "last_seen": row["last_seen"],
                "_service": Counter(),
                "_scope": Counter(),
                "_cast": Counter(),
                "_protocol": Counter(),
                "_source": Counter(),
            }
        side = "sent" if row["direction"] == "sent" else "received"
        peer[f"bytes_{side}"] += row["bytes"]
        peer[f"packets_{side}"] += row["packets"]
        peer["flows"] += row["flows"]
        peer["_endpoints"].add(_endpoint_id(row))
        peer["first_seen"] = min(peer["first_seen"], row["first_seen"])
        peer["last_seen"] = max(peer["last_seen"], row["last_seen"])
        weight = row["bytes"] + 1
        peer["_service"][service_label(row["protocol"], row["service_port"])] += weight
        peer["_scope"][row["scope"]] += weight
        peer["_cast"][row["cast"]] += weight
        peer["_protocol"][row["protocol"]] += weight
        peer["_source"][row["attributed"].source if row["attributed"] else ""] += weight
    return peers


def _measure(peer: dict[str, Any], measure: str) -> int:
    if measure == "flows":
        return peer["flows"]
    return peer[f"{measure}_sent"] + peer[f"{measure}_received"]


def _finish_peer(peer: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in peer.items() if not k.startswith("_")}
    out["endpoints"] = len(peer["_endpoints"])
    for column in ("service", "scope", "cast", "protocol"):
        out[column] = peer[f"_{column}"].most_common(1)[0][0]
    named_sources = Counter({k: v for k, v in peer["_source"].items() if k})
    out["name_source"] = named_sources.most_common(1)[0][0] if named_sources else ""
    return out


@named(
    "host_peers",
    "the host's peers aggregated, top N by a measure, the rest folded into 'other'",
    {**HOST, **WINDOW, **PROBE, **INTRANET, **FILTERS, **AGGREGATE_PARAMS},
    PEER_COLUMNS,
)
def _host_peers(ctx: Context, params: dict[str, Any]) -> list[dict[str, Any]]:
    _groups, kept, _ = _host_groups(ctx, params, PEER_BUCKET_US)
    peers = _aggregate_peers(kept, params["aggregate"])
    measure = params["measure"]
    ranked = sorted(peers.values(), key=lambda p: (-_measure(p, measure), p["peer"]))
    shown = [p for p in ranked if _measure(p, measure) >= params["min_volume"]][: params["top_n"]]
    shown_keys = {p["peer"] for p in shown}
    rest = [p for p in ranked if p["peer"] not in shown_keys]
    rows = [_finish_peer(p) for p in shown]
    if rest:
        other = {
            "peer": "other",
            "label": "other",
            "service": "",
            "scope": "",
            "cast": "",
            "protocol": 0,
            "endpoints": sum(len(p["_endpoints"]) for p in rest),
            "first_seen": min(p["first_seen"] for p in rest),
            "last_seen": max(p["last_seen"] for p in rest),
            "name_source": "",
        }
        for column in ("bytes_sent", "bytes_received", "packets_sent", "packets_received", "flows"):
            other[column] = sum(p[column] for p in rest)
        rows.append(other)
    return rows


@named(
    "host_counts",
    "how many flows and endpoints the host has, before and after the filters",
    {**HOST, **WINDOW, **PROBE, **INTRANET, **FILTERS, "aggregate": AGGREGATE_PARAMS["aggregate"]},
    [
        ("flows_total", I64),
        ("endpoints_total", I64),
        ("flows_filtered", I64),
        ("endpoints_filtered", I64),
        ("peers_aggregated", I64),
    ],
)
def _host_counts(ctx: Context, params: dict[str, Any]) -> list[dict[str, Any]]:
    groups, kept, _ = _host_groups(ctx, params, PEER_BUCKET_US)
    return [
        {
            "flows_total": sum(r["flows"] for r in groups),
            "endpoints_total": len({_endpoint_id(r) for r in groups}),
            "flows_filtered": sum(r["flows"] for r in kept),
            "endpoints_filtered": len({_endpoint_id(r) for r in kept}),
            "peers_aggregated": len({_peer_key(r, params["aggregate"])[0] for r in kept}),
        }
    ]


@named(
    "names",
    "name records, oldest first",
    {
        **WINDOW,
        "host": Param("addr", "the client that asked / spoke"),
        "addr": Param("addr", "the address named"),
        "name": Param("str", "substring of the name"),
        "limit": Param("int", "at most this many rows", 10000),
    },
    [
        ("ts", I64),
        ("client_addr", STR),
        ("addr", STR),
        ("name", STR),
        ("source", STR),
        ("qtype", STR),
        ("ttl", I64),
        ("cname_chain", pa.list_(STR)),
        ("rcode", I64),
        ("probe_id", STR),
    ],
)
def _names(ctx: Context, params: dict[str, Any]) -> list[dict[str, Any]]:
    return ctx.backend.names_search(
        params["start"],
        params["end"],
        params.get("host"),
        params.get("addr"),
        params.get("name"),
        params["limit"],
    ).to_pylist()


@named(
    "timeline",
    "the host's traffic per time bucket and key",
    {
        **HOST,
        **WINDOW,
        **PROBE,
        **INTRANET,
        **FILTERS,
        "bucket": Param("int", "bucket width in seconds", 300),
        "by": Param("enum:" + ",".join(TIMELINE_BY), "what a series is", "domain"),
    },
    [("bucket_start", I64), ("key", STR), ("bytes", I64), ("packets", I64), ("flows", I64)],
)
def _timeline(ctx: Context, params: dict[str, Any]) -> list[dict[str, Any]]:
    if params["bucket"] < 1:
        raise ParamError("bucket: must be at least 1 second")
    bucket_us = params["bucket"] * US
    _groups, kept, _ = _host_groups(ctx, params, min(bucket_us, PEER_BUCKET_US))
    series: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in kept:
        if params["by"] == "peer":
            key = row["peer_addr"]
        elif params["by"] == "service":
            key = service_label(row["protocol"], row["service_port"])
        else:
            key = registered_domain(row["attributed"].name) if row["attributed"] else row["peer_addr"]
        bucket = (row["bucket_start"] // bucket_us) * bucket_us
        totals = series[(bucket, key)]
        totals[0] += row["bytes"]
        totals[1] += row["packets"]
        totals[2] += row["flows"]
    return [
        {"bucket_start": b, "key": k, "bytes": v[0], "packets": v[1], "flows": v[2]}
        for (b, k), v in sorted(series.items())
    ]


def _orient(row: dict[str, Any], classifier: Classifier) -> tuple[str, str] | None:
    """(intranet host, internet peer) of a src/dst group, or None when it is not such a pair."""
    src_in, dst_in = classifier.is_intranet(row["src_addr"]), classifier.is_intranet(row["dst_addr"])
    if src_in and not dst_in:
        return row["src_addr"], row["dst_addr"]
    if dst_in and not src_in:
        return row["dst_addr"], row["src_addr"]
    return None


@named(
    "findings_unnamed",
    "internet peers with no name seen for them (hard-coded addresses)",
    {**WINDOW, **PROBE, **INTRANET},
    [
        ("host", STR),
        ("peer_addr", STR),
        ("peer_port", I64),
        ("protocol", I64),
        ("bytes", I64),
        ("flows", I64),
        ("first_seen", I64),
    ],
)
def _findings_unnamed(ctx: Context, params: dict[str, Any]) -> list[dict[str, Any]]:
    classifier = Classifier(params["intranet"])
    found: dict[tuple, dict[str, Any]] = {}
    for row in ctx.backend.pair_groups(params["start"], params["end"], params.get("probe_id")).to_pylist():
        pair = _orient(row, classifier)
        if pair is None:
            continue
        key = (pair[0], pair[1], row["service_port"], row["protocol"])
        hit = found.get(key)
        if hit is None:
            found[key] = {
                "host": pair[0],
                "peer_addr": pair[1],
                "peer_port": row["service_port"],
                "protocol": row["protocol"],
                "bytes": row["bytes"],
                "flows": row["flows"],
                "first_seen": row["first_seen"],
            }
        else:
            hit["bytes"] += row["bytes"]
            hit["flows"] += row["flows"]
            hit["first_seen"] = min(hit["first_seen"], row["first_seen"])
    peers = {row["peer_addr"] for row in found.values()}
    start = max(0, params["start"] - ctx.rules.lookback_us())
    named_peers = set(
        ctx.backend.name_candidates(sorted(peers), start, params["end"]).column("addr").to_pylist()
    )
    rows = [row for row in found.values() if row["peer_addr"] not in named_peers]
    rows.sort(key=lambda r: (-r["bytes"], r["host"], r["peer_addr"], r["peer_port"]))
    return rows


@named(
    "findings_new_peers",
    "host/peer pairs whose first flow ever falls in the window",
    {**WINDOW, **PROBE, **INTRANET},
    [("host", STR), ("peer_addr", STR), ("bytes", I64), ("flows", I64), ("first_seen", I64)],
)
def _findings_new_peers(ctx: Context, params: dict[str, Any]) -> list[dict[str, Any]]:
    classifier = Classifier(params["intranet"])
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for row in ctx.backend.pair_groups(
        params["start"], params["end"], params.get("probe_id"), since=0
    ).to_pylist():
        src_in, dst_in = classifier.is_intranet(row["src_addr"]), classifier.is_intranet(row["dst_addr"])
        host, peer = (
            (row["dst_addr"], row["src_addr"])
            if dst_in and not src_in
            else (row["src_addr"], row["dst_addr"])
        )
        if src_in and dst_in:  # both inside: the client is the host
            server = row["server_addr"]
            host, peer = (row["dst_addr"], row["src_addr"]) if server == row["src_addr"] else (host, peer)
        entry = pairs.setdefault(
            (host, peer),
            {"host": host, "peer_addr": peer, "bytes": 0, "flows": 0, "first_seen": None, "_ever": None},
        )
        entry["bytes"] += row["bytes"] or 0
        entry["flows"] += row["flows"] or 0
        if row["first_seen"] is not None:
            entry["first_seen"] = min(filter(None, (entry["first_seen"], row["first_seen"])))
        entry["_ever"] = min(filter(lambda v: v is not None, (entry["_ever"], row["first_ever"])))
    rows = [
        {k: v for k, v in e.items() if k != "_ever"}
        for e in pairs.values()
        if e["flows"] and e["_ever"] >= params["start"]
    ]
    rows.sort(key=lambda r: (r["first_seen"], r["host"], r["peer_addr"]))
    return rows


@named(
    "findings_ports",
    "server ports with no registered service name",
    {**WINDOW, **PROBE},
    [("protocol", I64), ("port", I64), ("flows", I64), ("bytes", I64), ("hosts", I64)],
)
def _findings_ports(ctx: Context, params: dict[str, Any]) -> list[dict[str, Any]]:
    ports: dict[tuple[int, int], dict[str, Any]] = {}
    for row in ctx.backend.pair_groups(params["start"], params["end"], params.get("probe_id")).to_pylist():
        if row["protocol"] not in (6, 17) or row["service_port"] == 0:
            continue
        if service_name(row["protocol"], row["service_port"]) is not None:
            continue
        entry = ports.setdefault(
            (row["protocol"], row["service_port"]),
            {
                "protocol": row["protocol"],
                "port": row["service_port"],
                "flows": 0,
                "bytes": 0,
                "_hosts": set(),
            },
        )
        entry["flows"] += row["flows"]
        entry["bytes"] += row["bytes"]
        entry["_hosts"].add(row["server_addr"])
    rows = [
        {**{k: v for k, v in e.items() if k != "_hosts"}, "hosts": len(e["_hosts"])} for e in ports.values()
    ]
    rows.sort(key=lambda r: (-r["flows"], r["protocol"], r["port"]))
    return rows
