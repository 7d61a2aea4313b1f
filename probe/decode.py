"""Raw frame bytes → the fields a flow needs (addresses, ports, flags, IP length).

``decode(linktype, frame)`` returns a ``Decoded`` for an IP packet, ``None`` for a frame that is
not IP (ARP, STP, LLDP, …: counted as non-IP, never an error) or a short string naming why the
packet cannot be metered at all (``"ipv4-truncated"``, ``"unsupported-linktype"``, …: counted
by reason). It never raises on any input.

Link layers: Ethernet (1) with any stack of 802.1Q / 802.1ad / QinQ tags (``vlan`` is the
outermost id), MPLS label stacks and PPPoE sessions on top; Linux cooked SLL (113) and SLL2 (276);
raw IP (101, 12, 14), raw IPv4 (228) and IPv6 (229); BSD loopback NULL (0) and LOOP (108).

What is counted, and why (measured against softflowd 1.1.0 and tshark 4.0.17 on the corpus,
see tests/test_probe_accuracy.py):

- ``ip_bytes`` is the length the outermost IP header declares: IPv4 total length, IPv6 payload
  length + 40 (the captured length for a jumbogram). This is what NetFlow exporters report and
  what tshark's ``ip.len`` / ``ipv6.plen`` sum to, and it is right even when the capture was cut
  by a snap length. softflowd counts the frame length minus the link header instead, so it adds
  Ethernet padding (a 40-byte ACK in a 60-byte frame counts 46) and MPLS label bytes.
- Fragments: every fragment counts its bytes; ports and TCP flags come from the first fragment
  only; later fragments (offset > 0) carry ports 0, so they form their own flow, exactly as
  softflowd does.
- ICMP and ICMPv6: ``src_port`` 0, ``dst_port`` = type * 256 + code (Cisco's convention).
- Transport protocols other than TCP, UDP, ICMP, ICMPv6 are metered by protocol number, ports 0.
- IPv6 extension headers skipped to reach the transport: hop-by-hop, routing, destination
  options, fragment and AH (softflowd does not skip AH; ESP hides the rest, so ESP is the protocol).
- A packet whose transport header (or IPv4 options, or an IPv6 extension header) is cut short is
  still metered with the fields known so far (ports 0) and its ``problem`` names the reason,
  e.g. ``"tcp-truncated"``: the IP header alone says who talked to whom and how much.
"""

from __future__ import annotations

import struct
from typing import NamedTuple


class Decoded(NamedTuple):
    vlan: int
    version: int
    protocol: int
    src: bytes  # packed address, 4 or 16 bytes
    dst: bytes
    src_port: int
    dst_port: int
    tcp_flags: int
    tos: int
    ip_bytes: int
    src_mac: bytes  # 6 bytes, or b"" when the link layer has none
    dst_mac: bytes
    payload_start: int  # transport payload inside the frame (TCP/UDP only; start == end if none)
    payload_end: int
    fragment: bool
    problem: str  # "" or the reason part of the packet could not be read


# Reasons in ``Decoded.problem``: the packet was metered all the same (any other reason: it was not).
METERED_PROBLEMS = frozenset(
    ("ipv4-options-truncated", "ipv6-bad-ext", "tcp-truncated", "udp-truncated", "icmp-truncated")
)

_new = tuple.__new__
_IP4 = struct.Struct("!BBHHHBBH4s4s").unpack_from
_IP6 = struct.Struct("!IHBB16s16s").unpack_from
_TCP = struct.Struct("!HHIIBB").unpack_from
_PORTS = struct.Struct("!HH").unpack_from
_U16 = struct.Struct("!H").unpack_from
_U32_LE = struct.Struct("<I").unpack_from
_U32_BE = struct.Struct("!I").unpack_from

_VLAN_TYPES = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))
_RAW_IP = frozenset((101, 12, 14))
_AF_INET = frozenset((2,))
_AF_INET6 = frozenset((10, 24, 28, 30))  # Linux, NetBSD/OpenBSD, FreeBSD, Darwin
_IP6_SKIP = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options

LINKTYPES = {0: "null", 1: "ethernet", 12: "raw", 14: "raw", 101: "raw", 108: "loop", 113: "sll",
             228: "ipv4", 229: "ipv6", 276: "sll2"}  # fmt: skip


def decode(linktype: int, frame: bytes) -> Decoded | str | None:
    """Decode one captured frame; see the module docstring for the result."""
    size = len(frame)
    vlan = 0
    src_mac = dst_mac = b""
    if linktype == 1:
        if size < 14:
            return "ether-truncated"
        dst_mac = frame[0:6]
        src_mac = frame[6:12]
        etype = (frame[12] << 8) | frame[13]
        offset = 14
    elif linktype == 113:
        if size < 16:
            return "sll-truncated"
        if frame[4] == 0 and frame[5] == 6:
            src_mac = frame[6:12]
        etype = (frame[14] << 8) | frame[15]
        offset = 16
    elif linktype == 276:
        if size < 20:
            return "sll2-truncated"
        if frame[11] == 6:
            src_mac = frame[12:18]
        etype = (frame[0] << 8) | frame[1]
        offset = 20
    elif linktype in _RAW_IP or linktype == 228 or linktype == 229:
        if not size:
            return "ip-truncated"
        offset = 0
        nibble = frame[0] >> 4
        if linktype == 228 or (linktype != 229 and nibble == 4):
            etype = 0x0800
        elif linktype == 229 or nibble == 6:
            etype = 0x86DD
        else:
            return "ip-bad-version"
    elif linktype == 0 or linktype == 108:
        if size < 4:
            return "loopback-truncated"
        offset = 4
        if linktype == 108:
            (family,) = _U32_BE(frame, 0)
        else:
            (family,) = _U32_LE(frame, 0)
            if family > 0xFFFF:
                (family,) = _U32_BE(frame, 0)
        if family in _AF_INET:
            etype = 0x0800
        elif family in _AF_INET6:
            etype = 0x86DD
        else:
            return None
    else:
        return "unsupported-linktype"

    if etype != 0x0800 and etype != 0x86DD:
        while etype in _VLAN_TYPES:
            if size < offset + 4:
                return "vlan-truncated"
            if not vlan:
                vlan = ((frame[offset] << 8) | frame[offset + 1]) & 0x0FFF
            etype = (frame[offset + 2] << 8) | frame[offset + 3]
            offset += 4
        if etype == 0x8847 or etype == 0x8848:
            while True:
                if size < offset + 4:
                    return "mpls-truncated"
                bottom = frame[offset + 2] & 1
                offset += 4
                if bottom:
                    break
            if size <= offset:
                return "mpls-truncated"
            nibble = frame[offset] >> 4
            etype = 0x0800 if nibble == 4 else 0x86DD if nibble == 6 else 0
            if not etype:
                return None
        elif etype == 0x8864:
            if size < offset + 8:
                return "pppoe-truncated"
            (ppp,) = _U16(frame, offset + 6)
            offset += 8
            etype = 0x0800 if ppp == 0x0021 else 0x86DD if ppp == 0x0057 else 0
            if not etype:
                return None
        if etype != 0x0800 and etype != 0x86DD:
            return None

    if etype == 0x0800:
        if size - offset < 20:
            return "ipv4-truncated"
        vihl, tos, total, _ident, frag, _ttl, proto, _sum, src, dst = _IP4(frame, offset)
        if vihl >> 4 != 4:
            return "ipv4-bad-version"
        ihl = (vihl & 15) * 4
        if ihl < 20:
            return "ipv4-bad-header-length"
        if total < ihl:
            return "ipv4-bad-total-length"
        version = 4
        ip_bytes = total
        end = offset + total
        if end > size:
            end = size
        transport = offset + ihl
        problem = ""
        if transport > size:
            return _new(Decoded, (vlan, 4, proto, src, dst, 0, 0, 0, tos, total, src_mac, dst_mac,
                                  size, size, bool(frag & 0x3FFF), "ipv4-options-truncated"))  # fmt: skip
        fragment = bool(frag & 0x3FFF)
        if frag & 0x1FFF:
            return _new(Decoded, (vlan, 4, proto, src, dst, 0, 0, 0, tos, total, src_mac, dst_mac,
                                  transport, transport, True, ""))  # fmt: skip
    else:
        if size - offset < 40:
            return "ipv6-truncated"
        vtf, plen, proto, _hops, src, dst = _IP6(frame, offset)
        if vtf >> 28 != 6:
            return "ipv6-bad-version"
        version = 6
        tos = (vtf >> 20) & 0xFF
        if plen:
            ip_bytes = plen + 40
            end = offset + ip_bytes
            if end > size:
                end = size
        else:
            ip_bytes = size - offset
            end = size
        transport = offset + 40
        fragment = False
        problem = ""
        while True:
            if proto in _IP6_SKIP:
                if end - transport < 8:
                    problem = "ipv6-bad-ext"
                    break
                length = (frame[transport + 1] + 1) * 8
                if transport + length > end:
                    problem = "ipv6-bad-ext"
                    break
                proto = frame[transport]
                transport += length
            elif proto == 44:
                if end - transport < 8:
                    problem = "ipv6-bad-ext"
                    break
                fragment = True
                offset_field = (frame[transport + 2] << 8) | frame[transport + 3]
                proto = frame[transport]
                transport += 8
                if offset_field & 0xFFF8:
                    return _new(Decoded, (vlan, 6, proto, src, dst, 0, 0, 0, tos, ip_bytes, src_mac,
                                          dst_mac, transport, transport, True, ""))  # fmt: skip
            elif proto == 51:
                if end - transport < 8:
                    problem = "ipv6-bad-ext"
                    break
                length = (frame[transport + 1] + 2) * 4
                if transport + length > end:
                    problem = "ipv6-bad-ext"
                    break
                proto = frame[transport]
                transport += length
            else:
                break
        if problem:
            return _new(Decoded, (vlan, 6, proto, src, dst, 0, 0, 0, tos, ip_bytes, src_mac, dst_mac,
                                  end, end, fragment, problem))  # fmt: skip

    available = end - transport
    if proto == 6:
        if available >= 20:
            sport, dport, _seq, _ack, data_offset, flags = _TCP(frame, transport)
            start = transport + (data_offset >> 4) * 4
            if start > end or data_offset < 0x50:
                start = end
            return _new(Decoded, (vlan, version, 6, src, dst, sport, dport, flags, tos, ip_bytes,
                                  src_mac, dst_mac, start, end, fragment, problem))  # fmt: skip
        return _new(Decoded, (vlan, version, 6, src, dst, 0, 0, 0, tos, ip_bytes, src_mac, dst_mac,
                              end, end, fragment, "" if fragment else "tcp-truncated"))  # fmt: skip
    if proto == 17:
        if available >= 8:
            sport, dport = _PORTS(frame, transport)
            return _new(Decoded, (vlan, version, 17, src, dst, sport, dport, 0, tos, ip_bytes,
                                  src_mac, dst_mac, transport + 8, end, fragment, problem))  # fmt: skip
        return _new(Decoded, (vlan, version, 17, src, dst, 0, 0, 0, tos, ip_bytes, src_mac, dst_mac,
                              end, end, fragment, "" if fragment else "udp-truncated"))  # fmt: skip
    if proto == 1 or proto == 58:
        if available >= 2:
            return _new(Decoded, (vlan, version, proto, src, dst, 0, frame[transport] * 256 + frame[transport + 1],
                                  0, tos, ip_bytes, src_mac, dst_mac, end, end, fragment, problem))  # fmt: skip
        return _new(Decoded, (vlan, version, proto, src, dst, 0, 0, 0, tos, ip_bytes, src_mac, dst_mac,
                              end, end, fragment, "" if fragment else "icmp-truncated"))  # fmt: skip
    return _new(Decoded, (vlan, version, proto, src, dst, 0, 0, 0, tos, ip_bytes, src_mac, dst_mac,
                          end, end, fragment, problem))  # fmt: skip
