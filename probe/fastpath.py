"""Vectorised metering with numpy (pcap and pcapng files, live ring blocks): the per-packet path's flows, faster.

What numpy buys: the per-packet path costs several microseconds of interpreter time per packet
(read a record, decode it, update the flow table): about 100,000 packets per CPU second here,
a fifth of softflowd. Here the file is read 32,768 packets at a time into one reused buffer,
each step is done for the whole chunk at once, and the flow table is updated once per
conversation per batch of 262,144 packets: about 4× the per-packet rate (bench/bench_probe.py;
figures in docs/sizing-probe.md). Without numpy the probe still works, packet by packet.

1. Walk the record headers (pcapng: ``PcapngChunks``, the per-packet reader's own block walk,
   collecting offsets only; live: ``probe.capture.RingCapture`` gives each ring block's packets).
   Classic pcap records have variable lengths, so the walk is sequential; it is split
   into lanes of a few KB that numpy walks side by side (a lane starts at a record header found by
   looking for the capture's current seconds value). The lanes must join up exactly — lane j ends
   on lane j+1's first record — or the chunk is walked again by a plain loop, which also reports
   damage exactly as ``probe.capture`` does.
2. Decode Ethernet (with at most one VLAN tag) + IPv4/IPv6 + TCP/UDP/ICMP headers with array
   indexing. Every frame this does not cover exactly — other link types, more tags, MPLS, PPPoE,
   fragments, IP options cut short, IPv6 extension headers, anything truncated — goes through
   ``probe.decode.decode`` one by one, so problems are counted by the same reasons.
3. Meter: canonical conversation keys hashed to one uint64 and grouped by one sort; the
   idle-timeout splits come from ``np.diff`` of the sorted times; packets, bytes, flags, first/last
   times per direction from ``reduceat``. The flow table (``FlowMeter.pairs``) is then updated once
   per conversation rather than once per packet.

With probe/_cmeter.c built (``probe.cmeter``), steps 1 (pcap; pcapng's block chain), 2 (Ethernet)
and 3 are done by C with the same rules, in chunks of 8,192 packets; the rest is as described here.

Exactness. The result is the same set of flow records, names and counters as the per-packet path
(tests/test_probe_fastpath.py compares them on every fixture and on generated traffic), because
the fast path only does what it can prove equal and hands everything else to the exact code:

- A chunk whose timestamps go backwards (or behind anything seen before), or that could fill the
  flow table (eviction depends on the order of every packet), is metered packet by packet.
- A conversation with a TCP FIN or RST in the batch, one already closed by FIN/RST, or one
  that reaches the active timeout in the batch is fed to ``FlowMeter.add`` packet by packet.
- Everything else is independent per conversation: only idle splits can happen, and those
  are found exactly; a SYN there only names the opener (the first SYN of each new pair). The
  table's order (which pair is least recently active, used for eviction) is rebuilt from the
  packet index of each pair's last creation/move, and the periodic idle scans
  are replayed at the chunk's last scan time, which removes exactly the pairs the per-packet
  scans would have removed by then (time does not go backwards inside such a chunk).

Only the order in which flows are handed to the sink differs. Names still go through
``NameExtractor.feed`` one packet at a time, in capture order, but only the packets it could
learn from: ``name_packets`` picks them with arrays by the rule ``probe.names`` declares (ports,
first bytes), and leaves to ``NameExtractor.interesting`` only the TCP packets whose ports may
have a partial message buffered when they come. Packets whose outcome their first bytes already
tell (a DNS query from port 53/5353/5355; a DNS-over-TCP segment with no partial message before it
and a length prefix below a header) are only counted, as ``feed`` would count them.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import operator
import struct
import sys
from collections.abc import Iterator
from itertools import chain
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from hostflow.records import END_IDLE, PROTO_TCP, PROTO_UDP
from probe import cmeter
from probe.capture import _PCAP_MAGICS, MAX_RECORD, ProbeInputError, pcapng_records
from probe.decode import Decoded, decode
from probe.meter import (
    D_LAST,
    EMPTY_PAIR,
    MOVE_GRANULARITY_US,
    P_CLOSED,
    P_DIR0,
    P_DIR1,
    P_FIRST_DIR,
    P_LAST,
    P_MOVED,
    P_START,
    P_SYN_DIR,
    P_VERSION,
    TH_ACK,
    TH_FIN,
    TH_RST,
    TH_SYN,
)
from probe.names import (
    CLIENT_HELLO_FIRST,
    CLIENT_HELLO_MORE,
    CLIENT_HELLO_TELL,
    DNS_FAMILY_SOURCE,
    DNS_HEADER_LEN,
    HTTP_METHOD_PREFIXES,
    HTTP_PREFIX_LEN,
    PORT_DNS,
    TCP_SOURCE_PORTS,
    UDP_SOURCE_PORTS,
)

log = logging.getLogger(__name__)

CHUNK_PACKETS = 32_768  # packets per read chunk (the buffer holds their frames)
C_CHUNK_PACKETS = 8_192  # the same with probe/_cmeter.c: chunks that stay in the CPU's cache are 20 % faster
BATCH_PACKETS = 262_144  # packets metered at once (about 450 bytes of arrays per packet at the peak)
FIRST_CHUNK_BYTES = 4 << 20  # the first chunk's size; later ones from the packets' mean size
MAX_CHUNK_BYTES = 128 << 20
LANE_BYTES = 16_384  # bytes of capture per lane of the vectorised record walk
SCAN_INTERVAL_US = 1_000_000  # as probe.pipeline: how often (packet time) idle pairs are expired

_VLAN_TYPES = (0x8100, 0x88A8, 0x9100, 0x9200)
_KNOWN_ETYPES = (0x0800, 0x86DD, 0x8847, 0x8848, 0x8864, *_VLAN_TYPES)  # anything else is not IP
_IP6_EXT = (0, 43, 44, 51, 60)  # left to the exact decoder
_TCP_ENDS = TH_FIN | TH_RST  # they close a pair (then a SYN may end it): the pair goes packet by packet

TS_MAX = np.iinfo(np.int64).max
TS_LIMIT = 1 << 62  # times (µs) the arrays take; any other goes packet by packet


def pcap_header(path: str) -> tuple[str, int, int] | None:
    """(byte order, fraction divisor, link type) of a classic pcap file we can walk; else None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:4] not in _PCAP_MAGICS:
        return None
    order, frac_div = _PCAP_MAGICS[head[:4]]
    major, _minor, _zone, _sigfigs, _snaplen, linkfield = struct.unpack_from(order + "HHiIII", head, 4)
    if major != 2:
        return None
    return order, frac_div, linkfield & 0xFFFF


class Chunk:
    """Records of one chunk: header offsets in ``buf`` and their fields, in capture order."""

    def __init__(self, buf: memoryview, u8: np.ndarray, starts: np.ndarray, ts: np.ndarray,
                 caplen: np.ndarray, linktype: int, error: ProbeInputError | None) -> None:  # fmt: skip
        self.buf = buf
        self.u8 = u8
        self.starts = starts
        self.ts = ts
        self.caplen = caplen
        self.linktype = linktype
        self.error = error  # raise after metering the records before it
        self.exact_times: list[int] | None = None  # times int64 cannot hold: the chunk goes packet by packet


class PcapChunks:
    """Read a pcap file chunk by chunk into one reused buffer; iterate to get ``Chunk``s."""

    def __init__(self, path: str, order: str, frac_div: int, linktype: int) -> None:
        self.path = path
        self.order = order
        self.frac_div = frac_div
        self.linktype = linktype
        self.header = struct.Struct(order + "IIII")
        self.lanes_failed = 0  # chunks the lanes could not walk (walked by the plain loop)
        self._lib = cmeter.library()  # the walk in C when built: ~0.07 µs a packet against numpy's 0.25
        self.chunk_packets = C_CHUNK_PACKETS if self._lib is not None else CHUNK_PACKETS

    def __iter__(self):
        with open(self.path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            base = 24
            number = 0
            want = FIRST_CHUNK_BYTES
            buffer = bytearray()
            while base < size:
                length = min(want, size - base)
                if len(buffer) < length:
                    buffer = bytearray(length)
                view = memoryview(buffer)[:length]
                handle.seek(base)
                handle.readinto(view)
                at_eof = base + length >= size
                u8 = np.frombuffer(view, np.uint8)
                walked = self._walk_c(u8, length, at_eof) if self._lib is not None else None
                if walked is not None:
                    starts, used, ts, caplen = walked
                    error = None
                else:
                    starts, used, error = self._walk(view, length, at_eof, number)
                if not len(starts) and error is None:
                    if at_eof:  # pragma: no cover - _walk reports an incomplete record at EOF
                        break
                    want = min(want * 2, MAX_CHUNK_BYTES)
                    continue
                if walked is not None:
                    yield Chunk(view, u8, starts, ts, caplen, self.linktype, None)
                else:
                    yield self._chunk(view, u8, starts, error)
                if error is not None:
                    return
                number += len(starts)
                base += used
                mean = max(used // len(starts), 1)
                want = min(max(self.chunk_packets * mean, 1 << 20), MAX_CHUNK_BYTES)

    def _chunk(self, view: memoryview, u8: np.ndarray, starts: np.ndarray,
               error: ProbeInputError | None) -> Chunk:  # fmt: skip
        size = len(u8)
        headers = as_strided(u8, shape=(max(size - 15, 0), 16), strides=(1, 1), writeable=False)[starts]
        fields = headers.view(self.order + "u4").astype(np.int64)
        sec, frac, caplen = fields[:, 0], fields[:, 1], fields[:, 2]
        ts = sec * 1_000_000 + (frac if self.frac_div == 1 else frac // 1000)
        return Chunk(view, u8, starts + 16, ts, caplen, self.linktype, error)

    # ------------------------------------------------------------ the record walk

    def _walk_c(self, u8: np.ndarray, length: int, at_eof: bool):
        """(data offsets, bytes used, times, captured lengths) of the records, walked in C; None
        when the buffer holds a damaged or (at the file's end) cut record: ``_walk`` words that."""
        most = min(length // 16 + 1, 2 * self.chunk_packets)
        fields = np.empty((3, most), dtype=np.int64)
        used, status = ctypes.c_int64(), ctypes.c_int64()
        count = self._lib.cm_walk_pcap(
            u8.ctypes.data, length, self.order == ">", self.frac_div, MAX_RECORD, fields[0].ctypes.data,
            fields[1].ctypes.data, fields[2].ctypes.data, most, ctypes.byref(used), ctypes.byref(status),
        )  # fmt: skip
        if status.value == 2 or (status.value == 1 and at_eof):
            return None
        return fields[0, :count], used.value, fields[1, :count], fields[2, :count]

    def _walk(self, view: memoryview, length: int, at_eof: bool, number: int):
        """Offsets of the complete records in the buffer, bytes used, and an error or None."""
        starts = None
        if length >= 4 * LANE_BYTES:
            starts = self._walk_lanes(view, length, at_eof)
        if starts is None:
            self.lanes_failed += length >= 4 * LANE_BYTES
            return self._walk_loop(view, length, at_eof, number)
        last = int(starts[-1])
        return starts, last + 16 + self.header.unpack_from(view, last)[2], None

    def _walk_loop(self, view: memoryview, length: int, at_eof: bool, number: int):
        unpack = self.header.unpack_from
        path = self.path
        starts = []
        offset = 0
        error = None
        while offset < length:
            if offset + 16 > length:
                if at_eof:
                    error = ProbeInputError(
                        f"{path}: packet {number + len(starts) + 1}: truncated record header (file cut short)"
                    )
                break
            caplen = unpack(view, offset)[2]
            if caplen > MAX_RECORD:
                error = ProbeInputError(
                    f"{path}: packet {number + len(starts) + 1}: record length {caplen} is larger than "
                    f"{MAX_RECORD} (damaged file)"
                )
                break
            if offset + 16 + caplen > length:
                if at_eof:
                    error = ProbeInputError(
                        f"{path}: packet {number + len(starts) + 1}: truncated record "
                        f"({length - offset - 16} of {caplen} bytes; file cut short)"
                    )
                break
            starts.append(offset)
            offset += 16 + caplen
        return np.array(starts, dtype=np.int64), offset, error

    def _walk_lanes(self, view: memoryview, length: int, at_eof: bool) -> np.ndarray | None:
        """The record walk, many lanes at once; None when the lanes do not join up exactly."""
        u32 = np.ndarray((length - 3,), dtype=self.order + "u4", buffer=view, strides=(1,))
        frac_limit = 1_000_000 if self.frac_div == 1 else 1_000_000_000
        # a lane starts where the first record's seconds (three high bytes) appear again
        if self.order == "<":
            pattern, shift = bytes(view[1:4]), 1
        else:
            pattern, shift = bytes(view[0:3]), 0
        raw = view.obj if isinstance(view.obj, bytes | bytearray) else bytes(view)
        found = [0]
        for nominal in range(LANE_BYTES, length - LANE_BYTES, LANE_BYTES):
            at = raw.find(pattern, nominal + shift, min(nominal + LANE_BYTES, length))
            if at >= 0:
                found.append(at - shift)
        if len(found) < (length // LANE_BYTES) // 4:
            return None
        lanes = np.unique(np.array(found, dtype=np.int64))
        lanes = lanes[lanes + 16 <= length]
        # keep starts whose next three records look like headers too
        plausible = np.ones(len(lanes), dtype=bool)
        probe = lanes.copy()
        for _ in range(3):
            inside = probe + 16 <= length
            at = np.where(inside, probe, 0)
            caplen = u32[at + 8].astype(np.int64)
            plausible &= ~inside | ((u32[at + 4] < frac_limit) & (caplen <= MAX_RECORD))
            probe = np.where(inside, probe + 16 + caplen, probe)
        plausible[0] = True
        lanes = lanes[plausible]
        stops = np.append(lanes[1:], length)
        pos = lanes.copy()
        active = np.arange(len(lanes))
        visited = []
        while active.size:
            here = pos[active]
            if (here + 16 > length).any():  # a header cut by the buffer's end
                if at_eof:
                    return None
                last = active[-1]
                if here[-1] + 16 > length and (here[:-1] + 16 <= length).all():
                    stops[last] = here[-1]
                    active = active[:-1]
                    if not active.size:
                        break
                    here = pos[active]
                else:
                    return None
            visited.append(here)
            caplen = u32[here + 8].astype(np.int64)
            if (caplen > MAX_RECORD).any():
                return None
            following = here + 16 + caplen
            over = following > length
            if over.any():
                if at_eof or over[:-1].any() or active[-1] != len(lanes) - 1:
                    return None
                visited[-1] = here[:-1]  # the last lane's record runs past the buffer: next chunk
                stops[-1] = here[-1]
                following[-1] = here[-1]
            pos[active] = following
            active = active[following < stops[active]]
        if not np.array_equal(pos[:-1], lanes[1:]):
            return None
        if not at_eof and pos[-1] < length and pos[-1] != stops[-1]:
            return None
        starts = np.sort(np.concatenate(visited)) if visited else np.zeros(0, dtype=np.int64)
        return starts if len(starts) else None


def is_pcapng(path: str) -> bool:
    """True if the file starts with a pcapng section header (``PcapngChunks`` reads it)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"\x0a\x0d\x0d\x0a"
    except OSError:
        return False


class PcapngChunks:
    """The packets of a pcapng file as ``Chunk``s over one read-only map of the file.

    The blocks are walked by ``probe.capture.pcapng_records``, the per-packet reader's own walk (so
    every check and error message is the same), which hands each run of enhanced packet blocks
    (little-endian, one interface) to ``_epb_run``: a tight loop follows the block lengths, and the
    blocks' fields are read and checked with arrays; anything odd in the run goes back to the
    walk, which reports it exactly. The frames stay in the map. A chunk holds packets of one link
    type (interfaces may differ).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lib = cmeter.library()  # the block chain in C when built
        self.chunk_packets = C_CHUNK_PACKETS if self._lib is not None else CHUNK_PACKETS

    def __iter__(self):
        with open(self.path, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        size = len(mapped)
        u8 = np.frombuffer(mapped, np.uint8)
        view = memoryview(mapped)
        self.words = view[: size - size % 4].cast("I") if sys.byteorder == "little" else None
        self.u32 = u8[: size - size % 4].view("<u4")
        self.u8 = u8
        parts: list = []  # (starts, times, caplens) arrays, or single (start, time, caplen)
        count = 0
        linktype = 0
        error = None
        try:
            for item in pcapng_records(self.path, mapped, self._epb_run if self.words is not None else None):
                if item[0] == "run":
                    _tag, item_linktype, starts, times, caplens = item
                    item_count = len(starts)
                else:
                    item_linktype, ts, _wire_len, data, caplen = item
                    item_count = 1
                    if not -TS_LIMIT <= ts < TS_LIMIT:  # a pcapng time can be any 64-bit count of units
                        if count:
                            yield self._chunk(view, u8, parts, linktype, None)
                            parts, count = [], 0
                        chunk = self._chunk(view, u8, [(data, 0, caplen)], item_linktype, None)
                        chunk.exact_times = [ts]
                        yield chunk
                        linktype = item_linktype
                        continue
                if count and (item_linktype != linktype or count >= self.chunk_packets):
                    yield self._chunk(view, u8, parts, linktype, None)
                    parts, count = [], 0
                linktype = item_linktype
                parts.append((starts, times, caplens) if item[0] == "run" else (data, ts, caplen))
                count += item_count
        except ProbeInputError as exc:
            error = exc
        finally:
            self.words = self.u32 = self.u8 = None
        if count or error is not None:
            yield self._chunk(view, u8, parts, linktype, error)

    def _epb_run(self, offset: int, order: str, interfaces: list):
        """(packets, next offset, item) for the enhanced packet blocks from ``offset`` on; None: not here."""
        if order != "<" or not interfaces:
            return None
        words = self.words
        end = len(words) * 4
        at = offset
        if_id = words[(at >> 2) + 2] if at + 12 <= end else -1
        if not 0 <= if_id < len(interfaces):
            return None
        if self._lib is not None and at % 4 == 0:
            found = np.empty(self.chunk_packets, dtype=np.int64)
            found = found[
                : self._lib.cm_chain_epb(self.u8.ctypes.data, end, at, found.ctypes.data, len(found))
            ]
        else:
            found = []
            append = found.append
            for _ in range(
                self.chunk_packets
            ):  # only the chain: every field is checked with the arrays below
                if at + 32 > end:
                    break
                w = at >> 2
                if words[w] != 6:
                    break
                append(at)
                length = words[w + 1]
                if length < 32:
                    break
                at += length
        if len(found) < 2:
            return None
        u32 = self.u32
        w = np.asarray(found, dtype=np.int64) >> 2
        length, high, low, caplen = u32[w + 1], u32[w + 3], u32[w + 4], u32[w + 5]
        length64 = length.astype(np.int64)
        bad = (length64 < 32) | (length64 & 3 != 0) | (w * 4 + length64 > end) | (u32[w + 2] != if_id)
        bad |= (caplen.astype(np.int64) > length64 - 32) | (high >= 1 << 30)  # times below TS_LIMIT
        bad = np.flatnonzero(bad)
        if len(bad):  # the walk reports it (or takes a time too large for these arrays)
            w = w[: bad[0]]
            if len(w) < 2:
                return None
            length, high, low, caplen = length[: len(w)], high[: len(w)], low[: len(w)], caplen[: len(w)]
        linktype, units, offset_us, _snaplen = interfaces[if_id]
        ts = (high.astype(np.int64) << 32) | low.astype(np.int64)
        if units % 1_000_000 == 0:
            ts //= units // 1_000_000
        elif int(ts.max()) < (1 << 63) // 1_000_000:
            ts = ts * 1_000_000 // units
        else:
            return None
        ts += offset_us
        next_offset = int(w[-1]) * 4 + int(length[-1])
        return len(w), next_offset, ("run", linktype, w * 4 + 28, ts, caplen.astype(np.int64))

    @staticmethod
    def _chunk(view, u8, parts, linktype, error) -> Chunk:
        columns = []
        for k in range(3):
            pieces = [np.atleast_1d(np.asarray(part[k], dtype=np.int64)) for part in parts]
            columns.append(np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64))
        return Chunk(view, u8, columns[0], columns[1], columns[2], linktype, error)


# ---------------------------------------------------------------- decode

KIND_IP, KIND_NON_IP, KIND_ERROR = 0, 1, 2
HEAD = 96  # bytes of each frame looked at by the array decoder (Ethernet + tag + IPv6 + TCP fit)
_INT_FIELDS = ("ts", "version", "proto", "sport", "dport", "flags", "tos", "vlan", "nbytes", "macs")
_WORD_FIELDS = ("src_hi", "src_lo", "dst_hi", "dst_lo", "smac", "dmac")
MAC_SRC, MAC_DST = 1, 2  # bits of ``macs``: the link layer had that address


class Columns:
    """Decoded fields of packets, one array per field, in capture order (no reference to the frames)."""

    __slots__ = ("n", "kind", *_INT_FIELDS, *_WORD_FIELDS)

    @classmethod
    def empty(cls, n: int) -> Columns:
        cols = cls()
        cols.n = n
        cols.kind = np.full(n, KIND_ERROR, dtype=np.int8)
        for name in _INT_FIELDS:
            setattr(cols, name, np.zeros(n, dtype=np.int64))
        for name in _WORD_FIELDS:
            setattr(cols, name, np.zeros(n, dtype=np.uint64))
        return cols

    @classmethod
    def concat(cls, parts: list[Columns]) -> Columns:
        if len(parts) == 1:
            return parts[0]
        cols = cls()
        cols.n = sum(part.n for part in parts)
        for name in ("kind", *_INT_FIELDS, *_WORD_FIELDS):
            setattr(cols, name, np.concatenate([getattr(part, name) for part in parts]))
        return cols


def addr_bytes(version: int, hi: int, lo: int) -> bytes:
    if version == 4:
        return lo.to_bytes(4, "big")
    return hi.to_bytes(8, "big") + lo.to_bytes(8, "big")


def _words(addr: bytes) -> tuple[int, int]:
    if len(addr) == 16:
        return int.from_bytes(addr[:8], "big"), int.from_bytes(addr[8:], "big")
    return 0, int.from_bytes(addr, "big")


class Decoded_chunk:  # noqa: N801 - a plain record
    """A chunk's columns plus where each payload lies in the chunk's buffer (for names)."""

    __slots__ = ("cols", "pay_start", "pay_end", "exact")

    def __init__(self, cols: Columns, pay_start: np.ndarray, pay_end: np.ndarray, exact: dict) -> None:
        self.cols = cols
        self.pay_start = pay_start
        self.pay_end = pay_end
        self.exact = exact


def decode_chunk(chunk: Chunk, errors: dict[str, int], lib=None) -> Decoded_chunk:
    """Decode every packet of the chunk; frames the arrays cannot do exactly go to ``decode``.

    Ethernet frames are decoded by probe/_cmeter.c when ``lib`` is its library
    (``cmeter.library()``), else by numpy: the same rules, the same columns."""
    n = len(chunk.starts)
    cols = Columns.empty(n)
    cols.ts = chunk.ts
    pay_start = np.zeros(n, dtype=np.int64)
    pay_end = np.zeros(n, dtype=np.int64)
    fast = np.zeros(n, dtype=bool)
    if chunk.linktype == 1 and n:
        if lib is not None:
            _decode_ethernet_c(lib, chunk, cols, pay_start, pay_end, fast)
        else:
            _decode_ethernet(chunk, cols, pay_start, pay_end, fast)
    rest = np.flatnonzero(~fast & (cols.kind != KIND_NON_IP))
    exact: dict[int, Decoded] = {}
    if len(rest):
        _decode_exact(chunk, cols, pay_start, pay_end, rest, errors, exact)
    return Decoded_chunk(cols, pay_start, pay_end, exact)


_BIG_ENDIAN = {2: np.dtype(">u2"), 4: np.dtype(">u4"), 8: np.dtype(">u8")}


def _be(rows: np.ndarray, column: int, width: int) -> np.ndarray:
    """The big-endian unsigned field of ``width`` bytes at ``column`` of every row, as int64."""
    return _field(rows, column, width).astype(np.int64)


def _be64(rows: np.ndarray, column: int) -> np.ndarray:
    return _field(rows, column, 8).astype(np.uint64)


def _field(rows: np.ndarray, column: int, width: int) -> np.ndarray:
    if not len(rows) or not rows.flags.c_contiguous:
        rows = np.ascontiguousarray(rows[:, column : column + width])
        column = 0
        if not len(rows):
            return np.zeros(0, dtype=_BIG_ENDIAN[width])
    # one strided read of the field in place of a read, a shift and an OR per byte
    return np.ndarray(
        (len(rows),), dtype=_BIG_ENDIAN[width], buffer=rows, offset=column, strides=(rows.strides[0],)
    )


def _decode_ethernet(chunk: Chunk, cols: Columns, pay_start, pay_end, fast) -> None:
    u8 = chunk.u8
    data = chunk.starts
    caplen = chunk.caplen
    size = len(u8)
    if size < HEAD:
        return
    windows = as_strided(u8, shape=(size - HEAD + 1, HEAD), strides=(1, 1), writeable=False)
    whole = data + HEAD <= size  # the last small frames of a buffer: exact decoder
    rows = windows[np.minimum(data, size - HEAD)]
    etype = _be(rows, 12, 2)
    tagged = (etype == 0x8100) | (etype == 0x88A8) | (etype == 0x9100) | (etype == 0x9200)
    inner = np.where(tagged, _be(rows, 16, 2), etype)
    plain = (caplen >= 14) & (~tagged | (caplen >= 18))
    known = np.zeros(len(inner), dtype=bool)
    for value in _KNOWN_ETYPES:
        known |= inner == value
    cols.kind[whole & plain & ~known] = KIND_NON_IP
    for tag in (False, True):
        off = 18 if tag else 14
        for version, etype_value in ((4, 0x0800), (6, 0x86DD)):
            sel = np.flatnonzero(whole & plain & (tagged == tag) & (inner == etype_value))
            if len(sel):
                _decode_ip(rows[sel], caplen[sel], sel, off, version, cols, pay_start, pay_end, fast, data)
    ip = np.flatnonzero(fast)
    cols.vlan[ip] = np.where(tagged, _be(rows, 14, 2) & 0x0FFF, 0)[ip]
    # 8 bytes from 4 end with the source MAC (bytes 6-11); 8 from 0 start with the destination's
    cols.smac[ip] = (_be64(rows, 4) & np.uint64(0xFFFF_FFFF_FFFF))[ip]
    cols.dmac[ip] = (_be64(rows, 0) >> np.uint64(16))[ip]
    cols.macs[ip] = MAC_SRC | MAC_DST


_C_DECODED = ("kind", "version", "proto", "sport", "dport", "flags", "tos", "vlan", "nbytes", "macs", "src_hi",
              "src_lo", "dst_hi", "dst_lo", "smac", "dmac")  # fmt: skip


def _decode_ethernet_c(lib, chunk: Chunk, cols: Columns, pay_start, pay_end, fast) -> None:
    """``_decode_ethernet`` by probe/_cmeter.c (``cm_decode_ethernet``): ~0.07 µs a packet, numpy's 0.3."""
    u8 = chunk.u8
    data = np.ascontiguousarray(chunk.starts, dtype=np.int64)
    caplen = np.ascontiguousarray(chunk.caplen, dtype=np.int64)
    arrays = [getattr(cols, name) for name in _C_DECODED] + [pay_start, pay_end, fast]
    pointers = (ctypes.c_void_p * len(arrays))(*(array.ctypes.data for array in arrays))
    lib.cm_decode_ethernet(
        u8.ctypes.data, len(u8), data.ctypes.data, caplen.ctypes.data, len(data), HEAD, pointers
    )


def _decode_ip(rows, caplen, sel, off, version, cols, pay_start, pay_end, fast, data) -> None:
    if version == 4:
        ok = (rows[:, off] == 0x45) & (caplen >= off + 20)  # IPv4 options: exact decoder
        total = _be(rows, off + 2, 2)
        ok &= (total >= 20) & ((_be(rows, off + 6, 2) & 0x3FFF) == 0)
        proto = rows[:, off + 9].astype(np.int64)
        tos = rows[:, off + 1].astype(np.int64)
        nbytes = total
        end = np.minimum(off + total, caplen)
        transport = off + 20
    else:
        ok = ((rows[:, off] >> 4) == 6) & (caplen >= off + 40)
        tos = ((rows[:, off].astype(np.int64) & 0x0F) << 4) | (rows[:, off + 1] >> 4)
        plen = _be(rows, off + 4, 2)
        proto = rows[:, off + 6].astype(np.int64)
        for value in _IP6_EXT:
            ok &= proto != value
        nbytes = np.where(plen > 0, plen + 40, caplen - off)
        end = np.where(plen > 0, np.minimum(off + plen + 40, caplen), caplen)
        transport = off + 40
    available = end - transport
    tcp, udp = proto == 6, proto == 17
    icmp = (proto == 1) | (proto == 58)
    ok &= np.where(tcp, available >= 20, np.where(udp, available >= 8, ~icmp | (available >= 2)))
    ports = tcp | udp
    first_two = _be(rows, transport, 2)
    sport = np.where(ports, first_two, 0)
    dport = np.where(ports, _be(rows, transport + 2, 2), np.where(icmp, first_two, 0))
    offset_byte = rows[:, transport + 12].astype(np.int64)
    flags = np.where(tcp, rows[:, transport + 13], 0)
    tcp_start = transport + (offset_byte >> 4) * 4
    tcp_start = np.where((tcp_start > end) | (offset_byte < 0x50), end, tcp_start)
    start = np.where(tcp, tcp_start, np.where(udp, transport + 8, end))
    good = sel[ok]
    fast[good] = True
    cols.kind[good] = KIND_IP
    cols.version[good] = version
    for name, values in (("proto", proto), ("sport", sport), ("dport", dport), ("flags", flags),
                         ("tos", tos), ("nbytes", nbytes)):  # fmt: skip
        getattr(cols, name)[good] = values[ok]
    base = data[good]
    pay_start[good] = base + start[ok]
    pay_end[good] = base + end[ok]
    rows = rows[ok]
    if version == 4:
        cols.src_lo[good] = _be(rows, off + 12, 4)
        cols.dst_lo[good] = _be(rows, off + 16, 4)
    else:
        cols.src_hi[good] = _be64(rows, off + 8)
        cols.src_lo[good] = _be64(rows, off + 16)
        cols.dst_hi[good] = _be64(rows, off + 24)
        cols.dst_lo[good] = _be64(rows, off + 32)


def _decode_exact(chunk, cols, pay_start, pay_end, rest, errors, exact) -> None:
    buf = chunk.buf
    linktype = chunk.linktype
    starts = chunk.starts.tolist()
    caplens = chunk.caplen.tolist()
    for i in rest.tolist():
        start = starts[i]
        frame = bytes(buf[start : start + caplens[i]])
        try:
            dec = decode(linktype, frame)
        except Exception:  # noqa: BLE001 - a decoder bug must not stop the probe
            log.exception("decoder failed on a %d-byte frame", len(frame))
            dec = "decode-error"
        if dec.__class__ is Decoded:
            if dec.problem:
                errors[dec.problem] = errors.get(dec.problem, 0) + 1
            cols.kind[i] = KIND_IP
            cols.version[i] = dec.version
            cols.proto[i] = dec.protocol
            cols.sport[i] = dec.src_port
            cols.dport[i] = dec.dst_port
            cols.flags[i] = dec.tcp_flags
            cols.tos[i] = dec.tos
            cols.vlan[i] = dec.vlan
            cols.nbytes[i] = dec.ip_bytes
            pay_start[i] = start + dec.payload_start
            pay_end[i] = start + dec.payload_end
            cols.src_hi[i], cols.src_lo[i] = _words(dec.src)
            cols.dst_hi[i], cols.dst_lo[i] = _words(dec.dst)
            macs = 0
            if dec.src_mac:
                macs |= MAC_SRC
                cols.smac[i] = int.from_bytes(dec.src_mac, "big")
            if dec.dst_mac:
                macs |= MAC_DST
                cols.dmac[i] = int.from_bytes(dec.dst_mac, "big")
            cols.macs[i] = macs
            exact[i] = dec
        elif dec is None:
            cols.kind[i] = KIND_NON_IP
        else:
            errors[dec] = errors.get(dec, 0) + 1


# ---------------------------------------------------------------- names

_UDP_SOURCE_PORTS = np.array(sorted(UDP_SOURCE_PORTS), dtype=np.int64)
_TCP_SOURCE_PORTS = np.array(sorted(TCP_SOURCE_PORTS), dtype=np.int64)
_HTTP_PREFIX_WORDS = np.array(sorted(int.from_bytes(prefix, "big") for prefix in HTTP_METHOD_PREFIXES),
                              dtype=np.int64)  # fmt: skip


_FIRST_BYTES = np.array(
    sorted({CLIENT_HELLO_FIRST, *(prefix[0] for prefix in HTTP_METHOD_PREFIXES)}), dtype=np.int64
)


def interesting_alone(u8: np.ndarray, proto: np.ndarray, sport: np.ndarray, pay_start: np.ndarray,
                      pay_end: np.ndarray) -> np.ndarray:  # fmt: skip
    """``probe.names.interesting_alone`` of packets whose payloads are ``u8[pay_start:pay_end]``."""
    tcp = proto == PROTO_TCP
    result = ((proto == PROTO_UDP) & np.isin(sport, _UDP_SOURCE_PORTS)) | (
        tcp & np.isin(sport, _TCP_SOURCE_PORTS)
    )
    length = pay_end - pay_start
    first = np.where(length > 0, u8[np.minimum(pay_start, len(u8) - 1)].astype(np.int64), -1)
    # a ClientHello or an HTTP request starts with one of a few bytes: only those need a closer look
    closer = np.flatnonzero(tcp & ~result & np.isin(first, _FIRST_BYTES))
    if len(closer):
        result[closer] = _hello_or_http(u8, pay_start[closer], length[closer])
    return result


def _hello_or_http(u8: np.ndarray, pay_start: np.ndarray, length: np.ndarray) -> np.ndarray:
    last = len(u8) - 1

    def byte(at: int) -> np.ndarray:  # -1 past the payload's end
        return np.where(length > at, u8[np.minimum(pay_start + at, last)].astype(np.int64), -1)

    hello = byte(0) == CLIENT_HELLO_FIRST
    if hello.any():
        known = np.ones(len(hello), dtype=bool)
        for at, value in CLIENT_HELLO_MORE:
            known &= byte(at) == value
        hello &= (length < CLIENT_HELLO_TELL) | known
    word = np.zeros(len(length), dtype=np.int64)
    for at in range(HTTP_PREFIX_LEN):
        word = (word << 8) | (byte(at) & 0xFF)
    return hello | ((length >= HTTP_PREFIX_LEN) & np.isin(word, _HTTP_PREFIX_WORDS))


_DNS_FAMILY_PORTS = np.array(sorted(DNS_FAMILY_SOURCE), dtype=np.int64)


def name_packets(u8: np.ndarray, decoded: Decoded_chunk, with_payload: np.ndarray,
                 buffered: set[tuple[int, int]]) -> NameSelection:  # fmt: skip
    """The packets of ``with_payload`` (capture order) that ``NameExtractor.interesting`` may accept.

    ``chosen`` are to be offered to the extractor; ``alone`` marks the ones it accepts whatever its
    state; the others are TCP packets whose (sport, dport) may have a buffered partial message when
    they come, and only ``interesting`` itself can tell. ``buffered`` is the extractor's
    ``buffered_port_pairs()`` before the first of them.

    ``skipped`` are packets it accepts but whose outcome the first bytes already tell, whatever its
    state: a DNS-family message that is a query (``feed`` only counts ``ignored-SOURCE-query``) and a
    DNS-over-TCP segment from port 53 with no partial message before it whose length prefix is below
    a DNS header (only ``dns-tcp-malformed``). ``ignored`` holds those counts, to be added to the
    extractor's counters instead of feeding it.
    """
    cols = decoded.cols
    proto, sport = cols.proto[with_payload], cols.sport[with_payload]
    start, end = decoded.pay_start[with_payload], decoded.pay_end[with_payload]
    alone = interesting_alone(u8, proto, sport, start, end)
    tcp = proto == PROTO_TCP
    query = np.zeros(len(alone), dtype=bool)
    unframed = np.zeros(len(alone), dtype=bool)
    dns = np.flatnonzero(alone & np.isin(sport, _DNS_FAMILY_PORTS))
    if len(dns):
        at, length, dns_proto = start[dns], end[dns] - start[dns], proto[dns]
        last = len(u8) - 1
        head = [u8[np.minimum(at + k, last)].astype(np.int64) for k in range(3)]
        query[dns] = (dns_proto == PROTO_UDP) & (length >= DNS_HEADER_LEN) & ((head[2] & 0x80) == 0)
        unframed[dns] = ((dns_proto == PROTO_TCP) & (sport[dns] == PORT_DNS) & (length >= 2)
                         & (((head[0] << 8) | head[1]) < DNS_HEADER_LEN))  # fmt: skip
    # A buffer is only made by feeding a TCP packet, keyed by that packet's ports (an unframed segment
    # with no buffer makes none); so the ports that can be buffered during this chunk are those
    # buffered now and those of the TCP packets fed alone.
    ports = sport * 65536 + cols.dport[with_payload]
    now = np.array([s * 65536 + d for s, d in buffered], dtype=np.int64)
    feeders = ports[tcp & alone & ~unframed]
    if len(now) or len(feeders):
        may_buffer = np.isin(ports, np.concatenate([now, feeders]))
    else:
        may_buffer = np.zeros(len(alone), dtype=bool)
    unframed &= ~may_buffer
    maybe = tcp & ~alone & may_buffer
    skip = query | unframed
    keep = (alone & ~skip) | maybe
    ignored = {}
    for port, source in DNS_FAMILY_SOURCE.items():
        count = int((query & (sport == port)).sum())
        if count:
            ignored[f"ignored-{source}-query"] = count
    count = int(unframed.sum())
    if count:
        ignored["dns-tcp-malformed"] = count
    return NameSelection(with_payload[keep], alone[keep], with_payload[skip], ignored)


class NameSelection(NamedTuple):
    chosen: np.ndarray
    alone: np.ndarray
    skipped: np.ndarray
    ignored: dict[str, int]


# ---------------------------------------------------------------- meter


def scan_times(ts: np.ndarray, next_scan: int | None) -> tuple[int | None, int | None]:
    """Replay the pipeline's scan clock over monotonic ``ts``: (last scan time or None, next_scan)."""
    last = None
    position = 0
    n = len(ts)
    if n and next_scan is None:
        next_scan = int(ts[0]) + SCAN_INTERVAL_US
        position = 1
    while position < n:
        position += int(np.searchsorted(ts[position:], next_scan, side="left"))
        if position >= n:
            break
        last = int(ts[position])
        next_scan = last + SCAN_INTERVAL_US
        position += 1
    return last, next_scan


def in_order(ts: np.ndarray, last_ts: int | None) -> bool:
    """True if ``ts`` never goes backwards, also from ``last_ts`` (the packet before)."""
    if not len(ts):
        return True
    if last_ts is not None and ts[0] < last_ts:
        return False
    return bool((ts[1:] >= ts[:-1]).all())


def _mix(columns: tuple[np.ndarray, ...]) -> np.ndarray:
    value = np.full(len(columns[0]), 0x9E3779B97F4A7C15, dtype=np.uint64)
    for column in columns:
        value ^= column.astype(np.uint64)
        value *= np.uint64(0xBF58476D1CE4E5B9)
        value ^= value >> np.uint64(31)
    return value


INDEX_BITS = 21  # packets per batch at most 2**21: the sort key is (44-bit hash, packet index)


class BatchMeter:
    """Apply columns of packets to a ``FlowMeter``; see the module docstring for when it may."""

    def __init__(self, meter) -> None:
        self.meter = meter
        self.keys: dict[bytes, tuple] = {}  # numeric identity → the table's key tuple (shared objects)
        self.macs: dict[int, bytes] = {}

    def apply(self, cols: Columns, ip: np.ndarray) -> bool:
        """Meter packets ``ip`` (indices, capture order); False (nothing done) if it could evict."""
        count = len(ip)
        if not count:
            return True
        if count >= 1 << INDEX_BITS:  # pragma: no cover - batches are smaller
            raise ValueError("batch too large")
        meter = self.meter
        pairs = meter.pairs
        if count == cols.n:  # all IP (the common case): no copies
            ip = slice(None)
        ts = cols.ts[ip]
        sport, dport = cols.sport[ip], cols.dport[ip]
        src_hi, src_lo, dst_hi, dst_lo = cols.src_hi[ip], cols.src_lo[ip], cols.dst_hi[ip], cols.dst_lo[ip]
        src_first = (src_hi < dst_hi) | ((src_hi == dst_hi) & (src_lo < dst_lo))
        same = (src_hi == dst_hi) & (src_lo == dst_lo)
        flip = ~(src_first | (same & (sport <= dport)))
        side = flip.astype(np.int64)
        lo_hi, lo_lo = np.where(flip, dst_hi, src_hi), np.where(flip, dst_lo, src_lo)
        hi_hi, hi_lo = np.where(flip, src_hi, dst_hi), np.where(flip, src_lo, dst_lo)
        lo_port, hi_port = np.where(flip, dport, sport), np.where(flip, sport, dport)
        version, proto = cols.version[ip], cols.proto[ip]
        parts = (version * 256 + proto, lo_port * 65536 + hi_port, lo_hi, lo_lo, hi_hi, hi_lo)
        del src_first, same, lo_hi, lo_lo, hi_hi, hi_lo, lo_port, hi_port, src_hi, src_lo, dst_hi, dst_lo
        digest = _mix(parts)
        sort_key = (digest >> np.uint64(INDEX_BITS)) << np.uint64(INDEX_BITS) | np.arange(
            count, dtype=np.uint64
        )
        del digest
        order = np.argsort(sort_key)
        group_bits = sort_key[order] >> np.uint64(INDEX_BITS)
        del sort_key
        boundary = np.empty(count, dtype=bool)
        boundary[0] = True
        np.not_equal(group_bits[1:], group_bits[:-1], out=boundary[1:])
        del group_bits
        exact_boundary = boundary.copy()
        for part in parts:  # a hash collision would merge two conversations: check it (a column at a time)
            column = part[order]
            exact_boundary[1:] |= column[1:] != column[:-1]
        del column
        if (exact_boundary != boundary).any():
            order = np.lexsort(tuple(reversed(parts)))
            boundary = np.zeros(count, dtype=bool)
            boundary[0] = True
            for part in parts:
                column = part[order]
                boundary[1:] |= column[1:] != column[:-1]
            del column
        del exact_boundary
        group_first = np.flatnonzero(boundary)
        group_of = np.cumsum(boundary) - 1
        groups = len(group_first)
        group_end = np.r_[group_first[1:], count]

        if isinstance(ip, slice):
            ip = np.arange(count)
        heads = order[group_first]  # each conversation's first packet in the batch
        keys = self._keys([part[heads] for part in parts], ip[heads], cols, flip[heads])
        proto_s = parts[0][order] & 0xFF
        del parts, flip
        existing = list(map(pairs.get, keys))
        if len(pairs) + existing.count(None) > meter.max_pairs:
            return False

        ts_s = ts[order]
        side_s = side[order]
        flags_s = cols.flags[ip][order]
        has = np.array([pair is not None for pair in existing], dtype=bool)
        known = [pair if pair is not None else _NO_PAIR for pair in existing]
        width = _PAIR_NUMBERS_COUNT
        numbers = np.fromiter(chain.from_iterable(map(_PAIR_NUMBERS, known)), np.int64, groups * width)
        numbers = numbers.reshape(groups, width)
        old_last, old_start, old_moved = numbers[:, 0], numbers[:, 1], numbers[:, 2]
        had = numbers[:, 3:] > 0  # the pair has packets in direction 0, 1
        closed = np.array(list(map(bool, map(_CLOSED, known))), dtype=bool)

        # segments: a new pair starts at a group's first packet (no pair, or idle) and at idle gaps
        idle = meter.idle_us
        seg_flag = np.empty(count, dtype=bool)
        seg_flag[0] = True
        np.greater(ts_s[1:] - ts_s[:-1], idle, out=seg_flag[1:])
        seg_flag |= boundary
        seg_first = np.flatnonzero(seg_flag)
        seg_of = np.cumsum(seg_flag) - 1
        seg_group = group_of[seg_first]
        seg_end = np.r_[seg_first[1:], count]
        group_seg0 = seg_of[group_first]
        last_seg = seg_of[group_end - 1]
        seg_cont = np.zeros(len(seg_first), dtype=bool)
        seg_cont[group_seg0] = has & (ts_s[group_first] - old_last <= idle)
        seg_begin = np.where(seg_cont, old_start[seg_group], ts_s[seg_first])
        seg_last_ts = ts_s[seg_end - 1]

        # conversations that go packet by packet: TCP FIN/RST, closed, or reaching the active timeout
        tcp_s = proto_s == PROTO_TCP
        ends = tcp_s & ((flags_s & _TCP_ENDS) != 0)
        complex_group = closed
        complex_group[group_of[ends]] = True
        complex_group[seg_group[seg_last_ts - seg_begin > meter.active_us]] = True

        # per segment and direction: packets, bytes, flags, first/last time, first packet
        nbytes_s = cols.nbytes[ip][order]
        packets1 = np.add.reduceat(side_s, seg_first)
        packets0 = (seg_end - seg_first) - packets1
        bytes_all = np.add.reduceat(nbytes_s, seg_first)
        bytes1 = np.add.reduceat(nbytes_s * side_s, seg_first)
        zero = side_s == 0
        flags0 = np.bitwise_or.reduceat(np.where(zero, flags_s, 0), seg_first)
        flags1 = np.bitwise_or.reduceat(np.where(zero, 0, flags_s), seg_first)
        position = np.arange(count)
        seg_syn = _syn_sides(tcp_s, flags_s, side_s, position, seg_first, count)
        first0 = np.minimum.reduceat(np.where(zero, position, count), seg_first)
        first1 = np.minimum.reduceat(np.where(zero, count, position), seg_first)
        last0 = np.maximum.reduceat(np.where(zero, ts_s, -1), seg_first)
        last1 = np.maximum.reduceat(np.where(zero, -1, ts_s), seg_first)
        moved, event = _moves(ts_s, order, seg_first, seg_end, seg_cont, old_moved[seg_group], last_seg)

        simple = ~complex_group
        self._apply_simple(
            cols, ip[order], keys, existing, had, np.flatnonzero(simple), group_seg0, last_seg, seg_cont,
            seg_begin, seg_last_ts, side_s[seg_first], packets0, packets1, bytes_all - bytes1, bytes1,
            flags0, flags1, first0, first1, last0, last1, moved, seg_syn,
        )  # fmt: skip
        # pairs created or moved in the batch go to the table's end in the order of the packet that did it
        event_of = event[last_seg]
        moved_groups = np.flatnonzero(simple & (event_of >= 0))
        moved_at = event_of[moved_groups]
        if not simple.all():
            events: dict[int, int] = {}
            self._apply_complex(cols, ip, order, group_of, keys, complex_group, events)
            moved_groups = np.concatenate([moved_groups, np.fromiter(events, np.int64, len(events))])
            moved_at = np.concatenate([moved_at, np.fromiter(events.values(), np.int64, len(events))])
        for key in map(keys.__getitem__, moved_groups[np.argsort(moved_at)].tolist()):  # packets: unique
            pairs[key] = pairs.pop(key)
        return True

    def _keys(self, identity, heads, cols, flipped) -> list[tuple]:
        """The table key of each group, (proto, src, sport, dst, dport) as FlowMeter.add makes it.

        ``identity``: the canonical key columns at the groups' first packets ``heads``.
        """
        cache = self.keys
        if len(cache) > 4 * self.meter.max_pairs:
            cache.clear()
        # one 48-byte string per conversation (the six key columns side by side): a far cheaper dict
        # key than a tuple of six ints; fixed width, so stripping trailing NULs keeps it one-to-one
        rows = np.empty((len(heads), len(identity)), dtype=np.uint64)
        for k, column in enumerate(identity):
            rows[:, k] = column
        identities = rows.view(f"S{8 * len(identity)}").ravel().tolist()
        get = cache.get
        keys = list(map(get, identities))
        missing = [g for g, key in enumerate(keys) if key is None]
        if missing:
            packets = heads[missing]
            fields = zip(missing, flipped[missing].tolist(), *(column[packets].tolist() for column in (
                cols.version, cols.proto, cols.src_hi, cols.src_lo, cols.dst_hi, cols.dst_lo, cols.sport,
                cols.dport)), strict=True)  # fmt: skip
            for g, flip, version, proto, s_hi, s_lo, d_hi, d_lo, sport, dport in fields:
                src = addr_bytes(version, s_hi, s_lo)
                dst = addr_bytes(version, d_hi, d_lo)
                if flip:
                    key = (proto, dst, dport, src, sport)
                else:
                    key = (proto, src, sport, dst, dport)
                cache[identities[g]] = keys[g] = key
        return keys

    def add_args(self, cols: Columns, packets: np.ndarray) -> Iterator[tuple]:
        """``FlowMeter.add``'s arguments for each of ``packets`` (decoded IP packets), in their order."""
        mac = self._mac
        columns = (cols.ts, cols.vlan, cols.version, cols.proto, cols.sport, cols.dport, cols.flags, cols.tos,
                   cols.nbytes, cols.src_hi, cols.src_lo, cols.dst_hi, cols.dst_lo, cols.smac, cols.dmac, cols.macs)  # fmt: skip
        for ts, vlan, version, proto, sport, dport, flags, tos, nbytes, s_hi, s_lo, d_hi, d_lo, smac, dmac, macs in zip(
            *(column[packets].tolist() for column in columns), strict=True
        ):  # fmt: skip
            yield (ts, vlan, version, proto, addr_bytes(version, s_hi, s_lo), addr_bytes(version, d_hi, d_lo), sport,
                   dport, flags, tos, nbytes, mac(smac, bool(macs & MAC_SRC)), mac(dmac, bool(macs & MAC_DST)))  # fmt: skip

    def add_in_order(
        self, cols: Columns, ip: np.ndarray, next_scan: int | None, scan_us: int
    ) -> tuple[int | None, int]:
        """``FlowMeter.add`` for packets ``ip`` of ``cols`` one by one, with the idle scans of
        probe.pipeline's per-packet loop (every packet, IP or not, drives them: the first sets
        ``next_scan``, one at or past it expires pairs at its time). Returns (next_scan, scans)."""
        meter = self.meter
        add = meter.add
        is_ip = np.zeros(cols.n, dtype=bool)
        is_ip[ip] = True
        args = self.add_args(cols, ip)
        scans = 0
        for packet_is_ip, ts in zip(is_ip.tolist(), cols.ts.tolist(), strict=True):
            if packet_is_ip:
                add(*next(args))
            if next_scan is None:
                next_scan = ts + scan_us
            elif ts >= next_scan:
                meter.expire(ts)
                scans += 1
                next_scan = ts + scan_us
        return next_scan, scans

    def _mac(self, value: int, present: bool) -> bytes:
        if not present:
            return b""
        raw = self.macs.get(value)
        if raw is None:
            if len(self.macs) > 65_536:
                self.macs.clear()
            raw = self.macs[value] = value.to_bytes(6, "big")
        return raw

    def _firsts(self, cols: Columns, packets: np.ndarray) -> dict[int, tuple]:
        """(first time, tos, vlan, src MAC, dst MAC) of the packets that open a direction."""
        mac = self._mac
        values = [column[packets].tolist() for column in (cols.ts, cols.tos, cols.vlan, cols.smac, cols.dmac,
                                                           cols.macs)]  # fmt: skip
        return {
            packet: (ts, tos, vlan, mac(smac, bool(macs & MAC_SRC)), mac(dmac, bool(macs & MAC_DST)))
            for packet, ts, tos, vlan, smac, dmac, macs in zip(packets.tolist(), *values, strict=True)
        }

    def _apply_simple(self, cols, packet_sorted, keys, existing, had, simple, group_seg0, last_seg, seg_cont,
                      seg_begin, seg_last_ts, seg_side, packets0, packets1, bytes0, bytes1, flags0, flags1,
                      first0, first1, last0, last1, moved, seg_syn) -> None:  # fmt: skip
        meter = self.meter
        pairs = meter.pairs
        export = meter._export
        version_of = cols.version
        # the first packet of each direction that starts in this batch gives its tos, vlan and MACs
        groups_simple = np.zeros(len(group_seg0), dtype=bool)
        groups_simple[simple] = True
        seg_groups = np.repeat(np.arange(len(group_seg0)), last_seg - group_seg0 + 1)
        had0, had1 = had[:, 0], had[:, 1]
        opens = groups_simple[seg_groups]
        new0 = first0[opens & (packets0 > 0) & ~(seg_cont & had0[seg_groups])]
        new1 = first1[opens & (packets1 > 0) & ~(seg_cont & had1[seg_groups])]
        firsts = self._firsts(cols, packet_sorted[np.concatenate([new0, new1])])

        def direction(packet: int, count: int, nbytes: int, flags: int, last: int) -> tuple:
            ts, tos, vlan, smac, dmac = firsts[packet]
            return count, nbytes, flags, ts, last, tos, vlan, smac, dmac

        (g_seg0, g_last, s_cont, s_begin, s_last, s_side, n0, n1, b0, b1, f0, f1, p0, p1, l0, l1, s_moved) = (
            a.tolist() for a in (group_seg0, last_seg, seg_cont, seg_begin, seg_last_ts, seg_side, packets0,
                                 packets1, bytes0, bytes1, flags0, flags1, first0, first1, last0, last1, moved)
        )  # fmt: skip
        packets = packet_sorted.tolist()
        syn_of = seg_syn.tolist() if seg_syn is not None else None
        for g in simple.tolist():
            key = keys[g]
            pair = existing[g]
            first_seg, final_seg = g_seg0[g], g_last[g]
            for s in range(first_seg, final_seg + 1):
                if s_cont[s]:
                    if n0[s]:
                        if pair[P_DIR0]:
                            pair[P_DIR0] += n0[s]
                            pair[P_DIR0 + 1] += b0[s]
                            pair[P_DIR0 + 2] |= f0[s]
                            if l0[s] > pair[P_DIR0 + D_LAST]:
                                pair[P_DIR0 + D_LAST] = l0[s]
                        else:
                            pair[P_DIR0 : P_DIR0 + 9] = direction(packets[p0[s]], n0[s], b0[s], f0[s], l0[s])
                    if n1[s]:
                        if pair[P_DIR1]:
                            pair[P_DIR1] += n1[s]
                            pair[P_DIR1 + 1] += b1[s]
                            pair[P_DIR1 + 2] |= f1[s]
                            if l1[s] > pair[P_DIR1 + D_LAST]:
                                pair[P_DIR1 + D_LAST] = l1[s]
                        else:
                            pair[P_DIR1 : P_DIR1 + 9] = direction(packets[p1[s]], n1[s], b1[s], f1[s], l1[s])
                    if s_last[s] > pair[P_LAST]:
                        pair[P_LAST] = s_last[s]
                else:
                    if pair is not None:
                        if pairs.get(key) is pair:
                            del pairs[key]
                        export(key, pair, pair[P_CLOSED] or END_IDLE)
                    pair = list(EMPTY_PAIR)
                    pair[P_START] = pair[P_MOVED] = s_begin[s]
                    pair[P_LAST] = s_last[s]
                    pair[P_FIRST_DIR] = s_side[s]
                    pair[P_VERSION] = int(version_of[packets[p0[s] if n0[s] else p1[s]]])
                    if n0[s]:
                        pair[P_DIR0 : P_DIR0 + 9] = direction(packets[p0[s]], n0[s], b0[s], f0[s], l0[s])
                    if n1[s]:
                        pair[P_DIR1 : P_DIR1 + 9] = direction(packets[p1[s]], n1[s], b1[s], f1[s], l1[s])
                    pairs[key] = pair
                if syn_of is not None and syn_of[s] >= 0 and pair[P_SYN_DIR] < 0:
                    pair[P_SYN_DIR] = syn_of[s]
            pair[P_MOVED] = s_moved[final_seg]
            if len(meter.pending) >= meter.batch:
                meter.deliver()

    def _apply_complex(self, cols, ip, order, group_of, keys, complex_group, events) -> None:
        meter = self.meter
        pairs = meter.pairs
        add = meter.add
        group_by_packet = np.empty(len(order), dtype=np.int64)
        group_by_packet[order] = group_of
        chosen = np.flatnonzero(complex_group[group_by_packet])
        packets = ip[chosen]
        for position, group, args in zip(chosen.tolist(), group_by_packet[chosen].tolist(),
                                         self.add_args(cols, packets), strict=True):  # fmt: skip
            key = keys[group]
            old = pairs.get(key)
            old_moved = old[P_MOVED] if old is not None else None
            add(*args)
            new = pairs[key]
            if new is not old or new[P_MOVED] != old_moved:
                events[group] = position


_NO_PAIR = EMPTY_PAIR
_PAIR_NUMBERS = operator.itemgetter(P_LAST, P_START, P_MOVED, P_DIR0, P_DIR1)
_PAIR_NUMBERS_COUNT = 5
_CLOSED = operator.itemgetter(P_CLOSED)


def _syn_sides(tcp_s, flags_s, side_s, position, seg_first, count) -> np.ndarray | None:
    """Per segment, the side its first TCP SYN makes the opener, as ``FlowMeter.add`` does (-1: no SYN).

    None when the batch has no SYN. Only used for pairs without FIN/RST in the batch and not
    closed: there a SYN changes nothing else.
    """
    syn = tcp_s & ((flags_s & TH_SYN) != 0)
    if not syn.any():
        return None
    first = np.minimum.reduceat(np.where(syn, position, count), seg_first)
    found = first < count
    at = first[found]
    sides = np.full(len(seg_first), -1, dtype=np.int64)
    sides[found] = np.where((flags_s[at] & TH_ACK) != 0, 1 - side_s[at], side_s[at])
    return sides


def _moves(ts_s, order, seg_first, seg_end, seg_cont, seg_old_moved, last_seg):
    """P_MOVED of each segment's pair after the batch, and the packet that set it (-1: none in the batch).

    Only the groups' last segments are followed (the others end inside the batch). A pair moves to
    the table's end when a packet comes more than MOVE_GRANULARITY_US after its last move.
    """
    count = len(seg_first)
    moved = np.where(seg_cont, seg_old_moved, ts_s[seg_first])
    event = np.where(seg_cont, -1, order[seg_first])
    tmin = int(ts_s.min())
    span = int(ts_s.max()) - tmin + 2
    if count * span >= 1 << 62:  # pragma: no cover - a batch spanning centuries
        raise OverflowError("batch spans too long a time")
    seg_index = np.repeat(np.arange(count, dtype=np.int64), seg_end - seg_first)
    composite = seg_index * span + (ts_s - tmin)
    active = last_seg
    while active.size:
        target = np.clip(moved[active] - tmin + MOVE_GRANULARITY_US, -1, span - 1)
        found = np.searchsorted(composite, active * span + target, side="right")
        inside = found < seg_end[active]
        active, found = active[inside], found[inside]
        moved[active] = ts_s[found]
        event[active] = order[found]
    return moved, event
