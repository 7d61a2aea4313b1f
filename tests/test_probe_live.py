"""capture_live on a real veth between two network namespaces, with known traffic.

Each test runs on both ways of reading the socket: the PACKET_MMAP ring (the default, metered with
numpy a block at a time) and packet-by-packet recv (HOSTFLOW_PROBE_RING=0, the fallback). Besides
traffic made here, real captures and generated traffic (VLAN tags, thousands of conversations) are
replayed onto the veth with tcpreplay, and the live flows and names must equal what ``probe read``
makes of the same file.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.bench_probe import write_pcap
from probe.options import MeterOptions
from probe.pipeline import ProbeInputError, capture_live, meter_files
from probe.sink import MemorySink
from tests.plugins.common import FIXTURES
from tests.plugins.netns import VethPair, enter_netns

pytestmark = pytest.mark.netns

NO_TIMEOUTS = 1e9  # replayed traffic is compressed in time: timeouts would split flows differently


@pytest.fixture(params=["ring", "recv"])
def reader(request, monkeypatch, caplog) -> str:
    """Which socket reader capture_live uses; the test checks the log says it was that one."""
    monkeypatch.setenv("HOSTFLOW_PROBE_RING", "1" if request.param == "ring" else "0")
    caplog.set_level(logging.INFO, logger="probe.pipeline")
    yield request.param
    started = [
        r.getMessage() for r in caplog.get_records("call") if r.getMessage().startswith("capturing on")
    ]
    assert started and all(("PACKET_MMAP ring" in line) == (request.param == "ring") for line in started)


ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""
CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[2], 40000))
s.settimeout(2)
for i in range(int(sys.argv[3])):
    s.sendto(bytes(100), (sys.argv[1], 9999))
    s.recv(2048)
t = socket.create_connection((sys.argv[1], 8080), timeout=5)
t.sendall(b"x" * 1000)
t.close()
"""
TCP_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 8080)); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
while c.recv(4096):
    pass
c.close()
"""


def _live(net: VethPair, options: MeterOptions, traffic, **kwargs) -> tuple[MemorySink, object]:
    sink = MemorySink()
    stop = threading.Event()
    ready = threading.Event()
    result: dict = {}

    def capture() -> None:
        try:
            with enter_netns(net.ns_a):
                result["stats"] = capture_live(net.if_a, options, sink, stop, health_interval=0.5,
                                               ready=ready.set, **kwargs)  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc
            ready.set()

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        traffic()
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(10)
    if "error" in result:
        raise result["error"]
    return sink, result["stats"]


def _servers(net: VethPair) -> list:
    procs = []
    for script in (ECHO_SERVER, TCP_SERVER):
        proc = net.popen("a", [sys.executable, "-c", script, net.addr_a], stdout=-1, text=True)
        assert proc.stdout.readline().strip() == "ready"
        procs.append(proc)
    return procs


@pytest.mark.timeout(60)
def test_live_capture_exact_flows(veth_netns: VethPair, reader: str) -> None:
    net = veth_netns
    servers = _servers(net)
    try:

        def traffic() -> None:
            net.run("b", [sys.executable, "-c", CLIENT, net.addr_a, net.addr_b, "50"], timeout=30)

        sink, stats = _live(net, MeterOptions(probe_id="live", names=False), traffic)
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
    flows = {(f.protocol, f.src_addr, f.src_port, f.dst_addr, f.dst_port): f for f in sink.flows}
    request = flows[(17, net.addr_b, 40000, net.addr_a, 9999)]
    answer = flows[(17, net.addr_a, 9999, net.addr_b, 40000)]
    assert (request.packets, request.bytes, request.initiator) == (50, 50 * 128, "src")
    assert (answer.packets, answer.bytes, answer.initiator) == (50, 50 * 128, "dst")
    assert request.src_mac == net.mac_b and request.dst_mac == net.mac_a
    assert {request.end_reason, answer.end_reason} == {"shutdown"}
    tcp = [f for f in sink.flows if f.protocol == 6]
    to_server = next(f for f in tcp if f.dst_port == 8080)
    from_server = next(f for f in tcp if f.src_port == 8080)
    assert to_server.initiator == "src" and from_server.initiator == "dst"
    assert to_server.tcp_flags & 0x03 == 0x03  # SYN and FIN
    assert to_server.end_reason == "fin"
    # 1000 bytes of data; IP + TCP headers: the SYN 60 (20 + 20 + 20 of options), the others 52
    # (20 + 20 + 12 of timestamps, on by default in a new namespace)
    assert to_server.bytes == 1000 + 60 + (to_server.packets - 1) * 52
    only_ip = {f.protocol for f in sink.flows}
    assert only_ip == {6, 17}  # IPv6 is off on the veths: nothing else speaks
    assert stats.ip_packets == sum(f.packets for f in sink.flows)
    assert stats.kernel_drops == 0
    assert sink.health["iface"] == net.if_a and sink.health["packets_captured"] == stats.packets


@pytest.mark.timeout(60)
def test_live_capture_with_bpf_filter(veth_netns: VethPair, reader: str) -> None:
    net = veth_netns
    servers = _servers(net)
    try:

        def traffic() -> None:
            net.run("b", [sys.executable, "-c", CLIENT, net.addr_a, net.addr_b, "20"], timeout=30)

        sink, stats = _live(net, MeterOptions(names=False, bpf="udp and dst port 9999"), traffic)
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
    assert [(f.src_port, f.dst_port, f.packets) for f in sink.flows] == [(40000, 9999, 20)]
    assert stats.packets == 20


def _flow_counts(flows) -> list[tuple]:
    """Everything of a flow but its times and end reason (live time is not the file's)."""
    return sorted((f.protocol, f.src_addr, f.src_port, f.dst_addr, f.dst_port, f.packets, f.bytes, f.tcp_flags,
                   f.tos, f.vlan, f.src_mac, f.dst_mac, f.initiator, f.ip_version) for f in flows)  # fmt: skip


def _name_facts(names) -> list[tuple]:
    return sorted(
        (n.addr, n.name, n.source, n.client_addr, n.ttl, n.cname_chain, n.qtype, n.rcode) for n in names
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """3,000 packets of the benchmark's traffic: 300 conversations, VLAN tags, SYN/FIN/RST, IPv6, ICMP."""
    path = tmp_path_factory.mktemp("live") / "generated.pcap"
    write_pcap(path, 3_000, seed=5, concurrent=300, turnover=0.02)
    return path


REPLAYED = ["generated", "pcap/zeek-wikipedia.pcap", "pcap/ndpi-iphone.pcap", "pcap/zeek-mixed-vlan-mpls.pcap",
            "pcap/zeek-vlan-qinqinq.pcap", "pcap/zeek-dns-mdns.pcap", "names/arkime-dns-tcp.pcap"]  # fmt: skip


@pytest.mark.timeout(60)
@pytest.mark.parametrize("capture", REPLAYED)
def test_replayed_capture_meters_like_the_file(veth_netns: VethPair, reader: str, capture: str,
                                               generated: Path) -> None:  # fmt: skip
    """tcpreplay a capture onto the veth: live flows and names equal ``probe read`` of the file."""
    net = veth_netns
    for side, iface in (("a", net.if_a), ("b", net.if_b)):  # tagged full-size frames exceed 1500
        net.run(side, ["ip", "link", "set", iface, "mtu", "9000"])
    path = generated if capture == "generated" else FIXTURES / capture
    options = MeterOptions(probe_id="p", idle_timeout=NO_TIMEOUTS, active_timeout=NO_TIMEOUTS)
    from_file = MemorySink()
    file_stats = meter_files([str(path)], options, from_file, tcp_end_grace=NO_TIMEOUTS)
    sent: list[str] = []

    def traffic() -> None:
        out = net.run(
            "b", ["tcpreplay", "-i", net.if_b, "--pps=20000", str(path)], capture_output=True, text=True
        )
        sent.append(out.stdout)

    live, stats = _live(net, options, traffic, tcp_end_grace=NO_TIMEOUTS)
    successful = int(re.search(r"Successful packets:\s+(\d+)", sent[0]).group(1))
    assert successful == file_stats.packets  # every frame went onto the wire
    assert stats.packets == file_stats.packets and stats.kernel_drops == 0
    assert stats.ip_packets == file_stats.ip_packets and stats.bytes == file_stats.bytes
    assert stats.parse_errors == file_stats.parse_errors
    assert _flow_counts(live.flows) == _flow_counts(from_file.flows)
    assert _name_facts(live.names) == _name_facts(from_file.names)
    assert len(from_file.flows) > 0


@pytest.mark.parametrize("ring", ["1", "0"])
def test_bad_interface_fails_at_start(monkeypatch, ring: str) -> None:
    monkeypatch.setenv("HOSTFLOW_PROBE_RING", ring)
    with pytest.raises(ProbeInputError, match=r"no such network interface: 'nonexistent0'"):
        capture_live("nonexistent0", MeterOptions(), MemorySink(), threading.Event())


@pytest.mark.parametrize("ring", ["1", "0"])
def test_bad_filter_fails_at_start(monkeypatch, ring: str) -> None:
    monkeypatch.setenv("HOSTFLOW_PROBE_RING", ring)
    with pytest.raises(ProbeInputError, match=r"bad BPF filter 'port nonsense'"):
        capture_live("lo", MeterOptions(bpf="port nonsense"), MemorySink(), threading.Event())


@pytest.mark.timeout(60)
def test_ring_refused_falls_back_to_recv(veth_netns: VethPair, monkeypatch, caplog) -> None:
    """A ring the kernel refuses (here: a block size that is not a multiple of the page size) is
    logged in one line and the capture goes on packet by packet, with the same flows."""
    import probe.capture

    monkeypatch.setattr(probe.capture, "RING_BLOCK_BYTES", 1000)
    caplog.set_level(logging.INFO, logger="probe.pipeline")
    net = veth_netns
    servers = _servers(net)
    try:

        def traffic() -> None:
            net.run("b", [sys.executable, "-c", CLIENT, net.addr_a, net.addr_b, "10"], timeout=30)

        sink, stats = _live(net, MeterOptions(names=False), traffic, ring=True)
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no PACKET_MMAP ring on" in w and "reading packets one by one" in w for w in warnings)
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("capturing on")]
    assert started and "PACKET_MMAP ring" not in started[0]
    udp = sorted((f.src_port, f.dst_port, f.packets) for f in sink.flows if f.protocol == 17)
    assert udp == [(9999, 40000, 10), (40000, 9999, 10)]


@pytest.mark.timeout(60)
def test_idle_timeout_fires_on_a_quiet_line(veth_netns: VethPair, reader: str) -> None:
    """No packet after the exchange: the flows still end by idle timeout, before shutdown."""
    net = veth_netns
    servers = _servers(net)
    try:

        def traffic() -> None:
            net.run("b", [sys.executable, "-c", CLIENT, net.addr_a, net.addr_b, "5"], timeout=30)
            time.sleep(3.5)  # idle timeout 1 s, expiry looked for once a second

        sink, _stats = _live(net, MeterOptions(names=False, idle_timeout=1.0), traffic)
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
    udp = sorted((f.src_port, f.dst_port, f.packets, f.end_reason) for f in sink.flows if f.protocol == 17)
    assert udp == [(9999, 40000, 5, "idle"), (40000, 9999, 5, "idle")]
