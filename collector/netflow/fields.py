"""Information elements (IANA IPFIX ids, which NetFlow v9 shares below 128) → contract flow fields.

A decoded data record is a dict keyed by the IANA element name. ``record_to_flow`` turns one into a
``hostflow.records.Flow``; ``record_sampling`` reads a sampling rate out of a data or options record.
Elements not listed in ``ELEMENTS`` are skipped by their length when a template is compiled.

Choices documented here because NetFlow leaves them open:
- bytes = octetDeltaCount (1), else octetTotalCount (85), else postOctetDeltaCount (23), else
  initiatorOctets (231, Cisco ASA NSEL); packets likewise (2, 86, 24, 298).
- ICMP: ``dst_port = type*256 + code`` from icmpTypeCodeIPv4/IPv6 (32/139) or the separate type and
  code elements (176-179); when none is present the exporter's destination port is kept (NetFlow v5
  and most v9 exporters already put type*256+code there); ``src_port = 0``.
- initiator: biflowDirection (239) when present (1 → src, 2 → dst). Otherwise a port heuristic for
  TCP/UDP: the side on a port below 1024 while the other side is on 1024 or above is the server.
  ICMP echo request (8, 128) → src, echo reply (0, 129) → dst. Anything else → unknown ("").
- end_reason: flowEndReason (136): 1 idle, 2 active, 3 fin (rst when the RST flag is set), 4 shutdown
  (forced end), 5 evicted (lack of resources); absent → "exporter".
- A flow without any time element gets the export time as start and end; IPFIX sysUpTime stamps
  without a known systemInitTimeMilliseconds keep their duration and end at the export time.
- v5/v9 First/Last are taken modulo 2^32 ms before SysUptime (the 49.7-day uptime wrap); a stamp
  up to 2^31 ms after SysUptime counts as slightly in the future.
"""

from __future__ import annotations

from socket import AF_INET6, inet_ntoa, inet_ntop
from typing import Any

from hostflow.records import (
    END_ACTIVE,
    END_EVICTED,
    END_EXPORTER,
    END_FIN,
    END_IDLE,
    END_RST,
    END_SHUTDOWN,
    INIT_DST,
    INIT_SRC,
    INIT_UNKNOWN,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Flow,
)

# kinds of value: how a field's bytes become a Python value
UINT = "uint"
IPV4 = "ipv4"
IPV6 = "ipv6"
MAC = "mac"
FLOAT = "float"

# IE id → (IANA name, kind). Only the elements we read; the rest are skipped by length.
ELEMENTS: dict[int, tuple[str, str]] = {
    1: ("octetDeltaCount", UINT),
    2: ("packetDeltaCount", UINT),
    4: ("protocolIdentifier", UINT),
    5: ("ipClassOfService", UINT),
    6: ("tcpControlBits", UINT),
    7: ("sourceTransportPort", UINT),
    8: ("sourceIPv4Address", IPV4),
    11: ("destinationTransportPort", UINT),
    12: ("destinationIPv4Address", IPV4),
    21: ("flowEndSysUpTime", UINT),
    22: ("flowStartSysUpTime", UINT),
    23: ("postOctetDeltaCount", UINT),
    24: ("postPacketDeltaCount", UINT),
    27: ("sourceIPv6Address", IPV6),
    28: ("destinationIPv6Address", IPV6),
    32: ("icmpTypeCodeIPv4", UINT),
    34: ("samplingInterval", UINT),
    35: ("samplingAlgorithm", UINT),
    48: ("samplerId", UINT),
    49: ("samplerMode", UINT),
    50: ("samplerRandomInterval", UINT),
    56: ("sourceMacAddress", MAC),
    57: ("postDestinationMacAddress", MAC),
    58: ("vlanId", UINT),
    60: ("ipVersion", UINT),
    80: ("destinationMacAddress", MAC),
    81: ("postSourceMacAddress", MAC),
    85: ("octetTotalCount", UINT),
    86: ("packetTotalCount", UINT),
    136: ("flowEndReason", UINT),
    139: ("icmpTypeCodeIPv6", UINT),
    150: ("flowStartSeconds", UINT),
    151: ("flowEndSeconds", UINT),
    152: ("flowStartMilliseconds", UINT),
    153: ("flowEndMilliseconds", UINT),
    154: ("flowStartMicroseconds", UINT),
    155: ("flowEndMicroseconds", UINT),
    156: ("flowStartNanoseconds", UINT),
    157: ("flowEndNanoseconds", UINT),
    158: ("flowStartDeltaMicroseconds", UINT),
    159: ("flowEndDeltaMicroseconds", UINT),
    160: ("systemInitTimeMilliseconds", UINT),
    161: ("flowDurationMilliseconds", UINT),
    162: ("flowDurationMicroseconds", UINT),
    176: ("icmpTypeIPv4", UINT),
    177: ("icmpCodeIPv4", UINT),
    178: ("icmpTypeIPv6", UINT),
    179: ("icmpCodeIPv6", UINT),
    231: ("initiatorOctets", UINT),
    239: ("biflowDirection", UINT),
    243: ("dot1qVlanId", UINT),
    298: ("initiatorPackets", UINT),
    302: ("selectorId", UINT),
    305: ("samplingPacketInterval", UINT),
    306: ("samplingPacketSpace", UINT),
    309: ("samplingSize", UINT),
    310: ("samplingPopulation", UINT),
    311: ("samplingProbability", FLOAT),
    323: ("observationTimeMilliseconds", UINT),
}

# the lengths a field of each kind may have to be read (others are skipped as unknown)
KIND_LENGTHS: dict[str, tuple[int, ...]] = {
    UINT: (1, 2, 3, 4, 5, 6, 7, 8),
    IPV4: (4,),
    IPV6: (16,),
    MAC: (6,),
    FLOAT: (4, 8),
}

# names whose presence makes a record a flow (both ends needed)
ADDRESS_NAMES = frozenset(
    ("sourceIPv4Address", "destinationIPv4Address", "sourceIPv6Address", "destinationIPv6Address")
)
SAMPLING_NAMES = frozenset(
    (
        "samplingInterval",
        "samplerRandomInterval",
        "samplingPacketInterval",
        "samplingPopulation",
        "samplingProbability",
    )
)

NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
MAX_COUNT = (1 << 64) - 1

_END_REASONS = {1: END_IDLE, 2: END_ACTIVE, 3: END_FIN, 4: END_SHUTDOWN, 5: END_EVICTED}


def ipv4_text(raw: bytes) -> str:
    return inet_ntoa(raw)


def ipv6_text(raw: bytes) -> str:
    return inet_ntop(AF_INET6, raw)


def mac_text(raw: bytes) -> str:
    return raw.hex(":")


def ntp_to_us(value: int) -> int:
    """NTP 64-bit timestamp (seconds since 1900 . fraction) → µs since the Unix epoch."""
    seconds = value >> 32
    fraction = value & 0xFFFFFFFF
    return (seconds - NTP_EPOCH_OFFSET) * 1_000_000 + ((fraction * 1_000_000) >> 32)


def _uptime_delta_ms(uptime_ms: int, stamp_ms: int) -> int:
    """How long before ``uptime_ms`` the 32-bit uptime stamp was taken (handles the 49.7-day wrap)."""
    delta = (uptime_ms - stamp_ms) & 0xFFFFFFFF
    return delta - (1 << 32) if delta >= 1 << 31 else delta


# absolute time elements, by suffix after flowStart/flowEnd, in the order they are preferred
_ABSOLUTE_TIMES: tuple[tuple[str, Any], ...] = (
    ("Milliseconds", lambda value, export_us: value * 1000),
    ("Seconds", lambda value, export_us: value * 1_000_000),
    ("Microseconds", lambda value, export_us: ntp_to_us(value)),
    ("Nanoseconds", lambda value, export_us: ntp_to_us(value)),
    ("DeltaMicroseconds", lambda value, export_us: export_us - value),
)


def _absolute_time(rec: dict[str, Any], prefix: str, export_us: int) -> int | None:
    """µs from the first of flowStart*/flowEnd* (``prefix``) time elements the record carries."""
    for suffix, to_us in _ABSOLUTE_TIMES:
        key = prefix + suffix
        if key in rec:
            return to_us(rec[key], export_us)
    return None


def record_times(
    rec: dict[str, Any], export_us: int, uptime_ms: int | None, init_ms: int | None
) -> tuple[int, int]:
    """(flow_start, flow_end) in µs from whichever time elements the record carries.

    ``uptime_ms`` is the v5/v9 header's SysUptime (First/Last are relative to it); ``init_ms`` is the
    IPFIX exporter's systemInitTimeMilliseconds (from the record or an options record).
    """
    start = end = None
    get = rec.get
    if "flowStartSysUpTime" in rec or "flowEndSysUpTime" in rec:
        first = get("flowStartSysUpTime", get("flowEndSysUpTime"))
        last = get("flowEndSysUpTime", first)
        init = get("systemInitTimeMilliseconds", init_ms)
        if init is not None:
            start, end = (init + first) * 1000, (init + last) * 1000
        elif uptime_ms is not None:
            start = export_us - _uptime_delta_ms(uptime_ms, first) * 1000
            end = export_us - _uptime_delta_ms(uptime_ms, last) * 1000
        else:
            # IPFIX uptimes without the exporter's init time: keep the duration, end at export time
            end = export_us
            start = end - ((last - first) & 0xFFFFFFFF) * 1000
    if start is None:
        start = _absolute_time(rec, "flowStart", export_us)
    if end is None:
        end = _absolute_time(rec, "flowEnd", export_us)
    if start is None or end is None:
        duration = get("flowDurationMicroseconds")
        if duration is None and "flowDurationMilliseconds" in rec:
            duration = rec["flowDurationMilliseconds"] * 1000
        if start is None and end is None:
            observed = get("observationTimeMilliseconds")
            end = observed * 1000 if observed is not None else export_us
        if duration is not None:
            if start is None:
                start = end - duration
            else:
                end = start + duration
        elif start is None:
            start = end
        else:
            end = start
    if start < 0:
        start = 0
    if end < start:
        end = start
    return start, end


def record_sampling(rec: dict[str, Any]) -> int | None:
    """The 1-in-N rate a record states (samplingInterval, samplerRandomInterval, PSAMP …), if any."""
    get = rec.get
    rate = get("samplingInterval") or get("samplerRandomInterval")
    if rate:
        return int(rate)
    interval = get("samplingPacketInterval")
    if interval:
        return max(1, (interval + get("samplingPacketSpace", 0)) // interval)
    size = get("samplingSize")
    if size and get("samplingPopulation"):
        return max(1, rec["samplingPopulation"] // size)
    probability = get("samplingProbability")
    if probability and 0 < probability <= 1:
        return max(1, round(1 / probability))
    return None


def record_sampler_id(rec: dict[str, Any]) -> int:
    return rec.get("samplerId") or rec.get("selectorId") or 0


def port_initiator(protocol: int, src_port: int, dst_port: int) -> str:
    if protocol == PROTO_TCP or protocol == PROTO_UDP:
        if src_port < 1024 <= dst_port:
            return INIT_DST
        if dst_port < 1024 <= src_port:
            return INIT_SRC
        return INIT_UNKNOWN
    if protocol == PROTO_ICMP or protocol == PROTO_ICMPV6:
        icmp_type = dst_port >> 8
        if icmp_type in (8, 128):
            return INIT_SRC
        if icmp_type in (0, 129):
            return INIT_DST
    return INIT_UNKNOWN


def record_to_flow(
    rec: dict[str, Any],
    probe_id: str,
    export_us: int,
    uptime_ms: int | None,
    init_ms: int | None,
    sampling: int,
) -> Flow | None:
    """One decoded data record → Flow, or None when it names no source and destination address."""
    get = rec.get
    src = get("sourceIPv4Address")
    dst = get("destinationIPv4Address")
    if src is not None and dst is not None and not (src == dst == b"\0\0\0\0" and "sourceIPv6Address" in rec):
        version = 4
        src_addr, dst_addr = inet_ntoa(src), inet_ntoa(dst)
    else:
        src = get("sourceIPv6Address")
        dst = get("destinationIPv6Address")
        if src is None or dst is None:
            return None
        version = 6
        src_addr, dst_addr = inet_ntop(AF_INET6, src), inet_ntop(AF_INET6, dst)
    protocol = get("protocolIdentifier", 0) & 0xFF
    src_port = get("sourceTransportPort", 0) & 0xFFFF
    dst_port = get("destinationTransportPort", 0) & 0xFFFF
    if protocol == PROTO_ICMP or protocol == PROTO_ICMPV6:
        type_code = get("icmpTypeCodeIPv4") if protocol == PROTO_ICMP else get("icmpTypeCodeIPv6")
        if type_code is None:
            icmp_type = get("icmpTypeIPv4") if protocol == PROTO_ICMP else get("icmpTypeIPv6")
            if icmp_type is not None:
                icmp_code = get("icmpCodeIPv4" if protocol == PROTO_ICMP else "icmpCodeIPv6", 0)
                type_code = (icmp_type << 8) | icmp_code
        if type_code is not None:
            dst_port = type_code & 0xFFFF
        elif not dst_port and src_port:
            dst_port = src_port
        src_port = 0
    octets = get("octetDeltaCount")
    if octets is None:
        octets = get("octetTotalCount")
        if octets is None:
            octets = get("postOctetDeltaCount", get("initiatorOctets", 0))
    packets = get("packetDeltaCount")
    if packets is None:
        packets = get("packetTotalCount")
        if packets is None:
            packets = get("postPacketDeltaCount", get("initiatorPackets", 0))
    if sampling > 1:
        octets = min(octets * sampling, MAX_COUNT)
        packets = min(packets * sampling, MAX_COUNT)
    flow_start, flow_end = record_times(rec, export_us, uptime_ms, init_ms)
    tcp_flags = get("tcpControlBits", 0) & 0xFF
    reason = get("flowEndReason")
    if reason is None:
        end_reason = END_EXPORTER
    elif reason == 3 and tcp_flags & 0x04:
        end_reason = END_RST
    else:
        end_reason = _END_REASONS.get(reason, END_EXPORTER)
    direction = get("biflowDirection")
    if direction == 1:
        initiator = INIT_SRC
    elif direction == 2:
        initiator = INIT_DST
    else:
        initiator = port_initiator(protocol, src_port, dst_port)
    vlan = get("vlanId")
    if not vlan:
        vlan = get("dot1qVlanId", 0)
    src_mac = get("sourceMacAddress") or get("postSourceMacAddress")
    dst_mac = get("destinationMacAddress") or get("postDestinationMacAddress")
    return Flow(
        probe_id,
        flow_start,
        flow_end,
        version,
        protocol,
        src_addr,
        src_port,
        dst_addr,
        dst_port,
        packets,
        octets,
        tcp_flags,
        get("ipClassOfService", 0) & 0xFF,
        vlan & 0xFFF,
        src_mac.hex(":") if src_mac else "",
        dst_mac.hex(":") if dst_mac else "",
        end_reason,
        initiator,
        sampling,
    )


def emit_records(
    records: list[dict[str, Any]],
    probe_id: str,
    export_us: int,
    uptime_ms: int | None,
    init_ms: int | None,
    default_rate: int,
    samplers: dict[int, int] | None,
    own_rates: bool,
    out: list[Flow],
) -> None:
    """Records of one data set → flows appended to ``out``: a record's own sampling rate wins, then
    its sampler id's rate (``samplers``), then ``default_rate``."""
    append = out.append
    for rec in records:
        rate = record_sampling(rec) if own_rates else None
        if rate is None:
            rate = default_rate
            if samplers:
                sampler_id = record_sampler_id(rec)
                if sampler_id in samplers:
                    rate = samplers[sampler_id]
        flow = record_to_flow(rec, probe_id, export_us, uptime_ms, init_ms, rate)
        if flow is not None:
            append(flow)
