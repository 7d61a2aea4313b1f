"""The collector queries the app's pages stand on: ``flows`` (every flow of a window once, under its
host) and protocol-aware endpoints (443/tcp and 443/udp QUIC to one server are two peers).

Exact answers on the hand-built lab of tests/test_collector_queries.py and on real captures metered
by the probe's own CLI (tests/fixtures/pcap, see tests/fixtures/README.md); the records are read
back independently (hostflow.fileio) to compute what the queries must say.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from collector.queries import ParamError
from collector.store import Store
from hostflow.fileio import read_records
from hostflow.records import Flow, Name
from tests import test_collector_queries as lab1
from tests.plugins.common import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "pcap"
QUIC_HOST = "2a00:d40:1:3:7aac:c0ff:fea7:d4c"  # ndpi-http_ipv6.pcap: TCP and QUIC to one Google server
GOOGLE = "2a00:1450:4001:803::1017"
DNS_HOST = "2001:470:1f0b:16b0:20c:29ff:fe7c:a4cb"  # ndpi-dns_fragmented.pcap: DNS over UDP and TCP
LAN = ["192.168.1.0/24"]
S = 1_000_000


def q(store: Store, name: str, **params: Any) -> list[dict[str, Any]]:
    return store.query(name, params).to_pylist()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    db = Store(str(tmp_path_factory.mktemp("ui-queries") / "lab.duckdb"))
    db.ingest("lab:1", "probe", lab1.FLOWS, lab1.NAMES)
    yield db
    db.close()


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory):
    """The two captures metered by `python -m probe read`, stored as the collector stores them."""
    tmp = tmp_path_factory.mktemp("ui-captures")
    out = tmp / "captures.jsonl"
    subprocess.run(
        [sys.executable, "-m", "probe", "read", str(FIXTURES / "ndpi-http_ipv6.pcap"),
         str(FIXTURES / "ndpi-dns_fragmented.pcap"), "--output", str(out), "--probe-id", "cap", "--quiet"],
        cwd=ROOT, check=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    records = list(read_records(out))
    flows = [r for r in records if isinstance(r, Flow)]
    names = [r for r in records if isinstance(r, Name)]
    db = Store(str(tmp / "captures.duckdb"))
    db.ingest("cap:1", "probe", flows, names, probe_id="cap")
    yield db, flows
    db.close()


# ---------------------------------------------------------------- flows: every flow once, under its host


def reference_host(flow: Flow, intranet: list[str]) -> str:
    """docs/CONTRACT.md Decisions, written again from the records: the intranet unicast side when
    exactly one side is one, else the initiator, else the higher port (the client)."""

    def local(addr: str) -> bool:
        ip = ipaddress.ip_address(addr)
        if ip.is_multicast or addr == "255.255.255.255":
            return False
        nets = [ipaddress.ip_network(p) for p in intranet]
        if any(ip.version == n.version and ip == n.broadcast_address and n.prefixlen < 31 for n in nets):
            return False
        return any(ip.version == n.version and ip in n for n in nets)

    src_local, dst_local = local(flow.src_addr), local(flow.dst_addr)
    if src_local != dst_local:
        return flow.src_addr if src_local else flow.dst_addr
    if flow.initiator:
        return flow.src_addr if flow.initiator == "src" else flow.dst_addr
    return flow.src_addr if flow.src_port >= flow.dst_port else flow.dst_addr


def flow_key(row: dict[str, Any]) -> tuple:
    return (
        row["flow_start"],
        row["flow_end"],
        row["host"],
        row["peer_addr"],
        row["host_port"],
        row["peer_port"],
    )


def test_flows_lists_every_flow_once_under_its_host(lab: Store) -> None:
    rows = q(lab, "flows", **lab1.WINDOW)
    assert len(rows) == len(lab1.FLOWS) == 18
    assert {row["matched"] for row in rows} == {18}
    expected = Counter(reference_host(f, LAN) for f in lab1.FLOWS)
    assert Counter(row["host"] for row in rows) == expected == {lab1.H: 14, lab1.PC: 2, lab1.LT: 2}
    # 192.168.1.20 opened the SSH connection to H: both its flows are listed under it, not under H
    ssh = [
        (r["host"], r["direction"], r["peer_addr"], r["service"], r["peer_name"])
        for r in rows
        if r["service"] == "ssh"
    ]
    assert ssh == [
        (lab1.PC, "sent", lab1.H, "ssh", "desk-10"),
        (lab1.PC, "received", lab1.H, "ssh", "desk-10"),
    ]
    laptop = [r for r in rows if r["host"] == lab1.LT]
    assert [(r["peer_name"], r["name_source"], r["domain"], r["bytes"]) for r in laptop] == [
        ("www.example.com", "dns", "example.com", 700), ("www.example.com", "dns", "example.com", 3000),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"protocols": ["tcp"]},
        {"protocols": ["udp", "icmp"], "direction": "sent"},
        {"scopes": ["internet"], "casts": ["unicast"]},
        {"casts": ["multicast", "broadcast"]},
        {"scopes": ["intranet"], "direction": "received"},
    ],
)
def test_flows_of_a_host_are_its_host_flows(lab: Store, filters: dict[str, Any]) -> None:
    """Per host, ``flows`` gives exactly the rows ``host_flows`` gives for the flows listed under it:
    same orientation, service, cast/scope, attributed name and counters."""
    rows = q(lab, "flows", **lab1.WINDOW, **filters)
    listed = Counter(row["host"] for row in rows)
    assert listed, filters
    for host, count in listed.items():
        mine = sorted(({k: v for k, v in r.items() if k not in ("host", "matched")} for r in rows
                       if r["host"] == host), key=lambda r: sorted(r.items()))  # fmt: skip
        theirs = q(lab, "host_flows", host=host, **lab1.WINDOW, **filters)
        keys = {flow_key({**r, "host": host}) for r in rows if r["host"] == host}
        theirs = [r for r in theirs if flow_key({**r, "host": host}) in keys]
        assert mine == sorted(theirs, key=lambda r: sorted(r.items())) and len(mine) == count


def test_flows_limit_says_how_many_matched(lab: Store) -> None:
    rows = q(lab, "flows", **lab1.WINDOW, protocols=["tcp"], limit=3)
    assert len(rows) == 3 and {r["matched"] for r in rows} == {12}  # 12 TCP flows, the 3 oldest shown
    assert [r["flow_start"] for r in rows] == sorted(f.flow_start for f in lab1.FLOWS if f.protocol == 6)[:3]
    assert q(lab, "flows", **lab1.WINDOW, protocols=["other"]) == []
    with pytest.raises(ParamError, match="^direction: "):
        q(lab, "flows", direction="sideways")
    with pytest.raises(ParamError, match="^host: unknown parameter"):
        q(lab, "flows", host=lab1.H)


def test_flows_on_real_captures_each_flow_once(captures) -> None:
    db, flows = captures
    rows = q(db, "flows", limit=10_000)
    assert len(rows) == len(flows) == 79 and rows[0]["matched"] == 79
    assert sorted(flow_key(r) for r in rows) == sorted(
        (f.flow_start, f.flow_end, *(
            (f.src_addr, f.dst_addr, f.src_port, f.dst_port) if reference_host(f, list(DEFAULT_LAN)) == f.src_addr
            else (f.dst_addr, f.src_addr, f.dst_port, f.src_port)
        ))
        for f in flows
    )  # fmt: skip
    # neither capture has an address in the default intranet prefixes: every flow goes under its client
    assert Counter(r["host"] for r in rows)[QUIC_HOST] == sum(
        1 for f in flows if QUIC_HOST in (f.src_addr, f.dst_addr)
    )


DEFAULT_LAN = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
               "fc00::/7", "fe80::/10")  # fmt: skip


# ---------------------------------------------------------------- endpoints carry the protocol when ambiguous


def test_tcp_and_quic_to_one_server_are_two_endpoints(captures) -> None:
    db, flows = captures
    peers = {r["peer"]: r for r in q(db, "host_peers", host=QUIC_HOST, aggregate="endpoint", top_n=100)}
    google = {key: (r["label"], r["protocol"], r["flows"], r["bytes_sent"], r["bytes_received"])
              for key, r in peers.items() if GOOGLE in key}  # fmt: skip
    reference: dict[int, list[int]] = {6: [0, 0, 0], 17: [0, 0, 0]}
    for f in flows:
        if {f.src_addr, f.dst_addr} == {QUIC_HOST, GOOGLE}:
            reference[f.protocol][0] += 1
            reference[f.protocol][1 if f.src_addr == QUIC_HOST else 2] += f.bytes
    assert google == {
        f"[{GOOGLE}]:443/tcp": (f"[{GOOGLE}]:443/tcp", 6, *reference[6]),
        f"[{GOOGLE}]:443/udp": (f"[{GOOGLE}]:443/udp", 17, *reference[17]),
    }
    assert reference[6][0] == 2 and reference[17][0] == 2
    # an endpoint reached over one protocol only keeps the short label
    assert peers["[2a03:b0c0:3:d0::70:1001]:443"]["label"] == "www.ntop.org:443"
    assert len(peers) == 11
    counts = q(db, "host_counts", host=QUIC_HOST, aggregate="endpoint")[0]
    assert counts == {"flows_total": 30, "endpoints_total": 11, "flows_filtered": 30, "endpoints_filtered": 11,
                      "peers_aggregated": 11}  # fmt: skip
    # the label does not change when a filter hides the other protocol
    udp = q(db, "host_peers", host=QUIC_HOST, aggregate="endpoint", protocols=["udp"], top_n=100)
    assert f"[{GOOGLE}]:443/udp" in {r["peer"] for r in udp}
    # by ip the two are one peer again
    by_ip = {r["peer"]: r["flows"] for r in q(db, "host_peers", host=QUIC_HOST, aggregate="ip", top_n=100)}
    assert by_ip[GOOGLE] == 4


def test_dns_over_udp_and_tcp_to_different_servers_keep_short_labels(captures) -> None:
    db, _ = captures
    peers = [(r["peer"], r["protocol"], r["flows"])
             for r in q(db, "host_peers", host=DNS_HOST, aggregate="endpoint", top_n=100)]  # fmt: skip
    assert sorted(peers) == [
        ("2001:470:765b::a25:53", 17, 1),  # it asked the host (the host's port 53 is the server side)
        ("[2001:470:1f0b:16b0::a26:53]:53", 6, 2),
        ("[2001:470:765b::a25:53]:53", 17, 10),
        ("[2606:4700:4700::1111]:53", 17, 8),
        ("[2620:fe::fe]:53", 17, 4),
    ]
    counts = q(db, "host_counts", host=DNS_HOST, aggregate="endpoint")[0]
    assert counts["endpoints_total"] == counts["peers_aggregated"] == 5


# ---------------------------------------------------------------- export through a running collector


def test_export_through_a_collector_is_one_flows_query(collector_server, lab: Store) -> None:
    """`collector export` from a running collector reads ``flows`` once (no query per host): every
    flow comes back as stored, the peer side named as its host knew it."""
    from collector import fileexport
    from hostflow.records import make_batch

    flows = [replace(f, probe_id="test-probe") for f in lab1.FLOWS]
    names = [replace(n, probe_id="test-probe") for n in lab1.NAMES]
    status, answer = collector_server.post_batch(make_batch("test-probe", "lab:1", flows, names))
    assert status == 200, answer
    before = collector_server.metrics()
    rows = list(fileexport.remote_export_rows(collector_server.url))
    after = collector_server.metrics()
    got = sorted((r["src_addr"], r["src_port"], r["dst_addr"], r["dst_port"], r["protocol"], r["bytes"],
                  r["src_name"], r["dst_name"]) for r in rows)  # fmt: skip
    expected = []
    for f in lab1.FLOWS:
        host = reference_host(f, list(DEFAULT_LAN))
        peer_row = next(
            r for r in q(lab, "flows", limit=100)
            if (r["flow_start"], r["host"], r["host_port"]) == (f.flow_start, host, f.src_port if host == f.src_addr else f.dst_port)
        )  # fmt: skip
        name = peer_row["peer_name"]
        src_name, dst_name = ("", name) if host == f.src_addr else (name, "")
        expected.append(
            (f.src_addr, f.src_port, f.dst_addr, f.dst_port, f.protocol, f.bytes, src_name, dst_name)
        )
    assert got == sorted(expected) and len(got) == 18
    assert ("192.168.1.30", 50100, lab1.EX, 443, 6, 700, "", "www.example.com") in got
    assert (
        lab1.EX,
        443,
        lab1.H,
        50001,
        6,
        20000,
        "www.example.com",
        "",
    ) in got  # the answer names its server
    assert _queries_run(after, "flows") - _queries_run(before, "flows") == 1
    assert _queries_run(after, "host_flows") == _queries_run(before, "host_flows")


def _queries_run(metrics: str, name: str) -> int:
    total = 0
    for line in metrics.splitlines():
        if line.startswith("hostflow_collector_queries_total") and f'query="{name}"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def test_flows_host_is_the_intranet_side_whoever_opened_it(tmp_path: Path) -> None:
    """An internet address that opens a connection to an intranet host (inbound SSH) still lists
    it under the intranet host; without an initiator (NetFlow) the intranet side decides, and
    between two intranet hosts the higher port (the client)."""
    t0 = lab1.T0
    scanner, resolver = "198.51.100.9", "8.8.4.4"
    flows = [
        Flow("lab", t0, t0 + S, 4, 6, scanner, 40000, lab1.H, 22, 5, 400, initiator="src"),
        Flow("lab", t0 + S, t0 + 2 * S, 4, 6, lab1.H, 22, scanner, 40000, 4, 300, initiator="dst"),
        Flow("lab", t0 + 2 * S, t0 + 2 * S, 4, 17, resolver, 53, lab1.H, 50000, 1, 90),  # no initiator
        Flow("lab", t0 + 3 * S, t0 + 4 * S, 4, 6, lab1.PC, 445, lab1.LT, 50500, 9, 9000),  # no initiator
    ]
    db = Store(str(tmp_path / "inbound.duckdb"))
    try:
        db.ingest("in:1", "probe", flows, [])
        rows = q(db, "flows", **lab1.WINDOW)
        got = [(r["host"], r["direction"], r["peer_addr"], r["service"], r["scope"]) for r in rows]
        assert got == [
            (lab1.H, "received", scanner, "ssh", "internet"),
            (lab1.H, "sent", scanner, "ssh", "internet"),
            (lab1.H, "received", resolver, "domain", "internet"),
            (lab1.LT, "received", lab1.PC, "microsoft-ds", "intranet"),
        ]
        assert [reference_host(f, LAN) for f in flows] == [r[0] for r in got]
        inbound = q(db, "flows", **lab1.WINDOW, direction="received", scopes=["internet"])
        assert [(r["host"], r["peer_addr"], r["bytes"]) for r in inbound] == [
            (lab1.H, scanner, 400),
            (lab1.H, resolver, 90),
        ]
    finally:
        db.close()
