"""Faults with real processes: the collector stopped or killed, the probe stopped under load.

Traffic runs only between two network namespaces this test creates, joined by a bridge in the
root namespace; the probe captures on the client's bridge port (like a mirror port: no address)
and sends to a real collector on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import tests.plugins.collector as collector_plugin
from hostflow.records import Flow
from probe.export import CollectorSink
from probe.spool import Spool
from tests.plugins.common import ROOT

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

_labs = itertools.count()


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@dataclass
class Lab:
    """Client namespace ⇄ bridge (root namespace, no address) ⇄ server namespace."""

    tag: str
    client_ns: str
    server_ns: str
    capture_iface: str  # the client's bridge port: sees everything the client sends and gets
    client_addr: str
    server_addr: str
    children: list[subprocess.Popen] = field(default_factory=list)

    def popen(self, ns: str, argv: list[str], **kwargs) -> subprocess.Popen:
        child = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)
        self.children.append(child)
        return child

    def run(self, ns: str, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
        )


@contextmanager
def mirror_lab() -> Iterator[Lab]:
    tag = f"{os.getpid()}{next(_labs)}"[-9:]  # interface names stay within 15 characters
    client_ns, server_ns = f"hfc{tag}", f"hfs{tag}"
    client_if, server_if, bridge = f"hfc{tag}", f"hfs{tag}", f"hfbr{tag}"
    net = f"10.213.{int(tag) % 250}"
    lab = Lab(tag, client_ns, server_ns, client_if + "r", f"{net}.1", f"{net}.2")
    try:
        sh("ip", "netns", "add", client_ns)
        sh("ip", "netns", "add", server_ns)
        sh("ip", "link", "add", bridge, "type", "bridge")
        for ns, inner, addr in (
            (client_ns, client_if, lab.client_addr),
            (server_ns, server_if, lab.server_addr),
        ):
            sh("ip", "link", "add", inner, "type", "veth", "peer", "name", inner + "r")
            sh("ip", "link", "set", inner, "netns", ns)
            sh("sysctl", "-qw", f"net.ipv6.conf.{inner}r.disable_ipv6=1")
            sh("ip", "link", "set", inner + "r", "master", bridge)
            sh("ip", "link", "set", inner + "r", "up")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{addr}/24", "dev", inner)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", inner, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("sysctl", "-qw", f"net.ipv6.conf.{bridge}.disable_ipv6=1")
        sh("ip", "link", "set", bridge, "up")
        yield lab
    finally:
        for child in lab.children:
            if child.poll() is None:
                child.kill()
                child.wait()
        for argv in (
            ["ip", "netns", "del", client_ns],
            ["ip", "netns", "del", server_ns],
            ["ip", "link", "del", bridge],
        ):
            subprocess.run(argv, capture_output=True)


# A UDP sender run in the client namespace: FLOWS flows (source ports BASE..), PACKETS each.
SENDER = textwrap.dedent(
    """
    import socket, sys, time
    server, port, base, flows, packets, size, seconds = sys.argv[1:8]
    base, flows, packets, size, seconds = int(base), int(flows), int(packets), int(size), float(seconds)
    sockets = []
    for i in range(flows):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", base + i))
        sockets.append(s)
    pause = seconds / max(1, flows * packets)
    for _ in range(packets):
        for s in sockets:
            s.sendto(b"x" * size, (server, int(port)))
            if pause:
                time.sleep(pause)
    print("sent", flush=True)
    """
)
# Endless load: new flows (fresh source ports) as fast as the pace allows, until killed.
FLOOD = textwrap.dedent(
    """
    import socket, sys, time
    server, port, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    print("flooding", flush=True)
    n = 0
    while True:
        s.sendto(b"y" * 100, (server, port))
        n += 1
        if n % 50 == 0:
            s.close()
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        time.sleep(1 / rate)
    """
)


def send(
    lab: Lab, port: int, base: int, flows: int, packets: int, size: int = 64, seconds: float = 1.0
) -> None:
    result = lab.run(
        lab.client_ns,
        [sys.executable, "-c", SENDER, lab.server_addr, str(port), str(base), str(flows), str(packets), str(size), str(seconds)],
    )  # fmt: skip
    assert result.returncode == 0 and "sent" in result.stdout, result.stderr


class ProbeProcess:
    """`python -m probe capture` as the service runs it, with its stderr kept."""

    def __init__(self, lab: Lab, collector_url: str, spool: Path, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTFLOW_")}
        env.update(
            PYTHONPATH=str(ROOT),
            HOSTFLOW_PROBE_CONFIG="none",
            HOSTFLOW_PROBE_TOKEN=collector_plugin.PROBE_TOKEN,
        )
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "probe", "capture", "--iface", lab.capture_iface, "--collector", collector_url,
             "--probe-id", collector_plugin.PROBE_ID, "--spool-dir", str(spool), "--batch-seconds", "0.5",
             "--retry-max-seconds", "1", *extra],
            env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        lab.children.append(self.proc)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 30
        while not any("probe.pipeline: capturing on" in line for line in self.lines):
            assert self.proc.poll() is None, self.stderr()
            assert time.monotonic() < deadline, f"probe not capturing after 30 s:\n{self.stderr()}"
            time.sleep(0.05)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def stderr(self) -> str:
        return "".join(self.lines)

    def terminate(self, timeout: float = 40) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code


def udp_flows(collector, host: str, port: int) -> list[dict]:
    status, answer = collector.query_json("host_flows", host=host, protocols=["udp"], limit=1_000_000)
    assert status == 200, answer
    rows = [dict(zip(answer["columns"], row, strict=True)) for row in answer["rows"]]
    return [r for r in rows if r["direction"] == "sent" and r["peer_port"] == port]


def restart_on_same_port(collector) -> None:
    port = collector.http_port
    original = collector_plugin.free_port
    collector_plugin.free_port = lambda *args: port
    try:
        collector.start()
    finally:
        collector_plugin.free_port = original


def wait_until(check, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def spooled(spool: Path) -> list[Path]:
    return sorted((spool / collector_plugin.PROBE_ID).glob("*.hfc1.gz"))


def test_collector_stopped_for_half_a_minute_loses_nothing(collector_server, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with mirror_lab() as lab:
        probe = ProbeProcess(lab, collector_server.url, spool, "--idle-timeout", "1", "--active-timeout", "5")
        send(lab, 7001, 20000, flows=100, packets=3)
        wait_until(
            lambda: len(udp_flows(collector_server, lab.client_addr, 7001)) == 100, "the first 100 flows"
        )
        collector_server.stop()
        down_since = time.monotonic()
        send(lab, 7001, 21000, flows=100, packets=3)
        deadline = time.monotonic() + 10
        while not spooled(spool) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert spooled(spool), "the flows metered while the collector is down wait in the spool"
        time.sleep(max(0.0, 30 - (time.monotonic() - down_since)))  # the issue: stopped for 30 s
        restart_on_same_port(collector_server)
        send(lab, 7001, 22000, flows=100, packets=3)
        wait_until(lambda: len(udp_flows(collector_server, lab.client_addr, 7001)) == 300, "all 300 flows")
        assert probe.terminate() == 0, probe.stderr()
    flows = udp_flows(collector_server, lab.client_addr, 7001)
    assert len(flows) == 300, probe.stderr()
    assert sorted(f["host_port"] for f in flows) == [
        *range(20000, 20100),
        *range(21000, 21100),
        *range(22000, 22100),
    ]
    assert {f["packets"] for f in flows} == {3}
    assert sum(f["bytes"] for f in flows) == 900 * (20 + 8 + 64)
    assert spooled(spool) == []
    assert "reachable again" in probe.stderr()


def test_collector_killed_in_the_middle_of_a_batch_stores_it_once(collector_server, tmp_path: Path) -> None:
    # JSON: a batch the collector needs about two seconds to take in (the columnar encoding is
    # stored within the 0.15 s below); both encodings share the one-transaction write
    count = 60_000
    base = 1_600_000_000_000_000
    flows = [
        Flow(collector_plugin.PROBE_ID, base + i, base + i + 5, 4, 17, "10.1.0.1", 1024 + i % 60_000,
             f"10.2.{i // 60_000}.2", 53, 1, 60, end_reason="idle", initiator="src")
        for i in range(count)
    ]  # fmt: skip
    sink = CollectorSink(
        collector_server.url,
        collector_plugin.PROBE_TOKEN,
        collector_plugin.PROBE_ID,
        Spool(tmp_path / "spool"),
        batch_flows=count,
        retry_max_seconds=0.5,
        http_timeout=30,
        encoding="json",
    )
    port = collector_server.http_port
    sink.add_flows(flows)
    deadline = time.monotonic() + 20
    while not _connected(port):
        assert time.monotonic() < deadline, "the probe never connected"
        time.sleep(0.01)
    time.sleep(0.15)  # the body is in; the collector is parsing and writing it
    os.kill(collector_server.pid, signal.SIGKILL)
    collector_server.proc.wait()
    log_before = collector_server.log()
    assert "event=batch_stored" not in log_before, "the kill came after the batch was stored"
    assert sink.spool.batches == 1
    restart_on_same_port(collector_server)
    sink.close()
    assert sink.undelivered == 0 and sink.refusals == []
    status, answer = collector_server.query_json("time_range", probe_id=collector_plugin.PROBE_ID)
    assert status == 200 and answer["rows"][0][2] == count
    stored = collector_server.log().count("event=batch_stored")
    assert stored == 1


def _connected(port: int) -> bool:
    """An established TCP connection to the collector's port (the batch is on its way)."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            if local_port == port and fields[3] == "01":
                return True
    return False


def test_sigterm_under_load_flushes_the_flows_in_flight(collector_server, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with mirror_lab() as lab:
        # long timeouts: every flow is still open (in flight) when the probe is told to stop
        probe = ProbeProcess(
            lab, collector_server.url, spool, "--idle-timeout", "120", "--active-timeout", "300"
        )
        flood = lab.popen(
            lab.client_ns,
            [sys.executable, "-c", FLOOD, lab.server_addr, "9", "3000"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert flood.stdout is not None and flood.stdout.readline().strip() == "flooding"
        send(lab, 7003, 30000, flows=200, packets=5, size=200, seconds=2.0)
        time.sleep(1.0)
        stopped = time.monotonic()
        assert probe.terminate() == 0, probe.stderr()
        assert time.monotonic() - stopped < 20
        flood.kill()
        flood.wait()
    flows = udp_flows(collector_server, lab.client_addr, 7003)
    assert len(flows) == 200, probe.stderr()
    assert {f["end_reason"] for f in flows} == {"shutdown"}
    assert {f["packets"] for f in flows} == {5}
    assert sum(f["bytes"] for f in flows) == 1000 * (20 + 8 + 200)
    loaded = udp_flows(collector_server, lab.client_addr, 9)
    assert len(loaded) > 100 and {f["end_reason"] for f in loaded} == {"shutdown"}
    assert spooled(spool) == []
