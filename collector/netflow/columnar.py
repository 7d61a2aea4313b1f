"""The columnar fast path: data sets of fixed-length flow templates → Arrow columns, many sets at once.

``NetflowDecoder.feed(..., batch=ColumnBatch())`` queues each data set of a fixed-length flow
template (and every NetFlow v5/v1 packet) here with the context its records need (export time,
SysUptime, the domain's init time and sampler rates at that moment) instead of building one dict
and one Flow per record. ``ColumnBatch.tables()`` then decodes all queued sets of one template
together: one ``np.frombuffer`` with a structured big-endian dtype made from the template, and the
rules of ``fields.record_to_flow`` / ``record_times`` / ``record_sampling`` applied to whole
columns. The per-record path stays the reference (and decodes variable-length templates);
tests/test_netflow_columnar.py proves both give the same flows, field by field.

Which elements a template carries is known when it is compiled, so every ``rec.get(...)`` choice
of the reference path becomes a choice made once per template; only values vary per row.

A group whose values would leave 64-bit arithmetic (times beyond year 2248 in ms, rates of 2^32
or more, sampling intervals near 2^63) is decoded by the per-record path instead, so the two
paths never disagree on overflow.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from socket import AF_INET6, inet_ntop
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from collector.columns import FLOW_SCHEMA
from hostflow.records import (
    END_ACTIVE,
    END_EVICTED,
    END_EXPORTER,
    END_FIN,
    END_IDLE,
    END_RST,
    END_SHUTDOWN,
    FLOW_FIELDS,
    INIT_DST,
    INIT_SRC,
    INIT_UNKNOWN,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Flow,
)

from .fields import FLOAT, IPV4, IPV6, MAC, MAX_COUNT, NTP_EPOCH_OFFSET, UINT, emit_records
from .templates import Template

log = logging.getLogger(__name__)

_OCTETS = pa.array([str(i) for i in range(256)])
_END_LABELS = pa.array([END_EXPORTER, END_IDLE, END_ACTIVE, END_FIN, END_SHUTDOWN, END_EVICTED, END_RST])
_END_RST_CODE = 6
_INIT_LABELS = pa.array([INIT_UNKNOWN, INIT_SRC, INIT_DST])

# bounds that keep every step of the time and sampling arithmetic inside int64 / uint64
_MS_LIMIT = 1 << 43  # ms → µs stays below 2^53
_SECONDS_LIMIT = 1 << 33
_DURATION_LIMIT = 1 << 62
_RATE_LIMIT = 1 << 32  # Flow.sampling is a UINTEGER
_INTERVAL_LIMIT = 1 << 62
_MS_FIELDS = (
    "flowStartSysUpTime",
    "flowEndSysUpTime",
    "systemInitTimeMilliseconds",
    "flowStartMilliseconds",
    "flowEndMilliseconds",
    "flowDurationMilliseconds",
    "observationTimeMilliseconds",
)
_SECOND_FIELDS = ("flowStartSeconds", "flowEndSeconds")
_MICRO_FIELDS = ("flowStartDeltaMicroseconds", "flowEndDeltaMicroseconds", "flowDurationMicroseconds")
_INTERVAL_FIELDS = ("samplingPacketInterval", "samplingPacketSpace")


class _Unsafe(Exception):
    """Values outside the range the vectorised arithmetic handles exactly: use the per-record path."""


@dataclass(slots=True)
class Plan:
    """How to read one template's records with numpy (built once per template)."""

    dtype: np.dtype
    present: frozenset[str]
    kinds: dict[str, tuple[str, int]]  # name → (kind, length)


def plan_for(template: Template) -> Plan:
    plan = template.plan
    if plan is None:
        names: list[str] = []
        formats: list[Any] = []
        offsets: list[int] = []
        kinds: dict[str, tuple[str, int]] = {}
        offset = 0
        for name, kind, length in template.walk:
            if name:
                if kind == UINT:
                    fmt: Any = f">u{length}" if length in (1, 2, 4, 8) else ("u1", (length,))
                elif kind == FLOAT:
                    fmt = f">f{length}"
                else:  # addresses and MACs: their bytes
                    fmt = ("u1", (length,))
                names.append(name)
                formats.append(fmt)
                offsets.append(offset)
                kinds[name] = (kind, length)
            offset += length
        dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": offset})
        plan = Plan(dtype, frozenset(kinds), kinds)
        template.plan = plan
    return plan


@dataclass(slots=True)
class _Group:
    """Data sets of one template waiting to be decoded together, each with its context."""

    template: Template
    exporter: str
    probe_id: str
    version: int
    bodies: list[Any] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    export_us: list[int] = field(default_factory=list)
    uptime_ms: list[int] = field(default_factory=list)  # -1: none (IPFIX)
    init_ms: list[int] = field(default_factory=list)  # -1: not known
    default_rate: list[int] = field(default_factory=list)
    samplers: list[dict[int, int] | None] = field(default_factory=list)
    records: int = 0


class ColumnBatch:
    """Decoded output waiting to become Arrow tables: queued data sets (fast path) and Flow objects
    (per-record path: variable-length templates, and groups outside the fast path's range).

    Fed under the decoder's lock by one thread; ``tables()`` needs no decoder state, so another
    thread (the collector's writer) may build the tables once the batch is handed over. Made by
    ``NetflowDecoder.new_batch()``, it adds the flows it makes to the decoder's metrics.
    """

    def __init__(self, metrics: Any = None, lock: Any = None) -> None:
        self._metrics = metrics
        self._lock = lock
        self._groups: dict[tuple[int, str], _Group] = {}
        self._flows: dict[tuple[str, str], list[Flow]] = defaultdict(list)
        self.records = 0  # records queued in groups, plus flows added by the per-record path
        self.columnar_rows = 0  # flows the columnar path has made (all time)
        self.errors = 0  # records lost to an unexpected decode error (all time)
        self.out_of_range = 0  # flows with values the contract's columns cannot hold (all time)

    def __len__(self) -> int:
        return self.records

    def add_flows(self, exporter: str, flows: list[Flow]) -> None:
        """Flows the per-record path made (variable-length templates)."""
        for flow in flows:
            self._flows[(exporter, flow.probe_id)].append(flow)
        self.records += len(flows)

    def add(
        self,
        template: Template,
        exporter: str,
        probe_id: str,
        version: int,
        body: Any,
        count: int,
        export_us: int,
        uptime_ms: int | None,
        init_ms: int | None,
        default_rate: int,
        samplers: dict[int, int] | None,
    ) -> None:
        key = (id(template), probe_id)  # v5/v1 templates are shared by every exporter
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(template, exporter, probe_id, version)
        group.bodies.append(body)
        group.counts.append(count)
        group.export_us.append(export_us)
        group.uptime_ms.append(-1 if uptime_ms is None else uptime_ms)
        group.init_ms.append(-1 if init_ms is None else init_ms)
        group.default_rate.append(default_rate)
        group.samplers.append(samplers or None)
        group.records += count
        self.records += count

    def absorb(self, other: ColumnBatch) -> None:
        """Move ``other``'s queued sets and flows into this batch (it is left empty), so that one
        ``tables()`` decodes them together: one table per template, not one per hand-over (a
        table of many small chunks inserts slower, and each decode call has a fixed cost)."""
        for key, theirs in other._groups.items():
            group = self._groups.get(key)
            if group is None:
                self._groups[key] = theirs
                continue
            group.bodies += theirs.bodies
            group.counts += theirs.counts
            group.export_us += theirs.export_us
            group.uptime_ms += theirs.uptime_ms
            group.init_ms += theirs.init_ms
            group.default_rate += theirs.default_rate
            group.samplers += theirs.samplers
            group.records += theirs.records
        for key, flows in other._flows.items():
            self._flows[key].extend(flows)
        self.records += other.records
        other._groups, other._flows, other.records = {}, defaultdict(list), 0

    def tables(self) -> list[tuple[str, str, pa.Table]]:
        """(exporter, probe_id, flows in the contract's schema) for everything queued; empties the batch."""
        groups, self._groups = self._groups, {}
        flows, self._flows = self._flows, defaultdict(list)
        errors, out_of_range = self.errors, self.out_of_range
        parts: dict[tuple[str, str], list[pa.Table]] = defaultdict(list)
        for group in groups.values():
            key = (group.exporter, group.probe_id)
            try:
                table = group_table(group)
            except _Unsafe:
                flows[key].extend(group_flows(group))
                continue
            except Exception:  # noqa: BLE001 - counted by the decoder; other groups still count
                self.errors += group.records
                log.exception("NetFlow columnar decode failed for %d records from %s", group.records, key[0])
                continue
            self.columnar_rows += table.num_rows
            if table.num_rows:
                parts[key].append(table)
        for key, some in flows.items():
            if some:
                table, bad = flows_table(some)
                self.out_of_range += bad
                if table.num_rows:
                    parts[key].append(table)
        self.records = 0
        out = [
            (exporter, probe_id, tables[0] if len(tables) == 1 else pa.concat_tables(tables))
            for (exporter, probe_id), tables in parts.items()
        ]
        if self._metrics is not None:
            self._count(
                sum(table.num_rows for _, _, table in out),
                self.errors - errors,
                self.out_of_range - out_of_range,
            )
        return out

    def _count(self, flows: int, errors: int, out_of_range: int) -> None:
        with self._lock:
            self._metrics.flows += flows
            drops = self._metrics.drops
            if errors:
                drops["columnar_error"] = drops.get("columnar_error", 0) + errors
            if out_of_range:
                drops["out_of_range"] = drops.get("out_of_range", 0) + out_of_range


def flows_table(flows: list[Flow]) -> tuple[pa.Table, int]:
    """Flow objects → a table in FLOW_SCHEMA (the per-record path's output joins the fast path's),
    and how many flows were left out because a value does not fit its column (a time past 2262)."""
    try:
        return _flows_table(flows), 0
    except (pa.ArrowInvalid, OverflowError):
        pass
    fitting = []
    for flow in flows:
        try:
            _flows_table([flow])
        except (pa.ArrowInvalid, OverflowError):
            continue
        fitting.append(flow)
    return _flows_table(fitting), len(flows) - len(fitting)


def _flows_table(flows: list[Flow]) -> pa.Table:
    columns = {name: [getattr(flow, name) for flow in flows] for name in FLOW_FIELDS}
    return pa.Table.from_arrays(
        [pa.array(columns[spec.name], spec.type) for spec in FLOW_SCHEMA], schema=FLOW_SCHEMA
    )


def table_flows(table: pa.Table) -> list[Flow]:
    """A FLOW_SCHEMA table → Flow objects (times as µs integers), for comparisons and tests."""
    columns = [
        table.column(name).cast(pa.int64()).to_pylist()
        if pa.types.is_timestamp(table.schema.field(name).type)
        else table.column(name).to_pylist()
        for name in FLOW_FIELDS
    ]
    return [Flow(*row) for row in zip(*columns, strict=True)]


def group_flows(group: _Group) -> list[Flow]:
    """The per-record path over a group's data sets (same contexts, same order)."""
    out: list[Flow] = []
    template = group.template
    for index, body in enumerate(group.bodies):
        uptime = group.uptime_ms[index]
        init = group.init_ms[index]
        emit_records(
            template.decode(body),
            group.probe_id,
            group.export_us[index],
            None if uptime < 0 else uptime,
            None if init < 0 else init,
            group.default_rate[index],
            group.samplers[index],
            template.has_sampling,
            out,
        )
    return out


# ---------------------------------------------------------------- columns


def _uint(records: np.ndarray, plan: Plan, name: str) -> np.ndarray | None:
    """A UINT field as uint64 (3/5/6/7-byte fields assembled from their bytes), None when absent."""
    kind = plan.kinds.get(name)
    if kind is None:
        return None
    column = records[name]
    if column.ndim == 1:
        return column.astype(np.uint64)
    value = np.zeros(len(column), dtype=np.uint64)
    for index in range(kind[1]):
        value = (value << np.uint64(8)) | column[:, index].astype(np.uint64)
    return value


def _check_below(values: np.ndarray | None, limit: int) -> None:
    if values is not None and len(values) and int(values.max()) >= limit:
        raise _Unsafe


def _strings_of_bytes(raw: np.ndarray, fmt) -> pa.Array:
    """Rows of bytes → text, each distinct value formatted once (addresses and MACs repeat)."""
    width = raw.shape[1]
    packed = np.ascontiguousarray(raw).view(f"V{width}").ravel()
    uniques, inverse = np.unique(packed, return_inverse=True)
    texts = pa.array([fmt(value.tobytes()) for value in uniques], pa.string())
    return texts.take(pa.array(inverse.astype(np.int32)))


def _ipv4_text(raw: np.ndarray) -> pa.Array:
    octets = [_OCTETS.take(pa.array(raw[:, index])) for index in range(4)]
    return pc.binary_join_element_wise(*octets, ".")


def _ipv6_text(raw: np.ndarray) -> pa.Array:
    return _strings_of_bytes(raw, lambda value: inet_ntop(AF_INET6, value))


def _mac_text(raw: np.ndarray) -> pa.Array:
    return _strings_of_bytes(raw, lambda value: value.hex(":"))


def _first_present(*columns: np.ndarray | None) -> np.ndarray | None:
    for column in columns:
        if column is not None:
            return column
    return None


def _ntp_to_us(value: np.ndarray) -> np.ndarray:
    seconds = (value >> np.uint64(32)).astype(np.int64)
    fraction = value & np.uint64(0xFFFFFFFF)
    return (seconds - NTP_EPOCH_OFFSET) * 1_000_000 + (
        (fraction * np.uint64(1_000_000)) >> np.uint64(32)
    ).astype(np.int64)


def _uptime_delta_ms(uptime: np.ndarray, stamp: np.ndarray) -> np.ndarray:
    delta = ((uptime.astype(np.uint64) - stamp) & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return np.where(delta >= 1 << 31, delta - (1 << 32), delta)


def _times(
    get, n: int, export_us: np.ndarray, uptime: np.ndarray, init_ms: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """fields.record_times over columns; ``get(name)`` gives a uint64 column or None."""
    start: np.ndarray | None = None
    end: np.ndarray | None = None
    first_raw, last_raw = get("flowStartSysUpTime"), get("flowEndSysUpTime")
    if first_raw is not None or last_raw is not None:
        first = first_raw if first_raw is not None else last_raw
        last = last_raw if last_raw is not None else first
        own_init = get("systemInitTimeMilliseconds")
        if own_init is not None:
            init, has_init = own_init.astype(np.int64), np.ones(n, dtype=bool)
        else:
            init, has_init = init_ms, init_ms >= 0
        has_uptime = uptime >= 0
        first_i, last_i = first.astype(np.int64), last.astype(np.int64)
        by_init_start, by_init_end = (init + first_i) * 1000, (init + last_i) * 1000
        by_uptime_start = export_us - _uptime_delta_ms(uptime, first) * 1000
        by_uptime_end = export_us - _uptime_delta_ms(uptime, last) * 1000
        span = ((last - first) & np.uint64(0xFFFFFFFF)).astype(np.int64) * 1000
        start = np.where(has_init, by_init_start, np.where(has_uptime, by_uptime_start, export_us - span))
        end = np.where(has_init, by_init_end, np.where(has_uptime, by_uptime_end, export_us))
    if start is None:
        start = _absolute(get, "flowStart", export_us)
    if end is None:
        end = _absolute(get, "flowEnd", export_us)
    if start is None or end is None:
        duration = get("flowDurationMicroseconds")
        if duration is None:
            millis = get("flowDurationMilliseconds")
            duration = millis * np.uint64(1000) if millis is not None else None
        if start is None and end is None:
            observed = get("observationTimeMilliseconds")
            end = observed.astype(np.int64) * 1000 if observed is not None else export_us.copy()
        if duration is not None:
            if start is None:
                start = end - duration.astype(np.int64)
            else:
                end = start + duration.astype(np.int64)
        elif start is None:
            start = end.copy()
        else:
            end = start.copy()
    start = np.maximum(start, 0)
    end = np.maximum(end, start)
    return start, end


def _absolute(get, prefix: str, export_us: np.ndarray) -> np.ndarray | None:
    value = get(f"{prefix}Milliseconds")
    if value is not None:
        return value.astype(np.int64) * 1000
    value = get(f"{prefix}Seconds")
    if value is not None:
        return value.astype(np.int64) * 1_000_000
    value = get(f"{prefix}Microseconds")
    if value is not None:
        return _ntp_to_us(value)
    value = get(f"{prefix}Nanoseconds")
    if value is not None:
        return _ntp_to_us(value)
    value = get(f"{prefix}DeltaMicroseconds")
    if value is not None:
        return export_us - value.astype(np.int64)
    return None


def _own_rates(get, records: np.ndarray, plan: Plan, n: int) -> np.ndarray:
    """fields.record_sampling over columns: 0 where a record states no rate."""
    rate = np.zeros(n, dtype=np.uint64)
    interval = get("samplingInterval")
    random_interval = get("samplerRandomInterval")
    if interval is not None:
        rate = interval.copy()
    if random_interval is not None:
        rate = np.where(rate == 0, random_interval, rate)
    todo = rate == 0
    packet_interval = get("samplingPacketInterval")
    if packet_interval is not None:
        space = get("samplingPacketSpace")
        space = space if space is not None else np.zeros(n, dtype=np.uint64)
        use = todo & (packet_interval > 0)
        safe = np.where(use, packet_interval, 1)
        rate = np.where(use, np.maximum((safe + space) // safe, 1), rate)
        todo &= ~use
    size, population = get("samplingSize"), get("samplingPopulation")
    if size is not None and population is not None:
        use = todo & (size > 0) & (population > 0)
        safe = np.where(use, size, 1)
        rate = np.where(use, np.maximum(population // safe, 1), rate)
        todo &= ~use
    if "samplingProbability" in plan.present:
        probability = records["samplingProbability"].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            use = todo & (probability > 0) & (probability <= 1)
            inverse = np.round(1.0 / np.where(use, probability, 1.0))
        if use.any() and float(inverse[use].max()) >= _RATE_LIMIT:
            raise _Unsafe
        rate = np.where(use, np.maximum(inverse, 1).astype(np.uint64), rate)
    return rate


def _repeat(values: list[int], counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.array(values, dtype=np.int64), counts)


def group_table(group: _Group) -> pa.Table:
    """Decode every queued set of one template at once (raises _Unsafe outside the exact range)."""
    template = group.template
    plan = plan_for(template)
    counts = np.array(group.counts, dtype=np.int64)
    n = int(counts.sum())
    if not n:
        return FLOW_SCHEMA.empty_table()
    bodies = group.bodies
    data = bytes(bodies[0]) if len(bodies) == 1 else b"".join(bodies)
    records = np.frombuffer(data, dtype=plan.dtype, count=n)
    cache: dict[str, np.ndarray | None] = {}

    def get(name: str) -> np.ndarray | None:
        if name not in cache:
            cache[name] = _uint(records, plan, name) if plan.kinds.get(name, ("",))[0] == UINT else None
        return cache[name]

    for name in _MS_FIELDS:
        _check_below(get(name), _MS_LIMIT)
    for name in _SECOND_FIELDS:
        _check_below(get(name), _SECONDS_LIMIT)
    for name in _MICRO_FIELDS:
        _check_below(get(name), _DURATION_LIMIT)
    for name in _INTERVAL_FIELDS:
        _check_below(get(name), _INTERVAL_LIMIT)
    if group.init_ms and max(group.init_ms) >= _MS_LIMIT:
        raise _Unsafe

    present = plan.present
    # addresses: IPv4 unless absent, or 0.0.0.0 → 0.0.0.0 in a template that also has sourceIPv6Address
    has4 = "sourceIPv4Address" in present and "destinationIPv4Address" in present
    has6 = "sourceIPv6Address" in present and "destinationIPv6Address" in present
    if has4:
        src4, dst4 = records["sourceIPv4Address"], records["destinationIPv4Address"]
        is4 = np.ones(n, dtype=bool)
        if "sourceIPv6Address" in present:
            is4 = src4.any(axis=1) | dst4.any(axis=1)
        keep = is4 | has6
    else:
        is4 = np.zeros(n, dtype=bool)
        keep = np.full(n, has6)
    if not keep.any():
        return FLOW_SCHEMA.empty_table()

    export_us = _repeat(group.export_us, counts)
    uptime = _repeat(group.uptime_ms, counts)
    init_ms = _repeat(group.init_ms, counts)

    # sampling: the record's own rate, else its sampler's, else the set's default
    rate = _own_rates(get, records, plan, n) if template.has_sampling else np.zeros(n, dtype=np.uint64)
    missing = rate == 0
    if missing.any():
        fallback = _repeat(group.default_rate, counts).astype(np.uint64)
        if any(group.samplers):
            sampler_id = get("samplerId")
            selector = get("selectorId")
            if sampler_id is None:
                sampler_id = selector if selector is not None else np.zeros(n, dtype=np.uint64)
            elif selector is not None:
                sampler_id = np.where(sampler_id != 0, sampler_id, selector)
            set_index = np.repeat(np.arange(len(counts)), counts)
            for index, samplers in enumerate(group.samplers):
                if not samplers:
                    continue
                rows = set_index == index
                for sid, sampler_rate in samplers.items():
                    fallback = np.where(rows & (sampler_id == sid), np.uint64(sampler_rate), fallback)
        rate = np.where(missing, fallback, rate)
    _check_below(rate, _RATE_LIMIT)

    zeros = np.zeros(n, dtype=np.uint64)

    def value(name: str) -> np.ndarray:
        column = get(name)
        return column if column is not None else zeros

    protocol = value("protocolIdentifier") & np.uint64(0xFF)
    src_port = value("sourceTransportPort") & np.uint64(0xFFFF)
    dst_port = value("destinationTransportPort") & np.uint64(0xFFFF)
    icmp4, icmp6 = protocol == PROTO_ICMP, protocol == PROTO_ICMPV6
    icmp = icmp4 | icmp6
    if icmp.any():
        new_dst = np.where(src_port != 0, np.where(dst_port == 0, src_port, dst_port), dst_port)
        for is_family, type_code_name, type_name, code_name in (
            (icmp4, "icmpTypeCodeIPv4", "icmpTypeIPv4", "icmpCodeIPv4"),
            (icmp6, "icmpTypeCodeIPv6", "icmpTypeIPv6", "icmpCodeIPv6"),
        ):
            type_code = get(type_code_name)
            if type_code is None:
                icmp_type = get(type_name)
                if icmp_type is not None:
                    type_code = (icmp_type << np.uint64(8)) | value(code_name)
            if type_code is not None:
                new_dst = np.where(is_family, type_code & np.uint64(0xFFFF), new_dst)
        dst_port = np.where(icmp, new_dst, dst_port)
        src_port = np.where(icmp, 0, src_port).astype(np.uint64)

    octets = _first_present(
        get("octetDeltaCount"),
        get("octetTotalCount"),
        get("postOctetDeltaCount"),
        get("initiatorOctets"),
        zeros,
    )
    packets = _first_present(
        get("packetDeltaCount"),
        get("packetTotalCount"),
        get("postPacketDeltaCount"),
        get("initiatorPackets"),
        zeros,
    )
    sampled = rate > 1
    if sampled.any():
        limit = np.uint64(MAX_COUNT) // np.maximum(rate, 1)
        octets = np.where(sampled, np.where(octets > limit, np.uint64(MAX_COUNT), octets * rate), octets)
        packets = np.where(sampled, np.where(packets > limit, np.uint64(MAX_COUNT), packets * rate), packets)

    start, end = _times(get, n, export_us, uptime, init_ms)

    tcp_flags = value("tcpControlBits") & np.uint64(0xFF)
    reason = get("flowEndReason")
    if reason is None:
        end_code = np.zeros(n, dtype=np.int8)
    else:
        end_code = np.where((reason >= 1) & (reason <= 5), reason, 0).astype(np.int8)
        end_code = np.where((reason == 3) & (tcp_flags & np.uint64(0x04) != 0), _END_RST_CODE, end_code)
    initiator = _port_initiator(protocol, src_port, dst_port)
    direction = get("biflowDirection")
    if direction is not None:
        initiator = np.where(direction == 1, 1, np.where(direction == 2, 2, initiator)).astype(np.int8)
    vlan = value("vlanId")
    dot1q = get("dot1qVlanId")
    if dot1q is not None:
        vlan = np.where(vlan == 0, dot1q, vlan)

    columns: dict[str, Any] = {
        "flow_start": start,
        "flow_end": end,
        "ip_version": np.where(is4, 4, 6).astype(np.uint8),
        "protocol": protocol,
        "src_port": src_port,
        "dst_port": dst_port,
        "packets": packets,
        "bytes": octets,
        "tcp_flags": tcp_flags,
        "tos": value("ipClassOfService") & np.uint64(0xFF),
        "vlan": vlan & np.uint64(0xFFF),
        "sampling": rate,
    }
    if not keep.all():
        columns = {name: column[keep] for name, column in columns.items()}
        end_code, initiator, is4 = end_code[keep], initiator[keep], is4[keep]
        records = records[keep]
    rows = len(is4)
    for side in ("source", "destination"):
        text = None
        if has4 and is4.any():
            text = _ipv4_text(records[f"{side}IPv4Address"])
        if has6 and not is4.all():
            text6 = _ipv6_text(records[f"{side}IPv6Address"])
            text = text6 if text is None else pc.if_else(pa.array(is4), text, text6)
        columns["src_addr" if side == "source" else "dst_addr"] = text
    for column_name, names in (
        ("src_mac", ("sourceMacAddress", "postSourceMacAddress")),
        ("dst_mac", ("destinationMacAddress", "postDestinationMacAddress")),
    ):
        present_name = next((name for name in names if name in present), None)
        columns[column_name] = (
            _mac_text(records[present_name]) if present_name else pa.repeat(pa.scalar("", pa.string()), rows)
        )
    columns["probe_id"] = pa.repeat(pa.scalar(group.probe_id, pa.string()), rows)
    columns["end_reason"] = _END_LABELS.take(pa.array(end_code))
    columns["initiator"] = _INIT_LABELS.take(pa.array(initiator))
    arrays = []
    for spec in FLOW_SCHEMA:
        column = columns[spec.name]
        if isinstance(column, np.ndarray):
            if pa.types.is_timestamp(spec.type):
                column = pa.array(column, pa.int64()).cast(spec.type)
            else:
                column = pa.array(column.astype(spec.type.to_pandas_dtype(), copy=False), spec.type)
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=FLOW_SCHEMA)


def _port_initiator(protocol: np.ndarray, src_port: np.ndarray, dst_port: np.ndarray) -> np.ndarray:
    """fields.port_initiator over columns: 0 unknown, 1 src, 2 dst."""
    out = np.zeros(len(protocol), dtype=np.int8)
    transport = (protocol == PROTO_TCP) | (protocol == PROTO_UDP)
    out[transport & (src_port < 1024) & (dst_port >= 1024)] = 2
    out[transport & (dst_port < 1024) & (src_port >= 1024)] = 1
    icmp = (protocol == PROTO_ICMP) | (protocol == PROTO_ICMPV6)
    icmp_type = dst_port >> np.uint64(8)
    out[icmp & ((icmp_type == 8) | (icmp_type == 128))] = 1
    out[icmp & ((icmp_type == 0) | (icmp_type == 129))] = 2
    return out


__all__ = ["FLOW_SCHEMA", "IPV4", "IPV6", "MAC", "ColumnBatch", "flows_table", "plan_for", "table_flows"]
