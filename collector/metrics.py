"""Counters and gauges for GET /metrics (Prometheus text format), shared with the NetFlow listener.

    metrics.inc("netflow_drops_total", reason="bad_version")
    metrics.set("ingest_lag_seconds", 0.3)

Names get the ``hostflow_collector_`` prefix on output; labels are keyword arguments.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable

PREFIX = "hostflow_collector_"

HELP: dict[str, str] = {
    "batches_received_total": "probe/import batches received (stored or duplicate)",
    "batches_stored_total": "batches written to the store",
    "batches_duplicate_total": "batches already stored (answered duplicate)",
    "batches_rejected_total": "batches refused, by reason",
    "flows_stored_total": "flow rows written, by origin (batch, import, netflow)",
    "names_stored_total": "name rows written",
    "store_errors_total": "writes the store failed",
    "queries_total": "named queries answered, by query",
    "query_errors_total": "named queries refused, by reason",
    "ingest_lag_seconds": "age of the newest flow end at the time it was stored",
    "write_queue_depth": "writes waiting for the writer thread",
    "netflow_packets_total": "NetFlow/IPFIX datagrams received",
    "netflow_records_total": "NetFlow/IPFIX flow records decoded",
    "netflow_drops_total": "NetFlow/IPFIX datagrams or records dropped, by reason",
    "netflow_template_misses_total": "data sets whose template was not known yet",
    "netflow_sequence_gaps_total": "gaps in exporter sequence numbers",
    "netflow_kernel_drops_total": "datagrams the kernel dropped on a full NetFlow socket buffer",
    "retention_deleted_flows_total": "flows deleted by retention",
}
GAUGES = {"ingest_lag_seconds", "write_queue_depth"}


def _label_text(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    parts = []
    for key, value in labels:
        escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{key}="{escaped}"')
    return "{" + ",".join(parts) + "}"


class Metrics:
    """Thread-safe counters keyed by (name, labels)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        self._sources: list[Callable[[], Iterable[tuple[str, dict[str, object], float]]]] = []

    def add_source(self, source: Callable[[], Iterable[tuple[str, dict[str, object], float]]]) -> None:
        """Values another component keeps itself (e.g. the NetFlow decoder), read at each render."""
        self._sources.append(source)

    def inc(self, name: str, value: float = 1, **labels: object) -> None:
        key = tuple(sorted((k, str(v)) for k, v in labels.items()))
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0) + value

    def set(self, name: str, value: float, **labels: object) -> None:
        key = tuple(sorted((k, str(v)) for k, v in labels.items()))
        with self._lock:
            self._values[name][key] = value

    def get(self, name: str, **labels: object) -> float:
        key = tuple(sorted((k, str(v)) for k, v in labels.items()))
        with self._lock:
            return self._values.get(name, {}).get(key, 0)

    def total(self, name: str) -> float:
        with self._lock:
            return sum(self._values.get(name, {}).values())

    def render(self) -> str:
        for source in self._sources:
            for name, labels, value in source():
                self.set(name, value, **labels)
        lines: list[str] = []
        with self._lock:
            names = sorted(set(self._values) | set(HELP))
            for name in names:
                full = PREFIX + name
                if name in HELP:
                    lines.append(f"# HELP {full} {HELP[name]}")
                kind = "gauge" if name in GAUGES or not name.endswith("_total") else "counter"
                lines.append(f"# TYPE {full} {kind}")
                series = self._values.get(name, {})
                if not series and not name.endswith("_total") and name not in GAUGES:
                    continue
                if not series:
                    lines.append(f"{full} 0")
                for labels, value in sorted(series.items()):
                    number = int(value) if float(value).is_integer() else value
                    lines.append(f"{full}{_label_text(labels)} {number}")
        return "\n".join(lines) + "\n"
