"""Templates (NetFlow v9 and IPFIX): compiled once into a struct layout, cached per exporter and domain.

A template is compiled when it arrives: the fields we read (``fields.ELEMENTS``) become struct
codes, everything else (unknown or enterprise elements, v9 option scopes) becomes padding, so a
data set of a fixed-length template is decoded by one ``Struct.iter_unpack``. Templates with
variable-length fields (length 0xFFFF) are walked field by field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from .fields import ELEMENTS, FLOAT, KIND_LENGTHS, UINT

VARIABLE = 0xFFFF

_UINT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
_FLOAT_CODES = {4: "f", 8: "d"}


class DecodeError(ValueError):
    """Bad input; ``reason`` is the short counter name (the message says more)."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FieldSpec:
    element: int  # IE id without the enterprise bit
    length: int  # bytes, or VARIABLE
    enterprise: int = 0  # IPFIX enterprise number, 0 for IANA elements
    scope: bool = False  # a NetFlow v9 option scope field (its own type space: system, interface …)


@dataclass(slots=True)
class Template:
    template_id: int
    fields: tuple[FieldSpec, ...]
    options: bool = False
    # compiled
    variable: bool = False
    record_len: int = 0  # fixed length, or the minimum length when variable
    names: tuple[str, ...] = ()
    layout: struct.Struct | None = None
    odd_ints: tuple[int, ...] = ()  # value positions holding 3/5/6/7-byte integers as bytes
    walk: tuple[tuple[str | None, str, int], ...] = ()  # (name, kind, length) for variable templates
    has_addresses: bool = False
    has_sampling: bool = False
    columnar: bool = False  # a fixed-length flow template: collector.netflow.columnar decodes its sets
    signature: tuple[Any, ...] = field(default=())
    plan: Any = None  # columnar.Plan, made on first use

    @classmethod
    def compile(cls, template_id: int, fields: tuple[FieldSpec, ...], options: bool = False) -> Template:
        tmpl = cls(template_id, fields, options, signature=(options, fields))
        codes: list[str] = []
        names: list[str] = []
        odd: list[int] = []
        walk: list[tuple[str | None, str, int]] = []
        seen: set[str] = set()
        for spec in fields:
            known = None if spec.enterprise or spec.scope else ELEMENTS.get(spec.element)
            if spec.length == VARIABLE:
                tmpl.variable = True
                tmpl.record_len += 1
                name = known[0] if known and known[0] not in seen else None
                walk.append((name, known[1] if known else "", VARIABLE))
                if name:
                    seen.add(name)
                continue
            tmpl.record_len += spec.length
            if known and known[0] not in seen and spec.length in KIND_LENGTHS[known[1]]:
                name, kind = known
                seen.add(name)
                if kind == UINT:
                    code = _UINT_CODES.get(spec.length)
                    if code is None:
                        odd.append(len(names))
                        code = f"{spec.length}s"
                elif kind == FLOAT:
                    code = _FLOAT_CODES[spec.length]
                else:
                    code = f"{spec.length}s"
                codes.append(code)
                names.append(name)
                walk.append((name, kind, spec.length))
            else:
                if spec.length:
                    codes.append(f"{spec.length}x")
                walk.append((None, "", spec.length))
        tmpl.names = tuple(names)
        tmpl.odd_ints = tuple(odd)
        tmpl.walk = tuple(walk)
        if not tmpl.variable:
            tmpl.layout = struct.Struct(">" + "".join(codes))
        present = {name for name, _, _ in walk if name}
        tmpl.has_addresses = bool(
            {"sourceIPv4Address", "sourceIPv6Address"} & present
            and {"destinationIPv4Address", "destinationIPv6Address"} & present
        )
        tmpl.has_sampling = bool(
            present
            & {"samplingInterval", "samplerRandomInterval", "samplingPacketInterval", "samplingPopulation"}
            or "samplingProbability" in present
        )
        tmpl.columnar = not tmpl.variable and not options and tmpl.has_addresses and tmpl.record_len > 0
        return tmpl

    def decode(self, body: bytes | memoryview) -> list[dict[str, Any]]:
        """Every record of a data set (trailing padding shorter than a record is ignored)."""
        if self.record_len == 0:
            raise DecodeError("empty_template", f"template {self.template_id} has no bytes per record")
        if self.variable:
            return self._decode_variable(body)
        count = len(body) // self.record_len
        if not count:
            return []
        names = self.names
        rows = self.layout.iter_unpack(body[: count * self.record_len])  # type: ignore[union-attr]
        if not self.odd_ints:
            return [dict(zip(names, row, strict=True)) for row in rows]
        out = []
        odd = self.odd_ints
        for row in rows:
            values = list(row)
            for pos in odd:
                values[pos] = int.from_bytes(values[pos], "big")
            out.append(dict(zip(names, values, strict=True)))
        return out

    def _decode_variable(self, body: bytes | memoryview) -> list[dict[str, Any]]:
        data = bytes(body)
        end = len(data)
        pos = 0
        records = []
        while end - pos >= self.record_len:
            rec: dict[str, Any] = {}
            for name, kind, length in self.walk:
                if length == VARIABLE:
                    if pos >= end:
                        raise DecodeError("truncated_record", "variable-length field past the end of its set")
                    length = data[pos]
                    pos += 1
                    if length == 255:
                        if pos + 2 > end:
                            raise DecodeError(
                                "truncated_record", "variable-length field past the end of its set"
                            )
                        length = int.from_bytes(data[pos : pos + 2], "big")
                        pos += 2
                    if name and length not in KIND_LENGTHS[kind]:
                        name = None
                if pos + length > end:
                    raise DecodeError("truncated_record", "record runs past the end of its set")
                if name:
                    raw = data[pos : pos + length]
                    if kind == UINT:
                        rec[name] = int.from_bytes(raw, "big")
                    elif kind == FLOAT:
                        rec[name] = struct.unpack(">" + _FLOAT_CODES[length], raw)[0]
                    else:
                        rec[name] = raw
                pos += length
            records.append(rec)
        return records


TemplateKey = tuple[int, str, int, int]  # (version, exporter, domain, template id)


class TemplateCache:
    """Templates per (version, exporter, observation domain / source id, template id)."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._templates: dict[TemplateKey, Template] = {}

    def __len__(self) -> int:
        return len(self._templates)

    def get(self, key: TemplateKey) -> Template | None:
        return self._templates.get(key)

    def add(self, key: TemplateKey, template_id: int, fields: tuple[FieldSpec, ...], options: bool) -> bool:
        """Store (or refresh) a template; False when it is identical to the one already held."""
        current = self._templates.get(key)
        if current is not None and current.signature == (options, fields):
            return False
        if current is None and len(self._templates) >= self.limit:
            raise DecodeError("template_limit", f"more than {self.limit} templates cached")
        self._templates[key] = Template.compile(template_id, fields, options)
        return True

    def withdraw(self, key: TemplateKey) -> bool:
        return self._templates.pop(key, None) is not None

    def withdraw_all(self, version: int, exporter: str, domain: int, options: bool) -> int:
        doomed = [
            key
            for key, tmpl in self._templates.items()
            if key[:3] == (version, exporter, domain) and tmpl.options == options
        ]
        for key in doomed:
            del self._templates[key]
        return len(doomed)
