"""The user's own host names, and the best readable name for an intranet host.

Hosts file: CSV ``addr,name[,mac]``, UTF-8 (a spreadsheet's BOM is fine). Blank lines and lines
starting with ``#`` are skipped, and so is a first line that reads ``addr,name…``. A line
may leave ``addr`` empty and give a MAC: the name then follows that MAC whatever address
DHCP hands it. Bad lines are skipped, logged once each, and counted by reason in ``errors``.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from hostflow.enrich.errors import EnrichError

log = logging.getLogger(__name__)

_MAC = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")

HOSTS_SOURCE = "hosts"
# Which name wins for an intranet host: the user's (a "hosts" record, should one be stored),
# then what the host calls itself (DHCP, mDNS, NetBIOS, LLMNR) over what others call it (PTR,
# DNS), over names seen only in TLS/HTTP.
SOURCE_ORDER: tuple[str, ...] = (
    HOSTS_SOURCE,
    "dhcp",
    "mdns",
    "netbios",
    "llmnr",
    "ptr",
    "dns",
    "sni",
    "http",
)


def canonical_addr(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        return None


def canonical_mac(text: str) -> str | None:
    raw = text.strip().lower()
    if not _MAC.match(raw):
        return None
    digits = raw.replace(":", "").replace("-", "")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


class HostList:
    """Names the user maintains for intranet hosts; they take precedence over learned ones.

    ``HostList(None)`` is an empty list. A path that cannot be read raises ``EnrichError``;
    bad lines inside a readable file do not (see ``errors`` and ``problems``).
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path is None else os.fspath(path)
        self.by_addr: dict[str, str] = {}
        self.by_mac: dict[str, str] = {}
        self.errors: Counter[str] = Counter()
        self.problems: list[str] = []  # one line per bad line: "hosts.csv:7: bad address '10.0.0.300'"
        self._mtime: float | None = None
        if self.path is not None:
            self.refresh()

    def __len__(self) -> int:
        return len(self.by_addr) + len(self.by_mac)

    def refresh(self) -> bool:
        """Re-read the file if it changed since the last read; True when it was read."""
        if self.path is None:
            return False
        try:
            mtime = os.stat(self.path).st_mtime
            if mtime == self._mtime:
                return False
            with open(self.path, encoding="utf-8-sig", newline="") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise EnrichError(f"cannot read the hosts file {self.path}: {exc}") from exc
        self._load(text)
        self._mtime = mtime
        return True

    def _bad(self, line_no: int, reason: str, detail: str) -> None:
        self.errors[reason] += 1
        message = f"{self.path}:{line_no}: {reason} {detail}"
        self.problems.append(message)
        log.warning("hosts file line skipped: %s", message)

    def _load(self, text: str) -> None:
        by_addr: dict[str, str] = {}
        by_mac: dict[str, str] = {}
        self.errors.clear()
        self.problems.clear()
        for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            cells = [cell.strip() for cell in row]
            if not cells or not any(cells) or cells[0].startswith("#"):
                continue
            if line_no == 1 and cells[0].lower() in ("addr", "address", "ip") and len(cells) > 1:
                continue
            if len(cells) < 2 or len(cells) > 3:
                self._bad(line_no, "wrong column count", f"({len(cells)}, expected addr,name[,mac])")
                continue
            raw_addr, name = cells[0], cells[1]
            raw_mac = cells[2] if len(cells) == 3 else ""
            if not name:
                self._bad(line_no, "empty name", f"for {raw_addr or raw_mac!r}")
                continue
            addr = canonical_addr(raw_addr) if raw_addr else None
            if raw_addr and addr is None:
                self._bad(line_no, "bad address", repr(raw_addr))
                continue
            mac = canonical_mac(raw_mac) if raw_mac else None
            if raw_mac and mac is None:
                self._bad(line_no, "bad mac", repr(raw_mac))
                continue
            if addr is None and mac is None:
                self._bad(line_no, "no address or mac", f"for {name!r}")
                continue
            if addr is not None:
                if addr in by_addr and by_addr[addr] != name:
                    self._bad(line_no, "duplicate address", f"{addr} (kept the later name {name!r})")
                by_addr[addr] = name
            if mac is not None:
                by_mac[mac] = name
        self.by_addr, self.by_mac = by_addr, by_mac

    def name_for(self, addr: str, mac: str = "") -> str | None:
        """The user's name for ``addr`` (or, failing that, for ``mac``); None when not listed."""
        name = self.by_addr.get(addr)
        if name is None and addr:
            canonical = canonical_addr(addr)
            name = self.by_addr.get(canonical) if canonical else None
        if name is None and mac and self.by_mac:
            canonical = canonical_mac(mac)
            name = self.by_mac.get(canonical) if canonical else None
        return name


def _field(record: Any, key: str) -> Any:
    return record.get(key) if isinstance(record, Mapping) else getattr(record, key, None)


def intranet_name(
    addr: str, names_for_addr: Iterable[Any], hostlist: HostList | None, mac: str = ""
) -> tuple[str, str]:
    """The best readable name for an intranet host, and where it came from.

    ``names_for_addr``: the ``Name`` records (or dicts with the same keys) learned for
    ``addr``; records for other addresses are ignored. Precedence: the hosts file
    (source ``"hosts"``), then dhcp > mdns > netbios > llmnr > ptr > dns (> sni > http);
    within one source the latest record wins. Nothing known: ``(addr, "")``.
    """
    if hostlist is not None:
        listed = hostlist.name_for(addr, mac)
        if listed:
            return listed, HOSTS_SOURCE
    wanted = canonical_addr(addr) or addr
    rank = {source: i for i, source in enumerate(SOURCE_ORDER)}
    best: tuple[int, int] | None = None
    best_name = ""
    for record in names_for_addr:
        source, name = _field(record, "source"), _field(record, "name")
        if source not in rank or not name:
            continue
        record_addr = _field(record, "addr")
        if record_addr and record_addr != addr and (canonical_addr(str(record_addr)) or "") != wanted:
            continue
        key = (rank[source], -int(_field(record, "ts") or 0))
        if best is None or key < best:
            best, best_name = key, str(name).rstrip(".")
    if best is None:
        return addr, ""
    return best_name, SOURCE_ORDER[best[0]]
