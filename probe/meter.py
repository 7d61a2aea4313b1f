"""The flow table: packets in, unidirectional flow records out.

Semantics (softflowd 1.1.0's, checked against its source and its exports, with three
differences that are deliberate and tested in tests/test_probe_accuracy.py):

- Flows are keyed by (protocol, src, src_port, dst, dst_port); IPv4 and IPv6 addresses never
  collide. Like softflowd's default tracking level ("full") the VLAN id is not part of the key:
  the flow carries the VLAN id of its first packet.
- Both directions of a conversation live in one table entry (a *pair*) and expire together, as in
  softflowd: the pair's last packet in either direction drives the idle timeout, its first packet
  the active timeout. Each direction with packets becomes one Flow; its ``flow_start`` /
  ``flow_end`` are that direction's own first/last packet (softflowd exports the pair's times for
  both directions).
- A packet that arrives more than ``idle_timeout`` after the pair's last packet, or more than
  ``active_timeout`` after its first, ends the pair (``idle`` / ``active``) and starts a new one;
  a pair cut by the active timeout keeps its initiator. softflowd reading a file never applies
  idle timeouts at all and applies its maximum lifetime only between batches of 8192 packets, so
  the comparison with it runs with timeouts off; timeouts are tested against hand-made traffic.
- TCP: after a RST, or a FIN seen in both directions, the pair is closed; it ends (``rst`` /
  ``fin``) ``tcp_end_grace`` seconds after its last packet, so the last ACK and retransmissions
  stay in it, and at once when a new SYN reuses the same ports. softflowd does the same with
  longer timers (120 s after RST, 300 s after FINs).
- Initiator: the side that sent a SYN without ACK (or received the SYN+ACK); TCP without a
  handshake in view: the port heuristic (a port below 1024 facing one at or above it is the
  server), else the side of the pair's first packet; ICMP by message type (echo/solicitation
  requests open, replies and errors answer); everything else the side of the first packet.
- The table holds at most ``max_flows`` pairs; beyond that the least recently active pair is
  exported with ``evicted`` and counted (after expiring what has timed out).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from hostflow.records import (
    END_ACTIVE,
    END_EVICTED,
    END_FIN,
    END_IDLE,
    END_RST,
    INIT_DST,
    INIT_SRC,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    Flow,
)
from probe.options import MeterOptions

TCP_END_GRACE_S = 2.0
MOVE_GRANULARITY_US = 1_000_000  # pairs move to the table's end at most once a second

# A pair is one flat list (one object, not three: 128 bytes less a conversation): its own fields,
# then 9 fields for direction 0 (key order) at P_DIR0 and 9 for direction 1 at P_DIR1.
P_START, P_LAST, P_MOVED, P_FIRST_DIR, P_SYN_DIR, P_FINS, P_CLOSED, P_VERSION = range(8)
P_DIR0, P_DIR1 = 8, 17
# direction fields, as offsets from P_DIR0 / P_DIR1; D_PACKETS == 0: no packet that way yet
D_PACKETS, D_BYTES, D_FLAGS, D_FIRST, D_LAST, D_TOS, D_VLAN, D_SRC_MAC, D_DST_MAC = range(9)
EMPTY_PAIR = (0, 0, 0, 0, -1, 0, "", 0, *(0, 0, 0, 0, 0, 0, 0, b"", b""), *(0, 0, 0, 0, 0, 0, 0, b"", b""))

TH_FIN, TH_SYN, TH_RST, TH_ACK = 0x01, 0x02, 0x04, 0x10
_TEN_ZEROS = bytes(10)

ICMP_OPENERS = frozenset((8, 13, 15, 17, 10, 35, 37))  # echo, timestamp, info, mask, router sol.
ICMPV6_OPENERS = frozenset((128, 130, 133, 135, 139, 141, 144, 146))  # echo, MLD query, RS, NS, …


class FlowMeter:
    """Meter decoded packets into flows; finished flows go to ``emit`` in lists."""

    def __init__(
        self,
        options: MeterOptions,
        emit: Callable[[list[Flow]], None],
        *,
        tcp_end_grace: float = TCP_END_GRACE_S,
        batch: int = 2000,
    ) -> None:
        self.probe_id = options.probe_id
        self.idle_us = int(options.idle_timeout * 1_000_000)
        self.active_us = int(options.active_timeout * 1_000_000)
        self.grace_us = int(min(tcp_end_grace, options.idle_timeout) * 1_000_000)
        self.max_pairs = max(1, int(options.max_flows))
        self.emit = emit
        self.batch = batch
        self.pairs: dict[tuple, list] = {}
        self.pending: list[Flow] = []
        self.flows_exported = 0
        self.flows_evicted = 0
        self._addr_cache: dict[bytes, str] = {}
        self._mac_cache: dict[bytes, str] = {b"": ""}
        self._last_room_scan = -1

    # ------------------------------------------------------------ per packet

    def add(self, ts: int, vlan: int, version: int, proto: int, src: bytes, dst: bytes, sport: int,
            dport: int, flags: int, tos: int, nbytes: int, src_mac: bytes, dst_mac: bytes) -> None:  # fmt: skip
        if src < dst or (src == dst and sport <= dport):
            key = (proto, src, sport, dst, dport)
            side = 0
        else:
            key = (proto, dst, dport, src, sport)
            side = 1
        pairs = self.pairs
        pair = pairs.get(key)
        if pair is not None:
            if ts - pair[P_LAST] > self.idle_us:
                self._end(key, pair, pair[P_CLOSED] or END_IDLE)
                pair = None
            elif ts - pair[P_START] > self.active_us:
                carry = (pair[P_FIRST_DIR], pair[P_SYN_DIR])
                self._end(key, pair, pair[P_CLOSED] or END_ACTIVE)
                pair = self._new_pair(key, ts, version, side)
                pair[P_FIRST_DIR], pair[P_SYN_DIR] = carry
            elif pair[P_CLOSED] and (
                ts - pair[P_LAST] > self.grace_us or (flags & (TH_SYN | TH_ACK)) == TH_SYN
            ):
                self._end(key, pair, pair[P_CLOSED])
                pair = None
            elif ts - pair[P_MOVED] > MOVE_GRANULARITY_US:
                del pairs[key]
                pairs[key] = pair
                pair[P_MOVED] = ts
        if pair is None:
            pair = self._new_pair(key, ts, version, side)
        base = P_DIR1 if side else P_DIR0
        if pair[base]:
            pair[base] += 1
            pair[base + D_BYTES] += nbytes
            pair[base + D_FLAGS] |= flags
            if ts > pair[base + D_LAST]:
                pair[base + D_LAST] = ts
            elif ts < pair[base + D_FIRST]:
                pair[base + D_FIRST] = ts
        else:
            pair[base : base + 9] = (1, nbytes, flags, ts, ts, tos, vlan, src_mac, dst_mac)
        if ts > pair[P_LAST]:
            pair[P_LAST] = ts
        elif ts < pair[P_START]:
            pair[P_START] = ts
        if proto == PROTO_TCP and flags & (TH_FIN | TH_SYN | TH_RST):
            if flags & TH_SYN and pair[P_SYN_DIR] < 0:
                pair[P_SYN_DIR] = side if not flags & TH_ACK else 1 - side
            if flags & TH_RST:
                pair[P_CLOSED] = END_RST
            elif flags & TH_FIN:
                pair[P_FINS] |= 1 << side
                if pair[P_FINS] == 3 and not pair[P_CLOSED]:
                    pair[P_CLOSED] = END_FIN

    def _new_pair(self, key: tuple, ts: int, version: int, side: int) -> list:
        pairs = self.pairs
        if len(pairs) >= self.max_pairs:
            self._make_room(ts)
        pair = list(EMPTY_PAIR)
        pair[P_START] = pair[P_LAST] = pair[P_MOVED] = ts
        pair[P_FIRST_DIR] = side
        pair[P_VERSION] = version
        pairs[key] = pair
        return pair

    def _make_room(self, now: int) -> None:
        if now != self._last_room_scan:
            self._last_room_scan = now
            self.expire(now)
        pairs = self.pairs
        while len(pairs) >= self.max_pairs:
            key = next(iter(pairs))
            self.flows_evicted += self._end(key, pairs[key], END_EVICTED)

    # ------------------------------------------------------------ expiry

    def expire(self, now: int) -> None:
        """Export the pairs idle for longer than the idle timeout (oldest first)."""
        pairs = self.pairs
        horizon = now - self.idle_us
        expired = []
        for key, pair in pairs.items():
            if pair[P_MOVED] >= horizon:
                break
            if pair[P_LAST] < horizon:
                expired.append((key, pair))
        for key, pair in expired:
            self._end(key, pair, pair[P_CLOSED] or END_IDLE)
        self.deliver()

    def flush(self, reason: str) -> None:
        """End every pair (end of capture, shutdown) and deliver."""
        for key, pair in list(self.pairs.items()):
            self._end(key, pair, pair[P_CLOSED] or reason)
        self.deliver()

    def deliver(self) -> None:
        if self.pending:
            flows, self.pending = self.pending, []
            self.emit(flows)

    # ------------------------------------------------------------ export

    def _end(self, key: tuple, pair: list, reason: str) -> int:
        del self.pairs[key]
        return self._export(key, pair, reason)

    def _export(self, key: tuple, pair: list, reason: str) -> int:
        """Turn a pair that has left the table into one Flow per direction with packets."""
        mac = self._mac
        directions = [
            (side, *pair[base : base + D_SRC_MAC], mac(pair[base + D_SRC_MAC]), mac(pair[base + D_DST_MAC]))
            for side, base in ((0, P_DIR0), (1, P_DIR1))
            if pair[base]
        ]
        opener = self._initiator(key[0], key[2], key[4], pair[P_SYN_DIR], pair[P_FIRST_DIR])
        return self._export_values(key, pair[P_VERSION], opener, directions, reason)

    def _export_values(
        self, key: tuple, version: int, opener: int, directions: list[tuple], reason: str
    ) -> int:
        """One Flow per direction of an ended pair (Python's table and the C table's both come here).

        ``directions``: (side, packets, bytes, flags, first, last, tos, vlan, src MAC text, dst MAC
        text) of each direction with packets; ``opener``: ``_initiator``'s answer.
        """
        proto, addr_a, port_a, addr_b, port_b = key
        addrs = self._addr_cache
        text_a = addrs.get(addr_a) or self._addr(addr_a)
        text_b = addrs.get(addr_b) or self._addr(addr_b)
        icmp = proto == PROTO_ICMP or proto == PROTO_ICMPV6
        append = self.pending.append
        probe_id = self.probe_id
        for side, packets, nbytes, flags, first, last, tos, vlan, src_mac, dst_mac in directions:
            if side == 0:
                src, sport, dst, dport = text_a, port_a, text_b, port_b
            else:
                src, sport, dst, dport = text_b, port_b, text_a, port_a
            if icmp:
                initiator = _icmp_initiator(proto, dport)
            else:
                initiator = "" if opener < 0 else INIT_SRC if opener == side else INIT_DST
            append(Flow(probe_id, first, last, version, proto, src, sport, dst, dport, packets, nbytes, flags,
                        tos, vlan, src_mac, dst_mac, reason, initiator, 1))  # fmt: skip
        made = len(directions)
        self.flows_exported += made
        if len(self.pending) >= self.batch:
            self.deliver()
        return made

    @staticmethod
    def _initiator(proto: int, port_a: int, port_b: int, syn_dir: int, first_dir: int) -> int:
        """0 or 1: which side of the pair opened the conversation."""
        if syn_dir >= 0:
            return syn_dir
        if proto == PROTO_TCP:
            if port_a < 1024 <= port_b:
                return 1
            if port_b < 1024 <= port_a:
                return 0
        return first_dir

    def _addr(self, packed: bytes) -> str:
        cache = self._addr_cache
        text = cache.get(packed)
        if text is None:
            if len(cache) > 100_000:
                cache.clear()
            # inet_ntop is several times faster and spells addresses as ipaddress does (RFC 5952),
            # except the IPv6 ones it writes with a dotted IPv4 tail (::ffff:a.b.c.d, ::a.b.c.d)
            if len(packed) == 4:
                text = cache[packed] = socket.inet_ntop(socket.AF_INET, packed)
            elif packed[:10] != _TEN_ZEROS:
                text = cache[packed] = socket.inet_ntop(socket.AF_INET6, packed)
            else:
                text = cache[packed] = str(ipaddress.ip_address(packed))
        return text

    def _mac(self, raw: bytes) -> str:
        cache = self._mac_cache
        text = cache.get(raw)
        if text is None:
            if len(cache) > 100_000:
                cache.clear()
                cache[b""] = ""
            text = cache[raw] = raw.hex(":")
        return text


def _icmp_initiator(proto: int, dport: int) -> str:
    kind = dport >> 8
    openers = ICMP_OPENERS if proto == PROTO_ICMP else ICMPV6_OPENERS
    return INIT_SRC if kind in openers else INIT_DST
