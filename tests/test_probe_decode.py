"""probe.decode and probe.capture readers on hand-built frames and files with known answers.

The frame and file builders here are plain struct code, independent of the decoder; the
other probe tests import them.
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest

from probe.capture import ProbeInputError, open_capture
from probe.decode import Decoded, decode

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


# ---------------------------------------------------------------- builders


def _packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def tcp(sport: int, dport: int, flags: int = 0x18, payload: bytes = b"", options: bytes = b"") -> bytes:
    offset = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, offset << 4, flags, 65535, 0, 0) + options + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(kind: int, code: int, payload: bytes = b"abcd") -> bytes:
    return struct.pack("!BBHI", kind, code, 0, 0) + payload


def ipv4(src: str, dst: str, proto: int, body: bytes, *, options: bytes = b"", frag: int = 0, tos: int = 0,
         total: int | None = None) -> bytes:  # fmt: skip
    ihl = 5 + len(options) // 4
    length = total if total is not None else ihl * 4 + len(body)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, tos, length, 1, frag, 64, proto, 0, _packed(src), _packed(dst)
    )
    return header + options + body


def ipv6(src: str, dst: str, nxt: int, body: bytes, *, tclass: int = 0) -> bytes:
    return (
        struct.pack("!IHBB16s16s", (6 << 28) | (tclass << 20), len(body), nxt, 64, _packed(src), _packed(dst))
        + body
    )


def ether(
    payload: bytes, ethertype: int = 0x0800, tags: tuple[tuple[int, int], ...] = (), pad: bool = True
) -> bytes:
    head = MAC_B + MAC_A
    for tpid, vid in tags:
        head += struct.pack("!HH", tpid, vid)
    frame = head + struct.pack("!H", ethertype) + payload
    return frame + b"\0" * max(0, 60 - len(frame)) if pad else frame


def pcap_file(path: Path, packets: list[tuple[int, bytes]], *, linktype: int = 1, big_endian: bool = False,
              nanoseconds: bool = False) -> Path:  # fmt: skip
    """Write (ts_us, frame) packets as a classic pcap file."""
    order = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    for ts, frame in packets:
        frac = (ts % 1_000_000) * (1000 if nanoseconds else 1)
        out.append(struct.pack(order + "IIII", ts // 1_000_000, frac, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))
    return path


def _block(kind: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def pcapng_file(
    path: Path, interfaces: list[tuple[int, int | None]], packets: list[tuple[int, int, bytes]]
) -> Path:
    """interfaces: (linktype, if_tsresol byte or None); packets: (interface, ts in its units, frame)."""
    out = [_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))]
    for linktype, resol in interfaces:
        options = b"" if resol is None else struct.pack("<HHB3x", 9, 1, resol) + struct.pack("<HH", 0, 0)
        out.append(_block(1, struct.pack("<HHI", linktype, 0, 262144) + options))
    for interface, ts, frame in packets:
        out.append(
            _block(
                6, struct.pack("<IIIII", interface, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame)) + frame
            )
        )
    path.write_bytes(b"".join(out))
    return path


# ---------------------------------------------------------------- decode


def test_ipv4_tcp_with_options_and_padding() -> None:
    frame = ether(
        ipv4("10.0.0.1", "10.0.0.2", 6, tcp(40000, 80, 0x02), options=b"\x01\x01\x01\x00", tos=0x28)
    )
    assert len(frame) == 60  # 14 + 24 + 20 = 58, padded
    dec = decode(1, frame)
    assert isinstance(dec, Decoded)
    assert dec[:10] == (0, 4, 6, _packed("10.0.0.1"), _packed("10.0.0.2"), 40000, 80, 0x02, 0x28, 44)
    assert (dec.src_mac, dec.dst_mac) == (MAC_A, MAC_B)
    assert dec.payload_start == dec.payload_end == 14 + 44  # padding is not payload
    assert not dec.fragment and dec.problem == ""


def test_tcp_payload_bounds() -> None:
    frame = ether(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1234, 443, payload=b"\x16\x03\x01hello")))
    dec = decode(1, frame)
    assert frame[dec.payload_start : dec.payload_end] == b"\x16\x03\x01hello"


def test_outermost_vlan_of_a_qinq_stack_and_mpls() -> None:
    packet = ipv4("10.0.0.1", "10.0.0.2", 17, udp(5000, 53, b"q"))
    dec = decode(1, ether(packet, tags=((0x88A8, 0x2064), (0x8100, 0x00C8))))
    assert (dec.vlan, dec.src_port, dec.dst_port, dec.ip_bytes) == (100, 5000, 53, 29)
    mpls = struct.pack("!I", (1000 << 12) | 0x40) + struct.pack("!I", (2000 << 12) | 0x140)
    dec = decode(1, ether(mpls + packet, ethertype=0x8847, tags=((0x8100, 7),)))
    assert (dec.vlan, dec.protocol, dec.dst_port) == (7, 17, 53)


def test_ipv4_fragments_ports_from_the_first_only() -> None:
    body = udp(5353, 53, b"x" * 40)
    first = decode(1, ether(ipv4("10.0.0.1", "10.0.0.2", 17, body[:24], frag=0x2000, total=44)))
    later = decode(1, ether(ipv4("10.0.0.1", "10.0.0.2", 17, body[24:], frag=3, total=44)))
    assert (first.src_port, first.dst_port, first.fragment, first.ip_bytes) == (5353, 53, True, 44)
    assert (later.src_port, later.dst_port, later.fragment, later.protocol, later.ip_bytes) == (
        0,
        0,
        True,
        17,
        44,
    )


def test_ipv6_extension_headers_are_skipped() -> None:
    hop = bytes([60, 0]) + b"\x01\x04\0\0\0\0"  # next: dest-opts, 8 bytes
    dest = bytes([51, 0]) + b"\x01\x04\0\0\0\0"  # next: AH
    ah = bytes([44, 1, 0, 0]) + b"\0" * 8  # AH, (1 + 2) * 4 = 12 bytes, next: fragment
    frag_first = bytes([6, 0]) + struct.pack("!HI", 0x0001, 7)  # offset 0, M=1, next: TCP
    body = hop + dest + ah + frag_first + tcp(5000, 22, 0x02)
    dec = decode(1, ether(ipv6("2001:db8::1", "2001:db8::2", 0, body, tclass=0xB8), ethertype=0x86DD))
    assert (dec.version, dec.protocol, dec.src_port, dec.dst_port, dec.tcp_flags, dec.tos) == (
        6,
        6,
        5000,
        22,
        2,
        0xB8,
    )
    assert dec.fragment and dec.ip_bytes == 40 + len(body)
    later = bytes([6, 0]) + struct.pack("!HI", 0x0010, 7)
    dec = decode(1, ether(ipv6("2001:db8::1", "2001:db8::2", 44, later + b"z" * 16), ethertype=0x86DD))
    assert (dec.protocol, dec.src_port, dec.dst_port, dec.fragment) == (6, 0, 0, True)


def test_icmp_type_code_in_dst_port() -> None:
    dec = decode(1, ether(ipv4("10.0.0.1", "10.0.0.2", 1, icmp(3, 3))))
    assert (dec.src_port, dec.dst_port) == (0, 3 * 256 + 3)
    dec = decode(229, ipv6("fe80::1", "ff02::1", 58, icmp(135, 0)))
    assert (dec.protocol, dec.dst_port) == (58, 135 * 256)


def test_other_protocols_and_non_ip() -> None:
    dec = decode(1, ether(ipv4("10.0.0.1", "10.0.0.2", 132, b"\0" * 16)))
    assert (dec.protocol, dec.src_port, dec.dst_port) == (132, 0, 0)
    assert decode(1, ether(b"\0" * 28, ethertype=0x0806)) is None  # ARP
    assert decode(1, ether(b"\x42\x42\x03" + b"\0" * 40, ethertype=0x0026)) is None  # 802.3 + LLC (STP)


@pytest.mark.parametrize(
    ("linktype", "head"),
    [
        (113, struct.pack("!HHH8sH", 0, 1, 6, MAC_A + b"\0\0", 0x0800)),
        (276, struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, MAC_A + b"\0\0")),
        (101, b""),
        (228, b""),
        (0, struct.pack("<I", 2)),
        (0, struct.pack(">I", 2)),
        (108, struct.pack(">I", 2)),
    ],
)
def test_link_types(linktype: int, head: bytes) -> None:
    dec = decode(linktype, head + ipv4("192.0.2.1", "192.0.2.2", 17, udp(68, 67)))
    assert (dec.protocol, dec.src_port, dec.dst_port, dec.ip_bytes) == (17, 68, 67, 28)
    if linktype in (113, 276):
        assert dec.src_mac == MAC_A and dec.dst_mac == b""


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (ether(b"\x45\0\0", pad=False), "ipv4-truncated"),
        (
            ether(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 2)), pad=False)[:14] + b"\x44" + b"\0" * 30,
            "ipv4-bad-header-length",
        ),
        (ether(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 2), total=12)), "ipv4-bad-total-length"),
        (ether(ipv6("::1", "::2", 17, udp(1, 2)), ethertype=0x86DD)[:50], "ipv6-truncated"),
        (ether(b"\x60" + b"\0" * 39), "ipv4-bad-version"),
        (ether(b"\x45" + b"\0" * 39, ethertype=0x86DD), "ipv6-bad-version"),
        (b"\0" * 10, "ether-truncated"),
        (ether(b"", ethertype=0x8100, pad=False), "vlan-truncated"),
    ],
)
def test_unmeterable_packets_name_their_reason(frame: bytes, expected: str) -> None:
    assert decode(1, frame) == expected


def test_truncated_transport_is_metered_with_a_problem() -> None:
    packet = ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 2))[:30]  # 10 of 20 TCP header bytes captured
    dec = decode(101, packet)
    assert (dec.protocol, dec.src_port, dec.ip_bytes, dec.problem) == (6, 0, 40, "tcp-truncated")
    bad_ext = ipv6("::1", "::2", 0, bytes([6, 4]) + b"\0" * 6)  # hop-by-hop claims 40 bytes
    assert decode(229, bad_ext).problem == "ipv6-bad-ext"


def test_unsupported_link_type() -> None:
    assert decode(182, b"\0" * 64) == "unsupported-linktype"


# ---------------------------------------------------------------- readers


def _frames(n: int) -> list[tuple[int, bytes]]:
    return [
        (1_600_000_000_000_000 + i * 1500, ether(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1000 + i, 53))))
        for i in range(n)
    ]


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nanoseconds", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path: Path, big_endian: bool, nanoseconds: bool) -> None:
    packets = _frames(3)
    path = pcap_file(tmp_path / "x.pcap", packets, big_endian=big_endian, nanoseconds=nanoseconds)
    assert [(lt, ts, frame) for lt, ts, _wire, frame in open_capture(str(path))] == [
        (1, ts, f) for ts, f in packets
    ]


def test_pcapng_interfaces_with_their_own_link_type_and_resolution(tmp_path: Path) -> None:
    raw = ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2))
    frame = ether(raw)
    path = pcapng_file(
        tmp_path / "x.pcapng",
        [(1, None), (101, 9), (1, 0x80 | 20)],  # µs default; ns; 2^-20 s
        [(0, 1_600_000_000_000_001, frame), (1, 1_600_000_000_000_002_000, raw), (2, 5 << 20, frame)],
    )
    got = [(lt, ts, f) for lt, ts, _wire, f in open_capture(str(path))]
    assert got == [
        (1, 1_600_000_000_000_001, frame),
        (101, 1_600_000_000_000_002, raw),
        (1, 5_000_000, frame),
    ]


def test_truncated_pcap_names_the_packet(tmp_path: Path) -> None:
    path = pcap_file(tmp_path / "cut.pcap", _frames(3))
    path.write_bytes(path.read_bytes()[:-10])
    seen = []
    with pytest.raises(ProbeInputError, match=r"cut\.pcap: packet 3: truncated record"):
        for item in open_capture(str(path)):
            seen.append(item)
    assert len(seen) == 2


def test_oversized_record_is_refused(tmp_path: Path) -> None:
    path = pcap_file(tmp_path / "big.pcap", _frames(2))
    data = bytearray(path.read_bytes())
    second = 24 + 16 + 60
    data[second + 8 : second + 12] = struct.pack("<I", 4_325_376)
    path.write_bytes(bytes(data))
    with pytest.raises(ProbeInputError, match=r"packet 2: record length 4325376 is larger than 262144"):
        list(open_capture(str(path)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"hello world, not a capture", "not a pcap or pcapng file"),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 1, 4, 0, 0, 65535, 1), "unsupported pcap version 1.4"),
    ],
)
def test_bad_headers(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    with pytest.raises(ProbeInputError, match=message):
        list(open_capture(str(path)))
