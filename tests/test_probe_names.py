"""probe/names.py against independent decoders: tshark (run here), Zeek's dns.log/dhcp.log baselines.

Packets are fed the way the metering engine will: transport payload bytes of every TCP/UDP packet
that ``interesting()`` accepts, read here with scapy (tests may dissect; the product may not).
"""

from __future__ import annotations

import ipaddress
import json
import struct
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.utils import PcapReader

from hostflow.records import NAME_SOURCES, PROTO_TCP, PROTO_UDP, Name, validate_name
from probe.names import NameExtractor, client_hello_sni

FIXTURES = Path(__file__).parent / "fixtures" / "names"
MALFORMED = FIXTURES / "malformed"

Packet = tuple[int, str, str, int, int, int, bytes]


# ---------------------------------------------------------------- feeding captures


def transport_packets(path: Path) -> Iterator[Packet]:
    """(ts_us, src, dst, proto, sport, dport, payload) for every TCP/UDP packet with payload.

    Like the engine: the outermost IP header, ports and payload from a first fragment (later
    fragments carry no ports and are skipped), no IP reassembly.
    """
    with PcapReader(str(path)) as reader:
        for pkt in reader:
            ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
            if ip is None:
                continue
            l4 = ip.payload
            while isinstance(l4, IPv6ExtHdrFragment) or (
                type(l4).__name__.startswith("IPv6ExtHdr") and not isinstance(l4, IPv6ExtHdrFragment)
            ):
                if isinstance(l4, IPv6ExtHdrFragment) and l4.offset:
                    break
                l4 = l4.payload
            if type(l4) not in (TCP, UDP) or (isinstance(ip, IP) and ip.frag):
                continue
            raw = bytes(l4.original or b"")
            if isinstance(l4, UDP):
                payload = raw[8 : max(8, l4.len)] if l4.len else raw[8:]
                proto = PROTO_UDP
            else:
                payload = raw[l4.dataofs * 4 :]
                proto = PROTO_TCP
            if not payload:
                continue
            yield int(pkt.time * 1_000_000), ip.src, ip.dst, proto, l4.sport, l4.dport, payload


@cache
def packets_of(name: str) -> tuple[Packet, ...]:
    return tuple(transport_packets(FIXTURES / name))


def extract(packets: tuple[Packet, ...] | list[Packet]) -> tuple[list[Name], NameExtractor]:
    extractor = NameExtractor("test-probe")
    names: list[Name] = []
    for ts_us, src, dst, proto, sport, dport, payload in packets:
        if extractor.interesting(proto, sport, dport, payload):
            names += extractor.feed(ts_us, src, dst, proto, sport, dport, payload)
    return names, extractor


@cache
def names_of(name: str) -> tuple[tuple[Name, ...], dict[str, int]]:
    names, extractor = extract(packets_of(name))
    return tuple(names), dict(extractor.counters)


# ---------------------------------------------------------------- tshark, the reference


def tshark_json(path: Path, display_filter: str) -> list[dict]:
    out = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-Y", display_filter, "-T", "json", "--no-duplicate-keys"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    return [packet["_source"]["layers"] for packet in json.loads(out.decode("utf-8", "replace") or "[]")]


def tshark_fields(path: Path, display_filter: str, fields: list[str]) -> list[list[str]]:
    args = ["tshark", "-n", "-r", str(path), "-Y", display_filter, "-T", "fields", "-E", "aggregator=\x1f"]
    for field in fields:
        args += ["-e", field]
    out = subprocess.run(args, capture_output=True, check=True, timeout=120).stdout.decode("utf-8", "replace")
    return [line.split("\t") for line in out.splitlines()]


def _records(section: dict | None) -> Iterator[dict]:
    for value in (section or {}).values():
        yield from value if isinstance(value, list) else [value]


def _one(value: str | list[str]) -> str:
    return value[0] if isinstance(value, list) else value


def _addresses(layers: dict) -> tuple[str, str]:
    ip = layers.get("ip") or layers.get("ipv6")
    if "ip" in layers:
        return ip["ip.src"], ip["ip.dst"]
    return ip["ipv6.src"], ip["ipv6.dst"]


def _lower(text: str) -> str:
    return text.rstrip(".").lower()


@cache
def tshark_dns_expectations(name: str) -> frozenset[tuple]:
    """What every response tshark decodes should teach us, as (source, addr, name, chain, ttl, client).

    Unicast DNS: A/AAAA answers name the queried name, chain = CNAME walk from it; PTR answers
    for reverse names give ("ptr", address, target). mDNS/LLMNR: every A/AAAA record names its
    owner, and reverse-name PTR records give "ptr" names as in unicast DNS. Responses with a non-zero rcode teach nothing.
    """
    expected: set[tuple] = set()
    for layers in tshark_json(FIXTURES / name, "dns.flags.response == 1 && !icmp && !icmpv6"):
        port = int((layers.get("udp") or layers.get("tcp") or {}).get("udp.srcport") or 53)
        message = layers.get("dns") or layers.get("mdns") or layers.get("llmnr")
        if isinstance(message, list):
            message = message[0]  # several DNS messages in one TCP segment: checked separately
        if message is None or message["dns.flags_tree"]["dns.flags.rcode"] != "0":
            continue
        _, client = _addresses(layers)
        source = {5353: "mdns", 5355: "llmnr"}.get(port, "dns")
        answers = list(_records(message.get("Answers")))
        if source == "dns":
            queries = list(_records(message.get("Queries")))
            if not queries:
                continue
            qname = _lower(queries[0]["dns.qry.name"])
            cnames = {}
            for rr in answers:
                if _one(rr["dns.resp.type"]) == "5":
                    cnames.setdefault(_lower(rr["dns.resp.name"]), _lower(rr["dns.cname"]))
            chain = [qname]
            while chain[-1] in cnames and cnames[chain[-1]] not in chain:
                chain.append(cnames[chain[-1]])
            for rr in answers:
                rtype, owner = _one(rr["dns.resp.type"]), _lower(rr["dns.resp.name"])
                value = rr.get("dns.a") or rr.get("dns.aaaa")
                if rtype in ("1", "28") and value:
                    hop = chain.index(owner) if owner in chain else None
                    if hop is None:
                        entry = ("dns", value, owner, (owner,))
                    else:
                        entry = ("dns", value, qname, tuple(chain[: hop + 1]))
                    expected.add((*entry, int(rr["dns.resp.ttl"]), client))
                if rtype == "12" and owner.endswith((".in-addr.arpa", ".ip6.arpa")):
                    expected.add(
                        ("ptr", _reverse(owner), _lower(rr["dns.ptr.domain_name"]), (), None, client)
                    )
        else:
            for rr in answers + list(_records(message.get("Additional records"))):
                rtype, owner = _one(rr["dns.resp.type"]), _lower(rr.get("dns.resp.name", ""))
                value = rr.get("dns.a") or rr.get("dns.aaaa")
                if rtype in ("1", "28") and value and owner:
                    expected.add((source, value, owner, (), int(rr["dns.resp.ttl"]), client))
                if rtype == "12" and owner.endswith((".in-addr.arpa", ".ip6.arpa")):
                    expected.add(
                        ("ptr", _reverse(owner), _lower(rr["dns.ptr.domain_name"]), (), None, client)
                    )
    return frozenset(expected)


def _reverse(owner: str) -> str:
    import dns.reversename

    return str(ipaddress.ip_address(dns.reversename.to_address(dns.name.from_text(owner))))


def ours_as_expectations(names: tuple[Name, ...]) -> set[tuple]:
    out = set()
    for n in names:
        if n.source == "dns":
            out.add(("dns", n.addr, n.name, tuple(n.cname_chain), n.ttl, n.client_addr))
        elif n.source == "ptr":
            out.add(("ptr", n.addr, n.name, (), None, n.client_addr))
        elif n.source in ("mdns", "llmnr"):
            out.add((n.source, n.addr, n.name, (), n.ttl, n.client_addr))
    return out


# ---------------------------------------------------------------- DNS family against tshark

DNS_CAPTURES = [
    "ndpi-iphone.trimmed.pcap",
    "ndpi-alexa-app.trimmed.pcap",
    "ndpi-netflix.trimmed.pcap",
    "ndpi-1kxun.trimmed.pcap",
    "ndpi-android.pcap",
    "zeek-wikipedia.pcap",
    "zeek-dns-mdns.pcap",
    "arkime-dns-tcp.pcap",
]


@pytest.mark.parametrize("capture", DNS_CAPTURES)
def test_dns_answers_match_tshark(capture: str) -> None:
    expected = tshark_dns_expectations(capture)
    names, counters = names_of(capture)
    ours = ours_as_expectations(names)
    assert expected, "the fixture must hold answers, or this test proves nothing"
    assert expected - ours == set()
    # and nothing the reference did not see (every DNS-family name we make is one tshark made)
    assert ours - expected == set()
    for name in names:
        validate_name(name)
        assert name.source in NAME_SOURCES and name.probe_id == "test-probe"


def test_netflix_cname_chains_are_walked_from_the_queried_name() -> None:
    names, _ = names_of("ndpi-netflix.trimmed.pcap")
    chains = {tuple(n.cname_chain) for n in names if n.source == "dns" and len(n.cname_chain) > 2}
    assert chains, "netflix.pcap answers through CDN CNAME chains"
    for chain in chains:
        assert chain[0] != chain[-1]
    # one answer checked by hand against tshark -V: frame 2
    first = [n for n in names if n.source == "dns"][0]
    assert first.name == first.cname_chain[0]


def test_dns_over_tcp_matches_arkime_and_survives_one_byte_segments() -> None:
    packets = packets_of("arkime-dns-tcp.pcap")
    whole, _ = extract(packets)
    # Arkime's expected session JSON lists these hosts and answers for google.com and aol.com
    assert {n.name for n in whole if n.source == "dns"} == {"google.com", "aol.com"}
    assert ("aol.com", "205.188.100.58") in {(n.name, n.addr) for n in whole}
    dribbled: list[Packet] = []
    for ts_us, src, dst, proto, sport, dport, payload in packets:
        if proto == PROTO_TCP and sport == 53:
            dribbled += [
                (ts_us, src, dst, proto, sport, dport, payload[i : i + 1]) for i in range(len(payload))
            ]
        else:
            dribbled.append((ts_us, src, dst, proto, sport, dport, payload))
    split, extractor = extract(dribbled)
    assert [(n.addr, n.name, n.ttl) for n in split] == [(n.addr, n.name, n.ttl) for n in whole]
    assert extractor.counters["buffered-dns-tcp"] > 0


# ---------------------------------------------------------------- Zeek baselines


def zeek_log(path: Path) -> list[dict[str, str]]:
    fields: list[str] = []
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#fields"):
            fields = line.split("\t")[1:]
        elif line and not line.startswith("#"):
            rows.append(dict(zip(fields, line.split("\t"), strict=True)))
    return rows


def test_wikipedia_dns_matches_zeek_dns_log() -> None:
    names, _ = names_of("zeek-wikipedia.pcap")
    ours = {(n.client_addr, n.name, n.addr, n.ttl) for n in names if n.source == "dns"}
    expected = set()
    for row in zeek_log(FIXTURES / "zeek-wikipedia.dns.log"):
        if row["id.resp_p"] != "53" or row["answers"] == "-":
            continue
        for answer, ttl in zip(row["answers"].split(","), row["TTLs"].split(","), strict=True):
            try:
                ipaddress.ip_address(answer)
            except ValueError:
                continue  # a CNAME target
            expected.add((row["id.orig_h"], row["query"], answer, int(float(ttl))))
    assert expected == ours
    # Zeek logs NXDOMAIN answers (upload.wikimedia.org.ncsa.uiuc.edu…): counted, no name
    nxdomain = [r for r in zeek_log(FIXTURES / "zeek-wikipedia.dns.log") if r["rcode_name"] == "NXDOMAIN"]
    assert names_of("zeek-wikipedia.pcap")[1]["ignored-dns-rcode-nxdomain"] == len(nxdomain) == 4


def test_dhcp_names_match_zeek_dhcp_log() -> None:
    names, counters = names_of("zeek-dhcp-dhcp.pcap")
    ours = {(n.addr, n.name, n.client_addr) for n in names}
    assert all(n.source == "dhcp" for n in names)
    rows = zeek_log(FIXTURES / "zeek-dhcp-dhcp.dhcp.log")
    # Zeek: host btest.is.cool requested/assigned 128.2.6.189 (REQUEST, ACK, INFORM)
    expected = {
        (r["requested_addr"], r["host_name"], r["requested_addr"]) for r in rows if r["host_name"] != "-"
    }
    assert expected == {("128.2.6.189", "btest.is.cool", "128.2.6.189")}
    assert ours == expected
    # tshark decodes the same option-12 name in the REQUESTs and the INFORM
    assert counters["buffered-dhcp"] == 3  # DISCOVER, REQUEST (refused by NAK), REQUEST (ACKed)
    rows = tshark_fields(
        FIXTURES / "zeek-dhcp-dhcp.pcap",
        "(dhcp.option.dhcp == 3 || dhcp.option.dhcp == 8) && dhcp.option.hostname",
        ["dhcp.option.hostname"],
    )
    assert {r[0].lower() for r in rows} == {n.name for n in names}


# ---------------------------------------------------------------- SNI and HTTP Host against tshark

SNI_CAPTURES = [
    "ndpi-iphone.trimmed.pcap",
    "ndpi-alexa-app.trimmed.pcap",
    "ndpi-netflix.trimmed.pcap",
    "ndpi-sites.trimmed.pcap",
    "ndpi-reddit.trimmed.pcap",
    "ndpi-android.pcap",
]


@pytest.mark.parametrize("capture", SNI_CAPTURES)
def test_sni_matches_tshark(capture: str) -> None:
    rows = tshark_json(FIXTURES / capture, "tls.handshake.type == 1 && tcp")
    expected = set()
    for layers in rows:
        src, dst = _addresses(layers)
        for value in _find_all(layers.get("tls"), "tls.handshake.extensions_server_name"):
            expected.add((src, dst, value.lower()))
    names, _ = names_of(capture)
    ours = {(n.client_addr, n.addr, n.name) for n in names if n.source == "sni"}
    assert expected, "the fixture must hold SNI"
    assert ours == expected


def _find_all(tree: object, key: str) -> Iterator[str]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == key:
                yield from v if isinstance(v, list) else [v]
            else:
                yield from _find_all(v, key)
    elif isinstance(tree, list):
        for item in tree:
            yield from _find_all(item, key)


HTTP_CAPTURES = [
    "ndpi-1kxun.trimmed.pcap",
    "ndpi-netflix.trimmed.pcap",
    "zeek-wikipedia.pcap",
    "ndpi-iphone.trimmed.pcap",
]


@pytest.mark.parametrize("capture", HTTP_CAPTURES)
def test_http_host_matches_tshark(capture: str) -> None:
    rows = tshark_fields(
        FIXTURES / capture, "http.request && tcp", ["ip.src", "ipv6.src", "ip.dst", "ipv6.dst", "http.host"]
    )
    expected = set()
    for src4, src6, dst4, dst6, host in rows:
        if not host:
            continue
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        try:
            ipaddress.ip_address(host.strip("[]"))
            continue
        except ValueError:
            expected.add((src4 or src6, dst4 or dst6, host.lower()))
    names, _ = names_of(capture)
    ours = {(n.client_addr, n.addr, n.name) for n in names if n.source == "http"}
    assert expected
    assert ours == expected


# ---------------------------------------------------------------- NetBIOS against tshark


def test_netbios_names_match_tshark() -> None:
    """Positive name-query responses and registrations (NB records) and node-status (NBSTAT) lists."""
    capture = FIXTURES / "ndpi-netbios.pcap"
    expected = set()
    for layers in tshark_json(capture, "nbns"):
        nbns = layers["nbns"]
        flags = nbns["nbns.flags_tree"]
        response, opcode = flags["nbns.flags.response"] == "1", int(flags["nbns.flags.opcode"])
        if response and (opcode != 0 or flags.get("nbns.flags.rcode", "0") != "0"):
            continue
        if not response and opcode not in (5, 8, 9):
            continue
        src, _ = _addresses(layers)
        for rr in _records(nbns.get("Answers" if response else "Additional records")):
            if rr.get("nbns.type") == "33":  # NBSTAT: the responder's own unique names
                listed = rr["nbns.netbios_name"]
                trees = rr["nbns.name_flags_tree"]
                for name, tree in zip(listed, trees, strict=True):
                    if tree.get("nbns.name_flags.group", "0") == "0":
                        expected.add((src, name.strip().lower()))
                continue
            name = rr.get("nbns.name", "")
            if rr.get("nbns.type") != "32" or name.split(" ")[0][-4:] not in ("<00>", "<20>"):
                continue
            if rr["nbns.nb_flags_tree"]["nbns.nb_flags.group"] == "0" and rr["nbns.addr"] != "0.0.0.0":
                expected.add((rr["nbns.addr"], name.split("<")[0].strip().lower()))
    names, _ = names_of("ndpi-netbios.pcap")
    ours = {(n.addr, n.name) for n in names if n.source == "netbios"}
    assert expected == {("10.0.4.24", "gunnar"), ("10.0.5.1", "guru")}
    assert ours == expected


# ---------------------------------------------------------------- pinned differences from tshark


def test_fragmented_dns_answers_come_from_the_first_fragment() -> None:
    """tshark reassembles IP fragments, the engine does not: the answers of ndpi's dns_fragmented
    responses all sit in the first fragment, which dnspython reads up to the cut
    (continue_on_error); the cut-off tail is counted as dns-record-errors, never raised."""
    expected = tshark_dns_expectations("ndpi-dns_fragmented.pcap")
    names, counters = names_of("ndpi-dns_fragmented.pcap")
    assert len(expected) == 10
    assert ours_as_expectations(names) == expected
    assert counters["dns-record-errors"] == 13
    # Zeek's ipv6-frag trace: TXT answers only (Zeek's dns.log), so no name either way
    rows = zeek_log(FIXTURES / "zeek-ipv6-fragmented-dns.dns.log")
    assert {r["qtype_name"] for r in rows} == {"TXT"}
    names, counters = names_of("zeek-ipv6-fragmented-dns.pcap")
    assert names == () and counters == {"ignored-dns-no-address": 2, "dns-record-errors": 2}


def test_quic_initial_sni_is_not_learned() -> None:
    """Known gap: QUIC Initial packets hide the ClientHello under keys derived from the
    connection id (AES-GCM); tshark decrypts them, we would need a crypto library on the Pi.
    Pinned so the gap is visible: sites.pcapng's QUIC SNIs are absent from our names."""
    rows = tshark_fields(
        FIXTURES / "ndpi-sites.trimmed.pcap",
        "quic && tls.handshake.type == 1",
        ["ip.src", "ipv6.src", "ip.dst", "ipv6.dst", "tls.handshake.extensions_server_name"],
    )
    quic = {(a or b, c or d, sni.lower()) for a, b, c, d, sni in rows if sni}
    names, _ = names_of("ndpi-sites.trimmed.pcap")
    ours = {(n.client_addr, n.addr, n.name) for n in names}
    assert len(quic) == 4
    assert quic & ours == set()


# ---------------------------------------------------------------- TLS ClientHello split over segments


def _real_client_hello() -> Packet:
    for packet in packets_of("ndpi-reddit.trimmed.pcap"):
        payload = packet[6]
        if packet[3] == PROTO_TCP and payload[:2] == b"\x16\x03" and payload[5] == 1:
            return packet
    raise AssertionError("no ClientHello in the fixture")


@pytest.mark.parametrize("cuts", [[1], [5], [9], [60], [-1], [3, 100], [50, 120, 200]])
def test_client_hello_split_over_segments(cuts: list[int]) -> None:
    ts_us, src, dst, proto, sport, dport, payload = _real_client_hello()
    sni = client_hello_sni(payload)
    assert sni == "safebrowsing.googleapis.com"  # what tshark decodes for that frame
    bounds = [0] + [c % len(payload) for c in cuts] + [len(payload)]
    segments = [payload[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    other = (ts_us, "10.9.9.9", dst, PROTO_TCP, 40000, 443, b"\x17\x03\x03\x00\x05hello")
    packets: list[Packet] = []
    for i, segment in enumerate(segments):
        packets.append((ts_us + i, src, dst, proto, sport, dport, segment))
        packets.append(other)  # another flow in between must not disturb the buffer
    names, extractor = extract(packets)
    assert [(n.source, n.addr, n.name, n.client_addr) for n in names] == [("sni", dst, sni, src)]
    # the name is out as soon as the server_name extension is complete, not at the hello's end
    sni_end = payload.find(sni.encode()) + len(sni)
    waited = sum(1 for end in bounds[1:] if end < sni_end)
    assert extractor.counters.get("buffered-tls", 0) == waited
    assert extractor._buffers == {} and extractor._buffered_ports == {}


def test_client_hello_in_too_many_segments_is_counted() -> None:
    ts_us, src, dst, proto, sport, dport, payload = _real_client_hello()
    step = 20
    packets = [
        (ts_us, src, dst, proto, sport, dport, payload[i : i + step]) for i in range(0, len(payload), step)
    ]
    names, extractor = extract(packets)
    assert names == []
    assert extractor.counters["tls-hello-too-large"] == 1


def test_tcp_buffers_are_bounded_and_expire() -> None:
    _, src, dst, proto, sport, dport, payload = _real_client_hello()
    extractor = NameExtractor("p")
    for i in range(300):
        extractor.feed(i, src, dst, proto, 10000 + i, dport, payload[:50])
    assert len(extractor._buffers) == 256
    assert extractor.counters["tcp-buffer-evicted"] == 300 - 256
    # a continuation 10 s after the first segment belongs to nobody
    extractor.feed(300, src, dst, proto, 1, dport, payload[:50])
    assert extractor.feed(20_000_301, src, dst, proto, 1, dport, payload[50:]) == []
    assert extractor.counters["tls-buffer-expired"] == 1


# ---------------------------------------------------------------- built messages: PTR, HTTPS, LLMNR…


def _response(qname: str, qtype: str, *answers: str, rcode: int = 0) -> bytes:
    query = dns.message.make_query(qname, qtype)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    for text in answers:
        owner, ttl, rdtype, rdata = text.split(" ", 3)
        response.answer.append(dns.rrset.from_text(owner, int(ttl), "IN", rdtype, rdata))
    return response.to_wire()


def _feed_dns(wire: bytes, sport: int = 53, proto: int = PROTO_UDP) -> tuple[list[Name], NameExtractor]:
    extractor = NameExtractor("p")
    assert extractor.interesting(proto, sport, 40000, wire)
    return extractor.feed(
        1_700_000_000_000_000, "192.0.2.53", "192.0.2.10", proto, sport, 40000, wire
    ), extractor


def test_ptr_answers_name_the_reversed_address() -> None:
    wire = _response("4.3.2.1.in-addr.arpa.", "PTR", "4.3.2.1.in-addr.arpa. 300 PTR Host.Example.")
    names, _ = _feed_dns(wire)
    assert [(n.addr, n.name, n.source, n.qtype, n.ttl, n.client_addr) for n in names] == [
        ("1.2.3.4", "host.example", "ptr", "PTR", 300, "192.0.2.10")
    ]
    v6 = dns.reversename.from_address("2001:db8::1").to_text()
    names, _ = _feed_dns(_response(v6, "PTR", f"{v6} 60 PTR six.example."))
    assert [(n.addr, n.name) for n in names] == [("2001:db8::1", "six.example")]
    # RFC 2317 classless delegation: the PTR sits behind a CNAME; the address is the queried one
    wire = _response(
        "5.2.0.192.in-addr.arpa.",
        "PTR",
        "5.2.0.192.in-addr.arpa. 60 CNAME 5.0/25.2.0.192.in-addr.arpa.",
        "5.0/25.2.0.192.in-addr.arpa. 60 PTR mail.example.",
    )
    names, _ = _feed_dns(wire)
    assert [(n.addr, n.name) for n in names] == [("192.0.2.5", "mail.example")]


def test_https_hints_name_the_addresses() -> None:
    wire = _response(
        "www.example.", "HTTPS",
        "www.example. 60 CNAME svc.example.",
        'svc.example. 120 HTTPS 1 . alpn="h2,h3" ipv4hint="192.0.2.1,192.0.2.2" ipv6hint="2001:db8::7"',
    )  # fmt: skip
    names, _ = _feed_dns(wire)
    assert [(n.addr, n.name, n.qtype, n.ttl, n.cname_chain) for n in names] == [
        (addr, "www.example", "HTTPS", 120, ["www.example", "svc.example"])
        for addr in ("192.0.2.1", "192.0.2.2", "2001:db8::7")
    ]


def test_answer_names_are_lower_case_and_the_chain_is_exact() -> None:
    wire = _response(
        "WwW.ExAmPlE.", "A",
        "WwW.ExAmPlE. 30 CNAME Edge.CDN.Example.",
        "Edge.CDN.Example. 30 CNAME e1.cdn.example.",
        "e1.cdn.example. 20 A 198.51.100.7",
    )  # fmt: skip
    names, extractor = _feed_dns(wire)
    assert [(n.addr, n.name, n.cname_chain, n.ttl, n.qtype, n.rcode) for n in names] == [
        ("198.51.100.7", "www.example", ["www.example", "edge.cdn.example", "e1.cdn.example"], 20, "A", 0)
    ]
    assert extractor.counters == {"dns": 1}


def test_non_zero_rcode_and_queries_give_nothing_but_are_counted() -> None:
    names, extractor = _feed_dns(_response("x.example.", "A", "x.example. 5 A 192.0.2.9", rcode=2))
    assert names == [] and extractor.counters == {"ignored-dns-rcode-servfail": 1}
    query = dns.message.make_query("x.example.", "A").to_wire()
    names, extractor = _feed_dns(query)
    assert names == [] and extractor.counters == {"ignored-dns-query": 1}


def test_dns_over_tcp_two_messages_in_one_segment() -> None:
    one = _response("a.example.", "A", "a.example. 5 A 192.0.2.1")
    two = _response("b.example.", "AAAA", "b.example. 5 AAAA 2001:db8:0:0::2")
    stream = struct.pack("!H", len(one)) + one + struct.pack("!H", len(two)) + two
    names, _ = _feed_dns(stream, proto=PROTO_TCP)
    assert [(n.addr, n.name, n.qtype) for n in names] == [
        ("192.0.2.1", "a.example", "A"),
        ("2001:db8::2", "b.example", "AAAA"),
    ]


def test_llmnr_and_mdns_answers_name_the_owner() -> None:
    wire = _response("printer.", "A", "printer. 30 A 192.168.1.20")
    names, _ = _feed_dns(wire, sport=5355)
    assert [(n.source, n.addr, n.name) for n in names] == [("llmnr", "192.168.1.20", "printer")]
    wire = bytearray(_response("iPhone.local.", "AAAA", "iPhone.local. 120 AAAA fe80::1"))
    # the answer's class, after the question (12 + 14 + 4) and its compressed owner (2) and type (2)
    assert wire[34:36] == b"\x00\x01"
    wire[34] = 0x80  # mDNS cache-flush bit
    names, _ = _feed_dns(bytes(wire), sport=5353)
    assert [(n.source, n.addr, n.name, n.ttl) for n in names] == [("mdns", "fe80::1", "iphone.local", 120)]


def test_control_characters_stay_text() -> None:
    """ndpi's dns-invalid-chars: bytes 1,2,3 inside a label; kept as text, the app escapes them."""
    names, counters = extract(list(transport_packets(MALFORMED / "ndpi-dns-invalid-chars.pcap")))
    assert [(n.addr, n.name) for n in names] == [
        ("19.185.141.241", "www.allyourbasesare\x01\x02\x03ongto.cn")
    ]
    json.dumps([n.name for n in names])  # and they serialise


# ---------------------------------------------------------------- HTTP and DHCP details


@pytest.mark.parametrize(
    ("request_head", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: WWW.Example.COM:8080\r\n\r\n", "www.example.com"),
        (b"POST /x HTTP/1.1\r\nUser-Agent: a\r\nhost:example.org.\r\n\r\nbody", "example.org"),
        (b"GET / HTTP/1.1\r\nHost: 192.0.2.1:80\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n", None),
        (b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\nHost: not.a.header\r\n", None),
    ],
)
def test_http_host(request_head: bytes, expected: str | None) -> None:
    extractor = NameExtractor("p")
    assert extractor.interesting(PROTO_TCP, 50000, 8080, request_head)
    names = extractor.feed(1, "10.0.0.2", "192.0.2.80", PROTO_TCP, 50000, 8080, request_head)
    assert [(n.addr, n.name, n.client_addr, n.source) for n in names] == (
        [("192.0.2.80", expected, "10.0.0.2", "http")] if expected else []
    )
    assert sum(extractor.counters.values()) == 1


def _dhcp(message_type: int, ciaddr: str = "0.0.0.0", yiaddr: str = "0.0.0.0", options: bytes = b"") -> bytes:
    head = struct.pack("!BBBBIHH4s4s4s4s16s", 1, 1, 6, 0, 0x1234, 0, 0,
                       ipaddress.ip_address(ciaddr).packed, ipaddress.ip_address(yiaddr).packed,
                       bytes(4), bytes(4), b"\x02" * 6 + bytes(10))  # fmt: skip
    return head + bytes(192) + b"\x63\x82\x53\x63" + bytes([53, 1, message_type]) + options + b"\xff"


def test_dhcp_fqdn_option_and_ack_confirmation() -> None:
    fqdn = bytes([81, 3 + 16, 0x04, 0, 0]) + b"\x06laptop\x07example\x00"
    extractor = NameExtractor("p")
    request = _dhcp(3, options=fqdn + bytes([12, 6]) + b"laptop" + bytes([50, 4, 10, 0, 0, 9]))
    assert extractor.feed(1, "0.0.0.0", "255.255.255.255", PROTO_UDP, 68, 67, request) == []
    names = extractor.feed(2, "10.0.0.1", "10.0.0.9", PROTO_UDP, 67, 68, _dhcp(5, yiaddr="10.0.0.9"))
    assert [(n.addr, n.name, n.client_addr) for n in names] == [
        ("10.0.0.9", "laptop.example", "10.0.0.9"),
        ("10.0.0.9", "laptop", "10.0.0.9"),
    ]
    renew = _dhcp(3, ciaddr="10.0.0.9", options=bytes([12, 6]) + b"laptop")
    names = extractor.feed(3, "10.0.0.9", "10.0.0.1", PROTO_UDP, 68, 67, renew)
    assert [(n.addr, n.name) for n in names] == [("10.0.0.9", "laptop")]


# ---------------------------------------------------------------- interesting()


def test_interesting_is_a_cheap_port_and_prefix_filter() -> None:
    extractor = NameExtractor("p")
    hello = _real_client_hello()[6]
    assert extractor.interesting(PROTO_UDP, 53, 40000, b"x")
    assert extractor.interesting(PROTO_UDP, 68, 67, b"x")
    assert extractor.interesting(PROTO_TCP, 50000, 8443, hello)  # TLS on any port
    assert extractor.interesting(PROTO_TCP, 50000, 3128, b"HEAD / HTTP/1.1\r\n")
    assert not extractor.interesting(PROTO_UDP, 40000, 53, b"query")  # queries teach nothing
    assert not extractor.interesting(PROTO_TCP, 443, 50000, b"\x17\x03\x03\x00\x10" + bytes(16))
    assert not extractor.interesting(PROTO_TCP, 50000, 443, b"\x16\x03\x01\x00\x10\x02")  # ServerHello
    assert not extractor.interesting(1, 0, 0, b"ping")


# ---------------------------------------------------------------- malformed input

MALFORMED_OUTCOMES = {
    # file: (names, counters) with the real ports, as the engine would feed them
    "ndpi-dhcp-fuzz.pcapng": (0, {"dhcp-malformed": 1}),
    "ndpi-dns-invalid-chars.pcap": (1, {"dns": 1}),
    "ndpi-malformed_dns.pcap": (0, {"dns-record-errors": 4, "ignored-dns-no-address": 4}),
    "tcpdump-dns-badlabel.pcap": (0, {"dns-record-errors": 1, "ignored-dns-rcode-15": 1}),
    "tcpdump-dns_fwdptr.pcap": (0, {"dns-record-errors": 1, "ignored-dns-rcode-15": 1}),
    "zeek-dns-dns-edns-bad-length.pcap": (0, {"dns-record-errors": 1, "ignored-dns-no-address": 1}),
    "zeek-dns-svcb-rdlength-mismatch.pcap": (0, {"dns-record-errors": 1, "ignored-dns-no-address": 1}),
    "zeek-dns-loc-invalid-length.pcap": (0, {"dns-record-errors": 1, "ignored-dns-no-address": 1}),
    "zeek-dns-dns-corrupt.pcap": (2, {"dns": 2}),  # only the UDP checksums are scrambled
    "ndpi-ossfuzz_seed_fake_traces_1.pcapng": (0, {"tls-malformed": 1, "ignored-tls-no-sni": 1}),
    # a response sent from port 12345 *to* port 53 (synthetic): not a path answers take
    "zeek-dns-max-compression-depth.pcap": (0, {}),
}
STRESS_PORTS = [(PROTO_UDP, p) for p in (53, 5353, 5355, 137, 67, 68)] + [(PROTO_TCP, 53), (PROTO_TCP, 443)]


@pytest.mark.parametrize("capture", sorted(p.name for p in MALFORMED.iterdir()))
def test_malformed_captures_never_raise_and_are_counted(capture: str) -> None:
    packets = list(transport_packets(MALFORMED / capture))
    names, extractor = extract(packets)
    if capture in MALFORMED_OUTCOMES:
        assert (len(names), extractor.counters) == MALFORMED_OUTCOMES[capture]
    # every payload through every parser, whatever its real port
    stress = NameExtractor("p")
    for ts_us, src, dst, _, _, _, payload in packets:
        for proto, port in STRESS_PORTS:
            before = sum(stress.counters.values())
            for name in stress.feed(ts_us, src, dst, proto, port, 40000, payload):
                validate_name(name)
            assert sum(stress.counters.values()) > before
    assert "names-internal-error" not in stress.counters


def _real_payloads() -> list[bytes]:
    wanted = []
    for capture in (
        "ndpi-iphone.trimmed.pcap",
        "arkime-dns-tcp.pcap",
        "zeek-dhcp-dhcp.pcap",
        "ndpi-netbios.pcap",
    ):
        for packet in packets_of(capture):
            if NameExtractor("p").interesting(*packet[3:]):
                wanted.append(packet[6])
    return wanted[:200]


REAL_PAYLOADS = _real_payloads()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.one_of(
        st.binary(max_size=600),
        st.tuples(st.sampled_from(REAL_PAYLOADS), st.integers(0, 2000), st.binary(max_size=8)).map(
            lambda t: t[0][: t[1]] + t[2]
        ),
        st.tuples(st.sampled_from(REAL_PAYLOADS), st.integers(0, 2000), st.integers(0, 255)).map(
            lambda t: t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1 :]
        ),
    ),
    where=st.sampled_from(STRESS_PORTS),
)
def test_garbage_never_raises_and_is_counted(payload: bytes, where: tuple[int, int]) -> None:
    proto, port = where
    extractor = NameExtractor("p")
    for _ in range(2):  # the second feed meets any buffer the first one left
        before = sum(extractor.counters.values())
        for name in extractor.feed(1, "192.0.2.1", "192.0.2.2", proto, port, 40000, payload):
            validate_name(name)
            assert name.source in NAME_SOURCES
        assert sum(extractor.counters.values()) > before
    assert "names-internal-error" not in extractor.counters


def test_dns_tcp_length_below_header_stops_the_segment() -> None:
    """A DNS-over-TCP length under the 12-byte header means the framing is lost: one error for the
    segment, nothing buffered, instead of up to 64 empty 'messages' parsed one by one."""
    extractor = NameExtractor("t")
    assert extractor.feed(1, "10.0.0.53", "10.0.0.2", 6, 53, 40000, bytes(1400)) == []
    assert extractor.counters == {"dns-tcp-malformed": 1}
    assert extractor.buffered_port_pairs() == set()
    assert extractor.interesting(6, 40000, 53, bytes(10)) is False  # nothing buffered for its ports
