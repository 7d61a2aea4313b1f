"""Name learning: DNS/mDNS/LLMNR answers, NetBIOS, TLS SNI, HTTP Host and DHCP host names.

The metering engine calls ``NameExtractor.interesting()`` for every TCP/UDP packet with payload
and ``feed()`` for the few it accepts (probe.fastpath applies the same rule, declared below as
constants, to whole arrays of packets and asks ``interesting()`` only where buffers decide). Every byte here comes from the wire, so every length is
bounded, ``feed()`` never raises, and each call is accounted for in ``counters``: names by source
(``"dns"``, ``"sni"``…), parse errors by reason (``"dns-malformed"``, ``"tls-malformed"``…) and
benign outcomes as ``"ignored-…"`` / ``"buffered-…"``.

DNS messages are decoded with dnspython; TLS, HTTP, DHCP and NetBIOS are small enough to read
with ``struct``.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from collections.abc import Callable

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.svcbbase
import dns.reversename

from hostflow.records import PROTO_TCP, PROTO_UDP, Name

log = logging.getLogger(__name__)

PORT_DNS = 53
PORT_MDNS = 5353
PORT_LLMNR = 5355
PORT_NETBIOS_NS = 137
PORT_DHCP_SERVER = 67
PORT_DHCP_CLIENT = 68

# What ``interesting()`` accepts, as data: probe.fastpath applies the same constants to whole
# arrays of packets, so the rule lives here only.
# Every name-bearing UDP message we read is sent *from* one of these ports (responses,
# announcements, NetBIOS registrations, DHCP client and server messages).
UDP_SOURCE_PORTS = frozenset(
    {PORT_DNS, PORT_MDNS, PORT_LLMNR, PORT_NETBIOS_NS, PORT_DHCP_SERVER, PORT_DHCP_CLIENT}
)
TCP_SOURCE_PORTS = frozenset({PORT_DNS})  # DNS over TCP: every segment of a response
# A TCP payload that opens a ClientHello: first byte 0x16 (a handshake record), then either
# fewer than CLIENT_HELLO_TELL bytes (too short to tell) or every (offset, byte) of CLIENT_HELLO_MORE.
CLIENT_HELLO_FIRST = 0x16
CLIENT_HELLO_MORE = ((1, 3), (5, 1))  # TLS major version 3, handshake type ClientHello
CLIENT_HELLO_TELL = 6
HTTP_PREFIX_LEN = 4
HTTP_METHOD_PREFIXES = frozenset(
    {b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC", b"PROP"}
)
DNS_FAMILY_SOURCE = {PORT_DNS: "dns", PORT_MDNS: "mdns", PORT_LLMNR: "llmnr"}

# Bounds on what an attacker can make us keep.
MAX_TCP_BUFFERS = 256  # concurrent half-streams with a partial DNS message or ClientHello
MAX_TLS_BUFFER = 16 * 1024 + 5  # a ClientHello larger than one full TLS record is given up
MAX_TLS_SEGMENTS = 4
MAX_DNS_TCP_BUFFER = 65535 + 2
DNS_HEADER_LEN = 12
MAX_DNS_TCP_MESSAGES = 64  # per segment: a stream of tiny messages must not spin forever
TCP_BUFFER_IDLE_US = 10_000_000  # a continuation later than this belongs to nobody
MAX_HTTP_HEAD = 16 * 1024  # long query strings push Host past the first segment
MAX_HTTP_SEGMENTS = 12
MAX_NAME_LEN = 1024
MAX_CNAME_HOPS = 16
MAX_NAMES_PER_MESSAGE = 256

_A = dns.rdatatype.A
_AAAA = dns.rdatatype.AAAA
_CNAME = dns.rdatatype.CNAME
_PTR = dns.rdatatype.PTR
_HTTPS = dns.rdatatype.HTTPS
_SVCB = dns.rdatatype.SVCB
_IN = dns.rdataclass.IN
_ADDRESS_TYPES = {_A: "A", _AAAA: "AAAA"}
_HINT_KEYS = (dns.rdtypes.svcbbase.ParamKey.IPV4HINT, dns.rdtypes.svcbbase.ParamKey.IPV6HINT)

DHCP_DISCOVER, DHCP_REQUEST, DHCP_ACK, DHCP_NAK, DHCP_INFORM = 1, 3, 5, 6, 8
DHCP_MAGIC = b"\x63\x82\x53\x63"
MAX_DHCP_PENDING = 256
ZERO_V4 = b"\x00\x00\x00\x00"

NETBIOS_REGISTRATION_OPCODES = {5, 8, 9}  # registration, refresh (8 and 9 are both used)
NETBIOS_HOST_SUFFIXES = {0x00, 0x20}  # workstation, file server: unique names of one machine
NETBIOS_TYPE_NB = 0x0020
NETBIOS_TYPE_NBSTAT = 0x0021  # node status: the responder lists its own names


class ParseError(ValueError):
    """Bad input; ``reason`` is the counter key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NeedMore(Exception):
    """The message continues in a later segment."""


# ---------------------------------------------------------------- small helpers


def clean_name(text: str) -> str:
    """Lower-case, no trailing dot, bounded length. Control characters stay: they are data."""
    text = text.strip().rstrip(".").lower()
    return text[:MAX_NAME_LEN]


def dns_name_text(name: dns.name.Name) -> str:
    """Labels as UTF-8 text (mDNS instance names are UTF-8), not dnspython's escaped form."""
    labels = name.labels
    if labels and labels[-1] == b"":
        labels = labels[:-1]
    return clean_name(".".join(label.decode("utf-8", "backslashreplace") for label in labels))


def canonical_addr(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


def host_header_name(value: bytes) -> str | None:
    """The host part of a Host header; None for IP literals and empty values."""
    text = value.strip().decode("utf-8", "backslashreplace")
    if text.startswith("["):  # [v6]:port
        return None
    if text.count(":") == 1:
        text = text.split(":", 1)[0]
    elif ":" in text:  # a bare IPv6 literal (invalid in Host, but seen)
        return None
    text = clean_name(text)
    if not text:
        return None
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return text
    return None


# ---------------------------------------------------------------- HTTP


def http_host_value(head: bytes) -> bytes | None:
    """The raw Host header value of a request head; NeedMore while the head is incomplete."""
    head_end = head.find(b"\r\n\r\n")
    if head_end >= 0:
        head = head[: head_end + 2]
    start = head.lower().find(b"\r\nhost:")
    if start >= 0:
        start += len(b"\r\nhost:")
        end = head.find(b"\r\n", start)
        if end >= 0:
            return head[start:end]
    if head_end >= 0:
        return None
    raise NeedMore


# ---------------------------------------------------------------- TLS ClientHello


def _available_handshake(data: bytes) -> tuple[bytes, bool]:
    """Concatenate the handshake bytes of the TLS records in ``data``; (bytes, all records complete)."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        if len(data) - pos < 5:
            return bytes(out), False
        content_type, major, length = data[pos], data[pos + 1], (data[pos + 3] << 8) | data[pos + 4]
        if content_type != 0x16 or major != 3:
            if out:
                return bytes(out), True  # something after the handshake records: stop there
            raise ParseError("tls-not-handshake")
        if length == 0 or length > 16384 + 2048:
            raise ParseError("tls-malformed")
        fragment = data[pos + 5 : pos + 5 + length]
        out += fragment
        pos += 5 + length
        if len(fragment) < length:
            return bytes(out), False
        if len(out) >= 4 and len(out) >= 4 + int.from_bytes(out[1:4], "big"):
            return bytes(out), True
    return bytes(out), pos >= len(data) and len(out) >= 4 and len(out) >= 4 + int.from_bytes(out[1:4], "big")


def client_hello_sni(data: bytes) -> str | None:
    """The server_name of a ClientHello that starts at ``data[0]`` (a TLS record).

    Returns None when the hello has no SNI; raises NeedMore when the hello continues past the
    data, ParseError when it cannot be a ClientHello.
    """
    hello, complete = _available_handshake(data)

    def need(end: int) -> None:
        if end > len(hello):
            if complete:
                raise ParseError("tls-malformed")
            raise NeedMore

    need(4)
    if hello[0] != 1:
        raise ParseError("tls-not-client-hello")
    hello_end = 4 + int.from_bytes(hello[1:4], "big")
    pos = 4 + 2 + 32  # client_version, random
    need(pos + 1)
    pos += 1 + hello[pos]  # session_id
    need(pos + 2)
    pos += 2 + struct.unpack_from("!H", hello, pos)[0]  # cipher_suites
    need(pos + 1)
    pos += 1 + hello[pos]  # compression_methods
    if pos == hello_end:
        return None  # no extensions at all (SSL 3 style)
    need(pos + 2)
    extensions_end = pos + 2 + struct.unpack_from("!H", hello, pos)[0]
    if extensions_end > hello_end:
        raise ParseError("tls-malformed")
    pos += 2
    while pos + 4 <= extensions_end:
        need(pos + 4)
        ext_type, ext_len = struct.unpack_from("!HH", hello, pos)
        pos += 4
        if pos + ext_len > extensions_end:
            raise ParseError("tls-malformed")
        if ext_type == 0:
            need(pos + ext_len)
            return _server_name(hello[pos : pos + ext_len])
        pos += ext_len
    return None


def _server_name(ext: bytes) -> str | None:
    if len(ext) < 2:
        raise ParseError("tls-malformed")
    end = min(len(ext), 2 + struct.unpack_from("!H", ext, 0)[0])
    pos = 2
    while pos + 3 <= end:
        name_type, length = ext[pos], struct.unpack_from("!H", ext, pos + 1)[0]
        pos += 3
        if pos + length > end:
            raise ParseError("tls-malformed")
        if name_type == 0:
            name = clean_name(ext[pos : pos + length].decode("utf-8", "backslashreplace"))
            return name or None
        pos += length
    return None


# ---------------------------------------------------------------- DHCP


def _dhcp_options(payload: bytes) -> dict[int, bytes]:
    options: dict[int, bytes] = {}
    pos = 240
    end = len(payload)
    while pos < end:
        code = payload[pos]
        if code == 0:
            pos += 1
            continue
        if code == 255:
            break
        if pos + 2 > end:
            raise ParseError("dhcp-malformed")
        length = payload[pos + 1]
        value = payload[pos + 2 : pos + 2 + length]
        if len(value) < length:
            raise ParseError("dhcp-malformed")
        options[code] = options.get(code, b"") + value  # RFC 3396: long options are split
        pos += 2 + length
    return options


def _dhcp_fqdn(value: bytes) -> str | None:
    """Option 81: flags, two rcodes, then the name, wire-encoded when flag E (0x04) is set."""
    if len(value) < 3:
        raise ParseError("dhcp-malformed")
    flags, raw = value[0], value[3:]
    if not raw:
        return None
    if flags & 0x04:
        labels = []
        pos = 0
        while pos < len(raw) and raw[pos]:
            length = raw[pos]
            if length > 63 or pos + 1 + length > len(raw):
                raise ParseError("dhcp-malformed")
            labels.append(raw[pos + 1 : pos + 1 + length].decode("utf-8", "backslashreplace"))
            pos += 1 + length
        return clean_name(".".join(labels)) or None
    return clean_name(raw.decode("utf-8", "backslashreplace")) or None


# ---------------------------------------------------------------- NetBIOS name service


def _netbios_name(data: bytes, pos: int) -> tuple[str, int, int]:
    """First-level encoded name at ``pos``: (name, suffix byte, position after it)."""
    if pos >= len(data):
        raise ParseError("netbios-malformed")
    if data[pos] & 0xC0 == 0xC0:  # a pointer, always back to the question's name
        if pos + 2 > len(data):
            raise ParseError("netbios-malformed")
        target = ((data[pos] & 0x3F) << 8) | data[pos + 1]
        if target >= pos:
            raise ParseError("netbios-malformed")
        name, suffix, _ = _netbios_name(data, target)
        return name, suffix, pos + 2
    if data[pos] != 32 or pos + 33 > len(data):
        raise ParseError("netbios-malformed")
    encoded = data[pos + 1 : pos + 33]
    raw = bytearray()
    for i in range(0, 32, 2):
        high, low = encoded[i] - 0x41, encoded[i + 1] - 0x41
        if not (0 <= high < 16 and 0 <= low < 16):
            raise ParseError("netbios-malformed")
        raw.append((high << 4) | low)
    pos += 33
    scope = 0  # skip the scope labels; hosts are named by the 15-character name
    while pos < len(data) and data[pos] and scope < 32:
        pos += 1 + data[pos]
        scope += 1
    pos += 1
    if pos > len(data):
        raise ParseError("netbios-malformed")
    name = bytes(raw[:15]).rstrip(b" \x00").decode("latin-1")
    return clean_name(name), raw[15], pos


# ---------------------------------------------------------------- the extractor


_HELLO_FIRST = bytes((CLIENT_HELLO_FIRST,))


def interesting_alone(proto: int, sport: int, payload: bytes) -> bool:
    """The part of ``NameExtractor.interesting`` that needs no state: ports and first bytes."""
    if proto == PROTO_UDP:
        return sport in UDP_SOURCE_PORTS
    if proto != PROTO_TCP:
        return False
    if sport in TCP_SOURCE_PORTS:
        return True
    if payload[:1] == _HELLO_FIRST and (
        len(payload) < CLIENT_HELLO_TELL or all(payload[at] == value for at, value in CLIENT_HELLO_MORE)
    ):
        return True
    return payload[:HTTP_PREFIX_LEN] in HTTP_METHOD_PREFIXES


class _TcpBuffer:
    __slots__ = ("kind", "data", "segments", "last_us")

    def __init__(self, kind: str, data: bytes, ts_us: int) -> None:
        self.kind = kind
        self.data = bytearray(data)
        self.segments = 1
        self.last_us = ts_us


class NameExtractor:
    """Learns names from single packets' transport payloads; see the module docstring."""

    def __init__(self, probe_id: str) -> None:
        self.probe_id = probe_id
        self.counters: dict[str, int] = {}
        self._buffers: dict[tuple[str, int, str, int], _TcpBuffer] = {}
        self._buffered_ports: dict[tuple[int, int], int] = {}
        self._dhcp_pending: dict[bytes, list[str]] = {}
        self._udp: dict[int, Callable[[int, str, str, int, int, bytes], list[Name]]] = {
            PORT_DNS: self._dns_family,
            PORT_MDNS: self._dns_family,
            PORT_LLMNR: self._dns_family,
            PORT_NETBIOS_NS: self._netbios,
            PORT_DHCP_SERVER: self._dhcp,
            PORT_DHCP_CLIENT: self._dhcp,
        }

    # -------------------------------------------------------- the interface

    def interesting(self, proto: int, sport: int, dport: int, payload: bytes) -> bool:
        """True if ``feed()`` may learn something from this packet (``payload`` not empty)."""
        return interesting_alone(proto, sport, payload) or (
            proto == PROTO_TCP and (sport, dport) in self._buffered_ports
        )

    def buffered_port_pairs(self) -> set[tuple[int, int]]:
        """(sport, dport) of the TCP half-streams with a partial message kept: their later
        segments are interesting whatever they start with."""
        return set(self._buffered_ports)

    def feed(
        self, ts_us: int, src: str, dst: str, proto: int, sport: int, dport: int, payload: bytes
    ) -> list[Name]:
        try:
            if proto == PROTO_UDP:
                handler = self._udp.get(sport)
                if handler is None:
                    self._count("ignored-port")
                    return []
                names = handler(ts_us, src, dst, sport, dport, payload)
            elif proto == PROTO_TCP:
                names = self._tcp(ts_us, src, dst, sport, dport, payload)
            else:
                self._count("ignored-protocol")
                return []
        except ParseError as exc:
            self._count(exc.reason)
            return []
        except Exception as exc:  # a bug must cost one packet's names, never the probe
            self._count("names-internal-error")
            log.debug("name extraction failed on %s:%s → %s:%s: %r", src, sport, dst, dport, exc)
            return []
        for name in names:
            self._count(name.source)
        return names

    # -------------------------------------------------------- bookkeeping

    def _count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def _name(self, ts_us: int, addr: str, name: str, source: str, client: str, **extra: object) -> Name:
        return Name(self.probe_id, ts_us, addr, name, source, client, **extra)  # type: ignore[arg-type]

    def _buffer_put(self, key: tuple[str, int, str, int], buf: _TcpBuffer) -> None:
        if key not in self._buffers:
            while len(self._buffers) >= MAX_TCP_BUFFERS:
                oldest = next(iter(self._buffers))
                self._buffer_drop(oldest)
                self._count("tcp-buffer-evicted")
            ports = (key[1], key[3])
            self._buffered_ports[ports] = self._buffered_ports.get(ports, 0) + 1
        self._buffers[key] = buf

    def _buffer_drop(self, key: tuple[str, int, str, int]) -> None:
        if self._buffers.pop(key, None) is None:
            return
        ports = (key[1], key[3])
        left = self._buffered_ports.get(ports, 1) - 1
        if left:
            self._buffered_ports[ports] = left
        else:
            self._buffered_ports.pop(ports, None)

    # -------------------------------------------------------- TCP: DNS, TLS, HTTP

    def _tcp(self, ts_us: int, src: str, dst: str, sport: int, dport: int, payload: bytes) -> list[Name]:
        key = (src, sport, dst, dport)
        buf = self._buffers.get(key)
        if buf is not None and ts_us - buf.last_us > TCP_BUFFER_IDLE_US:
            self._buffer_drop(key)
            self._count(f"{buf.kind}-buffer-expired")
            buf = None
        if sport == PORT_DNS:
            return self._dns_tcp(ts_us, key, buf, payload)
        if buf is not None and buf.kind == "tls":
            return self._tls_continue(ts_us, key, buf, payload)
        if buf is not None and buf.kind == "http":
            return self._http_continue(ts_us, key, buf, payload)
        if payload[:1] == b"\x16" and (len(payload) < 2 or payload[1] == 3):
            return self._tls(ts_us, key, payload)
        if payload[:4] in HTTP_METHOD_PREFIXES:
            return self._http(ts_us, key, payload)
        self._count("ignored-tcp")
        return []

    def _dns_tcp(
        self, ts_us: int, key: tuple[str, int, str, int], buf: _TcpBuffer | None, payload: bytes
    ) -> list[Name]:
        if buf is None:
            data = bytearray(payload)
        else:
            data = buf.data + payload
        names: list[Name] = []
        messages = 0
        while len(data) >= 2 and messages < MAX_DNS_TCP_MESSAGES:
            length = (data[0] << 8) | data[1]
            if length < DNS_HEADER_LEN:  # framing lost (or not DNS): nothing after it can be read
                self._buffer_drop(key)
                self._count("dns-tcp-malformed")
                return names
            if len(data) < 2 + length:
                break
            message = bytes(data[2 : 2 + length])
            del data[: 2 + length]
            messages += 1
            try:
                names += self._dns_message(ts_us, key[0], key[2], "dns", message)
            except ParseError as exc:
                self._count(exc.reason)
        if data and len(data) < MAX_DNS_TCP_BUFFER and messages < MAX_DNS_TCP_MESSAGES:
            if buf is None:
                buf = _TcpBuffer("dns-tcp", b"", ts_us)
            buf.data = data
            buf.last_us = ts_us
            self._buffer_put(key, buf)
            if not messages:
                self._count("buffered-dns-tcp")
        else:
            self._buffer_drop(key)
            if data:
                self._count("dns-tcp-overflow")
            elif not messages:
                self._count("ignored-dns-tcp-empty")
        return names

    def _tls(self, ts_us: int, key: tuple[str, int, str, int], payload: bytes) -> list[Name]:
        try:
            sni = client_hello_sni(payload)
        except NeedMore:
            if len(payload) >= MAX_TLS_BUFFER:
                raise ParseError("tls-hello-too-large") from None
            self._buffer_put(key, _TcpBuffer("tls", payload, ts_us))
            self._count("buffered-tls")
            return []
        return self._sni_names(ts_us, key, sni)

    def _tls_continue(
        self, ts_us: int, key: tuple[str, int, str, int], buf: _TcpBuffer, payload: bytes
    ) -> list[Name]:
        buf.data += payload
        buf.segments += 1
        buf.last_us = ts_us
        try:
            sni = client_hello_sni(bytes(buf.data))
        except NeedMore:
            if len(buf.data) >= MAX_TLS_BUFFER or buf.segments >= MAX_TLS_SEGMENTS:
                self._buffer_drop(key)
                raise ParseError("tls-hello-too-large") from None
            self._count("buffered-tls")
            return []
        except ParseError:
            self._buffer_drop(key)
            raise
        self._buffer_drop(key)
        return self._sni_names(ts_us, key, sni)

    def _sni_names(self, ts_us: int, key: tuple[str, int, str, int], sni: str | None) -> list[Name]:
        if sni is None:
            self._count("ignored-tls-no-sni")
            return []
        return [self._name(ts_us, key[2], sni, "sni", key[0])]

    def _http(self, ts_us: int, key: tuple[str, int, str, int], payload: bytes) -> list[Name]:
        try:
            value = http_host_value(payload[:MAX_HTTP_HEAD])
        except NeedMore:
            if len(payload) >= MAX_HTTP_HEAD:
                raise ParseError("http-head-too-large") from None
            self._buffer_put(key, _TcpBuffer("http", payload, ts_us))
            self._count("buffered-http")
            return []
        return self._http_names(ts_us, key, value)

    def _http_continue(
        self, ts_us: int, key: tuple[str, int, str, int], buf: _TcpBuffer, payload: bytes
    ) -> list[Name]:
        buf.data += payload[: MAX_HTTP_HEAD - len(buf.data)]
        buf.segments += 1
        buf.last_us = ts_us
        try:
            value = http_host_value(bytes(buf.data))
        except NeedMore:
            if len(buf.data) >= MAX_HTTP_HEAD or buf.segments >= MAX_HTTP_SEGMENTS:
                self._buffer_drop(key)
                raise ParseError("http-head-too-large") from None
            self._count("buffered-http")
            return []
        self._buffer_drop(key)
        return self._http_names(ts_us, key, value)

    def _http_names(self, ts_us: int, key: tuple[str, int, str, int], value: bytes | None) -> list[Name]:
        if value is None:
            self._count("http-no-host")
            return []
        host = host_header_name(value)
        if host is None:
            self._count("ignored-http-host-literal")
            return []
        return [self._name(ts_us, key[2], host, "http", key[0])]

    # -------------------------------------------------------- DNS family (UDP 53, 5353, 5355)

    def _dns_family(
        self, ts_us: int, src: str, dst: str, sport: int, dport: int, payload: bytes
    ) -> list[Name]:
        return self._dns_message(ts_us, src, dst, DNS_FAMILY_SOURCE[sport], payload)

    def _dns_message(self, ts_us: int, src: str, dst: str, source: str, wire: bytes) -> list[Name]:
        if len(wire) < 12:
            raise ParseError(f"{source}-truncated")
        if not wire[2] & 0x80:
            self._count(f"ignored-{source}-query")
            return []
        try:
            message = dns.message.from_wire(wire, ignore_trailing=True, continue_on_error=True)
        except dns.message.ShortHeader:
            raise ParseError(f"{source}-truncated") from None
        except (dns.exception.DNSException, ValueError, struct.error, IndexError):
            raise ParseError(f"{source}-malformed") from None
        if message.errors:
            self._count(f"{source}-record-errors", len(message.errors))
        rcode = message.rcode()
        if rcode:
            self._count(f"ignored-{source}-rcode-{dns.rcode.to_text(rcode).lower()}")
            return []
        if source == "dns":
            names = self._unicast_answers(ts_us, dst, message)
        else:
            names = self._multicast_answers(ts_us, dst, source, message)
        if not names:
            self._count(f"ignored-{source}-no-address")
        return names[:MAX_NAMES_PER_MESSAGE]

    def _unicast_answers(self, ts_us: int, client: str, message: dns.message.Message) -> list[Name]:
        if not message.question:
            return []
        qname = message.question[0].name
        targets: dict[dns.name.Name, dns.name.Name] = {}
        for rrset in message.answer:
            if rrset.rdtype == _CNAME and rrset.name not in targets:
                targets[rrset.name] = next(iter(rrset)).target
        chain_names = [qname]
        while chain_names[-1] in targets and len(chain_names) <= MAX_CNAME_HOPS:
            target = targets[chain_names[-1]]
            if target in chain_names:
                break
            chain_names.append(target)
        chain_text = [dns_name_text(n) for n in chain_names]
        position = {n: i for i, n in enumerate(chain_names)}
        queried = chain_text[0]
        names: list[Name] = []
        for rrset in message.answer:
            if rrset.rdclass != _IN:
                continue
            rdtype = rrset.rdtype
            hop = position.get(rrset.name)
            if hop is None:
                owner = dns_name_text(rrset.name)
                name, chain = owner, [owner]
            else:
                name, chain = queried, chain_text[: hop + 1]
            if rdtype in _ADDRESS_TYPES:
                qtype = _ADDRESS_TYPES[rdtype]
                for rdata in rrset:
                    addr = _rdata_address(rdata)
                    if addr:
                        names.append(
                            self._name(
                                ts_us,
                                addr,
                                name,
                                "dns",
                                client,
                                ttl=rrset.ttl,
                                cname_chain=chain,
                                qtype=qtype,
                            )
                        )
            elif rdtype == _PTR:
                addr = _reverse_address(chain_names[0] if hop is not None else rrset.name)
                if addr:
                    for rdata in rrset:
                        target = dns_name_text(rdata.target)
                        if target:
                            names.append(
                                self._name(ts_us, addr, target, "ptr", client, ttl=rrset.ttl, qtype="PTR")
                            )
            elif rdtype in (_HTTPS, _SVCB):
                qtype = "HTTPS" if rdtype == _HTTPS else "SVCB"
                for rdata in rrset:
                    for addr in _svcb_hints(rdata):
                        names.append(
                            self._name(
                                ts_us,
                                addr,
                                name,
                                "dns",
                                client,
                                ttl=rrset.ttl,
                                cname_chain=chain,
                                qtype=qtype,
                            )
                        )
        return names

    def _multicast_answers(
        self, ts_us: int, client: str, source: str, message: dns.message.Message
    ) -> list[Name]:
        names: list[Name] = []
        for rrset in message.answer + message.additional:
            # mDNS sets the top bit of the class ("cache flush"); dnspython then keeps raw rdata.
            if rrset.rdclass & 0x7FFF != _IN:
                continue
            rdtype = rrset.rdtype
            if rdtype in _ADDRESS_TYPES:
                owner = dns_name_text(rrset.name)
                if not owner:
                    continue
                for rdata in rrset:
                    addr = _rdata_address(rdata)
                    if addr:
                        names.append(
                            self._name(
                                ts_us,
                                addr,
                                owner,
                                source,
                                client,
                                ttl=rrset.ttl,
                                qtype=_ADDRESS_TYPES[rdtype],
                            )
                        )
            elif rdtype == _PTR:
                addr = _reverse_address(rrset.name)
                if not addr:
                    continue  # a service-discovery PTR, not a reverse name
                for rdata in rrset:
                    target = _ptr_target(rdata)
                    if target:
                        names.append(
                            self._name(ts_us, addr, target, "ptr", client, ttl=rrset.ttl, qtype="PTR")
                        )
        return names

    # -------------------------------------------------------- NetBIOS name service (UDP 137)

    def _netbios(self, ts_us: int, src: str, dst: str, sport: int, dport: int, payload: bytes) -> list[Name]:
        if len(payload) < 12:
            raise ParseError("netbios-truncated")
        flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHHH", payload, 2)
        response, opcode, rcode = bool(flags & 0x8000), (flags >> 11) & 0xF, flags & 0xF
        if response and (opcode != 0 or rcode or not ancount or src == "0.0.0.0"):
            self._count("ignored-netbios-response")
            return []
        if not response and (opcode not in NETBIOS_REGISTRATION_OPCODES or not arcount):
            self._count("ignored-netbios-query")
            return []
        if qdcount > 1 or ancount > 16 or nscount > 16 or arcount > 16:
            raise ParseError("netbios-malformed")
        pos = 12
        for _ in range(qdcount):
            _, _, pos = _netbios_name(payload, pos)
            pos += 4
        names: list[Name] = []
        for _ in range(ancount + nscount + arcount):
            name, suffix, pos = _netbios_name(payload, pos)
            if pos + 10 > len(payload):
                raise ParseError("netbios-truncated")
            rr_type, _, ttl, rdlength = struct.unpack_from("!HHIH", payload, pos)
            pos += 10
            rdata = payload[pos : pos + rdlength]
            pos += rdlength
            if len(rdata) < rdlength:
                raise ParseError("netbios-truncated")
            if rr_type == NETBIOS_TYPE_NBSTAT and response:
                names += self._netbios_status(ts_us, src, dst, ttl, rdata)
                continue
            if rr_type != NETBIOS_TYPE_NB or suffix not in NETBIOS_HOST_SUFFIXES or not name:
                continue
            for i in range(0, rdlength - 5, 6):
                nb_flags = (rdata[i] << 8) | rdata[i + 1]
                if nb_flags & 0x8000:  # a group name (workgroup): no one host's name
                    continue
                addr = canonical_addr(rdata[i + 2 : i + 6])
                if addr != "0.0.0.0":
                    names.append(self._name(ts_us, addr, name, "netbios", dst if response else src, ttl=ttl))
        if not names:
            self._count("ignored-netbios-no-address")
        return names

    def _netbios_status(self, ts_us: int, src: str, dst: str, ttl: int, rdata: bytes) -> list[Name]:
        if not rdata:
            raise ParseError("netbios-truncated")
        names: list[Name] = []
        seen: set[str] = set()
        for i in range(min(rdata[0], (len(rdata) - 1) // 18)):
            entry = rdata[1 + 18 * i : 1 + 18 * (i + 1)]
            suffix, flags = entry[15], (entry[16] << 8) | entry[17]
            name = clean_name(entry[:15].rstrip(b" \x00").decode("latin-1"))
            if flags & 0x8000 or suffix not in NETBIOS_HOST_SUFFIXES or not name or name in seen:
                continue
            seen.add(name)
            names.append(self._name(ts_us, src, name, "netbios", dst, ttl=ttl))
        return names

    # -------------------------------------------------------- DHCP (UDP 67/68)

    def _dhcp(self, ts_us: int, src: str, dst: str, sport: int, dport: int, payload: bytes) -> list[Name]:
        """Host names bind to an address the client owns: its ciaddr, or the yiaddr of the ACK.

        A REQUEST for option 50's address may still be refused (NAK), so its names wait for the
        ACK of the same transaction (xid + client hardware address).
        """
        if len(payload) < 240:
            raise ParseError("dhcp-truncated")
        if payload[236:240] != DHCP_MAGIC:
            self._count("ignored-dhcp-bootp")
            return []
        options = _dhcp_options(payload)
        message_type = options.get(53, b"\x00")[0]
        transaction = bytes(payload[4:8] + payload[28:44])  # xid, chaddr
        hostnames = _dhcp_hostnames(options)
        ciaddr, yiaddr = payload[12:16], payload[16:20]
        if message_type == DHCP_ACK:
            hostnames += [h for h in self._dhcp_pending.pop(transaction, []) if h not in hostnames]
            packed = yiaddr if yiaddr != ZERO_V4 else ciaddr
        elif message_type in (DHCP_REQUEST, DHCP_INFORM) and ciaddr != ZERO_V4:
            packed = ciaddr
        elif message_type in (DHCP_DISCOVER, DHCP_REQUEST) and hostnames:
            if transaction not in self._dhcp_pending and len(self._dhcp_pending) >= MAX_DHCP_PENDING:
                del self._dhcp_pending[next(iter(self._dhcp_pending))]
                self._count("dhcp-pending-evicted")
            self._dhcp_pending[transaction] = hostnames
            self._count("buffered-dhcp")
            return []
        else:
            if message_type == DHCP_NAK:
                self._dhcp_pending.pop(transaction, None)
            self._count("ignored-dhcp-message-type")
            return []
        if packed == ZERO_V4 or not hostnames:
            self._count("ignored-dhcp-no-address" if hostnames else "ignored-dhcp-no-name")
            return []
        addr = canonical_addr(packed)
        return [self._name(ts_us, addr, hostname, "dhcp", addr) for hostname in hostnames]


def _dhcp_hostnames(options: dict[int, bytes]) -> list[str]:
    hostnames: list[str] = []
    if 81 in options:
        fqdn = _dhcp_fqdn(options[81])
        if fqdn:
            hostnames.append(fqdn)
    if 12 in options:
        hostname = clean_name(options[12].rstrip(b"\x00").decode("utf-8", "backslashreplace"))
        if hostname and hostname not in hostnames:
            hostnames.append(hostname)
    return hostnames


# ---------------------------------------------------------------- rdata helpers


def _rdata_address(rdata: object) -> str | None:
    address = getattr(rdata, "address", None)
    if address is not None:
        return address if ":" not in address else str(ipaddress.ip_address(address))
    data = getattr(rdata, "data", b"")  # GenericRdata: mDNS cache-flush class
    if len(data) in (4, 16):
        return canonical_addr(data)
    raise ParseError("dns-bad-address")


def _ptr_target(rdata: object) -> str | None:
    target = getattr(rdata, "target", None)
    if target is not None:
        return dns_name_text(target)
    return None  # GenericRdata with a compressed name inside: not worth a second parser


def _reverse_address(name: dns.name.Name) -> str | None:
    try:
        return str(ipaddress.ip_address(dns.reversename.to_address(name)))
    except (dns.exception.DNSException, ValueError, TypeError):
        return None


def _svcb_hints(rdata: object) -> list[str]:
    params = getattr(rdata, "params", None) or {}
    out: list[str] = []
    for key in _HINT_KEYS:
        value = params.get(key)
        for address in getattr(value, "addresses", ()) or ():
            out.append(str(ipaddress.ip_address(address)))
    return out
