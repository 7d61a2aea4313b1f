"""Name attribution: which name explains a flow's peer address at the flow's time.

Shared by every storage backend: the backend returns the (small) set of candidate name records
for the peer addresses of a query's result; the rules live here, in Python, once.

Rules (each pinned by tests/test_attribution.py):
1. Only the peer address is looked up: a name goes to the address it was resolved to, never to the
   client that asked (a local host never inherits its server's name, in either flow direction).
2. A name is valid from its ``ts`` until ``ts + ttl + grace`` (DNS family: the record's TTL), or
   ``ts + validity`` for sources without a TTL (SNI, HTTP, DHCP, NetBIOS, …, or a TTL of 0).
3. It must be seen at or before the flow's start — except SNI/HTTP seen from the same client
   while the flow lasts (``flow_start < ts <= flow_end``): the ClientHello / Host header follows
   the SYN inside the same connection, so it names that connection. A DNS answer after the start
   never names the flow.
4. Among valid names: those seen by the same client (``client_addr == host``) first; then by
   source rank (DNS family over SNI over HTTP over the rest); then the latest.
5. The displayed name is the one the client asked for: the first of the CNAME chain (which the
   name record already carries as ``name``); the chain is kept, and the source is reported.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

SOURCE_RANK: dict[str, int] = {
    "dns": 0,
    "mdns": 1,
    "llmnr": 1,
    "hosts": 1,
    "sni": 2,
    "http": 3,
    "dhcp": 4,
    "netbios": 4,
    "ptr": 5,
}
TTL_SOURCES = frozenset({"dns", "mdns", "llmnr", "ptr"})
IN_FLOW_SOURCES = frozenset({"sni", "http"})
US = 1_000_000


@dataclass(frozen=True)
class Rules:
    grace_s: float = 3600.0  # a DNS answer stays usable this long past its TTL
    validity_s: float = 3600.0  # how long a name without a TTL stays valid

    def lookback_us(self, max_ttl_s: float = 86_400.0) -> int:
        """How far before a window to fetch candidates (the longest possible validity)."""
        return int((max(max_ttl_s, self.validity_s) + self.grace_s) * US)


@dataclass(frozen=True)
class Attributed:
    name: str
    source: str
    cname_chain: tuple[str, ...]
    ts: int


@dataclass(frozen=True)
class _Candidate:
    ts: int
    valid_until: int
    name: str
    source: str
    client: str
    chain: tuple[str, ...]


class Attributor:
    """Built once per query from the candidate names; answers ``lookup(peer, host, start, end)``."""

    def __init__(self, names: pa.Table | Sequence[dict[str, Any]], rules: Rules | None = None) -> None:
        self.rules = rules or Rules()
        rows = names.to_pylist() if isinstance(names, pa.Table) else list(names)
        grace = int(self.rules.grace_s * US)
        validity = int(self.rules.validity_s * US)
        by_addr: dict[str, list[_Candidate]] = defaultdict(list)
        for row in rows:
            source = row["source"]
            ttl = int(row.get("ttl") or 0)
            if source in TTL_SOURCES and ttl > 0:
                valid_until = row["ts"] + ttl * US + grace
            else:
                valid_until = row["ts"] + validity
            chain = tuple(row.get("cname_chain") or ())
            shown = chain[0] if chain else row["name"]
            by_addr[row["addr"]].append(
                _Candidate(row["ts"], valid_until, shown, source, row.get("client_addr") or "", chain)
            )
        self._by_addr = {}
        self._times = {}
        for addr, candidates in by_addr.items():
            candidates.sort(key=lambda c: c.ts)
            self._by_addr[addr] = candidates
            self._times[addr] = [c.ts for c in candidates]
        self._max_validity = max([c.valid_until - c.ts for cs in self._by_addr.values() for c in cs] or [0])

    def lookup(self, peer: str, host: str, flow_start: int, flow_end: int | None = None) -> Attributed | None:
        candidates = self._by_addr.get(peer)
        if not candidates:
            return None
        flow_end = flow_start if flow_end is None else flow_end
        times = self._times[peer]
        upto = bisect.bisect_right(times, flow_end)
        best: tuple[tuple[int, int, int], _Candidate] | None = None
        index = upto - 1
        oldest = flow_start - self._max_validity
        while index >= 0 and times[index] >= oldest:
            candidate = candidates[index]
            index -= 1
            same_client = candidate.client == host
            if candidate.ts <= flow_start:
                if candidate.valid_until < flow_start:
                    continue
            elif not (same_client and candidate.source in IN_FLOW_SOURCES):
                continue
            key = (0 if same_client else 1, SOURCE_RANK.get(candidate.source, 9), -candidate.ts)
            if best is None or key < best[0]:
                best = (key, candidate)
        if best is None:
            return None
        chosen = best[1]
        return Attributed(chosen.name, chosen.source, chosen.chain, chosen.ts)
