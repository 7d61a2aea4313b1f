"""`python -m collector import FILE...`: our record files, nfdump CSV, and captures of NetFlow/IPFIX export.

Each file is one transaction with ``batch_id = "import:" + sha256(file)``, so importing a file twice
stores it once. A file that is bad half way stores nothing, and the error names the file and the
line (record files) or packet (captures). When a collector daemon owns the database (its
``<db>.collector.json`` names a live pid whose /health answers), the records go through its
``POST /api/v1/import`` instead, because DuckDB lets only one process open the file.

Captures of export packets are decoded the way the UDP listener decodes them: every UDP datagram in
file order, exporter = the datagram's source address, one decoder (template state) for all files
of one command, so a template capture followed by a data capture works as on the wire.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import hashlib
import ipaddress
import json
import logging
import mmap
import os
import struct
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hostflow import fileio
from hostflow.records import ContractError, Flow, Name, make_batch

log = logging.getLogger("collector.fileimport")

MAX_RECORD_BYTES = 262_144  # libpcap's largest snapshot length; a record claiming more is corrupt
REASSEMBLY_LIMIT = 4096  # IP datagrams waiting for fragments at once


class ImportFailed(Exception):
    """A file that cannot be imported; the message is one line naming the file and the record."""


# ---------------------------------------------------------------- capture files (pcap, pcapng)


@dataclass(slots=True)
class CapturedPacket:
    number: int  # 1-based, as tshark numbers frames
    ts_us: int
    linktype: int
    data: bytes


def iter_capture(path: str | Path) -> Iterator[CapturedPacket]:
    """Every packet of a pcap or pcapng file; ImportFailed("FILE: packet N: reason") on corruption."""
    path = Path(path)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise ImportFailed(f"{path}: empty file")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            magic = bytes(buffer[:4])
            if magic == b"\x0a\x0d\x0d\x0a":
                yield from _iter_pcapng(path, buffer)
            else:
                yield from _iter_pcap(path, buffer)


def _iter_pcap(path: Path, buf: mmap.mmap) -> Iterator[CapturedPacket]:
    if len(buf) < 24:
        raise ImportFailed(f"{path}: file ends inside the pcap file header")
    magic = bytes(buf[:4])
    formats = {
        b"\xd4\xc3\xb2\xa1": ("<", 1), b"\xa1\xb2\xc3\xd4": (">", 1),
        b"\x4d\x3c\xb2\xa1": ("<", 1000), b"\xa1\xb2\x3c\x4d": (">", 1000),
    }  # fmt: skip
    if magic not in formats:
        raise ImportFailed(f"{path}: not a pcap or pcapng file")
    order, frac_per_us = formats[magic]
    major, _minor, _zone, _sigfigs, _snaplen, linktype = struct.unpack_from(order + "HHiIII", buf, 4)
    if major != 2:
        raise ImportFailed(f"{path}: pcap version {major} is not supported (only 2.x)")
    linktype &= 0x03FFFFFF  # the upper bits say whether frames carry an FCS, not the link type
    record = struct.Struct(order + "IIII")
    offset, number = 24, 0
    while offset < len(buf):
        number += 1
        if offset + 16 > len(buf):
            raise ImportFailed(f"{path}: packet {number}: file ends inside the record header")
        secs, frac, caplen, _origlen = record.unpack_from(buf, offset)
        if caplen > MAX_RECORD_BYTES:
            raise ImportFailed(f"{path}: packet {number}: record length {caplen} is over {MAX_RECORD_BYTES}")
        if offset + 16 + caplen > len(buf):
            raise ImportFailed(
                f"{path}: packet {number}: file ends inside the packet ({caplen} bytes announced,"
                f" {len(buf) - offset - 16} left)"
            )
        yield CapturedPacket(
            number,
            secs * 1_000_000 + frac // frac_per_us,
            linktype,
            bytes(buf[offset + 16 : offset + 16 + caplen]),
        )
        offset += 16 + caplen


def _iter_pcapng(path: Path, buf: mmap.mmap) -> Iterator[CapturedPacket]:
    order = "<"
    interfaces: list[tuple[int, int, int]] = []  # (linktype, ticks per second, snaplen)
    offset, number = 0, 0
    while offset < len(buf):
        where = f"{path}: block at byte {offset} (after packet {number})"
        if offset + 12 > len(buf):
            raise ImportFailed(f"{where}: file ends inside a block header")
        block_type = struct.unpack_from(order + "I", buf, offset)[0]
        if block_type == 0x0A0D0D0A:
            bom = bytes(buf[offset + 8 : offset + 12])
            if bom == b"\x4d\x3c\x2b\x1a":
                order = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                order = ">"
            else:
                raise ImportFailed(f"{where}: bad section header byte-order magic")
            major = struct.unpack_from(order + "H", buf, offset + 12)[0]
            if major != 1:
                raise ImportFailed(f"{where}: pcapng version {major} is not supported (only 1.x)")
            interfaces = []
        length = struct.unpack_from(order + "I", buf, offset + 4)[0]
        if length < 12 or length % 4 or offset + length > len(buf):
            raise ImportFailed(f"{where}: bad block length {length}")
        if struct.unpack_from(order + "I", buf, offset + length - 4)[0] != length:
            raise ImportFailed(f"{where}: block length {length} does not match its trailer")
        body = offset + 8
        end = offset + length - 4
        if block_type == 1:  # interface description
            linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", buf, body)
            interfaces.append((linktype, _tsresol(buf, order, body + 8, end), snaplen))
        elif block_type in (6, 2, 3):  # enhanced / obsolete / simple packet
            number += 1
            where = f"{path}: packet {number}"
            if block_type == 3:
                if not interfaces:
                    raise ImportFailed(f"{where}: packet before any interface description")
                origlen = struct.unpack_from(order + "I", buf, body)[0]
                iface, ts_ticks, caplen, data_at = 0, 0, min(origlen, end - body - 4), body + 4
            else:
                if block_type == 6:
                    iface, high, low, caplen = struct.unpack_from(order + "IIII", buf, body)
                else:
                    iface, _drops, high, low, caplen = struct.unpack_from(order + "HHIII", buf, body)
                ts_ticks, data_at = (high << 32) | low, body + 20
                if iface >= len(interfaces):
                    raise ImportFailed(f"{where}: interface {iface} was never described")
            if caplen > MAX_RECORD_BYTES or data_at + caplen > end:
                raise ImportFailed(f"{where}: captured length {caplen} runs past its block")
            linktype, ticks, _snap = interfaces[iface]
            ts_us = ts_ticks * 1_000_000 // ticks
            yield CapturedPacket(number, ts_us, linktype, bytes(buf[data_at : data_at + caplen]))
        offset += length


def _tsresol(buf: mmap.mmap, order: str, at: int, end: int) -> int:
    """Ticks per second from an interface's if_tsresol option (default microseconds)."""
    while at + 4 <= end:
        code, length = struct.unpack_from(order + "HH", buf, at)
        if code == 0:
            break
        if code == 9 and length >= 1:
            value = buf[at + 4]
            return 2 ** (value & 0x7F) if value & 0x80 else 10 ** (value & 0x7F)
        at += 4 + (length + 3) // 4 * 4
    return 1_000_000


# ---------------------------------------------------------------- frames → UDP datagrams

_ETHERTYPE_IPV4, _ETHERTYPE_IPV6 = 0x0800, 0x86DD
_VLAN_TYPES = (0x8100, 0x88A8, 0x9100, 0x9200)
_MPLS_TYPES = (0x8847, 0x8848)
_RAW_LINKTYPES = (101, 12, 14, 228, 229)


def ip_payload(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet inside a frame, or None when the frame holds no IP."""
    if linktype == 1:  # Ethernet
        at, ethertype = 14, int.from_bytes(frame[12:14], "big") if len(frame) >= 14 else 0
        while ethertype in _VLAN_TYPES and len(frame) >= at + 4:
            ethertype, at = int.from_bytes(frame[at + 2 : at + 4], "big"), at + 4
        if ethertype in _MPLS_TYPES:
            while len(frame) >= at + 4:
                bottom = frame[at + 2] & 0x01
                at += 4
                if bottom:
                    return frame[at:]
            return None
        return frame[at:] if ethertype in (_ETHERTYPE_IPV4, _ETHERTYPE_IPV6) else None
    if linktype in _RAW_LINKTYPES:
        return frame
    if linktype in (0, 108):  # BSD loopback: 4-byte address family, then IP
        return frame[4:]
    if linktype == 113:  # Linux cooked v1
        return frame[16:] if frame[14:16] in (b"\x08\x00", b"\x86\xdd") else None
    if linktype == 276:  # Linux cooked v2
        return frame[20:] if frame[0:2] in (b"\x08\x00", b"\x86\xdd") else None
    return None


@dataclass(slots=True)
class Datagram:
    src_addr: str
    src_port: int
    dst_port: int
    payload: bytes


class UdpExtractor:
    """IP packets → UDP datagrams, reassembling IP fragments as the exporter's kernel-side peer would."""

    def __init__(self) -> None:
        self.skipped: Counter[str] = Counter()
        self._fragments: dict[tuple[Any, ...], dict[int, bytes]] = {}
        self._totals: dict[tuple[Any, ...], int] = {}

    def datagram(self, linktype: int, frame: bytes) -> Datagram | None:
        packet = ip_payload(linktype, frame)
        if packet is None or not packet:
            self.skipped["not IP"] += 1
            return None
        version = packet[0] >> 4
        parsed = self._ipv4(packet) if version == 4 else self._ipv6(packet) if version == 6 else None
        if parsed is None:
            return None
        src_addr, protocol, payload = parsed
        if protocol != 17:
            self.skipped["not UDP"] += 1
            return None
        if len(payload) < 8:
            self.skipped["truncated UDP header"] += 1
            return None
        src_port, dst_port, length = struct.unpack_from("!HHH", payload)
        if length < 8 or length > len(payload):
            self.skipped["bad UDP length"] += 1
            return None
        return Datagram(src_addr, src_port, dst_port, payload[8:length])

    def _ipv4(self, packet: bytes) -> tuple[str, int, bytes] | None:
        header = (packet[0] & 0x0F) * 4
        if header < 20 or len(packet) < header:
            self.skipped["bad IPv4 header"] += 1
            return None
        total = int.from_bytes(packet[2:4], "big")
        if total < header or total > len(packet):
            self.skipped["truncated IPv4 packet"] += 1
            return None
        frag = int.from_bytes(packet[6:8], "big")
        src = str(ipaddress.IPv4Address(packet[12:16]))
        protocol, body = packet[9], packet[header:total]
        if frag & 0x3FFF:  # more fragments, or an offset: a piece of a larger datagram
            key = (4, packet[12:20], packet[4:6], protocol)
            body = self._reassemble(key, (frag & 0x1FFF) * 8, bool(frag & 0x2000), body)
            if body is None:
                return None
        return src, protocol, body

    def _ipv6(self, packet: bytes) -> tuple[str, int, bytes] | None:
        if len(packet) < 40:
            self.skipped["bad IPv6 header"] += 1
            return None
        end = 40 + int.from_bytes(packet[4:6], "big")
        if end > len(packet):
            self.skipped["truncated IPv6 packet"] += 1
            return None
        src = str(ipaddress.IPv6Address(packet[8:24]))
        next_header, at = packet[6], 40
        fragment: tuple[int, bool, bytes] | None = None
        while next_header in (0, 43, 44, 60):
            if at + 8 > end:
                self.skipped["bad IPv6 extension header"] += 1
                return None
            if next_header == 44:
                offset_flags = int.from_bytes(packet[at + 2 : at + 4], "big")
                fragment = ((offset_flags >> 3) * 8, bool(offset_flags & 1), packet[at + 4 : at + 8])
                next_header, at = packet[at], at + 8
            else:
                next_header, at = packet[at], at + 8 + packet[at + 1] * 8
        body = packet[at:end]
        if fragment is not None:
            key = (6, packet[8:40], fragment[2], next_header)
            body = self._reassemble(key, fragment[0], fragment[1], body)
            if body is None:
                return None
        return src, next_header, body

    def _reassemble(self, key: tuple[Any, ...], offset: int, more: bool, piece: bytes) -> bytes | None:
        if key not in self._fragments and len(self._fragments) >= REASSEMBLY_LIMIT:
            oldest = next(iter(self._fragments))
            self._fragments.pop(oldest)
            self._totals.pop(oldest, None)
            self.skipped["fragments never completed"] += 1
        pieces = self._fragments.setdefault(key, {})
        pieces[offset] = piece
        if not more:
            self._totals[key] = offset + len(piece)
        total = self._totals.get(key)
        if total is None:
            return None
        joined, at = bytearray(), 0
        for start in sorted(pieces):
            if start > at:
                return None  # a hole: wait for more
            joined += pieces[start][at - start :]
            at = max(at, start + len(pieces[start]))
        if at < total:
            return None
        self._fragments.pop(key)
        self._totals.pop(key)
        return bytes(joined[:total])


# ---------------------------------------------------------------- one file → records


@dataclass
class LoadedFile:
    path: Path
    kind: str
    batch_id: str
    flows: list[Flow] = field(default_factory=list)
    names: list[Name] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    datagrams: int = 0


def file_batch_id(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "import:" + digest.hexdigest()


def new_decoder() -> Any:
    from collector.netflow import NetflowDecoder

    return NetflowDecoder()


def load_file(
    path: str | Path,
    *,
    decoder: Any = None,
    nfdump_tz: _dt.tzinfo = _dt.UTC,
    probe_id: str | None = None,
    port: int | None = None,
) -> LoadedFile:
    """Read one file completely (nothing is stored here); raises ImportFailed naming the bad record."""
    path = Path(path)
    try:
        kind = fileio.sniff_kind(path)
    except OSError as exc:
        raise ImportFailed(f"{path}: cannot read: {exc.strerror}") from None
    loaded = LoadedFile(path, kind, file_batch_id(path))
    try:
        if kind in (fileio.PCAP, fileio.PCAPNG):
            _load_capture(loaded, decoder if decoder is not None else new_decoder(), port)
        elif kind == fileio.NFDUMP_CSV:
            loaded.flows = list(fileio.read_nfdump_csv(path, nfdump_tz, probe_id))
        elif kind in (fileio.JSONL, fileio.CSV, fileio.PARQUET):
            for record in fileio.read_records(path, kind):
                (loaded.flows if isinstance(record, Flow) else loaded.names).append(record)
        else:
            raise ImportFailed(
                f"{path}: unknown kind of file (expected hostflow JSON lines / CSV / Parquet,"
                " `nfdump -o csv` output, or a pcap/pcapng of NetFlow/IPFIX export packets)"
            )
    except ContractError as exc:
        raise ImportFailed(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise ImportFailed(f"{path}: not UTF-8 text at byte {exc.start}") from None
    if probe_id is not None:
        for record in (*loaded.flows, *loaded.names):
            record.probe_id = probe_id
    return loaded


def _load_capture(loaded: LoadedFile, decoder: Any, port: int | None) -> None:
    extractor = UdpExtractor()
    metrics = getattr(decoder, "metrics", None)
    drops_before = Counter(metrics.drops) if metrics is not None else Counter()
    for packet in iter_capture(loaded.path):
        datagram = extractor.datagram(packet.linktype, packet.data)
        if datagram is None or (port is not None and datagram.dst_port != port):
            continue
        loaded.datagrams += 1
        # the decoder never raises: what it cannot decode it counts by reason, as the listener does
        loaded.flows.extend(decoder.feed(datagram.payload, datagram.src_addr, packet.ts_us))
    loaded.skipped.update(extractor.skipped)
    if metrics is not None:
        for reason, count in (Counter(metrics.drops) - drops_before).items():
            loaded.skipped[f"NetFlow datagrams/sets dropped: {reason}"] += count


# ---------------------------------------------------------------- storing: local store or live daemon


@dataclass
class ImportOutcome:
    path: Path
    kind: str
    batch_id: str
    flows: int
    names: int
    duplicate: bool
    via: str  # "db" or the daemon's URL
    skipped: Counter[str]


def live_collector(db: str | Path) -> str | None:
    """The URL of a running collector that owns ``db``, from ``<db>.collector.json``; None if none."""
    state = Path(f"{db}.collector.json")
    try:
        info = json.loads(state.read_text())
        pid, url = int(info["pid"]), str(info["url"]).rstrip("/")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=3) as answer:
            return url if answer.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def post_import(url: str, token: str, loaded: LoadedFile, timeout: float = 300.0) -> dict[str, Any]:
    """Send one file's records to a live collector as one batch (idempotent by batch_id)."""
    probe_id = next((r.probe_id for r in (*loaded.flows, *loaded.names)), "")
    batch = make_batch(probe_id, loaded.batch_id, loaded.flows, loaded.names)
    batch["source"] = f"import:{loaded.path.name}"
    body = gzip.compress(json.dumps(batch, separators=(",", ":")).encode(), compresslevel=5)
    request = urllib.request.Request(
        f"{url}/api/v1/import",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Authorization": f"Bearer {token}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except (ValueError, AttributeError):
            pass
        raise ImportFailed(
            f"{loaded.path}: collector at {url} refused the import ({exc.code}): {detail}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ImportFailed(f"{loaded.path}: collector at {url} did not answer: {exc}") from None


def store_loaded(store: Any, loaded: LoadedFile) -> ImportOutcome:
    result = store.ingest(loaded.batch_id, f"import:{loaded.path.name}", loaded.flows, loaded.names)
    return ImportOutcome(
        loaded.path,
        loaded.kind,
        loaded.batch_id,
        result.flows,
        result.names,
        result.duplicate,
        "db",
        loaded.skipped,
    )


def parse_zone(name: str) -> _dt.tzinfo:
    if name.upper() == "UTC":
        return _dt.UTC
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):
        raise ImportFailed(f"--nfdump-tz: unknown time zone {name!r} (e.g. UTC, Europe/Berlin)") from None


def register_cli(register_subcommand: Any) -> None:
    """Adds `python -m collector import` (collector/__main__.py calls this)."""
    from collector import filecli

    register_subcommand("import", filecli.IMPORT_HELP, filecli.add_import_arguments, filecli.run_import)
