"""Live: a client resolves a name with a real DNS server and fetches a page from a real HTTP server;
the probe on the client's mirror port sends flows and names to the collector, and the query API
names the client's peer with what DNS answered."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.e2e.test_resilience import ProbeProcess, mirror_lab, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

NAME = "www.hostflow.test"
TTL = 300

# A small authoritative DNS server (dnspython): NAME → the address it is given, TTL 300.
DNS_SERVER = textwrap.dedent(
    f"""
    import socket, sys
    import dns.message, dns.rrset, dns.rcode, dns.rdatatype
    addr = sys.argv[1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((addr, 53))
    print("dns ready", flush=True)
    while True:
        data, peer = sock.recvfrom(4096)
        query = dns.message.from_wire(data)
        answer = dns.message.make_response(query)
        question = query.question[0]
        if question.name.to_text().rstrip(".") == {NAME!r} and question.rdtype == dns.rdatatype.A:
            answer.answer.append(dns.rrset.from_text(question.name, {TTL}, "IN", "A", addr))
        else:
            answer.set_rcode(dns.rcode.NXDOMAIN)
        sock.sendto(answer.to_wire(), peer)
    """
)

# The client: ask the DNS server, then GET the page from the address it answered.
CLIENT = textwrap.dedent(
    f"""
    import sys, urllib.request
    import dns.message, dns.query
    server = sys.argv[1]
    reply = dns.query.udp(dns.message.make_query({NAME!r}, "A"), server, timeout=5)
    address = reply.answer[0][0].address
    request = urllib.request.Request(f"http://{{address}}:8080/", headers={{"Host": {NAME!r}}})
    with urllib.request.urlopen(request, timeout=5) as page:
        print(address, page.status, len(page.read()), flush=True)
    """
)


def test_flows_are_named_from_the_dns_answers_the_probe_saw(collector_server, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html><body>hostflow live names</body></html>\n")
    with mirror_lab() as lab:
        dns_server = lab.popen(
            lab.server_ns, [sys.executable, "-c", DNS_SERVER, lab.server_addr], stdout=-1, text=True
        )
        web = lab.popen(
            lab.server_ns,
            [
                sys.executable,
                "-m",
                "http.server",
                "8080",
                "--bind",
                lab.server_addr,
                "--directory",
                str(site),
            ],
            stdout=-3,
            stderr=-3,
        )
        assert dns_server.stdout is not None and dns_server.stdout.readline().strip() == "dns ready"
        wait_until(
            lambda: lab.run(lab.server_ns, ["ss", "-ltn", "sport = :8080"]).stdout.count("LISTEN") == 1,
            "http.server",
        )
        probe = ProbeProcess(lab, collector_server.url, tmp_path / "spool", "--idle-timeout", "5")
        result = lab.run(lab.client_ns, [sys.executable, "-c", CLIENT, lab.server_addr])
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[:2] == [lab.server_addr, "200"]
        time.sleep(0.5)
        assert probe.terminate() == 0, probe.stderr()
        assert web.poll() is None
    status, answer = collector_server.query_json("host_flows", host=lab.client_addr)
    assert status == 200, answer
    flows = [dict(zip(answer["columns"], row, strict=True)) for row in answer["rows"]]
    web_flows = [f for f in flows if f["peer_addr"] == lab.server_addr and f["peer_port"] == 8080]
    assert {f["direction"] for f in web_flows} == {"sent", "received"}
    for flow in web_flows:
        assert (flow["peer_name"], flow["name_source"]) == (NAME, "dns"), flow
        assert flow["protocol"] == 6 and flow["initiator"] in ("src", "dst")
    dns_flows = [f for f in flows if f["peer_port"] == 53]
    assert {f["direction"] for f in dns_flows} == {"sent", "received"}
    status, answer = collector_server.query_json("names", addr=lab.server_addr)
    assert status == 200, answer
    names = [dict(zip(answer["columns"], row, strict=True)) for row in answer["rows"]]
    dns_names = [n for n in names if n["source"] == "dns"]
    assert [(n["client_addr"], n["addr"], n["name"], n["ttl"], n["qtype"]) for n in dns_names] == [
        (lab.client_addr, lab.server_addr, NAME, TTL, "A")
    ]
    assert any(n["source"] == "http" and n["name"] == NAME for n in names)
