"""NetFlow v9 (RFC 3954): header, flowsets, template and options-template flowsets."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from .templates import DecodeError, FieldSpec

HEADER = struct.Struct(">HHIIII")  # 20 bytes
TEMPLATE_FLOWSET = 0
OPTIONS_FLOWSET = 1
FIRST_DATA_ID = 256


@dataclass(slots=True)
class Header:
    version: int
    count: int  # records (template and data) in the packet; exporters get it wrong, it is not used
    sys_uptime: int  # ms
    unix_secs: int
    package_sequence: int
    source_id: int

    @property
    def export_us(self) -> int:
        return self.unix_secs * 1_000_000


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER.size:
        raise DecodeError("short", f"NetFlow v9 packet of {len(data)} bytes is shorter than its header")
    return Header(*HEADER.unpack_from(data))


def iter_flowsets(data: bytes, offset: int = HEADER.size) -> Iterator[tuple[int, memoryview]]:
    """(flowset id, body) in packet order; a bad length stops the walk with DecodeError after the good ones."""
    view = memoryview(data)
    end = len(data)
    while end - offset >= 4:
        flowset_id, length = struct.unpack_from(">HH", data, offset)
        if length < 4:
            if length == 0 and not any(view[offset:]):
                return  # zero padding up to the end of the datagram (Palo Alto, ACI)
            raise DecodeError("set_length", f"flowset {flowset_id} at byte {offset} has length {length}")
        if offset + length > end:
            raise DecodeError(
                "set_length", f"flowset {flowset_id} at byte {offset} of length {length} runs past {end}"
            )
        yield flowset_id, view[offset + 4 : offset + length]
        offset += length


def parse_templates(body: memoryview) -> list[tuple[int, tuple[FieldSpec, ...]]]:
    out = []
    pos, end = 0, len(body)
    while end - pos >= 4:
        template_id, count = struct.unpack_from(">HH", body, pos)
        if template_id == 0 and count == 0:
            break  # padding
        pos += 4
        if template_id < FIRST_DATA_ID or count == 0 or pos + 4 * count > end:
            raise DecodeError("bad_template", f"v9 template {template_id} with {count} fields does not fit")
        fields = tuple(FieldSpec(t, n) for t, n in struct.iter_unpack(">HH", body[pos : pos + 4 * count]))
        pos += 4 * count
        out.append((template_id, fields))
    return out


def parse_options_templates(body: memoryview) -> list[tuple[int, tuple[FieldSpec, ...]]]:
    out = []
    pos, end = 0, len(body)
    while end - pos >= 6:
        template_id, scope_len, option_len = struct.unpack_from(">HHH", body, pos)
        if template_id == 0:
            break  # padding
        pos += 6
        if (
            template_id < FIRST_DATA_ID
            or scope_len % 4
            or option_len % 4
            or pos + scope_len + option_len > end
            or not scope_len + option_len
        ):
            raise DecodeError(
                "bad_template",
                f"v9 options template {template_id} ({scope_len}+{option_len} bytes) does not fit",
            )
        scopes = tuple(
            FieldSpec(t, n, scope=True) for t, n in struct.iter_unpack(">HH", body[pos : pos + scope_len])
        )
        pos += scope_len
        options = tuple(FieldSpec(t, n) for t, n in struct.iter_unpack(">HH", body[pos : pos + option_len]))
        pos += option_len
        out.append((template_id, scopes + options))
    return out
