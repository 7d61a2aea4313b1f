"""capture_live on a real veth between two network namespaces, with known traffic."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from probe.options import MeterOptions
from probe.pipeline import ProbeInputError, capture_live
from probe.sink import MemorySink
from tests.plugins.netns import VethPair, enter_netns

pytestmark = pytest.mark.netns

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


def _live(net: VethPair, options: MeterOptions, traffic) -> tuple[MemorySink, object]:
    sink = MemorySink()
    stop = threading.Event()
    ready = threading.Event()
    result: dict = {}

    def capture() -> None:
        try:
            with enter_netns(net.ns_a):
                result["stats"] = capture_live(net.if_a, options, sink, stop, health_interval=0.5,
                                               ready=ready.set)  # fmt: skip
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
def test_live_capture_exact_flows(veth_netns: VethPair) -> None:
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
def test_live_capture_with_bpf_filter(veth_netns: VethPair) -> None:
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


def test_bad_interface_fails_at_start() -> None:
    with pytest.raises(ProbeInputError, match=r"no such network interface: 'nonexistent0'"):
        capture_live("nonexistent0", MeterOptions(), MemorySink(), threading.Event())


def test_bad_filter_fails_at_start() -> None:
    with pytest.raises(ProbeInputError, match=r"bad BPF filter 'port nonsense'"):
        capture_live("lo", MeterOptions(bpf="port nonsense"), MemorySink(), threading.Event())
