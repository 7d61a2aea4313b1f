"""Offline enrichment: IANA service names, registered domains, country/ASN/organisation, host names.

References used here, none of them our code: tshark's own port-name resolution, the Public Suffix
List's official test vectors (shipped inside ``publicsuffixlist``), the ``plevin`` package's own
public lookup API over its shipped databases, MaxMind DB files written by ``mmdb-writer``, and a
real LAN capture (tests/fixtures/enrich/ndpi-iphone.pcap).
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hostflow.enrich import (
    EnrichError,
    GeoASN,
    GeoInfo,
    HostList,
    intranet_name,
    registered_domain,
    service_description,
    service_name,
    unknown_ports,
)
from hostflow.records import NAME_SOURCES, Name

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "enrich"
IPHONE = FIXTURES / "ndpi-iphone.pcap"

# ---------------------------------------------------------------- service names

COMMON = [
    (6, 21, "ftp"),
    (6, 22, "ssh"),
    (6, 25, "smtp"),
    (6, 53, "domain"),
    (6, 80, "http"),
    (6, 110, "pop3"),
    (6, 143, "imap"),
    (6, 443, "https"),
    (6, 445, "microsoft-ds"),
    (6, 993, "imaps"),
    (6, 3306, "mysql"),
    (6, 3389, "ms-wbt-server"),
    (6, 5432, "postgresql"),
    (6, 8080, "http-alt"),
    (17, 53, "domain"),
    (17, 67, "bootps"),
    (17, 68, "bootpc"),
    (17, 123, "ntp"),
    (17, 137, "netbios-ns"),
    (17, 161, "snmp"),
    (17, 443, "https"),
    (17, 500, "isakmp"),
    (17, 514, "syslog"),
    (17, 1900, "ssdp"),
    (17, 3478, "stun"),
    (17, 5353, "mdns"),
    (17, 5355, "llmnr"),
    (132, 80, "http"),
    (33, 9, "discard"),
]


@pytest.mark.parametrize(("protocol", "port", "name"), COMMON)
def test_service_name_common_ports(protocol: int, port: int, name: str) -> None:
    assert service_name(protocol, port) == name


def test_service_name_edges() -> None:
    assert service_name(6, 0) is None
    assert service_name(1, 771) is None  # ICMP type 3 code 3 lives in dst_port; not a port
    assert service_name(58, 443) is None
    assert service_name(6, 70000) is None
    assert service_name(6, -1) is None
    assert service_name(6, 49999) is None  # in the registry's dynamic range: never assigned
    assert service_name(6, 6000) == service_name(6, 6063) == "x11"  # a registered range
    assert service_name(6, 6064) != "x11"
    assert service_name(17, 5228) is None and service_name(6, 5228) == "hpvroom"  # tcp-only entry
    assert service_description(6, 80) == "World Wide Web HTTP"
    assert service_description(6, 49999) is None


def test_unknown_ports_keeps_first_seen_order_once() -> None:
    pairs = [(6, 443), (6, 49999), (17, 40001), (6, 49999), (1, 771), (17, 5353), (6, 60001)]
    assert unknown_ports(pairs) == [(6, 49999), (17, 40001), (6, 60001)]


def _tshark_port_names(pcap: Path) -> dict[tuple[int, int], str | None]:
    """tshark's own resolution of every TCP/UDP destination port in ``pcap`` (``-N t``)."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-n", "-N", "t", "-T", "pdml"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    found: dict[tuple[int, int], str | None] = {}
    pattern = re.compile(r"Destination Port: (\S+) \((\d+)\)$")  # an unnamed port reads "N (N)"
    for field in ET.fromstring(out).iter("field"):
        if field.get("name") not in ("tcp.dstport", "udp.dstport"):
            continue
        match = pattern.match(field.get("showname", ""))
        assert match, field.get("showname")
        protocol = 6 if field.get("name", "").startswith("tcp") else 17
        shown, port = match.group(1), match.group(2)
        found[(protocol, int(port))] = None if shown == port else shown
    return found


def test_service_names_equal_tshark_on_a_real_capture() -> None:
    reference = _tshark_port_names(IPHONE)
    assert len(reference) >= 20
    assert any(name is None for name in reference.values())  # unnamed ports are checked too
    assert {pair: service_name(*pair) for pair in reference} == reference


def test_service_names_equal_tshark_over_a_port_sweep(tmp_path: Path) -> None:
    """Every 37th port plus the common ones, both transports, written as real packets."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    ports = sorted(set(range(1, 65536, 37)) | {port for _, port, _ in COMMON})
    packets = []
    for port in ports:
        packets.append(Ether() / IP(src="192.0.2.1", dst="198.51.100.1") / TCP(sport=1, dport=port))
        packets.append(Ether() / IP(src="192.0.2.1", dst="198.51.100.1") / UDP(sport=1, dport=port))
    pcap = tmp_path / "sweep.pcap"
    wrpcap(str(pcap), packets)
    reference = _tshark_port_names(pcap)
    assert len(reference) == 2 * len(ports)
    assert sum(name is not None for name in reference.values()) > 300
    assert {pair: service_name(*pair) for pair in reference} == reference


# ---------------------------------------------------------------- registered domains


def _psl_vectors() -> list[tuple[str, str | None]]:
    import publicsuffixlist

    text = (Path(publicsuffixlist.__file__).parent / "test_psl.txt").read_text(encoding="utf-8")
    vectors = []
    for line in text.splitlines():
        match = re.match(r"checkPublicSuffix\((null|'[^']*'), (null|'[^']*')\);", line.strip())
        if match:
            given, expected = (None if v == "null" else v.strip("'") for v in match.groups())
            if given is not None:
                vectors.append((given, expected))
    return vectors


def test_psl_official_vectors() -> None:
    vectors = _psl_vectors()
    assert len(vectors) > 70
    assert any(not given.isascii() for given, _ in vectors)  # IDN cases are among them
    for given, expected in vectors:
        got = registered_domain(given, private=True)
        if expected is not None:
            assert got == expected, given
        else:
            # a public suffix, a leading dot, a single label: no registered domain inside it
            assert got in (given, given.lower().rstrip(".")), given


@pytest.mark.parametrize(
    ("name", "domain"),
    [
        ("a.b.googlevideo.com", "googlevideo.com"),
        ("rr3---sn-4g5e6nsz.googlevideo.com", "googlevideo.com"),
        ("foo.co.uk", "foo.co.uk"),
        ("www.foo.co.uk", "foo.co.uk"),
        ("a.b.c.example.com.au", "example.com.au"),
        ("www.city.kobe.jp", "city.kobe.jp"),  # !city.kobe.jp exception rule
        ("a.b.c.kobe.jp", "b.c.kobe.jp"),  # *.kobe.jp wildcard rule
        ("x.s3.amazonaws.com", "amazonaws.com"),  # private section ignored by default
        ("d1234.cloudfront.net", "cloudfront.net"),
        ("user.github.io", "github.io"),
        ("www.食狮.中国", "食狮.中国"),
        ("www.xn--85x722f.xn--fiqs8s", "xn--85x722f.xn--fiqs8s"),
        ("WWW.Example.COM.", "example.com"),
        ("co.uk", "co.uk"),
        ("printer.lan", "printer.lan"),
        ("nas.corp.lan", "corp.lan"),
        ("localhost", "localhost"),
        ("WORKSTATION", "WORKSTATION"),
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "[2001:db8::1]"),
        ("", ""),
    ],
)
def test_registered_domain(name: str, domain: str) -> None:
    assert registered_domain(name) == domain


def test_registered_domain_private_section_on_request() -> None:
    assert registered_domain("x.s3.amazonaws.com", private=True) == "x.s3.amazonaws.com"
    assert registered_domain("user.github.io", private=True) == "user.github.io"


# ---------------------------------------------------------------- geo / ASN

STABLE = {
    "8.8.8.8": GeoInfo("US", 15169, "Google"),
    "8.8.4.4": GeoInfo("US", 15169, "Google"),
    "2001:4860:4860::8888": GeoInfo("US", 15169, "Google"),
    "1.1.1.1": GeoInfo("AU", 13335, "Cloudflare"),
    "2606:4700:4700::1111": GeoInfo("US", 13335, "Cloudflare"),
    "9.9.9.9": GeoInfo("US", 19281, "Quad9"),
}


@pytest.fixture(scope="module")
def geo() -> GeoASN:
    return GeoASN()


@pytest.fixture(scope="module")
def plevin_reference():
    """The shipped databases asked through plevin's own public API (a separate code path)."""
    import plevin
    import plevin_db_country
    import plevin_db_network

    country, network = plevin.Plevin(plevin_db_country.PATH), plevin.Plevin(plevin_db_network.PATH)

    def answer(addr: str) -> GeoInfo:
        place, net = country.lookup(addr).place, network.lookup(addr).network
        code = (place.country.code if place and place.country else None) or (net and net.country) or ""
        asn = (net.asn if net else None) or 0
        org = (net.operator.brand if net and net.operator else None) or ""
        return GeoInfo(code.upper(), asn, org)

    return answer


def test_known_addresses(geo: GeoASN) -> None:
    assert {addr: geo.lookup(addr) for addr in STABLE} == STABLE
    assert geo.sources == ["plevin 2026-10-04"]
    assert "MaxMind" in geo.attribution and "IP2Location LITE" in geo.attribution


def test_matches_the_shipped_databases_own_answers(geo: GeoASN, plevin_reference) -> None:
    for addr in STABLE:
        assert geo.lookup(addr) == plevin_reference(addr), addr


def _capture_addresses(pcap: Path) -> set[str]:
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-n", "-T", "fields", "-e", "ip.src", "-e", "ip.dst"]
        + ["-e", "ipv6.src", "-e", "ipv6.dst", "-e", "dns.a", "-e", "dns.aaaa"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return {str(ipaddress.ip_address(a)) for a in re.split(r"[\s,]+", out) if a}


def test_real_capture_addresses_match_the_databases_own_answers(geo: GeoASN, plevin_reference) -> None:
    addrs = _capture_addresses(IPHONE)
    public = {
        a for a in addrs if ipaddress.ip_address(a).is_global and not ipaddress.ip_address(a).is_multicast
    }
    assert len(public) >= 30 and len(addrs) > len(public)  # both intranet and internet peers
    answers = geo.lookup_many(sorted(addrs))
    assert set(answers) == addrs
    for addr in addrs:
        expected = plevin_reference(addr) if addr in public else GeoInfo()
        assert answers[addr] == expected, addr
    assert sum(1 for addr in public if answers[addr].asn) >= len(public) - 2


@pytest.mark.parametrize(
    "addr",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "127.0.0.1",
        "169.254.1.1",
        "224.0.0.251",
        "239.255.255.250",
        "255.255.255.255",
        "0.0.0.0",
        "192.0.2.1",
        "::1",
        "fe80::1",
        "fd00::1",
        "ff02::fb",
        "2001:db8::1",
        "::ffff:192.168.1.1",
        "not an address",
        "",
        "999.1.1.1",
    ],
)
def test_private_reserved_and_bad_addresses_are_empty(geo: GeoASN, addr: str) -> None:
    assert geo.lookup(addr) == GeoInfo("", 0, "")


def test_ipv4_mapped_is_the_ipv4_answer(geo: GeoASN) -> None:
    assert geo.lookup("::ffff:8.8.8.8") == geo.lookup("8.8.8.8") == STABLE["8.8.8.8"]


def test_lookup_many_once_per_address_and_cached() -> None:
    geo = GeoASN()
    first = geo.lookup_many(["8.8.8.8", "10.0.0.1", "8.8.8.8", "1.1.1.1"])
    assert list(first) == ["8.8.8.8", "10.0.0.1", "1.1.1.1"]
    assert first["10.0.0.1"] == GeoInfo()
    again = geo.lookup_many(iter(["1.1.1.1", "8.8.8.8"]))
    assert again["1.1.1.1"] is first["1.1.1.1"] and again["8.8.8.8"] is first["8.8.8.8"]


def _write_mmdb(path: Path, database_type: str, ip_version: int, rows: list[tuple[list[str], dict]]) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=ip_version, database_type=database_type, ipv4_compatible=ip_version == 6)
    for networks, record in rows:
        writer.insert_network(IPSet(networks), record)
    writer.to_db_file(str(path))


@pytest.fixture
def user_mmdbs(tmp_path: Path) -> tuple[str, str]:
    # Deliberately unlike the shipped answers, so a pass proves the user's files were read.
    country = tmp_path / "Test-Country.mmdb"
    _write_mmdb(
        country,
        "GeoLite2-Country",
        6,
        [
            (["8.8.8.0/24"], {"country": {"iso_code": "DE", "names": {"en": "Germany"}}}),
            (["2001:4860::/32"], {"country": {"iso_code": "FR"}}),
            (["203.0.113.0/24"], {"registered_country": {"iso_code": "JP"}}),
        ],
    )
    asn = tmp_path / "Test-ASN.mmdb"
    _write_mmdb(
        asn,
        "GeoLite2-ASN",
        4,
        [
            (
                ["8.8.8.0/24"],
                {"autonomous_system_number": 64500, "autonomous_system_organization": "Test Org"},
            ),
            (["1.1.1.0/24"], {"autonomous_system_number": 64501, "autonomous_system_organization": "Other"}),
        ],
    )
    return str(country), str(asn)


def test_user_mmdb_files_replace_the_shipped_data(user_mmdbs: tuple[str, str]) -> None:
    geo = GeoASN(list(user_mmdbs))
    assert geo.lookup("8.8.8.8") == GeoInfo("DE", 64500, "Test Org")
    assert geo.lookup("1.1.1.1") == GeoInfo("", 64501, "Other")
    assert geo.lookup("2001:4860:4860::8888") == GeoInfo("FR", 0, "")  # ASN file is IPv4-only
    assert geo.lookup("203.0.113.9") == GeoInfo()  # documentation range: never looked up
    assert geo.lookup("9.9.9.9") == GeoInfo()  # in neither user file, no fallback asked for
    assert geo.lookup("10.0.0.1") == GeoInfo()
    assert geo.sources[0].startswith(user_mmdbs[0])
    assert geo.attribution == ""  # the user's own files: their credit is the user's business


def test_user_mmdb_with_fallback_to_shipped(user_mmdbs: tuple[str, str]) -> None:
    geo = GeoASN([user_mmdbs[0]], fallback=True)
    assert geo.lookup("8.8.8.8") == GeoInfo("DE", 15169, "Google")  # country from the user's file
    assert geo.lookup("9.9.9.9") == STABLE["9.9.9.9"]


def test_ipinfo_style_flat_records(tmp_path: Path) -> None:
    path = tmp_path / "country_asn.mmdb"
    _write_mmdb(
        path,
        "ipinfo country_asn.mmdb",
        4,
        [(["8.8.8.0/24"], {"country": "us", "asn": "AS15169", "as_name": "Google LLC"})],
    )
    assert GeoASN([str(path)]).lookup("8.8.8.8") == GeoInfo("US", 15169, "Google LLC")


def test_unreadable_mmdb_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EnrichError, match=r"missing\.mmdb.*MaxMind DB"):
        GeoASN([str(tmp_path / "missing.mmdb")])
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"this is not a MaxMind database" * 10)
    with pytest.raises(EnrichError, match=r"junk\.mmdb"):
        GeoASN([str(junk)])


def test_no_network_is_touched() -> None:
    """All lookups work with every socket refused: nothing is fetched at run time."""
    code = """
import socket
def refuse(*a, **k):
    raise SystemExit("network used")
socket.socket = refuse; socket.create_connection = refuse; socket.getaddrinfo = refuse
from hostflow.enrich import GeoASN, registered_domain, service_name
g = GeoASN()
assert g.lookup("8.8.8.8").asn == 15169 and g.lookup("2001:4860:4860::8888").asn == 15169
assert registered_domain("a.b.example.co.uk") == "example.co.uk"
assert service_name(6, 443) == "https"
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ---------------------------------------------------------------- hosts file and intranet names


def test_hostlist_reads_names_and_counts_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "hosts.csv"
    path.write_text(
        "\ufeffaddr,name,mac\n"
        "# the office\n"
        "192.168.1.10,printer-2nd-floor\n"
        "\n"
        " 192.168.1.20 , nas , AA-BB-CC-DD-EE-FF\n"
        "2001:DB8:0:0::10,v6-server\n"
        ",phone-of-ann,00:11:22:33:44:55\n"
        "192.168.1.300,bad-addr\n"
        "192.168.1.30,\n"
        "192.168.1.31,x,not-a-mac\n"
        "192.168.1.32\n"
        "192.168.1.10,printer-renamed\n",
        encoding="utf-8",
    )
    hosts = HostList(str(path))
    assert hosts.name_for("192.168.1.10") == "printer-renamed"  # the later line wins
    assert hosts.name_for("192.168.1.20") == "nas"
    assert hosts.name_for("2001:db8::10") == "v6-server"
    assert hosts.name_for("2001:DB8::10") == "v6-server"
    assert hosts.name_for("192.168.1.99") is None
    assert hosts.name_for("192.168.1.99", "00-11-22-33-44-55") == "phone-of-ann"
    assert hosts.name_for("192.168.1.98", "aa:bb:cc:dd:ee:ff") == "nas"
    assert dict(hosts.errors) == {
        "bad address": 1,
        "empty name": 1,
        "bad mac": 1,
        "wrong column count": 1,
        "duplicate address": 1,
    }
    assert hosts.problems[0] == f"{path}:8: bad address '192.168.1.300'"


def test_hostlist_none_missing_and_refresh(tmp_path: Path) -> None:
    assert HostList(None).name_for("10.0.0.1") is None and len(HostList(None)) == 0
    with pytest.raises(EnrichError, match="cannot read the hosts file"):
        HostList(str(tmp_path / "nope.csv"))
    path = tmp_path / "hosts.csv"
    path.write_text("10.0.0.1,old\n", encoding="utf-8")
    hosts = HostList(path)
    assert hosts.refresh() is False
    path.write_text("10.0.0.1,new\n", encoding="utf-8")
    os.utime(path, (1_700_000_000, 1_700_000_000))
    assert hosts.refresh() is True
    assert hosts.name_for("10.0.0.1") == "new"


ADDR = "192.168.1.23"


def _name(source: str, name: str, ts: int = 1_600_000_000_000_000, addr: str = ADDR) -> Name:
    return Name(probe_id="p", ts=ts, addr=addr, name=name, source=source)


def test_intranet_name_precedence() -> None:
    order = ["hosts", "dhcp", "mdns", "netbios", "llmnr", "ptr", "dns", "sni", "http"]
    assert set(order) <= set(NAME_SOURCES)
    for i, source in enumerate(order):
        # this source plus every weaker one, the stronger ones absent: this one must win
        names = [_name(weaker, f"{weaker}-name") for weaker in reversed(order[i:])]
        assert intranet_name(ADDR, names, None) == (f"{source}-name", source)


def test_intranet_name_hosts_file_wins(tmp_path: Path) -> None:
    path = tmp_path / "hosts.csv"
    path.write_text(f"{ADDR},reception-pc\n,by-mac,02:00:00:00:00:01\n", encoding="utf-8")
    hosts = HostList(path)
    names = [_name("dhcp", "android-5f2a"), _name("mdns", "annas-iphone.local")]
    assert intranet_name(ADDR, names, hosts) == ("reception-pc", "hosts")
    assert intranet_name("192.168.1.77", [], hosts, mac="02:00:00:00:00:01") == ("by-mac", "hosts")
    assert intranet_name("192.168.1.77", [], hosts) == ("192.168.1.77", "")


def test_intranet_name_latest_within_a_source_and_only_its_address() -> None:
    names = [
        _name("mdns", "old-name.local", ts=1_600_000_000_000_000),
        _name("mdns", "new-name.local.", ts=1_600_000_100_000_000),
        _name("dhcp", "someone-else", addr="192.168.1.99"),
        _name("sni", "nas.example.net"),
        _name("dns", ""),
    ]
    assert intranet_name(ADDR, names, None) == ("new-name.local", "mdns")
    dicts = [{"addr": ADDR, "name": "laptop", "source": "netbios", "ts": 5}]
    assert intranet_name(ADDR, dicts, HostList(None)) == ("laptop", "netbios")
    assert intranet_name(ADDR, [_name("sni", "nas.example.net")], None) == ("nas.example.net", "sni")
    assert intranet_name("2001:db8::1", [_name("ptr", "h6", addr="2001:DB8::1")], None) == ("h6", "ptr")
