"""NetFlow v5 (and v1) export packets: a fixed header and up to 30 fixed 48-byte records."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from .templates import DecodeError, FieldSpec, Template

HEADER = struct.Struct(">HHIIIIBBH")  # 24 bytes
RECORD = struct.Struct(">4s4s4sHHIIIIHHxBBBHHBBxx")  # 48 bytes
HEADER_V1 = struct.Struct(">HHIII")  # 16 bytes
RECORD_V1 = struct.Struct(">4s4s4sHHIIIIHH2xBBB7x")  # 48 bytes
MAX_RECORDS = 30  # Cisco's limit; exporters never send more in one packet
MAX_RECORDS_V1 = 24


@dataclass(slots=True)
class Header:
    version: int
    count: int
    sys_uptime: int  # ms since the exporter booted
    unix_secs: int
    unix_nsecs: int
    flow_sequence: int = 0  # sequence number of the first record (v5)
    engine_type: int = 0
    engine_id: int = 0
    sampling_interval: int = 0  # 2 bits mode, 14 bits 1-in-N

    @property
    def export_us(self) -> int:
        return self.unix_secs * 1_000_000 + self.unix_nsecs // 1000

    @property
    def domain(self) -> int:
        """engine_type and engine_id as one observation-domain number (type * 256 + id)."""
        return (self.engine_type << 8) | self.engine_id

    @property
    def sampling(self) -> int:
        return max(1, self.sampling_interval & 0x3FFF)


_PAD = 210  # IPFIX paddingOctets: skipped
# The fixed records as templates, for the columnar path (same elements as parse() reads).
TEMPLATE_V5 = Template.compile(
    0,
    tuple(
        FieldSpec(element, length)
        for element, length in (
            (8, 4), (12, 4), (15, 4), (10, 2), (14, 2), (2, 4), (1, 4), (22, 4), (21, 4), (7, 2), (11, 2),
            (_PAD, 1), (6, 1), (4, 1), (5, 1), (16, 2), (17, 2), (9, 1), (13, 1), (_PAD, 2),
        )
    ),
)  # fmt: skip
TEMPLATE_V1 = Template.compile(
    0,
    tuple(
        FieldSpec(element, length)
        for element, length in (
            (8, 4), (12, 4), (15, 4), (10, 2), (14, 2), (2, 4), (1, 4), (22, 4), (21, 4), (7, 2), (11, 2),
            (_PAD, 2), (4, 1), (5, 1), (6, 1), (_PAD, 7),
        )
    ),
)  # fmt: skip


def parse_header(data: bytes) -> tuple[Header, memoryview]:
    """A v5 or v1 packet → header and the bytes of its records (header.count of them, 48 bytes each)."""
    version = int.from_bytes(data[:2], "big")
    header_struct, record_struct, limit = (
        (HEADER, RECORD, MAX_RECORDS) if version == 5 else (HEADER_V1, RECORD_V1, MAX_RECORDS_V1)
    )
    if len(data) < header_struct.size:
        raise DecodeError(
            "short", f"NetFlow v{version} packet of {len(data)} bytes is shorter than its header"
        )
    header = Header(*header_struct.unpack_from(data))
    need = header_struct.size + header.count * record_struct.size
    if header.count > limit or need > len(data):
        raise DecodeError(
            "bad_count",
            f"NetFlow v{version} header says {header.count} records, the packet of {len(data)} bytes holds"
            f" {(len(data) - header_struct.size) // record_struct.size}",
        )
    return header, memoryview(data)[header_struct.size : need]


def _elements(*pairs: tuple[str, int]) -> tuple[tuple[str, ...], Any]:
    """(element names, a getter of their values from an unpacked record) from (name, index) pairs."""
    return tuple(name for name, _ in pairs), itemgetter(*(index for _, index in pairs))


_COMMON = (
    ("sourceIPv4Address", 0),
    ("destinationIPv4Address", 1),
    ("packetDeltaCount", 5),
    ("octetDeltaCount", 6),
    ("flowStartSysUpTime", 7),
    ("flowEndSysUpTime", 8),
    ("sourceTransportPort", 9),
    ("destinationTransportPort", 10),
)
_ELEMENTS_V5 = _elements(
    *_COMMON, ("tcpControlBits", 11), ("protocolIdentifier", 12), ("ipClassOfService", 13)
)
_ELEMENTS_V1 = _elements(
    *_COMMON, ("protocolIdentifier", 11), ("ipClassOfService", 12), ("tcpControlBits", 13)
)


def parse(data: bytes) -> tuple[Header, list[dict[str, Any]]]:
    """A v5 or v1 packet → header and records (dicts keyed by IPFIX element names)."""
    header, body = parse_header(data)
    record_struct = RECORD if header.version == 5 else RECORD_V1
    names, pick = _ELEMENTS_V5 if header.version == 5 else _ELEMENTS_V1
    records = [dict(zip(names, pick(r), strict=True)) for r in record_struct.iter_unpack(body)]
    return header, records
