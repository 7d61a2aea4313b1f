"""The probe's health record (docs/CONTRACT.md, ``health``): engine counters plus export counters.

The engine reports what it measures (packets, drops, parse errors, evictions) through
``Sink.set_health``; the export side adds what it knows (flows exported, spool). The same record
travels in every batch and is written to ``health.json`` in the spool directory for local checks.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

from probe import __version__
from probe.spool import write_atomic

HEALTH_FIELDS = (
    "ts",
    "hostname",
    "version",
    "iface",
    "packets_captured",
    "kernel_drops",
    "if_drops",
    "parse_errors",
    "flows_exported",
    "flows_evicted",
    "spool_bytes",
    "spool_batches",
    "spool_dropped_batches",
    "uptime_s",
)
ENGINE_FIELDS = ("iface", "packets_captured", "kernel_drops", "if_drops", "parse_errors", "flows_evicted")


class Health:
    def __init__(self, iface: str = "") -> None:
        self._mutex = threading.Lock()
        self._started = time.monotonic()
        self._engine: dict[str, Any] = {"iface": iface}
        self.flows_exported = 0
        self.names_exported = 0

    def update_engine(self, counters: dict[str, Any]) -> None:
        """Take the engine's latest counters; keys outside the contract are ignored."""
        with self._mutex:
            for key in ENGINE_FIELDS:
                if key in counters and counters[key] is not None:
                    value = counters[key]
                    self._engine[key] = dict(value) if key == "parse_errors" else value

    def add_exported(self, flows: int, names: int) -> None:
        with self._mutex:
            self.flows_exported += flows
            self.names_exported += names

    def snapshot(
        self, spool_bytes: int = 0, spool_batches: int = 0, spool_dropped: int = 0
    ) -> dict[str, Any]:
        with self._mutex:
            engine = dict(self._engine)
            exported = self.flows_exported
        return {
            "ts": time.time_ns() // 1000,
            "hostname": socket.gethostname(),
            "version": __version__,
            "iface": str(engine.get("iface") or ""),
            "packets_captured": int(engine.get("packets_captured") or 0),
            "kernel_drops": int(engine.get("kernel_drops") or 0),
            "if_drops": int(engine.get("if_drops") or 0),
            "parse_errors": {str(k): int(v) for k, v in (engine.get("parse_errors") or {}).items()},
            "flows_exported": exported,
            "flows_evicted": int(engine.get("flows_evicted") or 0),
            "spool_bytes": spool_bytes,
            "spool_batches": spool_batches,
            "spool_dropped_batches": spool_dropped,
            "uptime_s": round(time.monotonic() - self._started, 3),
        }


def write_health_file(path: Path, health: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(health, sort_keys=True) + "\n").encode())
