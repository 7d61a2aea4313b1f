"""Metering options shared by `probe read` and `probe capture` (CLI, config file, env vars)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MeterOptions:
    probe_id: str = "probe"
    idle_timeout: float = 15.0  # seconds without a packet ends a flow
    active_timeout: float = 60.0  # a flow longer than this is cut and a new one starts
    max_flows: int = 262_144  # flow-table bound; the oldest flow is evicted and counted beyond it
    bpf: str | None = None  # optional BPF filter, compiled at start-up
    snaplen: int = 65_535
    names: bool = True  # learn names (DNS, SNI, HTTP Host, mDNS, LLMNR, DHCP, NetBIOS)
