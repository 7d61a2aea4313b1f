"""A seeded generator of realistic small-office traffic, written as a pcap file.

The public captures in data/captures/ are real but short (minutes each). To give the demo a full
day, this writes one day of lab traffic for a handful of hosts, packet by packet, as a mirror port
would see it: DHCP with host names, mDNS announcements, DNS lookups (with CNAME chains) followed by
TLS connections carrying SNI, HTTP with Host headers, NTP, SSDP multicast, ICMP, and one camera that
talks to a hard-coded internet address at 4 a.m. with no DNS lookup: the kind of thing the app must
make stand out. Packets go through the real probe like any capture.

Bulk data packets are written with a snap length of 96 bytes (their IP headers keep the real
lengths), as a capture with `-s 96` would; packets that carry names are written whole.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset

SNAPLEN = 96
GATEWAY = "192.168.1.1"
GATEWAY_MAC = "00:11:32:aa:00:01"


@dataclass(frozen=True)
class LabHost:
    addr: str
    mac: str
    hostname: str
    profile: str  # laptop | phone | printer | nas | camera | tv


HOSTS = (
    LabHost("192.168.1.71", "3c:22:fb:10:00:71", "alice-laptop", "laptop"),
    LabHost("192.168.1.72", "f0:18:98:10:00:72", "bob-iphone", "phone"),
    LabHost("192.168.1.80", "00:1b:a9:10:00:80", "office-printer", "printer"),
    LabHost("192.168.1.90", "00:11:32:10:00:90", "nas", "nas"),
    LabHost("192.168.1.95", "9c:8e:cd:10:00:95", "cam-garage", "camera"),
    LabHost("192.168.1.60", "a8:23:fe:10:00:60", "living-room-tv", "tv"),
)

# Services by name → (addresses, port, CNAME target or None, typical download bytes)
SERVICES: dict[str, tuple[tuple[str, ...], int, str | None, int]] = {
    "wss-primary.slack.com": (("52.89.214.238", "54.186.10.11"), 443, None, 500_000),
    "app.slack.com": (("52.37.84.171",), 443, None, 180_000),
    "www.google.com": (("142.250.190.36",), 443, None, 90_000),
    "mail.google.com": (("142.250.191.101",), 443, "googlemail.l.google.com", 350_000),
    "rr3---sn-5hne6nzk.googlevideo.com": (("173.194.182.74",), 443, None, 2_500_000),
    "rr5---sn-5hnekn7z.googlevideo.com": (("173.194.182.136",), 443, None, 1_800_000),
    "www.youtube.com": (("142.250.72.142",), 443, "youtube-ui.l.google.com", 400_000),
    "github.com": (("140.82.112.3",), 443, None, 250_000),
    "api.github.com": (("140.82.112.6",), 443, None, 40_000),
    "teams.microsoft.com": (("52.113.194.132",), 443, "teams-office-com.s-0005.s-msedge.net", 600_000),
    "outlook.office365.com": (("52.97.183.162", "52.97.146.194"), 443, "outlook.ha.office365.com", 300_000),
    "www.apple.com": (("17.253.144.10",), 443, "www.apple.com.edgekey.net", 120_000),
    "gateway.icloud.com": (("17.248.146.5",), 443, None, 80_000),
    "www.dropbox.com": (("162.125.8.18",), 443, None, 600_000),
    "zoom.us": (("170.114.52.2",), 443, None, 700_000),
    "en.wikipedia.org": (("208.80.154.224",), 443, "dyna.wikimedia.org", 160_000),
    "firmware.printer-vendor.example": (("93.184.215.14",), 80, None, 30_000),
    "time.cloudflare.com": (("162.159.200.1",), 123, None, 0),
    "netflix.com": (("54.155.178.5",), 443, None, 300_000),
    "occ-0-2433-2430.1.nflxso.net": (("45.57.90.1",), 443, None, 4_000_000),
}
PROFILES: dict[str, tuple[str, ...]] = {
    "laptop": (
        "wss-primary.slack.com",
        "app.slack.com",
        "www.google.com",
        "mail.google.com",
        "github.com",
        "api.github.com",
        "teams.microsoft.com",
        "outlook.office365.com",
        "en.wikipedia.org",
        "www.dropbox.com",
        "zoom.us",
        "rr3---sn-5hne6nzk.googlevideo.com",
        "www.youtube.com",
    ),
    "phone": (
        "www.apple.com",
        "gateway.icloud.com",
        "wss-primary.slack.com",
        "www.youtube.com",
        "rr5---sn-5hnekn7z.googlevideo.com",
        "mail.google.com",
    ),
    "printer": ("firmware.printer-vendor.example",),
    "nas": ("www.dropbox.com", "time.cloudflare.com"),
    "camera": (),
    "tv": ("netflix.com", "occ-0-2433-2430.1.nflxso.net", "www.youtube.com"),
}
# Relative activity by hour of day (office-ish for people, flat for machines).
DAY_CURVE = (1, 1, 1, 1, 1, 1, 2, 4, 8, 10, 10, 9, 7, 9, 10, 10, 9, 7, 5, 6, 6, 5, 3, 2)
HARD_CODED_PEER = "203.0.113.77"  # the camera's unexplained peer (a documentation address)


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class PcapWriter:
    """Just enough pcap: little-endian, µs resolution, Ethernet."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("wb")
        self.file.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        self.packets = 0

    def write(self, ts_us: int, frame: bytes, snap: bool) -> None:
        data = frame[:SNAPLEN] if snap else frame
        secs, usecs = divmod(ts_us, 1_000_000)
        self.file.write(struct.pack("<IIII", secs, usecs, len(data), len(frame)))
        self.file.write(data)
        self.packets += 1

    def close(self) -> None:
        self.file.close()


@dataclass
class Packet:
    ts_us: int
    frame: bytes
    snap: bool = True


def _ipv4_frame(
    src_mac: str, dst_mac: str, src: str, dst: str, proto: int, l4: bytes, ident: int, ttl: int = 64
) -> bytes:
    total = 20 + len(l4)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        ident & 0xFFFF,
        0x4000,
        ttl,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return _mac(dst_mac) + _mac(src_mac) + b"\x08\x00" + header + l4


def _udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def _tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(
            "!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 64240, 0, 0
        )
        + payload
    )


def client_hello(server_name: str, rng: random.Random) -> bytes:
    """A TLS 1.3-style ClientHello carrying the server_name extension."""
    name = server_name.encode()
    sni = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
    extensions = struct.pack("!HH", 0, len(sni)) + sni
    extensions += struct.pack("!HHH", 43, 3, 0x0203) + b"\x04"  # supported_versions (short form)
    body = (
        b"\x03\x03" + rng.randbytes(32) + b"\x00" + struct.pack("!H", 4) + b"\x13\x01\x13\x02" + b"\x01\x00"
    )
    body += struct.pack("!H", len(extensions)) + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


class LabDay:
    def __init__(self, day: dt.date, seed: int) -> None:
        self.rng = random.Random(seed)
        self.start_us = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 1_000_000
        self.packets: list[Packet] = []
        self.ident = 1
        self.dns_id = 1

    # -- building blocks -------------------------------------------------------------
    def _emit(
        self, ts: int, host: LabHost, src: str, dst: str, proto: int, l4: bytes, *, outbound: bool, snap=True
    ):
        self.ident += 1
        src_mac, dst_mac = (host.mac, GATEWAY_MAC) if outbound else (GATEWAY_MAC, host.mac)
        if dst.startswith("224.") or dst.startswith("239."):
            octets = ipaddress.IPv4Address(dst).packed
            dst_mac = f"01:00:5e:{octets[1] & 0x7F:02x}:{octets[2]:02x}:{octets[3]:02x}"
        elif dst == "255.255.255.255":
            dst_mac = "ff:ff:ff:ff:ff:ff"
        self.packets.append(Packet(ts, _ipv4_frame(src_mac, dst_mac, src, dst, proto, l4, self.ident), snap))

    def dhcp(self, ts: int, host: LabHost) -> None:
        """DHCPREQUEST (broadcast) with option 12, then the server's ACK."""
        xid = self.rng.getrandbits(32)
        for op, src, dst, sport, dport in (
            (1, "0.0.0.0", "255.255.255.255", 68, 67),
            (2, GATEWAY, host.addr, 67, 68),
        ):
            fixed = struct.pack(
                "!BBBBIHH4s4s4s4s",
                op,
                1,
                6,
                0,
                xid,
                0,
                0x8000,
                b"\0" * 4,
                ipaddress.IPv4Address(host.addr).packed if op == 2 else b"\0" * 4,
                b"\0" * 4,
                b"\0" * 4,
            )
            fixed += _mac(host.mac) + b"\0" * 10 + b"\0" * 192 + b"\x63\x82\x53\x63"
            options = bytes([53, 1, 3 if op == 1 else 5])
            options += bytes([50, 4]) + ipaddress.IPv4Address(host.addr).packed
            name = host.hostname.encode()
            options += bytes([12, len(name)]) + name + b"\xff"
            self._emit(
                ts, host, src, dst, 17, _udp(sport, dport, fixed + options), outbound=op == 1, snap=False
            )
            ts += 2_000

    def mdns_announce(self, ts: int, host: LabHost) -> None:
        response = dns.message.Message(id=0)
        response.flags = dns.flags.QR | dns.flags.AA
        rrset = dns.rrset.from_text(f"{host.hostname}.local.", 120, "IN", "A", host.addr)
        response.answer.append(rrset)
        self._emit(
            ts,
            host,
            host.addr,
            "224.0.0.251",
            17,
            _udp(5353, 5353, response.to_wire()),
            outbound=True,
            snap=False,
        )

    def dns_lookup(self, ts: int, host: LabHost, qname: str) -> list[str]:
        addrs, _port, cname, _size = SERVICES[qname]
        query = dns.message.make_query(qname, "A")
        query.id = self.dns_id = (self.dns_id + 1) & 0xFFFF
        response = dns.message.make_response(query)
        owner = qname
        if cname:
            response.answer.append(dns.rrset.from_text(qname + ".", 300, "IN", "CNAME", cname + "."))
            owner = cname
        response.answer.append(dns.rrset.from_text(owner + ".", 60, "IN", "A", *addrs))
        sport = self.rng.randint(32768, 60999)
        self._emit(
            ts, host, host.addr, GATEWAY, 17, _udp(sport, 53, query.to_wire()), outbound=True, snap=False
        )
        rtt = self.rng.randint(2_000, 30_000)
        self._emit(
            ts + rtt,
            host,
            GATEWAY,
            host.addr,
            17,
            _udp(53, sport, response.to_wire()),
            outbound=False,
            snap=False,
        )
        return list(addrs)

    def tcp_session(
        self, ts: int, host: LabHost, server: str, port: int, first_payload: bytes, download: int, upload: int
    ) -> int:
        """Handshake, request, response in MSS-sized segments, FIN both ways. Returns the end time."""
        sport = self.rng.randint(32768, 60999)
        rtt = self.rng.randint(8_000, 60_000)
        cseq, sseq = self.rng.getrandbits(32), self.rng.getrandbits(32)
        out = lambda t, flags, payload=b"", snap=True: self._emit(  # noqa: E731
            t,
            host,
            host.addr,
            server,
            6,
            _tcp(sport, port, cseq, sseq, flags, payload),
            outbound=True,
            snap=snap,
        )
        back = lambda t, flags, payload=b"": self._emit(  # noqa: E731
            t, host, server, host.addr, 6, _tcp(port, sport, sseq, cseq, flags, payload), outbound=False
        )
        out(ts, 0x02)
        back(ts + rtt, 0x12)
        t = ts + rtt + 200
        out(t, 0x10)
        out(t + 100, 0x18, first_payload, snap=False)
        cseq += len(first_payload)
        t += rtt
        sent_up = 0
        while sent_up < upload:
            chunk = min(1448, upload - sent_up)
            out(t, 0x18, b"\0" * chunk)
            cseq += chunk
            sent_up += chunk
            t += 300
        received = 0
        segments = 0
        while received < download:
            chunk = min(1448, download - received)
            back(t, 0x18 if chunk < 1448 else 0x10, b"\0" * chunk)
            sseq += chunk
            received += chunk
            segments += 1
            t += self.rng.randint(20, 400)
            if segments % 2 == 0:
                out(t, 0x10)
        out(t + 1_000, 0x11)
        back(t + 1_000 + rtt, 0x11)
        out(t + 1_200 + rtt, 0x10)
        return t + 1_200 + rtt

    def visit(self, ts: int, host: LabHost, qname: str) -> None:
        addrs = self.dns_lookup(ts, host, qname)
        _addrs, port, _cname, size = SERVICES[qname]
        server = self.rng.choice(addrs)
        start = ts + self.rng.randint(40_000, 120_000)
        download = max(600, int(size * self.rng.uniform(0.2, 1.2)))
        if port == 123:
            request = b"\x23" + b"\0" * 47
            sport = self.rng.randint(32768, 60999)
            self._emit(start, host, host.addr, server, 17, _udp(sport, 123, request), outbound=True)
            self._emit(
                start + 20_000,
                host,
                server,
                host.addr,
                17,
                _udp(123, sport, b"\x24" + b"\0" * 47),
                outbound=False,
            )
            return
        if port == 80:
            payload = (
                f"GET /fw/latest.bin HTTP/1.1\r\nHost: {qname}\r\nUser-Agent: printer/2.1\r\n\r\n".encode()
            )
        else:
            payload = client_hello(qname, self.rng)
        self.tcp_session(start, host, server, port, payload, download, max(200, download // 40))

    # -- the day ------------------------------------------------------------------------
    def build(self) -> list[Packet]:
        hour_us = 3_600_000_000
        for host in HOSTS:
            self.dhcp(self.start_us + self.rng.randint(1, 300) * 1_000_000, host)
        for hour, weight in enumerate(DAY_CURVE):
            base = self.start_us + hour * hour_us
            for host in HOSTS:
                if self.rng.random() < 0.5:
                    self.mdns_announce(base + self.rng.randint(0, hour_us - 1), host)
                if host.profile == "camera":
                    self._camera_hour(base, hour, host)
                    continue
                services = PROFILES[host.profile]
                people = host.profile in ("laptop", "phone")
                visits = (weight * (3 if host.profile == "laptop" else 2)) if people else 2
                if host.profile == "tv":
                    visits = 3 if 18 <= hour <= 22 else 0
                for _ in range(visits):
                    self.visit(
                        base + self.rng.randint(0, hour_us - 200_000_000), host, self.rng.choice(services)
                    )
                self._background(base, hour, host)
        self.packets.sort(key=lambda p: p.ts_us)
        return self.packets

    def _camera_hour(self, base: int, hour: int, host: LabHost) -> None:
        """Streams to the NAS all day; at 4 a.m. talks to a hard-coded internet address."""
        for minute in range(0, 60, 10):
            self.tcp_session(
                base + minute * 60_000_000,
                host,
                "192.168.1.90",
                554,
                b"OPTIONS rtsp://nas/ RTSP/1.0\r\n\r\n",
                2_000,
                120_000,
            )
        if hour == 4:
            self.tcp_session(
                base + 7 * 60_000_000 + 13_000_000,
                host,
                HARD_CODED_PEER,
                8443,
                b"\x00\x01beacon",
                3_000,
                180_000,
            )

    def _background(self, base: int, hour: int, host: LabHost) -> None:
        """SSDP multicast, pings to the gateway, NetBIOS broadcasts: the chatter of a LAN."""
        if host.profile in ("laptop", "tv"):
            msearch = (
                b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\n'
                b"MX: 1\r\nST: ssdp:all\r\n\r\n"
            )
            for _ in range(3):
                self._emit(
                    base + self.rng.randint(0, 3_599_000_000),
                    host,
                    host.addr,
                    "239.255.255.250",
                    17,
                    _udp(self.rng.randint(50000, 60000), 1900, msearch),
                    outbound=True,
                )
        if host.profile == "nas":
            for minute in range(0, 60, 15):
                t = base + minute * 60_000_000
                echo = struct.pack("!BBHHH", 8, 0, 0, 0x1234, minute) + b"\0" * 56
                reply = struct.pack("!BBHHH", 0, 0, 0, 0x1234, minute) + b"\0" * 56
                self._emit(t, host, host.addr, GATEWAY, 1, echo, outbound=True)
                self._emit(t + 700, host, GATEWAY, host.addr, 1, reply, outbound=False)
        if host.profile == "laptop":
            nb = b"\x00" * 50
            self._emit(
                base + self.rng.randint(0, 3_599_000_000),
                host,
                host.addr,
                "192.168.1.255",
                17,
                _udp(137, 137, nb),
                outbound=True,
            )


def write_lab_day(path: Path, day: dt.date, seed: int = 7) -> int:
    """Write one seeded day of lab traffic to ``path``; returns the number of packets."""
    packets = LabDay(day, seed).build()
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = PcapWriter(path)
    try:
        for packet in packets:
            writer.write(packet.ts_us, packet.frame, packet.snap)
    finally:
        writer.close()
    return len(packets)


def iter_days(first: dt.date, count: int) -> Iterator[dt.date]:
    for offset in range(count):
        yield first + dt.timedelta(days=offset)


def main() -> None:
    parser = argparse.ArgumentParser(description="Write seeded lab traffic as pcap (one file per day).")
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--day", type=dt.date.fromisoformat, default=dt.date(2026, 11, 20))
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for index, day in enumerate(iter_days(args.day, args.days)):
        path = args.output_dir / f"lab-{day.isoformat()}.pcap"
        count = write_lab_day(path, day, args.seed + index)
        print(f"{path}: {count} packets")


if __name__ == "__main__":
    main()
