"""The probe's flows against independent tools on real captures.

- softflowd 1.1.0 (`softflowd -r FILE -v 10`, exported over UDP to this test and decoded here)
  gives the reference flow set: the same keys, the same packets per flow. softflowd reading a file
  applies no idle timeout (only its table limit and, between batches, the maximum lifetime), so
  both sides run with timeouts off; timeouts are tested in test_probe_meter.py.
- tshark gives the reference totals: IP packets and IP bytes (outermost header) per file.

Every difference from softflowd is pinned by a named test below, with the reason.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from probe.capture import open_capture
from probe.decode import Decoded, decode
from probe.options import MeterOptions
from probe.pipeline import meter_files
from probe.sink import MemorySink
from tests.plugins.common import FIXTURES

PCAPS = FIXTURES / "pcap"
ALL = sorted(p.name for p in PCAPS.iterdir())
# Captures softflowd cannot read at all (pinned in test_softflowd_blind_spots).
SOFTFLOWD_BLIND = {
    "zeek-linux_dlt_sll2.pcap": "link type SLL2 (276): 'Unsupported datalink type 276'",
    "suricata-linktype-228-flow-test-01.pcap": "link type 228 (raw IPv4) is not in its table",
    "arkime-tls-alpn-h2.pcap": "NULL link type with Darwin's AF_INET6 (30): it knows only the host's (10)",
    "arkime-twovlan.pcap": "two stacked 802.1Q tags: it looks behind one tag only",
    "zeek-vlan-qinqinq.pcap": "three stacked VLAN tags: it looks behind one tag only",
    "tcpdump-802.1ad_QinQ.pcap": "802.1ad outer tag (0x88a8); here ARP only, so nothing for anyone",
}
COMPARED = [name for name in ALL if name not in SOFTFLOWD_BLIND]
NO_TIMEOUTS = dict(idle_timeout=1e9, active_timeout=1e9, names=False, max_flows=1_000_000)

Key = tuple[int, str, int, str, int]


# ---------------------------------------------------------------- softflowd, decoded here


def _ntp_us(raw: bytes) -> int:
    seconds, fraction = struct.unpack("!II", raw)
    return (seconds - 2_208_988_800) * 1_000_000 + ((fraction * 1_000_000) >> 32)


def parse_ipfix(datagrams: list[bytes]) -> list[dict[int, bytes]]:
    """IPFIX data records as {information element id: raw value} (templates from the same stream)."""
    templates: dict[int, list[tuple[int, int]]] = {}
    data_templates: set[int] = set()
    records = []
    for datagram in datagrams:
        version, length = struct.unpack_from("!HH", datagram, 0)
        assert version == 10 and length == len(datagram)
        offset = 16
        while offset + 4 <= length:
            set_id, set_length = struct.unpack_from("!HH", datagram, offset)
            body, end = offset + 4, offset + set_length
            if set_id in (2, 3):
                pos = body
                while pos + 4 <= end:
                    template_id, count = struct.unpack_from("!HH", datagram, pos)
                    pos += 6 if set_id == 3 else 4
                    fields = []
                    for _ in range(count):
                        element, size = struct.unpack_from("!HH", datagram, pos)
                        pos += 8 if element & 0x8000 else 4
                        fields.append((element & 0x7FFF, size))
                    templates[template_id] = fields
                    if set_id == 2:
                        data_templates.add(template_id)
            elif set_id in data_templates:
                fields = templates[set_id]
                record_size = sum(size for _, size in fields)
                pos = body
                while pos + record_size <= end:
                    record = {}
                    for element, size in fields:
                        record[element] = datagram[pos : pos + size]
                        pos += size
                    records.append(record)
            offset = end
    return records


def softflowd_flows(path: Path, tmp_path: Path) -> dict[Key, tuple[int, int, int, int]]:
    """Run softflowd on a file; {key: (packets, bytes, start_us, end_us)} of what it exported.

    ``-c none``: with a control socket, softflowd 1.1.0 reading a file may block in accept()
    (it tests an uninitialised poll result), so it gets none.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        done = subprocess.run(
            ["softflowd", "-r", str(path), "-6", "-d", "-v", "10", "-A", "micro", "-m", "1000000",
             "-t", "maxlife=0", "-n", f"127.0.0.1:{port}", "-p", str(tmp_path / "sf.pid"),
             "-c", "none"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if "Unsupported datalink type" in done.stderr:
            return {}
        assert done.returncode == 0, done.stderr
        sock.settimeout(0.2)
        datagrams = []
        while True:
            try:
                datagrams.append(sock.recv(65535))
            except TimeoutError:
                break
    flows = {}
    for record in parse_ipfix(datagrams):
        if 8 in record:
            src, dst = record[8], record[12]
        else:
            src, dst = record[27], record[28]
        icmp = record.get(32) or record.get(139)
        if icmp is not None:
            sport, dport = 0, int.from_bytes(icmp, "big")
        else:
            sport, dport = int.from_bytes(record[7], "big"), int.from_bytes(record[11], "big")
        key = (record[4][0], str(ipaddress.ip_address(src)), sport, str(ipaddress.ip_address(dst)), dport)
        assert key not in flows, f"softflowd exported {key} twice"
        flows[key] = (
            int.from_bytes(record[2], "big"),
            int.from_bytes(record[1], "big"),
            _ntp_us(record[154]),
            _ntp_us(record[155]),
        )
    return flows


# ---------------------------------------------------------------- ours


def our_flows(path: Path) -> tuple[dict[Key, list[int]], list, object]:
    """Our flows with timeouts off, merged by key: {key: [packets, bytes, start, end, pieces]}."""
    sink = MemorySink()
    stats = meter_files([str(path)], MeterOptions(**NO_TIMEOUTS), sink, tcp_end_grace=1e9)
    merged: dict[Key, list[int]] = {}
    for flow in sink.flows:
        key = (flow.protocol, flow.src_addr, flow.src_port, flow.dst_addr, flow.dst_port)
        if key in merged:
            entry = merged[key]
            entry[0] += flow.packets
            entry[1] += flow.bytes
            entry[2] = min(entry[2], flow.flow_start)
            entry[3] = max(entry[3], flow.flow_end)
            entry[4] += 1
        else:
            merged[key] = [flow.packets, flow.bytes, flow.flow_start, flow.flow_end, 1]
    return merged, sink.flows, stats


def _reverse(key: Key) -> Key:
    return (key[0], key[3], key[4], key[1], key[2])


def softflowd_link_bytes(path: Path) -> dict[Key, int]:
    """Per flow, what softflowd counts beyond the IP length: frame length − link header − IP length.

    The link header is measured here the way softflowd does it (Ethernet 14 + one 802.1Q tag,
    SLL 16, raw 0; MPLS labels are *not* subtracted); the packet's flow key comes from our decoder.
    """
    extra: dict[Key, int] = defaultdict(int)
    for linktype, _ts, wire_len, frame in open_capture(str(path)):
        dec = decode(linktype, frame)
        if not isinstance(dec, Decoded):
            continue
        if linktype == 1:
            header = 18 if frame[12:14] == b"\x81\x00" else 14
        elif linktype == 113:
            header = 16
        else:
            header = 0
        key = (dec.protocol, str(ipaddress.ip_address(dec.src)), dec.src_port,
               str(ipaddress.ip_address(dec.dst)), dec.dst_port)  # fmt: skip
        extra[key] += wire_len - header - dec.ip_bytes
    return extra


def _softflowd_view(key: Key) -> Key:
    """Our key as softflowd spells it (see test_ipv6_later_fragments_keep_their_protocol)."""
    proto, src, sport, dst, dport = key
    if ":" in src and sport == 0 and dport == 0 and proto in (6, 17):
        return (0, src, 0, dst, 0)
    return key


# ---------------------------------------------------------------- the comparisons


@pytest.mark.parametrize("name", COMPARED)
def test_flows_match_softflowd(name: str, tmp_path: Path) -> None:
    path = PCAPS / name
    ours, _flows, _stats = our_flows(path)
    theirs = softflowd_flows(path, tmp_path)
    mapped = {_softflowd_view(key): value for key, value in ours.items()}
    assert set(mapped) == set(theirs), (
        f"only ours: {sorted(set(mapped) - set(theirs))[:5]}, only softflowd: {sorted(set(theirs) - set(mapped))[:5]}"
    )
    link_bytes = softflowd_link_bytes(path)
    for key, (packets, nbytes, start, end, _pieces) in ours.items():
        sf_key = _softflowd_view(key)
        sf_packets, sf_bytes, sf_start, sf_end = theirs[sf_key]
        assert packets == sf_packets, key
        assert nbytes + link_bytes[key] == sf_bytes, key
        # softflowd stamps both directions with the pair's first and last packet
        back = ours.get(_reverse(key)) if key[1] != key[3] else None  # softflowd pairs by address
        pair_start = min(start, back[2]) if back else start
        pair_end = max(end, back[3]) if back else end
        assert abs(sf_start - pair_start) <= 1 and abs(sf_end - pair_end) <= 1, key


def test_softflowd_counts_link_padding_as_bytes(tmp_path: Path) -> None:
    """Pinned: softflowd counts frame − link header, so Ethernet padding inflates short packets.

    zeek-mixed-vlan-mpls carries MPLS labels and padded frames: softflowd's bytes exceed the IP
    lengths there, ours equal tshark's.
    """
    path = PCAPS / "zeek-mixed-vlan-mpls.pcap"
    ours, _flows, _stats = our_flows(path)
    theirs = softflowd_flows(path, tmp_path)
    padded = {key for key in ours if ours[key][1] != theirs[key][1]}
    assert padded, "expected flows whose frames carry more than the IP packet"
    assert all(theirs[key][1] > ours[key][1] for key in padded)
    assert sum(ours[key][1] for key in ours) == tshark_totals(path)[1]


def test_ipv6_later_fragments_keep_their_protocol(tmp_path: Path) -> None:
    """Pinned: an IPv6 fragment with offset > 0 is UDP here (fragment header's next header),
    protocol 0 in softflowd (it returns before setting the protocol). Ports 0 on both sides."""
    path = PCAPS / "zeek-ipv6-fragmented-dns.pcap"
    ours, _flows, _stats = our_flows(path)
    theirs = softflowd_flows(path, tmp_path)
    ours_later = {key: tuple(value[:2]) for key, value in ours.items() if key[2] == key[4] == 0}
    theirs_later = {key: tuple(value[:2]) for key, value in theirs.items() if key[2] == key[4] == 0}
    assert list(ours_later) == [(17, "2607:f740:b::f93", 0, "2001:470:1f11:81f:d138:5f55:6d4:1fe2", 0)]
    assert list(theirs_later) == [(0, "2607:f740:b::f93", 0, "2001:470:1f11:81f:d138:5f55:6d4:1fe2", 0)]
    assert list(ours_later.values()) == list(theirs_later.values()) == [(3, 2292)]


def test_syn_reusing_closed_ports_starts_a_new_flow(tmp_path: Path) -> None:
    """Pinned: in ndpi-gnutella 7 connection attempts are refused (SYN answered by RST+ACK) and
    retried twice on the same ports. Each SYN after the RST starts a new flow here (3 per side);
    softflowd (in a file, no timeouts) adds the retries to the first attempt. Merged back by key
    the counts are softflowd's exactly (test_flows_match_softflowd)."""
    path = PCAPS / "ndpi-gnutella.pcap"
    ours, flows, _stats = our_flows(path)
    split = {key for key, value in ours.items() if value[4] > 1}
    assert len(split) == 14
    for key in split:
        pieces = [f for f in flows if (f.protocol, f.src_addr, f.src_port, f.dst_addr, f.dst_port) == key]
        assert len(pieces) == 3
        assert {piece.end_reason for piece in pieces} == {"rst"}
        assert {(piece.packets, piece.tcp_flags, piece.initiator) for piece in pieces} in (
            {(1, 0x02, "src")},
            {(1, 0x14, "dst")},
        )
    theirs = softflowd_flows(path, tmp_path)
    assert all(theirs[key][0] == 3 for key in split)


@pytest.mark.parametrize("name", sorted(SOFTFLOWD_BLIND))
def test_softflowd_blind_spots(name: str, tmp_path: Path) -> None:
    """Pinned: captures softflowd exports nothing for (reason in SOFTFLOWD_BLIND); we meter them,
    and our totals still equal tshark's (test_totals_match_tshark)."""
    path = PCAPS / name
    ours, _flows, stats = our_flows(path)
    assert softflowd_flows(path, tmp_path) == {}
    expected_packets, _bytes = tshark_totals(path)
    assert stats.ip_packets == expected_packets
    assert sum(value[0] for value in ours.values()) == expected_packets


def test_vlan_is_not_part_of_the_key(tmp_path: Path) -> None:
    """Like softflowd's default tracking level: ndpi-netbios has one 802.1Q-tagged NBNS packet
    whose 5-tuple also appears untagged; it joins that flow, which keeps its first packet's VLAN."""
    path = PCAPS / "ndpi-netbios.pcap"
    sink = MemorySink()
    meter_files([str(path)], MeterOptions(**NO_TIMEOUTS), sink, tcp_end_grace=1e9)
    tagged = [flow for flow in sink.flows if flow.vlan]
    theirs = softflowd_flows(path, tmp_path)
    assert len(sink.flows) == len(theirs)
    for flow in tagged:
        key = (flow.protocol, flow.src_addr, flow.src_port, flow.dst_addr, flow.dst_port)
        assert theirs[key][0] == flow.packets


# ---------------------------------------------------------------- tshark totals


@functools.cache
def tshark_totals(path: Path) -> tuple[int, int]:
    """(IP packets, IP bytes) of the outermost IP header of each frame, as tshark decodes them."""
    done = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=f", "-e", "frame.protocols",
         "-e", "ip.len", "-e", "ipv6.plen"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    packets = total = 0
    for line in done.stdout.splitlines():
        protocols, ip_len, ipv6_plen = (line.split("\t") + ["", ""])[:3]
        layers = protocols.split(":")
        first = next((layer for layer in layers if layer in ("ip", "ipv6")), None)
        if first == "ip" and ip_len:
            packets += 1
            total += int(ip_len)
        elif first == "ipv6" and ipv6_plen:
            packets += 1
            total += int(ipv6_plen) + 40
    return packets, total


@pytest.mark.parametrize("name", ALL)
def test_totals_match_tshark(name: str) -> None:
    path = PCAPS / name
    _ours, flows, stats = our_flows(path)
    packets, nbytes = tshark_totals(path)
    assert (stats.ip_packets, stats.bytes) == (packets, nbytes)
    assert sum(f.packets for f in flows) == packets
    assert sum(f.bytes for f in flows) == nbytes
