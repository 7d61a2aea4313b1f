"""IPFIX (RFC 7011): message header, sets, template and options-template records (with withdrawals)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from .templates import VARIABLE, DecodeError, FieldSpec

HEADER = struct.Struct(">HHIII")  # 16 bytes
TEMPLATE_SET = 2
OPTIONS_SET = 3
FIRST_DATA_ID = 256
ENTERPRISE_BIT = 0x8000


@dataclass(slots=True)
class Header:
    version: int
    length: int  # bytes in the message, header included
    export_time: int  # seconds
    sequence: int  # data records sent before this message in this observation domain
    domain: int  # observation domain id

    @property
    def export_us(self) -> int:
        return self.export_time * 1_000_000


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER.size:
        raise DecodeError("short", f"IPFIX message of {len(data)} bytes is shorter than its header")
    header = Header(*HEADER.unpack_from(data))
    if header.length < HEADER.size:
        raise DecodeError("message_length", f"IPFIX message length {header.length} is below 16")
    if header.length > len(data):
        raise DecodeError(
            "message_length", f"IPFIX message length {header.length} but {len(data)} bytes arrived"
        )
    return header


def iter_sets(data: bytes, end: int, offset: int = HEADER.size) -> Iterator[tuple[int, memoryview]]:
    """(set id, body) in message order; a bad set length stops the walk with DecodeError."""
    view = memoryview(data)
    while end - offset >= 4:
        set_id, length = struct.unpack_from(">HH", data, offset)
        if length < 4 or offset + length > end:
            raise DecodeError(
                "set_length", f"set {set_id} at byte {offset} has length {length} (message ends at {end})"
            )
        yield set_id, view[offset + 4 : offset + length]
        offset += length


def parse_templates(body: memoryview, options: bool) -> list[tuple[int, tuple[FieldSpec, ...] | None]]:
    """Template records of a template (2) or options-template (3) set; fields None = withdrawal."""
    out: list[tuple[int, tuple[FieldSpec, ...] | None]] = []
    pos, end = 0, len(body)
    while end - pos >= 4:
        template_id, count = struct.unpack_from(">HH", body, pos)
        pos += 4
        if count == 0:
            if template_id == 0:
                break  # padding
            out.append((template_id, None))
            continue
        if template_id < FIRST_DATA_ID:
            raise DecodeError("bad_template", f"IPFIX template id {template_id} is reserved")
        if options:
            if end - pos < 2:
                raise DecodeError("bad_template", f"IPFIX options template {template_id} is cut short")
            pos += 2  # scope field count: IPFIX scope fields are ordinary elements
        fields = []
        for _ in range(count):
            if end - pos < 4:
                raise DecodeError(
                    "bad_template", f"IPFIX template {template_id} with {count} fields does not fit"
                )
            element, length = struct.unpack_from(">HH", body, pos)
            pos += 4
            enterprise = 0
            if element & ENTERPRISE_BIT:
                if end - pos < 4:
                    raise DecodeError(
                        "bad_template", f"IPFIX template {template_id}: enterprise number cut short"
                    )
                enterprise = struct.unpack_from(">I", body, pos)[0]
                element &= ~ENTERPRISE_BIT
                pos += 4
            fields.append(FieldSpec(element, length, enterprise))
        if not any(f.length for f in fields) and not any(f.length == VARIABLE for f in fields):
            raise DecodeError("bad_template", f"IPFIX template {template_id} has no bytes per record")
        out.append((template_id, tuple(fields)))
    return out
