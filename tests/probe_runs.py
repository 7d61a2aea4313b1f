"""What the probe tests compare: the captures under tests/fixtures and one metering run's outcome."""

from __future__ import annotations

from pathlib import Path

from bench.bench_probe import write_pcap
from hostflow.records import flow_row, name_row
from probe import fastpath
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


def write_traffic(path: Path) -> Path:
    """40,000 packets, 600 conversations open at a time, 2% turnover: many opens and closes."""
    write_pcap(path, 40_000, seed=11, concurrent=600, turnover=0.02, mean_gap_us=200)
    return path


def use_small_chunks(monkeypatch) -> None:
    """Many small chunks (numpy's and C's), batches and record-walk lanes: every boundary is crossed."""
    monkeypatch.setattr(fastpath, "FIRST_CHUNK_BYTES", 64 << 10)
    monkeypatch.setattr(fastpath, "CHUNK_PACKETS", 700)
    monkeypatch.setattr(fastpath, "C_CHUNK_PACKETS", 500)
    monkeypatch.setattr(fastpath, "BATCH_PACKETS", 3000)
    monkeypatch.setattr(fastpath, "LANE_BYTES", 2048)
