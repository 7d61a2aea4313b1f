"""probe.meter: timeouts, TCP end, initiator, table bound — exact outcomes on hand-made traffic.

(softflowd cannot be the reference here: reading a file it applies no idle timeout. The
semantics are in probe/meter.py's docstring.)
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostflow.records import Flow, validate_flow
from probe.meter import FlowMeter
from probe.options import MeterOptions
from probe.pipeline import meter_files
from probe.sink import MemorySink
from tests.test_probe_decode import ether, icmp, ipv4, pcap_file, tcp, udp

A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"
S = 1_000_000  # one second in µs
T0 = 1_700_000_000 * S
SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08


class Run:
    def __init__(self, **options) -> None:
        self.flows: list[Flow] = []
        self.meter = FlowMeter(MeterOptions(probe_id="t", **options), self.flows.extend)

    def pkt(self, t: float, src: str, sport: int, dst: str, dport: int, proto: int = 6, flags: int = ACK,
            size: int = 100, vlan: int = 0) -> None:  # fmt: skip
        self.meter.add(T0 + int(t * S), vlan, 4, proto, ipaddress.ip_address(src).packed,
                       ipaddress.ip_address(dst).packed, sport, dport, flags, 0, size, b"", b"")  # fmt: skip

    def end(self) -> list[tuple]:
        self.meter.flush("end-of-capture")
        for flow in self.flows:
            validate_flow(flow)
        return sorted(
            (
                (f.flow_start - T0) / S,
                f.src_addr,
                f.src_port,
                f.dst_addr,
                f.dst_port,
                f.packets,
                f.bytes,
                f.end_reason,
                f.initiator,
            )
            for f in self.flows  # fmt: skip
        )


def test_idle_timeout_splits_after_a_gap_longer_than_idle() -> None:
    run = Run(idle_timeout=15, active_timeout=60)
    run.pkt(0, A, 5000, B, 53, 17)
    run.pkt(0.1, B, 53, A, 5000, 17)
    run.pkt(15.1, A, 5000, B, 53, 17)  # 15.0 s after the pair's last packet: same flow
    run.pkt(30.2, A, 5000, B, 53, 17)  # 15.1 s: a new flow
    assert run.end() == [
        (0.0, A, 5000, B, 53, 2, 200, "idle", "src"),
        (0.1, B, 53, A, 5000, 1, 100, "idle", "dst"),
        (30.2, A, 5000, B, 53, 1, 100, "end-of-capture", "src"),
    ]


def test_one_busy_direction_keeps_the_pair_alive() -> None:
    """softflowd's pair semantics: the answer direction is idle 40 s, but its pair is not."""
    run = Run(idle_timeout=15, active_timeout=60)
    run.pkt(0, A, 6000, B, 7000, 17)
    run.pkt(0.5, B, 7000, A, 6000, 17)
    for second in range(1, 41, 5):
        run.pkt(second, A, 6000, B, 7000, 17)
    run.pkt(41, B, 7000, A, 6000, 17)
    assert [(row[1], row[5]) for row in run.end()] == [(A, 9), (B, 2)]


def test_active_timeout_cuts_and_keeps_the_initiator() -> None:
    run = Run(idle_timeout=15, active_timeout=60)
    run.pkt(0, A, 40000, B, 8080, flags=SYN)
    run.pkt(0.01, B, 8080, A, 40000, flags=SYN | ACK)
    for second in range(10, 131, 10):
        run.pkt(second, B, 8080, A, 40000, flags=ACK)
    rows = run.end()
    assert [(r[0], r[1], r[5], r[7], r[8]) for r in rows] == [
        (0.0, A, 1, "active", "src"),
        (0.01, B, 7, "active", "dst"),  # SYN+ACK, 10 … 60: 60 s after the pair's start is still in
        (70.0, B, 7, "end-of-capture", "dst"),  # 70 … 130
    ]


def test_fin_both_ways_ends_the_flow_after_the_grace() -> None:
    run = Run(idle_timeout=15)
    run.pkt(0, A, 40001, B, 443, flags=SYN)
    run.pkt(0.1, B, 443, A, 40001, flags=SYN | ACK)
    run.pkt(0.2, A, 40001, B, 443, flags=ACK | PSH)
    run.pkt(1.0, A, 40001, B, 443, flags=FIN | ACK)
    run.pkt(1.1, B, 443, A, 40001, flags=FIN | ACK)
    run.pkt(1.2, A, 40001, B, 443, flags=ACK)  # last ACK: inside the 2 s grace
    run.pkt(4.0, A, 40001, B, 443, flags=ACK)  # stray, 2.8 s later: a new flow
    rows = run.end()
    assert [(r[0], r[1], r[5], r[7], r[8]) for r in rows] == [
        (0.0, A, 4, "fin", "src"),
        (0.1, B, 2, "fin", "dst"),
        (4.0, A, 1, "end-of-capture", "src"),  # no SYN in view: port 443 is the server
    ]


def test_rst_closes_and_a_new_syn_on_the_same_ports_starts_a_new_flow() -> None:
    run = Run(idle_timeout=15)
    run.pkt(0, A, 40002, B, 25, flags=SYN)
    run.pkt(0.1, B, 25, A, 40002, flags=RST | ACK)
    run.pkt(0.5, A, 40002, B, 25, flags=SYN)  # within the grace, but a new connection
    rows = run.end()
    assert [(r[0], r[1], r[5], r[7], r[8]) for r in rows] == [
        (0.0, A, 1, "rst", "src"),
        (0.1, B, 1, "rst", "dst"),
        (0.5, A, 1, "end-of-capture", "src"),
    ]


def test_single_fin_does_not_close() -> None:
    run = Run(idle_timeout=15)
    run.pkt(0, A, 40003, B, 80, flags=FIN | ACK)
    run.pkt(5, A, 40003, B, 80, flags=ACK)
    assert [(r[5], r[7]) for r in run.end()] == [(2, "end-of-capture")]


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        ((B, 443, A, 50000, ACK), {A: "src", B: "dst"}),  # mid-stream TCP: the low port serves
        ((A, 50000, B, 443, SYN | ACK), {A: "dst", B: "src"}),  # SYN+ACK answers: B opened it
        ((A, 6000, B, 7000, ACK), {A: "src", B: "dst"}),  # both high: the first packet's side
    ],
)
def test_tcp_initiator(first: tuple, expected: dict) -> None:
    run = Run()
    src, sport, dst, dport, flags = first
    run.pkt(0, src, sport, dst, dport, flags=flags)
    run.pkt(0.1, dst, dport, src, sport, flags=ACK)
    assert {r[1]: r[8] for r in run.end()} == expected


def test_icmp_initiator_by_type_and_separate_request_and_reply_flows() -> None:
    run = Run()
    run.pkt(0, A, 0, B, 8 * 256, proto=1)  # echo request
    run.pkt(0.001, B, 0, A, 0, proto=1)  # echo reply
    run.pkt(0.002, C, 0, A, 3 * 256 + 1, proto=1)  # host unreachable
    assert [(r[1], r[4], r[8]) for r in run.end()] == [(A, 2048, "src"), (B, 0, "dst"), (C, 769, "dst")]


def test_table_bound_evicts_the_least_recently_active_pair() -> None:
    run = Run(max_flows=2)
    run.pkt(0, A, 1, B, 1, 17)
    run.pkt(1, A, 2, B, 2, 17)
    run.pkt(2.5, A, 1, B, 1, 17)  # pair 1 is active again: pair 2 is now the oldest
    run.pkt(3, A, 3, B, 3, 17)
    assert run.meter.flows_evicted == 1
    assert [(r[2], r[5], r[7]) for r in run.end()] == [(1, 2, "end-of-capture"), (2, 1, "evicted"),
                                                       (3, 1, "end-of-capture")]  # fmt: skip


def test_vlan_is_not_in_the_key_and_the_first_packet_gives_it() -> None:
    run = Run()
    run.pkt(0, A, 137, B, 137, 17, vlan=10)
    run.pkt(1, A, 137, B, 137, 17, vlan=20)
    run.meter.flush("end-of-capture")
    assert [(f.packets, f.vlan) for f in run.flows] == [(2, 10)]


def test_expire_delivers_idle_flows_without_new_packets() -> None:
    run = Run(idle_timeout=15)
    run.pkt(0, A, 1, B, 2, 17)
    run.pkt(10, A, 3, B, 4, 17)
    run.meter.expire(T0 + 15 * S)
    assert run.flows == []
    run.meter.expire(T0 + 15 * S + 1)
    assert [(f.src_port, f.end_reason) for f in run.flows] == [(1, "idle")]


def test_meter_files_times_from_the_capture(tmp_path: Path) -> None:
    """Through the whole pipeline: packet timestamps drive the timeouts, bytes are IP lengths."""
    frames = [
        (T0, ether(ipv4(A, B, 17, udp(5000, 53, b"q" * 10)))),  # 38 IP bytes in a 60-byte frame
        (T0 + 20 * S, ether(ipv4(A, B, 17, udp(5000, 53, b"q" * 10)))),
        (T0 + 21 * S, ether(ipv4(A, B, 1, icmp(8, 0)))),
        (T0 + 21 * S, ether(b"\0" * 28, ethertype=0x0806)),
        (T0 + 22 * S, ether(ipv4(A, B, 6, tcp(1, 2)))[:40]),  # cut inside the TCP header
    ]
    path = pcap_file(tmp_path / "t.pcap", frames)
    sink = MemorySink()
    stats = meter_files([str(path)], MeterOptions(probe_id="p", names=False), sink)
    got = sorted((f.flow_start, f.protocol, f.src_port, f.dst_port, f.packets, f.bytes, f.end_reason)
                 for f in sink.flows)  # fmt: skip
    assert got == [
        (T0, 17, 5000, 53, 1, 38, "idle"),
        (T0 + 20 * S, 17, 5000, 53, 1, 38, "end-of-capture"),
        (T0 + 21 * S, 1, 0, 2048, 1, 32, "end-of-capture"),
        (T0 + 22 * S, 6, 0, 0, 1, 40, "end-of-capture"),
    ]
    assert (stats.packets, stats.ip_packets, stats.non_ip, stats.bytes) == (5, 4, 1, 148)
    assert stats.parse_errors == {"tcp-truncated": 1}
    assert stats.flows_exported == 4
    assert sink.health["packets_captured"] == 5 and sink.health["parse_errors"] == {"tcp-truncated": 1}


_WORD = st.one_of(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0xFFFE]), st.integers(0, 0xFFFF))


@given(st.lists(_WORD, min_size=8, max_size=8), st.booleans())
@settings(max_examples=2000, deadline=None)
def test_address_text_is_ipaddress_text(words: list[int], mapped: bool) -> None:
    """Flows spell addresses as ``ipaddress`` does (the contract), whether the meter writes them with
    inet_ntop or not: runs of zeros anywhere, IPv4-mapped and -compatible IPv6, and IPv4."""
    if mapped:
        words[:6] = [0, 0, 0, 0, 0, words[5] if words[5] in (0, 0xFFFF) else 0xFFFF]
    packed = b"".join(word.to_bytes(2, "big") for word in words)
    meter = FlowMeter(MeterOptions(), lambda flows: None)
    assert meter._addr(packed) == str(ipaddress.ip_address(packed))
    assert meter._addr(packed[:4]) == str(ipaddress.ip_address(packed[:4]))
