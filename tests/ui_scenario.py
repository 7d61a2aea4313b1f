"""A small lab hour for the app's tests, sent to a real collector as probe batches.

Modelled on the research paper's example (host 192.168.1.71, 2022-02-15 04:00–05:00, Slack over
HTTPS, DNS names learned alongside): two probes, three hosts, unidirectional flows in both
directions, names from DNS (with a CNAME chain), DHCP and mDNS, multicast and broadcast, ICMP,
an unnamed NTP server and a hard-coded address on an unregistered port, and one DNS answer whose
name is an HTML payload (names are attacker-controlled). ``expected_counts`` recomputes the
counts line from these records alone, as the independent reference.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hostflow.records import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Flow, Name, make_batch, to_us
from tests.plugins.common import ROOT, free_port, wait_healthy

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

PROBE, PROBE2 = "lab-pi", "lab-pi-2"
TOKEN, TOKEN2 = "app-test-token-1", "app-test-token-2"
HOST, HOST2, HOST3 = "192.168.1.71", "192.168.1.72", "10.1.0.5"
HOUR = to_us("2022-02-15T04:00:00Z")
EARLIER = to_us("2022-02-15T03:00:00Z")
XSS = '<img src=x onerror="window.__xss=1">'
XSS_ADDR = "203.0.113.66"
S = 1_000_000

# name → (address, CNAME chain after the name)
DNS = {
    "wss-primary.slack.com": ("52.89.214.238", []),
    "app.slack.com": ("52.37.84.171", []),
    "www.google.com": ("142.250.190.36", []),
    "mail.google.com": ("142.250.191.101", ["googlemail.l.google.com"]),
    "www.example.com": ("93.184.216.34", []),
    XSS: (XSS_ADDR, []),
}


@dataclass
class Scenario:
    flows: list[Flow] = field(default_factory=list)
    names: list[Name] = field(default_factory=list)

    def conversation(
        self,
        client: str,
        server: str,
        port: int,
        proto: int,
        start: int,
        up: int,
        down: int,
        cport: int = 50000,
        probe: str = PROBE,
        seconds: int = 20,
    ) -> None:
        """A request flow and, when ``down`` > 0, its answer flow (NetFlow-style, one per direction)."""
        up_pkts, down_pkts = max(1, up // 700), max(1, down // 1200)
        flags = 0x1B if proto == PROTO_TCP else 0
        icmp = proto == PROTO_ICMP
        end = start + max(seconds * S, 40_000)
        self.flows.append(
            Flow(probe, start, end, 4, proto, client, 0 if icmp else cport, server,
                 8 * 256 if icmp else port, up_pkts, up, flags, end_reason="fin" if flags else "idle",
                 initiator="src")
        )  # fmt: skip
        if down:
            self.flows.append(
                Flow(probe, start + 20_000, end, 4, proto, server, 0 if icmp else port, client,
                     0 if icmp else cport, down_pkts, down, flags, end_reason="fin" if flags else "idle",
                     initiator="dst")
            )  # fmt: skip

    def dns(self, client: str, name: str, ts: int, probe: str = PROBE) -> str:
        addr, chain = DNS[name]
        self.names.append(
            Name(probe, ts, addr, name, "dns", client, 300, [name, *chain] if chain else [], "A", 0)
        )
        self.conversation(client, "192.168.1.1", 53, PROTO_UDP, ts - 30_000, 70, 150, 40000 + len(self.flows),
                          probe, seconds=0)  # fmt: skip
        return addr


def build() -> Scenario:
    lab = Scenario()
    at = HOUR + 60 * S
    lab.names += [
        Name(PROBE, HOUR - 3000 * S, HOST, "alice-laptop", "dhcp", HOST),
        Name(PROBE, HOUR - 2900 * S, HOST2, "bob-iphone", "dhcp", HOST2),
        Name(PROBE, HOUR - 2800 * S, "192.168.1.90", "nas.local", "mdns", "192.168.1.90", 120),
        Name(PROBE2, HOUR - 2700 * S, HOST3, "build-server", "dhcp", HOST3),
    ]
    slack = lab.dns(HOST, "wss-primary.slack.com", at)
    for i in range(3):
        lab.conversation(HOST, slack, 443, PROTO_TCP, at + i * 600 * S, 20_000, 160_000, 50001 + i)
    app_slack = lab.dns(HOST, "app.slack.com", at + 5 * S)
    for i in range(2):
        lab.conversation(HOST, app_slack, 443, PROTO_TCP, at + (10 + i * 900) * S, 5_000, 60_000, 50011 + i)
    google = lab.dns(HOST, "www.google.com", at + 30 * S)
    lab.conversation(HOST, google, 443, PROTO_TCP, at + 31 * S, 4_000, 90_000, 50021)
    lab.conversation(HOST, google, 443, PROTO_UDP, at + 40 * S, 3_000, 40_000, 50022)
    mail = lab.dns(HOST, "mail.google.com", at + 50 * S)
    lab.conversation(HOST, mail, 443, PROTO_TCP, at + 51 * S, 10_000, 350_000, 50031)
    xss = lab.dns(HOST, XSS, at + 70 * S)
    lab.conversation(HOST, xss, 443, PROTO_TCP, at + 71 * S, 2_000, 8_000, 50041)
    lab.conversation(HOST, "224.0.0.251", 5353, PROTO_UDP, at + 80 * S, 300, 0, 5353)
    lab.conversation(HOST, "224.0.0.251", 5353, PROTO_UDP, at + 1800 * S, 300, 0, 5353)
    lab.conversation(HOST, "192.168.1.255", 137, PROTO_UDP, at + 90 * S, 250, 0, 137)
    lab.flows[-1].dst_mac = "ff:ff:ff:ff:ff:ff"
    lab.conversation(HOST, "162.159.200.1", 123, PROTO_UDP, at + 100 * S, 76, 76, 123)
    lab.conversation(HOST, "8.8.8.8", 0, PROTO_ICMP, at + 110 * S, 336, 336)
    lab.conversation(HOST, "192.168.1.90", 445, PROTO_TCP, at + 120 * S, 1_200_000, 30_000, 50051)
    lab.conversation(HOST, "198.51.100.7", 61337, PROTO_TCP, at + 130 * S, 1_500, 900, 50061)
    # bob's phone in the same hour, alice an hour earlier, a build server behind the second probe
    lab.conversation(HOST2, lab.dns(HOST2, "app.slack.com", at + 200 * S), 443, PROTO_TCP, at + 201 * S,
                     3_000, 45_000, 51001)  # fmt: skip
    lab.conversation(HOST2, lab.dns(HOST2, "www.google.com", at + 300 * S), 443, PROTO_TCP, at + 301 * S,
                     2_000, 25_000, 51002)  # fmt: skip
    early = EARLIER + 600 * S
    lab.conversation(
        HOST, lab.dns(HOST, "www.google.com", early), 443, PROTO_TCP, early + S, 3_000, 70_000, 52001
    )
    lab.conversation(HOST3, lab.dns(HOST3, "www.example.com", at + 400 * S, PROBE2), 443, PROTO_TCP,
                     at + 401 * S, 1_000, 12_000, 53001, probe=PROBE2)  # fmt: skip
    return lab


HEALTH = {
    PROBE: {"hostname": "pi-lab", "version": "0.1", "iface": "eth0", "packets_captured": 120_345,
            "kernel_drops": 0, "if_drops": 0, "parse_errors": {"truncated": 2}, "flows_exported": 0,
            "spool_bytes": 0, "spool_batches": 0, "uptime_s": 3600},
    PROBE2: {"hostname": "pi-build", "version": "0.1", "iface": "eth1", "packets_captured": 5_000,
             "kernel_drops": 37, "if_drops": 0, "parse_errors": {}, "flows_exported": 0, "spool_bytes": 4096,
             "spool_batches": 1, "uptime_s": 3600},
}  # fmt: skip


def batches(lab: Scenario) -> list[tuple[str, dict]]:
    """(token, batch) per probe."""
    out = []
    for number, (probe, token) in enumerate(((PROBE, TOKEN), (PROBE2, TOKEN2)), start=1):
        flows = [f for f in lab.flows if f.probe_id == probe]
        names = [n for n in lab.names if n.probe_id == probe]
        health = {"ts": HOUR + 3600 * S, **HEALTH[probe], "flows_exported": len(flows)}
        out.append(
            (token, make_batch(probe, f"{probe}:{number:012d}", flows, names, health, HOUR + 3600 * S))
        )
    return out


# ---------------------------------------------------------------- the independent reference


def _peer_and_server_port(flow: Flow, host: str) -> tuple[str, int, bool] | None:
    if flow.src_addr == host:
        peer, host_port, peer_port, sent = flow.dst_addr, flow.src_port, flow.dst_port, True
    elif flow.dst_addr == host:
        peer, host_port, peer_port, sent = flow.src_addr, flow.dst_port, flow.src_port, False
    else:
        return None
    peer_is_server = (flow.initiator == "src") == sent
    port = peer_port if peer_is_server else host_port
    if flow.protocol == PROTO_ICMP:
        port = 0  # ICMP has no ports (dst_port holds type*256+code): an echo and its reply, one endpoint
    return peer, port, peer_is_server


def classify(addr: str, dst_mac: str = "") -> tuple[str, str]:
    ip = ipaddress.ip_address(addr)
    if ip.is_multicast:
        return "multicast", "intranet"
    if addr == "255.255.255.255" or dst_mac == "ff:ff:ff:ff:ff:ff":
        return "broadcast", "intranet"
    inside = any(ip in ipaddress.ip_network(p) for p in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
    return "unicast", "intranet" if inside else "internet"


def expected_counts(
    lab: Scenario,
    host: str,
    start: int,
    end: int,
    protocols: set[int] | None = None,
    scopes: set[str] | None = None,
    casts: set[str] | None = None,
) -> tuple[int, int, int, int]:
    """(flows total, endpoints total, flows filtered, endpoints filtered) computed from the records."""
    total, kept = [], []
    for flow in lab.flows:
        if not start <= flow.flow_start < end:
            continue
        hit = _peer_and_server_port(flow, host)
        if hit is None:
            continue
        endpoint = (hit[0], hit[1], flow.protocol, hit[2])
        total.append(endpoint)
        cast, scope = classify(hit[0], flow.dst_mac)
        if protocols and flow.protocol not in protocols:
            continue
        if scopes and scope not in scopes:
            continue
        if casts and cast not in casts:
            continue
        kept.append(endpoint)
    return len(total), len(set(total)), len(kept), len(set(kept))


# ---------------------------------------------------------------- a real collector with two probes


@dataclass
class Collector:
    url: str
    process: subprocess.Popen

    def post(self, token: str, batch: dict) -> dict:
        body = gzip.compress(json.dumps(batch).encode())
        request = urllib.request.Request(self.url + "/api/v1/batches", data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        request.add_header("Content-Encoding", "gzip")
        request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"collector refused the batch: {exc.code} {exc.read().decode()}") from None


@contextmanager
def collector(tmp: Path, *, load: bool = True) -> Iterator[Collector]:
    """``python -m collector serve`` on a fresh DuckDB file and a free port, filled with ``build()``."""
    port = free_port()
    log = (tmp / "collector.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "collector", "serve", "--db", str(tmp / "app.duckdb"), "--http-port", str(port),
         "--netflow-port", "0", "--ipfix-port", "0", "--token", f"{TOKEN}={PROBE}", "--token",
         f"{TOKEN2}={PROBE2}", "--log-level", "warning"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url + "/health", process, tmp / "collector.log")
        server = Collector(url, process)
        if load:
            for token, batch in batches(build()):
                server.post(token, batch)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def app_test(collector_url: str, monkeypatch) -> AppTest:
    """Streamlit's AppTest of app.py reading ``collector_url``, in UTC, with the default intranet."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("HOSTFLOW_COLLECTOR_URL", collector_url)
    monkeypatch.setenv("HOSTFLOW_TZ", "UTC")
    monkeypatch.delenv("HOSTFLOW_INTRANET", raising=False)
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
