"""Where packets come from: pcap / pcapng files, and live interfaces.

File readers are our own (struct over an mmap): several times faster than scapy's readers and
strict about damage. Each yields ``(linktype, ts_us, wire_len, frame)`` per packet; ``frame`` is
the captured bytes. A damaged file stops the iteration with ``ProbeInputError("FILE: packet N:
reason")`` after every packet before the damage has been yielded, so the caller can deliver them.

Policies (the tools disagree; these are ours):
- pcap: magic a1b2c3d4 (µs) or a1b23c4d (ns), either byte order; major version 2, any minor
  (tshark accepts 2.5, libpcap refuses it). The link type is the low 16 bits of the header field
  (the upper bits carry FCS length / reserved flags). A record longer than 262144 bytes (libpcap's
  maximum) or cut short by the end of the file ends the read with an error.
- pcapng: SHB version 1.0 (and 1.2, written by some old tools); several sections and interfaces,
  each interface with its own link type, if_tsresol and if_tsoffset. EPB, SPB and the obsolete PB
  carry packets; other blocks are skipped. Block and option lengths are checked against the block.

Live capture uses a Linux AF_PACKET socket with the BPF program compiled by scapy (libpcap), so a
bad filter or interface fails at start-up with one clear line. ``RingCapture`` (the default) reads
a PACKET_MMAP TPACKET_V3 ring a block of packets at a time, for the numpy decoder: about 4 µs of
CPU a packet in all, names on, against about 15 with ``LiveCapture``, which reads packet by packet
with recv (the fallback when the ring cannot be set up). Figures: docs/sizing-probe.md.
"""

from __future__ import annotations

import logging
import mmap
import os
import select
import socket
import struct
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

MAX_RECORD = 262_144  # libpcap's largest snapshot length; longer records mean a damaged file
LINKTYPE_ETHERNET = 1

Packet = tuple[int, int, int, bytes]  # (linktype, ts_us, wire_len, frame)


class ProbeInputError(Exception):
    """Bad input the probe cannot go on with: bad file, filter or interface. One clear line."""


# ---------------------------------------------------------------- files


def open_capture(path: str) -> Iterator[Packet]:
    """Iterate over the packets of a pcap or pcapng file (format detected from the magic)."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the generator below
    except OSError as exc:
        raise ProbeInputError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise ProbeInputError(f"{path}: empty file, not a pcap or pcapng capture")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            magic = buf[:4]
            if magic == b"\x0a\x0d\x0d\x0a":
                yield from _read_pcapng(path, buf)
            elif magic in _PCAP_MAGICS:
                yield from _read_pcap(path, buf)
            else:
                raise ProbeInputError(f"{path}: not a pcap or pcapng file (magic {magic.hex()})")


_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1),
    b"\xa1\xb2\xc3\xd4": (">", 1),
    b"\x4d\x3c\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\x3c\x4d": (">", 1000),
}


def _read_pcap(path: str, buf: mmap.mmap) -> Iterator[Packet]:
    order, frac_div = _PCAP_MAGICS[buf[:4]]
    if len(buf) < 24:
        raise ProbeInputError(f"{path}: header: file shorter than a pcap header ({len(buf)} bytes)")
    major, minor, _zone, _sigfigs, _snaplen, linkfield = struct.unpack_from(order + "HHiIII", buf, 4)
    if major != 2:
        raise ProbeInputError(f"{path}: header: unsupported pcap version {major}.{minor}")
    linktype = linkfield & 0xFFFF
    record = struct.Struct(order + "IIII")
    unpack_record = record.unpack_from
    end = len(buf)
    offset = 24
    number = 0
    while offset < end:
        number += 1
        if offset + 16 > end:
            raise ProbeInputError(f"{path}: packet {number}: truncated record header (file cut short)")
        sec, frac, caplen, wirelen = unpack_record(buf, offset)
        if caplen > MAX_RECORD:
            raise ProbeInputError(
                f"{path}: packet {number}: record length {caplen} is larger than {MAX_RECORD} (damaged file)"
            )
        offset += 16
        if offset + caplen > end:
            raise ProbeInputError(
                f"{path}: packet {number}: truncated record ({end - offset} of {caplen} bytes; file cut short)"
            )
        if frac_div == 1:
            ts_us = sec * 1_000_000 + frac
        else:
            ts_us = sec * 1_000_000 + frac // 1000
        yield linktype, ts_us, wirelen, buf[offset : offset + caplen]
        offset += caplen


_SHB = 0x0A0D0D0A
_IDB = 1
_PB = 2
_SPB = 3
_EPB = 6
_BYTE_ORDER_MAGIC = 0x1A2B3C4D


def _options(path: str, number: int, what: str, buf: mmap.mmap, start: int, end: int, order: str):
    """Yield (code, value_offset, value_length) of a block's options, checking every length."""
    while start + 4 <= end:
        code, length = struct.unpack_from(order + "HH", buf, start)
        if code == 0:
            return
        value = start + 4
        if value + length > end:
            raise ProbeInputError(
                f"{path}: packet {number}: {what} option {code} of length {length} runs past its block"
            )
        yield code, value, length
        start = value + ((length + 3) & ~3)


def _interface(path: str, number: int, buf: mmap.mmap, body: int, end: int, order: str) -> tuple:
    if end - body < 8:
        raise ProbeInputError(f"{path}: packet {number}: interface block too short")
    linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", buf, body)
    units, offset_s = 1_000_000, 0
    for code, value, length in _options(path, number, "interface", buf, body + 8, end, order):
        if code == 9 and length >= 1:  # if_tsresol
            resol = buf[value]
            exponent = resol & 0x7F
            if exponent > 60:
                raise ProbeInputError(f"{path}: packet {number}: unusable if_tsresol {resol:#x}")
            units = 2**exponent if resol & 0x80 else 10**exponent
        elif code == 14 and length >= 8:  # if_tsoffset
            (offset_s,) = struct.unpack_from(order + "q", buf, value)
    return linktype, units, offset_s * 1_000_000, snaplen


def _ts_us(ts: int, units: int, offset_us: int) -> int:
    if units == 1_000_000:
        return ts + offset_us
    return ts * 1_000_000 // units + offset_us


def _read_pcapng(path: str, buf: mmap.mmap) -> Iterator[Packet]:
    for linktype, ts_us, wirelen, data, caplen in pcapng_records(path, buf):
        yield linktype, ts_us, wirelen, buf[data : data + caplen]


def pcapng_records(path: str, buf, epb_run=None) -> Iterator[tuple]:
    """(linktype, ts_us, wire_len, data offset, captured length) of each packet of a pcapng in ``buf``.

    Every block is checked as it comes; damage raises ProbeInputError after the packets before it.
    ``epb_run(offset, order, interfaces)``, if given, may take over at an enhanced packet block: it
    returns None (go on here) or (packets, next offset, item), and ``item`` is yielded as it is
    (``probe.fastpath`` walks runs of such blocks with arrays, and leaves anything odd to this loop).
    """
    end = len(buf)
    offset = 0
    number = 0
    order = "<"
    interfaces: list[tuple] = []
    block_header = struct.Struct(order + "II")
    epb_header = struct.Struct(order + "IIIII")
    while offset < end:
        if offset + 12 > end:
            raise ProbeInputError(f"{path}: packet {number + 1}: truncated block header (file cut short)")
        btype, blen = block_header.unpack_from(buf, offset)
        if btype == _SHB:  # the same value in either byte order
            magic = buf[offset + 8 : offset + 12]
            if magic == b"\x4d\x3c\x2b\x1a":
                order = "<"
            elif magic == b"\x1a\x2b\x3c\x4d":
                order = ">"
            else:
                raise ProbeInputError(
                    f"{path}: packet {number + 1}: bad section byte-order magic {magic.hex()}"
                )
            block_header = struct.Struct(order + "II")
            epb_header = struct.Struct(order + "IIIII")
            btype, blen = block_header.unpack_from(buf, offset)
        if blen < 12 or blen % 4:
            raise ProbeInputError(f"{path}: packet {number + 1}: bad block length {blen}")
        if offset + blen > end:
            raise ProbeInputError(f"{path}: packet {number + 1}: truncated block (file cut short)")
        body, block_end = offset + 8, offset + blen - 4
        if btype == _SHB:
            if blen < 28:
                raise ProbeInputError(f"{path}: packet {number + 1}: section header too short")
            major, minor = struct.unpack_from(order + "HH", buf, body + 4)
            if major != 1 or minor not in (0, 2):
                raise ProbeInputError(f"{path}: header: unsupported pcapng version {major}.{minor}")
            for _ in _options(path, number + 1, "section header", buf, body + 16, block_end, order):
                pass
            interfaces = []
        elif btype == _IDB:
            interfaces.append(_interface(path, number + 1, buf, body, block_end, order))
        elif btype == _EPB or btype == _PB:
            if epb_run is not None and btype == _EPB:
                run = epb_run(offset, order, interfaces)
                if run is not None:
                    count, offset, item = run
                    number += count
                    yield item
                    continue
            number += 1
            if block_end - body < 20:
                raise ProbeInputError(f"{path}: packet {number}: packet block too short")
            if btype == _EPB:
                if_id, ts_high, ts_low, caplen, wirelen = epb_header.unpack_from(buf, body)
            else:
                if_id, _drops, ts_high, ts_low, caplen, wirelen = struct.unpack_from(
                    order + "HHIIII", buf, body
                )
            if if_id >= len(interfaces):
                raise ProbeInputError(f"{path}: packet {number}: unknown interface {if_id}")
            data = body + 20
            if data + caplen > block_end:
                raise ProbeInputError(
                    f"{path}: packet {number}: captured length {caplen} runs past its block"
                )
            linktype, units, offset_us, _snap = interfaces[if_id]
            if units == 1_000_000:
                yield linktype, ((ts_high << 32) | ts_low) + offset_us, wirelen, data, caplen
            else:
                yield linktype, _ts_us((ts_high << 32) | ts_low, units, offset_us), wirelen, data, caplen
        elif btype == _SPB:
            number += 1
            if not interfaces:
                raise ProbeInputError(f"{path}: packet {number}: simple packet block before any interface")
            (wirelen,) = struct.unpack_from(order + "I", buf, body)
            linktype, _units, _offset, snaplen = interfaces[0]
            caplen = min(wirelen, block_end - body - 4, snaplen or MAX_RECORD)
            # no timestamp in an SPB: 0, the meter keeps it inside the current flow
            yield linktype, 0, wirelen, body + 4, caplen
        offset += blen


def file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# ---------------------------------------------------------------- live

SOL_PACKET = 263
PACKET_STATISTICS = 6
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26


def _live_interface(iface: str, bpf: str | None) -> tuple[str, int, bytes | None]:
    """(name, index, compiled filter or None) of a capture interface; ProbeInputError if either is bad."""
    try:
        index = socket.if_nametoindex(iface)
    except OSError as exc:
        raise ProbeInputError(f"no such network interface: {iface!r}") from exc
    return iface, index, compile_bpf(bpf, iface) if bpf else None


def compile_bpf(expression: str, iface: str | None) -> bytes:
    """Compile a BPF filter with libpcap (through scapy); raise ProbeInputError on a bad one."""
    from scapy.arch.common import compile_filter
    from scapy.error import Scapy_Exception

    try:
        program = compile_filter(expression, iface=iface)
    except Scapy_Exception as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "syntax error"
        raise ProbeInputError(f"bad BPF filter {expression!r}: {reason}") from exc
    except (ImportError, OSError) as exc:
        raise ProbeInputError(f"cannot compile BPF filter {expression!r}: {exc}") from exc
    return program


class LiveCapture:
    """An AF_PACKET socket on one interface, optional BPF filter attached before bind.

    scapy's ``L2ListenSocket.recv_raw`` costs about 10 µs a packet; a plain ``recv_into`` on the
    same kind of socket is several times cheaper, so we keep scapy for what it does well (libpcap
    filter compilation) and read the socket ourselves. Packets the kernel dropped are read from
    PACKET_STATISTICS (which resets on read, so we add them up).
    """

    def __init__(self, iface: str, bpf: str | None = None, snaplen: int = MAX_RECORD, bufsize: int = 1 << 25):
        self.iface, self.ifindex, program = _live_interface(iface, bpf)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, 33, bufsize)  # SO_RCVBUFFORCE (root)
            except OSError:
                pass
            if program is not None:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)
            self.sock.bind((iface, ETH_P_ALL))
            # VLAN tags stripped by the NIC come back through PACKET_AUXDATA (8)
            self.sock.setsockopt(SOL_PACKET, 8, 1)
        except OSError as exc:
            self.sock.close()
            raise ProbeInputError(f"cannot capture on {iface!r}: {exc.strerror or exc}") from exc
        self.linktype = LINKTYPE_ETHERNET
        hatype = self.sock.getsockname()[3]
        if hatype in (772, 65534, 776, 778):  # loopback keeps Ethernet; tun/none/sit/gre are raw IP
            self.linktype = 1 if hatype == 772 else 101
        self.snaplen = snaplen
        self.kernel_drops = 0
        self.if_drops_start = self._if_dropped()
        self.sock.settimeout(0.2)

    def _if_dropped(self) -> int:
        try:
            with open(f"/sys/class/net/{self.iface}/statistics/rx_dropped") as handle:
                return int(handle.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def read_stats(self) -> tuple[int, int]:
        """(kernel drops, interface drops) since the capture started."""
        try:
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
            _received, dropped = struct.unpack("II", raw)
            self.kernel_drops += dropped
        except OSError:
            pass
        return self.kernel_drops, max(0, self._if_dropped() - self.if_drops_start)

    def packets(self, stop) -> Iterator[tuple[int, int, bytes]]:
        """Yield (ts_us, wire_len, frame) until ``stop`` is set; ``None`` frames mark idle ticks."""
        recvmsg = self.sock.recvmsg
        snaplen = self.snaplen
        clock = time.time_ns
        while not stop.is_set():
            try:
                data, ancdata, _flags, _addr = recvmsg(snaplen, 64)
            except TimeoutError:
                yield clock() // 1000, 0, None
                continue
            except InterruptedError:
                continue
            wire_len = len(data)
            if ancdata:
                data = _reinsert_vlan(data, ancdata)
            yield clock() // 1000, wire_len, data

    def close(self) -> None:
        self.sock.close()


_AUXDATA = struct.Struct("IIIHHHH")  # status, len, snaplen, mac, net, vlan_tci, vlan_tpid
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40


def _reinsert_vlan(data: bytes, ancdata: list) -> bytes:
    for level, kind, value in ancdata:
        if level == SOL_PACKET and kind == 8 and len(value) >= _AUXDATA.size:
            status, _len, _snap, _mac, _net, tci, tpid = _AUXDATA.unpack_from(value)
            if status & TP_STATUS_VLAN_VALID or tci:
                if not status & TP_STATUS_VLAN_TPID_VALID:
                    tpid = 0x8100
                return data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
    return data


# ---------------------------------------------------------------- live, PACKET_MMAP ring

PACKET_RX_RING = 5
PACKET_VERSION = 10
TPACKET_V3 = 2
TP_STATUS_KERNEL, TP_STATUS_USER = 0, 1
RING_BLOCK_BYTES = 1 << 20
RING_FRAME_BYTES = 2048  # V3 packs frames of any size into a block; this only has to divide it
RING_RETIRE_MS = 50  # a block that is not full goes to us after this long: latency at low rates
RING_POLL_MS = 100  # a quiet line still wakes us this often (timeouts, health, stop)
# tpacket_block_desc as 32-bit words: [2] block_status, [3] num_pkts, [4] offset_to_first_pkt.
# tpacket3_hdr as 32-bit words: [0] tp_next_offset, [1] tp_sec, [2] tp_nsec, [3] tp_snaplen, [5] tp_status,
# [8] hv1.tp_vlan_tci; as 16-bit words: [12] tp_mac, [18] hv1.tp_vlan_tpid.
_STATS_V3 = struct.Struct("=III")  # tp_packets, tp_drops, tp_freeze_q_cnt


class RingUnavailable(OSError):
    """The kernel refused the PACKET_MMAP ring: the caller falls back to ``LiveCapture``."""


class RingCapture:
    """An AF_PACKET socket with a TPACKET_V3 receive ring mapped into our memory.

    The kernel fills blocks of ``RING_BLOCK_BYTES`` with many packets and hands over a block at
    once (when it is full, or ``RING_RETIRE_MS`` after its first packet): no system call per
    packet. ``blocks_ready`` copies each block's frames into one array, gives the block back to the
    kernel and returns the frames' offsets, times and lengths as arrays, for the same numpy
    decoding as pcap files (``probe.fastpath``). Same filter, VLAN and drop counting as
    ``LiveCapture``; kernel timestamps (never going backwards: an older one counts as the one before).
    """

    def __init__(self, iface: str, bpf: str | None = None, snaplen: int = MAX_RECORD,
                 bufsize: int = 1 << 25) -> None:  # fmt: skip
        import numpy  # the ring is only worth it with the vectorised decoder

        self.np = numpy
        self.iface, self.ifindex, program = _live_interface(iface, bpf)
        blocks = max(4, bufsize // RING_BLOCK_BYTES)
        # protocol 0: nothing is queued before the filter and the ring are in place and bind() names the iface
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            try:
                self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
                request = struct.pack("=7I", RING_BLOCK_BYTES, blocks, RING_BLOCK_BYTES // RING_FRAME_BYTES * blocks,
                                      RING_FRAME_BYTES, RING_RETIRE_MS, 0, 0)  # fmt: skip
                self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, request)
                self.ring = mmap.mmap(self.sock.fileno(), RING_BLOCK_BYTES * blocks, mmap.MAP_SHARED,
                                      mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
            except (OSError, ValueError) as exc:
                raise RingUnavailable(f"no PACKET_MMAP ring on {iface!r}: {exc}") from exc
            if program is not None:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)
            self.sock.bind((iface, ETH_P_ALL))
        except ProbeInputError:
            self.sock.close()
            raise
        except OSError as exc:
            self.sock.close()
            if isinstance(exc, RingUnavailable):
                raise
            raise ProbeInputError(f"cannot capture on {iface!r}: {exc.strerror or exc}") from exc
        self.blocks = blocks
        self.block = 0  # the next block the kernel hands over
        self.linktype = LINKTYPE_ETHERNET
        hatype = self.sock.getsockname()[3]
        if hatype in (772, 65534, 776, 778):
            self.linktype = 1 if hatype == 772 else 101
        self.snaplen = snaplen
        self.kernel_drops = 0
        self.if_drops_start = self._if_dropped()
        self.last_ts = -1
        self.poller = select.poll()
        self.poller.register(self.sock.fileno(), select.POLLIN | select.POLLERR)

    _if_dropped = LiveCapture._if_dropped

    def read_stats(self) -> tuple[int, int]:
        """(kernel drops, interface drops) since the capture started."""
        try:
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS_V3.size)
            self.kernel_drops += _STATS_V3.unpack(raw)[1]
        except OSError:
            pass
        return self.kernel_drops, max(0, self._if_dropped() - self.if_drops_start)

    def blocks_ready(self, stop) -> Iterator[tuple | None]:
        """Yield ``(frames, starts, ts_us, caplen)`` per block until ``stop`` is set; None on a quiet tick.

        ``frames`` is a fresh uint8 array holding a copy of the block's frames (plus zero padding, so
        fixed-size windows at the last frame stay inside it); the other three are int64 arrays of the
        packets, in capture order.
        """
        ring = self.ring
        np = self.np
        words = memoryview(ring).cast("I")  # released in the finally below, before the ring can close
        ring_u8 = np.frombuffer(ring, np.uint8)
        ring_u16 = ring_u8.view(np.uint16)
        ring_u32 = ring_u8.view(np.uint32)
        try:
            while not stop.is_set():
                offset = self.block * RING_BLOCK_BYTES
                base = offset >> 2
                if not words[base + 2] & TP_STATUS_USER:  # block_status
                    try:
                        events = self.poller.poll(RING_POLL_MS)
                    except InterruptedError:
                        continue
                    if not events:
                        yield None
                    elif events[0][1] & select.POLLERR:  # e.g. the interface went away: as recv would raise
                        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if error:
                            raise OSError(error, os.strerror(error))
                    continue
                try:
                    frames = self._frames(words, ring_u8, ring_u16, ring_u32, offset, words[base + 3],
                                          words[base + 4])  # fmt: skip
                finally:
                    words[base + 2] = TP_STATUS_KERNEL  # the block is the kernel's again
                    self.block = (self.block + 1) % self.blocks
                if frames is not None:
                    yield frames
        finally:
            del ring_u8, ring_u16, ring_u32
            words.release()

    def _frames(self, words, ring_u8, ring_u16, ring_u32, offset: int, count: int, first: int):
        np = self.np
        if not count:
            return None
        headers = []  # byte offsets of the packets' tpacket3_hdr (4-aligned) in the ring
        at = offset + first
        for _ in range(count):
            headers.append(at)
            step = words[at >> 2]  # tp_next_offset
            if not step:
                break
            at += step
        hdr = np.array(headers, dtype=np.int64)
        w, h = hdr >> 2, hdr >> 1
        ts = ring_u32[w + 1].astype(np.int64) * 1_000_000 + ring_u32[w + 2] // 1000
        caplen = np.minimum(ring_u32[w + 3], self.snaplen).astype(np.int64)
        status = ring_u32[w + 5]
        mac = ring_u16[h + 12].astype(np.int64)
        tci = ring_u32[w + 8]  # hv1.tp_vlan_tci (after tp_rxhash)
        np.maximum.accumulate(ts, out=ts)
        if ts[0] < self.last_ts:
            np.maximum(ts, self.last_ts, out=ts)
        self.last_ts = int(ts[-1])
        begin = headers[0]
        end = int(hdr[-1] + mac[-1] + caplen[-1])
        frames = np.zeros(end - begin + 128, dtype=np.uint8)
        frames[: end - begin] = ring_u8[begin:end]
        starts = hdr - begin + mac
        tagged = np.flatnonzero(((status & TP_STATUS_VLAN_VALID) != 0) | (tci != 0))
        if len(tagged):
            # put back the tag the kernel took out (as LiveCapture): the MACs move 4 bytes down, into
            # the header gap before the frame (at least 14 bytes: sockaddr_ll is 20, the MAC offset 82)
            tpid = np.where(status[tagged] & TP_STATUS_VLAN_TPID_VALID, ring_u16[h[tagged] + 18], 0x8100)
            at = starts[tagged]
            macs = at[:, None] + np.arange(12)
            frames[macs - 4] = frames[macs]
            tag = (tpid.astype(np.uint32) << 16) | (tci[tagged] & 0xFFFF)
            frames[(at + 8)[:, None] + np.arange(4)] = tag.astype(">u4").view(np.uint8).reshape(-1, 4)
            starts[tagged] = at - 4
            caplen[tagged] += 4
        return frames, starts, ts, caplen

    def close(self) -> None:
        self.poller.unregister(self.sock.fileno())
        try:
            self.ring.close()
        except (
            BufferError
        ):  # a blocks_ready generator not yet finished (an error on its way): unmapped with it
            pass
        self.sock.close()
