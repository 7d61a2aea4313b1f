"""Port → IANA service name, from the registry copy shipped in ``data/service-names.tsv``.

The table is read once, on first use (about 6,000 lines, a few milliseconds). Keys are
``protocol << 16 | port`` so that the per-flow lookup is one dict probe on an int.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

DATA_FILE = Path(__file__).with_name("data") / "service-names.tsv"

# The transports the IANA registry assigns ports for, by IP protocol number.
TRANSPORTS: dict[str, int] = {"tcp": 6, "udp": 17, "dccp": 33, "sctp": 132}


@functools.cache
def _table() -> dict[int, tuple[str, str]]:
    table: dict[int, tuple[str, str]] = {}
    with DATA_FILE.open(encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("#") or not line.strip():
                continue
            name, spec, description = (line.rstrip("\n").split("\t") + ["", ""])[:3]
            ports, *protocols = spec.split("/")
            first, _, last = ports.partition("-")
            for port in range(int(first), int(last or first) + 1):
                for transport in protocols:
                    # The registry lists a port once; keep the first name should a copy repeat it.
                    table.setdefault(TRANSPORTS[transport] << 16 | port, (name, description))
    return table


def _entry(protocol: int, port: int) -> tuple[str, str] | None:
    try:
        key = int(protocol) << 16 | int(port)
    except (TypeError, ValueError):
        return None
    if not 0 <= port <= 0xFFFF:
        return None
    return _table().get(key)


def service_name(protocol: int, port: int) -> str | None:
    """The IANA service name of ``port`` on ``protocol`` (6 tcp, 17 udp, 33 dccp, 132 sctp).

    ``service_name(6, 443) == "https"``, ``service_name(17, 53) == "domain"``; None when the
    registry names no service there, for port 0, for ports outside 0–65535 and for protocols
    without ports (ICMP's type/code in ``dst_port`` is not a port).
    """
    entry = _entry(protocol, port)
    return None if entry is None else entry[0]


def service_description(protocol: int, port: int) -> str | None:
    """The registry's description of the service (``"World Wide Web HTTP"`` for tcp/80)."""
    entry = _entry(protocol, port)
    return None if entry is None or not entry[1] else entry[1]


def unknown_ports(pairs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ``(protocol, port)`` pairs with no registered service, first-seen order, each once.

    Only TCP, UDP, DCCP and SCTP pairs can be unknown ports; other protocols have no ports
    and are left out.
    """
    transports = set(TRANSPORTS.values())
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    for protocol, port in pairs:
        pair = (int(protocol), int(port))
        if pair in seen or pair[0] not in transports:
            continue
        seen.add(pair)
        if service_name(*pair) is None:
            out.append(pair)
    return out
