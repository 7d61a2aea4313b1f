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
bad filter or interface fails at start-up with one clear line; see ``LiveCapture``.
"""

from __future__ import annotations

import logging
import mmap
import os
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
    end = len(buf)
    offset = 0
    number = 0
    order = "<"
    interfaces: list[tuple] = []
    while offset < end:
        if offset + 12 > end:
            raise ProbeInputError(f"{path}: packet {number + 1}: truncated block header (file cut short)")
        if buf[offset : offset + 4] == b"\x0a\x0d\x0d\x0a":
            magic = buf[offset + 8 : offset + 12]
            if magic == b"\x4d\x3c\x2b\x1a":
                order = "<"
            elif magic == b"\x1a\x2b\x3c\x4d":
                order = ">"
            else:
                raise ProbeInputError(
                    f"{path}: packet {number + 1}: bad section byte-order magic {magic.hex()}"
                )
        btype, blen = struct.unpack_from(order + "II", buf, offset)
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
            number += 1
            if block_end - body < 20:
                raise ProbeInputError(f"{path}: packet {number}: packet block too short")
            if btype == _EPB:
                if_id, ts_high, ts_low, caplen, wirelen = struct.unpack_from(order + "IIIII", buf, body)
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
            ts_us = _ts_us((ts_high << 32) | ts_low, units, offset_us)
            yield linktype, ts_us, wirelen, buf[data : data + caplen]
        elif btype == _SPB:
            number += 1
            if not interfaces:
                raise ProbeInputError(f"{path}: packet {number}: simple packet block before any interface")
            (wirelen,) = struct.unpack_from(order + "I", buf, body)
            linktype, _units, _offset, snaplen = interfaces[0]
            caplen = min(wirelen, block_end - body - 4, snaplen or MAX_RECORD)
            # no timestamp in an SPB: 0, the meter keeps it inside the current flow
            yield linktype, 0, wirelen, buf[body + 4 : body + 4 + caplen]
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
        try:
            self.ifindex = socket.if_nametoindex(iface)
        except OSError as exc:
            raise ProbeInputError(f"no such network interface: {iface!r}") from exc
        self.iface = iface
        program = compile_bpf(bpf, iface) if bpf else None
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
