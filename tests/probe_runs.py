"""What the probe tests compare: the captures under tests/fixtures and one metering run's outcome."""

from __future__ import annotations

from pathlib import Path

from hostflow.records import flow_row, name_row
from probe.options import MeterOptions
from probe.pipeline import ProbeInputError, meter_files
from probe.sink import MemorySink
from tests.plugins.common import FIXTURES

CAPTURES = sorted(
    path
    for folder in ("pcap", "probe", "malformed", "names")
    for path in (FIXTURES / folder).iterdir()
    if path.suffix in (".pcap", ".pcapng", ".cap")
)


def metered(paths: list[Path], vectorised: bool = True, **options) -> tuple:
    """(sorted flow rows, name rows, health without its clock fields, error text or None)."""
    sink = MemorySink()
    error = None
    try:
        meter_files([str(p) for p in paths], MeterOptions(**options), sink, vectorised=vectorised)
    except ProbeInputError as exc:
        error = str(exc)
    health = {k: v for k, v in sink.health.items() if k not in ("ts", "uptime_s")}
    flows = sorted(tuple(flow_row(flow)) for flow in sink.flows)
    return flows, [name_row(name) for name in sink.names], health, error
