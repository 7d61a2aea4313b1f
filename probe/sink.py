"""Where metered records go: the seam between the metering engine and export.

The engine (probe.pipeline) calls a Sink; probe.export provides the real ones (collector with
spool, JSON lines / CSV / Parquet files).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from hostflow.records import Flow, Name


class Sink(Protocol):
    def add_flows(self, flows: list[Flow]) -> None: ...

    def add_names(self, names: list[Name]) -> None: ...

    def set_health(self, health: dict[str, Any]) -> None:
        """Latest counters (see docs/CONTRACT.md, `health`); called now and then, and at close."""

    def close(self) -> None:
        """Everything handed over so far must be delivered (or safely spooled) when this returns."""


@dataclass
class MemorySink:
    """Keeps everything in lists: for tests and for in-process use (demo builder)."""

    flows: list[Flow] = field(default_factory=list)
    names: list[Name] = field(default_factory=list)
    health: dict[str, Any] = field(default_factory=dict)
    closed: bool = False

    def add_flows(self, flows: list[Flow]) -> None:
        self.flows.extend(flows)

    def add_names(self, names: list[Name]) -> None:
        self.names.extend(names)

    def set_health(self, health: dict[str, Any]) -> None:
        self.health = dict(health)

    def close(self) -> None:
        self.closed = True
