"""The metering engine: capture → decode → meter (+ names) → sink.

``meter_files`` reads pcap/pcapng files (time from packet timestamps) and ``capture_live`` an
interface (time from the clock); both hand flows and names to a ``Sink`` in lists, call
``sink.set_health`` with the counters at the end (and every ``health_interval`` seconds live),
and leave ``sink.close()`` to the caller, who owns the sink.

A damaged file ends the run with ``ProbeInputError("FILE: packet N: reason")`` after everything
metered before the damage was flushed (end reason ``end-of-capture``) and handed to the sink.

pcap and pcapng files go through ``probe.fastpath`` (numpy: decoded a chunk at a time, metered in
batches; same flows, names and counters, about 3× the per-packet rate); any stretch of a file
whose time goes backwards goes packet by packet (``run``). ``meter_files(..., vectorised=False)``
forces the per-packet path (the tests compare the two).

When probe/_cmeter.c is built (``probe.cmeter``), the pcap record walk, the Ethernet decoder and
the flow table (``CMeter``) are C: a decoded chunk goes to the table in one call (``add_columns``,
idle scans included) instead of numpy's batch and ``FlowMeter.add``; same flows, file metering
2.5-3.5x as fast (docs/sizing-probe.md). Not built, or ``HOSTFLOW_PROBE_CMETER=0``: numpy and
``FlowMeter`` with ``fastpath.BatchMeter`` as before.

Live capture reads a PACKET_MMAP ring (``probe.capture.RingCapture``): each block the kernel
hands over (up to 1 MiB of packets, or what came in 50 ms) is decoded with the same code as a
file chunk, and the blocks are metered together every 0.25 s. Without numpy, when the
kernel refuses the ring (logged), or with ``HOSTFLOW_PROBE_RING=0``, packets are read one by one
with recv (``LiveCapture``, metered by ``run``). Figures: docs/sizing-probe.md.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hostflow.records import END_EOF, END_SHUTDOWN, Name
from probe import __version__, cmeter
from probe.capture import LiveCapture, ProbeInputError, RingCapture, RingUnavailable, file_size, open_capture
from probe.decode import LINKTYPES, Decoded, decode
from probe.meter import TCP_END_GRACE_S, FlowMeter
from probe.options import MeterOptions
from probe.sink import Sink

try:  # numpy makes file metering several times faster (probe.fastpath); without it, packet by packet
    import numpy as np

    from probe import fastpath
except ImportError:  # pragma: no cover - a probe installed without numpy
    np = None  # type: ignore[assignment]
    fastpath = None  # type: ignore[assignment]

try:  # written by another part; metering works without it
    from probe.names import NameExtractor
except ImportError:  # pragma: no cover - only while probe/names.py does not exist
    NameExtractor = None  # type: ignore[assignment,misc]

__all__ = ["MeterStats", "ProbeInputError", "capture_live", "meter_files"]

log = logging.getLogger(__name__)

SCAN_INTERVAL_US = 1_000_000  # how often (packet time) timed-out flows are looked for
PROGRESS_EVERY = 65_536  # packets between progress calls


@dataclass
class MeterStats:
    packets: int = 0  # frames read (files) or received (live)
    ip_packets: int = 0  # frames metered into flows
    bytes: int = 0  # IP bytes metered
    flows_exported: int = 0
    flows_evicted: int = 0
    parse_errors: dict[str, int] = field(default_factory=dict)  # reason → packets
    non_ip: int = 0  # ARP, STP, LLDP, … (ignored, not errors)
    kernel_drops: int = 0
    if_drops: int = 0
    names: int = 0
    iface: str = ""
    started: float = field(default_factory=time.time)

    def count_error(self, reason: str) -> None:
        self.parse_errors[reason] = self.parse_errors.get(reason, 0) + 1

    def as_health(self) -> dict[str, Any]:
        """The ``health`` object of a batch (docs/CONTRACT.md); spool fields are the exporter's."""
        return {
            "ts": int(time.time() * 1_000_000),
            "hostname": socket.gethostname(),
            "version": __version__,
            "iface": self.iface,
            "packets_captured": self.packets,
            "kernel_drops": self.kernel_drops,
            "if_drops": self.if_drops,
            "parse_errors": dict(self.parse_errors),
            "flows_exported": self.flows_exported,
            "flows_evicted": self.flows_evicted,
            "spool_bytes": 0,
            "spool_batches": 0,
            "spool_dropped_batches": 0,
            "uptime_s": int(time.time() - self.started),
        }


class _Engine:
    """Decode + meter + names for one run; shared by the file and live paths."""

    def __init__(self, options: MeterOptions, sink: Sink, tcp_end_grace: float) -> None:
        self.stats = MeterStats()
        self.sink = sink
        self.lib = cmeter.library()  # probe/_cmeter.c, looked up once a run (it hashes the source)
        self.meter = _flow_meter(options, sink.add_flows, tcp_end_grace, self.lib)
        self.cmeter = isinstance(self.meter, cmeter.CMeter)
        self.names = None
        if options.names and NameExtractor is not None:
            self.names = NameExtractor(options.probe_id)
        self.pending_names: list[Name] = []
        self._addr_text = self.meter._addr
        self.warned_linktypes: set[int] = set()
        self.next_scan: int | None = None  # packet time of the next idle scan (files)
        self.last_ts: int | None = None  # time of the latest packet; None before the first
        self.in_order = True  # no packet so far was older than the one before it

    def run(self, packets, live: bool = False) -> None:
        """Meter an iterator of (linktype, ts_us, wire_len, frame); frame None = clock tick."""
        stats = self.stats
        errors = stats.parse_errors
        add = self.meter.add
        names = self.names
        interesting = names.interesting if names is not None else None
        next_scan = self.next_scan
        last_ts = self.last_ts if self.last_ts is not None else -1
        in_order = self.in_order
        packets_seen = ip_packets = ip_bytes = non_ip = 0
        try:
            for linktype, ts, _wire_len, frame in packets:
                if frame is None:
                    continue
                packets_seen += 1
                if ts < last_ts:
                    in_order = False
                last_ts = ts
                try:
                    dec = decode(linktype, frame)
                except Exception:  # noqa: BLE001 - a decoder bug must not stop the probe
                    log.exception("decoder failed on a %d-byte frame", len(frame))
                    dec = "decode-error"
                if dec.__class__ is Decoded:
                    (vlan, version, proto, src, dst, sport, dport, flags, tos, nbytes, smac, dmac,
                     start, end, _fragment, problem) = dec  # fmt: skip
                    if problem:
                        errors[problem] = errors.get(problem, 0) + 1
                    add(ts, vlan, version, proto, src, dst, sport, dport, flags, tos, nbytes, smac, dmac)
                    ip_packets += 1
                    ip_bytes += nbytes
                    if interesting is not None and end > start:
                        payload = frame[start:end]
                        if interesting(proto, sport, dport, payload):
                            self._names(ts, src, dst, proto, sport, dport, payload)
                elif dec is None:
                    non_ip += 1
                else:
                    errors[dec] = errors.get(dec, 0) + 1
                    if dec == "unsupported-linktype" and linktype not in self.warned_linktypes:
                        self.warned_linktypes.add(linktype)
                        log.warning("link type %d is not supported: its packets are counted, not metered",
                                    linktype)  # fmt: skip
                if next_scan is None:
                    next_scan = ts + SCAN_INTERVAL_US
                elif ts >= next_scan and not live:
                    self.meter.expire(ts)
                    self._deliver_names()
                    next_scan = ts + SCAN_INTERVAL_US
        finally:
            stats.packets += packets_seen
            stats.ip_packets += ip_packets
            stats.bytes += ip_bytes
            stats.non_ip += non_ip
            self.next_scan = next_scan
            self.in_order = in_order
            if packets_seen:
                self.last_ts = last_ts

    # ------------------------------------------------------------ pcap files through probe.fastpath

    def chunk_exactly(self, chunk) -> None:
        """A chunk packet by packet (time went backwards): exactly what ``run`` does."""
        buf, linktype = chunk.buf, chunk.linktype
        starts, caplens = chunk.starts.tolist(), chunk.caplen.tolist()
        times = chunk.exact_times if chunk.exact_times is not None else chunk.ts.tolist()
        self.run((linktype, times[i], caplens[i], bytes(buf[starts[i] : starts[i] + caplens[i]]))
                 for i in range(len(starts)))  # fmt: skip

    def decode_chunk(self, chunk):
        """Decode a chunk (in time order), count it, learn its names; the columns go to ``meter_columns``."""
        stats = self.stats
        errors = stats.parse_errors
        decoded = fastpath.decode_chunk(chunk, errors, self.lib)
        cols = decoded.cols
        kind = cols.kind
        ip = kind == fastpath.KIND_IP
        stats.packets += cols.n
        stats.ip_packets += int(ip.sum())
        stats.bytes += int(cols.nbytes[ip].sum())
        stats.non_ip += int((kind == fastpath.KIND_NON_IP).sum())
        if "unsupported-linktype" in errors and chunk.linktype not in self.warned_linktypes:
            self.warned_linktypes.add(chunk.linktype)
            log.warning("link type %d is not supported: its packets are counted, not metered", chunk.linktype)
        if self.names is not None:
            self._chunk_names(chunk, decoded, np.flatnonzero(ip & (decoded.pay_end > decoded.pay_start)))
        if cols.n:
            self.last_ts = int(cols.ts[-1])
        return cols

    def _chunk_names(self, chunk, decoded, with_payload) -> None:
        if not len(with_payload):
            return
        interesting = self.names.interesting
        buf = chunk.buf
        cols = decoded.cols
        columns = (
            cols.ts,
            cols.version,
            cols.proto,
            cols.sport,
            cols.dport,
            decoded.pay_start,
            decoded.pay_end,
        )
        chosen, alone, _skipped, ignored = fastpath.name_packets(
            chunk.u8, decoded, with_payload, self.names.buffered_port_pairs()
        )
        for reason, count in ignored.items():
            self.names._count(reason, count)
        values = [column[chosen].tolist() for column in columns]
        for i, accepted, ts, version, proto, sport, dport, start, end in zip(
            chosen.tolist(), alone.tolist(), *values, strict=True
        ):
            payload = bytes(buf[start:end])
            if accepted or interesting(proto, sport, dport, payload):
                src = fastpath.addr_bytes(version, int(cols.src_hi[i]), int(cols.src_lo[i]))
                dst = fastpath.addr_bytes(version, int(cols.dst_hi[i]), int(cols.dst_lo[i]))
                self._names(ts, src, dst, proto, sport, dport, payload)

    def meter_columns(self, cols, batch) -> None:
        """Meter decoded packets: in one batch when that is exact, else packet by packet as ``run`` would."""
        ip = np.flatnonzero(cols.kind == fastpath.KIND_IP)
        if self.cmeter:
            self.next_scan, scans = self.meter.add_columns(cols, ip, self.next_scan, SCAN_INTERVAL_US)
            if scans:
                self._deliver_names()
            return
        if batch.apply(cols, ip):
            last_scan, self.next_scan = fastpath.scan_times(cols.ts, self.next_scan)
            if last_scan is not None:
                self.meter.expire(last_scan)
                self._deliver_names()
            return
        self.next_scan, scans = batch.add_in_order(cols, ip, self.next_scan, SCAN_INTERVAL_US)
        if scans:
            self._deliver_names()

    def _names(self, ts: int, src: bytes, dst: bytes, proto: int, sport: int, dport: int,
               payload: bytes) -> None:  # fmt: skip
        try:
            found = self.names.feed(
                ts, self._addr_text(src), self._addr_text(dst), proto, sport, dport, payload
            )
        except Exception:  # noqa: BLE001 - a name parser bug must not stop metering
            log.exception("name extraction failed (%s:%d → %s:%d)", self._addr_text(src), sport,
                          self._addr_text(dst), dport)  # fmt: skip
            self.stats.count_error("names-error")
            return
        if found:
            self.pending_names.extend(found)
            self.stats.names += len(found)
            if len(self.pending_names) >= 1000:
                self._deliver_names()

    def _deliver_names(self) -> None:
        if self.pending_names:
            batch, self.pending_names = self.pending_names, []
            self.sink.add_names(batch)

    def finish(self, reason: str) -> MeterStats:
        self.meter.flush(reason)
        self._deliver_names()
        self.stats.flows_exported = self.meter.flows_exported
        self.stats.flows_evicted = self.meter.flows_evicted
        self.sink.set_health(self.stats.as_health())
        return self.stats


def _flow_meter(options: MeterOptions, emit: Callable, tcp_end_grace: float, lib) -> FlowMeter:
    """The C flow table when ``lib`` (``cmeter.library()``) is there and can hold it; else FlowMeter."""
    if lib is not None:
        meter = cmeter.CMeter.create(options, emit, tcp_end_grace=tcp_end_grace, lib=lib)
        if meter is not None:
            return meter
    return FlowMeter(options, emit, tcp_end_grace=tcp_end_grace)


def _with_progress(path: str, packets, progress: Callable[[str, int, int], None] | None, total: int):
    """Pass packets through, calling progress(path, packets_done, file_bytes) now and then."""
    if progress is None:
        yield from packets
        return
    done = 0
    for item in packets:
        done += 1
        if done % PROGRESS_EVERY == 0:
            progress(path, done, total)
        yield item
    progress(path, done, total)


def _meter_chunks(engine: _Engine, path: str, chunks, progress) -> None:
    """A pcap or pcapng file through probe.fastpath: decoded chunk by chunk, metered in batches."""
    batch = fastpath.BatchMeter(engine.meter)
    # the C table takes each chunk as it comes; numpy's batch pays per conversation, so it waits for more
    batch_packets = 1 if engine.cmeter else fastpath.BATCH_PACKETS
    total = file_size(path)
    done = 0
    pending: list = []
    waiting = 0

    def meter_pending() -> None:
        nonlocal pending, waiting
        if pending:
            cols = fastpath.Columns.concat(pending)
            pending, waiting = [], 0  # free the parts before metering needs its own arrays
            engine.meter_columns(cols, batch)

    for chunk in chunks:
        if chunk.exact_times is None and engine.in_order and fastpath.in_order(chunk.ts, engine.last_ts):
            pending.append(engine.decode_chunk(chunk))
            waiting += len(chunk.ts)
            if waiting >= batch_packets:
                meter_pending()
        else:
            meter_pending()
            engine.chunk_exactly(chunk)
        done += len(chunk.ts)
        if progress is not None:
            progress(path, done, total)
        if chunk.error is not None:
            meter_pending()
            raise chunk.error
    meter_pending()
    if progress is not None and not done:
        progress(path, 0, total)


def meter_files(
    paths: list[str],
    options: MeterOptions,
    sink: Sink,
    progress: Callable[[str, int, int], None] | None = None,
    *,
    tcp_end_grace: float = TCP_END_GRACE_S,
    vectorised: bool = True,
) -> MeterStats:
    """Meter capture files in order, as one stream; flows still open at the end: ``end-of-capture``.

    ``progress(path, packets_done, file_size)`` is called every 65536 packets and at each file's end.
    A BPF filter in ``options.bpf`` is refused: filter files with tcpdump first.
    """
    if options.bpf:
        raise ProbeInputError("a BPF filter applies to live capture only; filter files with tcpdump -r/-w")
    for path in paths:
        if not os.path.isfile(path):
            raise ProbeInputError(f"{path}: no such file")
    engine = _Engine(options, sink, tcp_end_grace)
    try:
        for path in paths:
            engine.next_scan = None
            header = fastpath.pcap_header(path) if vectorised and fastpath is not None else None
            if header is not None:
                _meter_chunks(engine, path, fastpath.PcapChunks(path, *header), progress)
            elif vectorised and fastpath is not None and fastpath.is_pcapng(path):
                _meter_chunks(engine, path, fastpath.PcapngChunks(path), progress)
            else:
                engine.run(_with_progress(path, open_capture(path), progress, file_size(path)))
    except ProbeInputError:
        engine.finish(END_EOF)
        raise
    return engine.finish(END_EOF)


def capture_live(
    iface: str,
    options: MeterOptions,
    sink: Sink,
    stop: threading.Event,
    health_interval: float = 10.0,
    *,
    tcp_end_grace: float = TCP_END_GRACE_S,
    ready: Callable[[], None] | None = None,
    ring: bool | None = None,
) -> MeterStats:
    """Capture on ``iface`` until ``stop`` is set; then flush everything as ``shutdown``.

    Fails before any packet with ProbeInputError for a bad interface or BPF filter. ``ready`` is
    called once the socket is capturing (tests wait for it before sending). ``ring``: use the
    PACKET_MMAP ring (True, the default when None unless HOSTFLOW_PROBE_RING=0) or recv (False).
    """
    if ring is None:
        ring = os.environ.get("HOSTFLOW_PROBE_RING", "1") != "0"
    capture = _open_live(iface, options.bpf, max(options.snaplen, 1514), ring)
    engine = _Engine(options, sink, tcp_end_grace)
    engine.stats.iface = iface
    linktype = capture.linktype
    log.info("capturing on %s (%s%s)%s", iface, LINKTYPES.get(linktype, linktype),
             ", PACKET_MMAP ring" if isinstance(capture, RingCapture) else "",
             f" filter {options.bpf!r}" if options.bpf else "")  # fmt: skip
    if isinstance(capture, RingCapture):
        try:
            if ready is not None:
                ready()
            _meter_ring(engine, capture, stop, health_interval)
        finally:
            engine.stats.kernel_drops, engine.stats.if_drops = capture.read_stats()
            capture.close()
            stats = engine.finish(END_SHUTDOWN)
        return stats

    def ticks():
        next_scan = 0
        next_health = time.monotonic() + health_interval
        for ts, wire_len, frame in capture.packets(stop):
            yield linktype, ts, wire_len, frame
            if ts >= next_scan:
                engine.meter.expire(ts)
                engine._deliver_names()
                next_scan = ts + SCAN_INTERVAL_US
                if time.monotonic() >= next_health:
                    next_health = time.monotonic() + health_interval
                    engine.stats.kernel_drops, engine.stats.if_drops = capture.read_stats()
                    engine.stats.flows_exported = engine.meter.flows_exported
                    engine.stats.flows_evicted = engine.meter.flows_evicted
                    sink.set_health(engine.stats.as_health())

    try:
        if ready is not None:
            ready()
        engine.run(ticks(), live=True)
    finally:
        engine.stats.kernel_drops, engine.stats.if_drops = capture.read_stats()
        capture.close()
        stats = engine.finish(END_SHUTDOWN)
    return stats


LIVE_BATCH_PACKETS = 65_536  # live packets metered at once at most
LIVE_BATCH_SECONDS = 0.25  # and at least this often while packets come


def _open_live(iface: str, bpf: str | None, snaplen: int, ring: bool):
    """The PACKET_MMAP ring when asked and numpy and the kernel allow it, else recv."""
    if ring and fastpath is not None:
        try:
            return RingCapture(iface, bpf, snaplen=snaplen)
        except RingUnavailable as exc:
            log.warning("%s; reading packets one by one instead (slower)", exc)
    return LiveCapture(iface, bpf, snaplen=snaplen)


def _meter_ring(engine: _Engine, capture: RingCapture, stop: threading.Event, health_interval: float) -> None:
    """Live capture through the ring: each block decoded with numpy, metered in batches (as files).

    Blocks are decoded as they come (names too, while the frames are at hand) and metered together
    every LIVE_BATCH_PACKETS packets or LIVE_BATCH_SECONDS; timeouts are looked for once a second
    of clock time, after metering what is pending, also while the line is quiet.
    """
    batch = fastpath.BatchMeter(engine.meter)
    blocks = capture.blocks_ready(stop)
    try:
        _meter_blocks(engine, capture, blocks, batch, health_interval)
    finally:
        blocks.close()


def _meter_blocks(engine: _Engine, capture: RingCapture, blocks, batch, health_interval: float) -> None:
    pending: list = []
    waiting = 0
    clock = time.monotonic
    meter_at = clock() + LIVE_BATCH_SECONDS
    next_scan = time.time_ns() // 1000 + SCAN_INTERVAL_US
    next_health = clock() + health_interval
    linktype = capture.linktype

    def meter_pending() -> None:
        nonlocal pending, waiting
        if pending:
            cols = fastpath.Columns.concat(pending)
            pending, waiting = [], 0
            engine.meter_columns(cols, batch)

    for block in blocks:
        if block is not None:
            frames, starts, ts, caplen = block
            chunk = fastpath.Chunk(memoryview(frames), frames, starts, ts, caplen, linktype, None)
            pending.append(engine.decode_chunk(chunk))
            waiting += len(starts)
        now = clock()
        if waiting >= LIVE_BATCH_PACKETS or now >= meter_at:
            meter_pending()
            meter_at = now + LIVE_BATCH_SECONDS
        now_us = time.time_ns() // 1000
        if now_us >= next_scan:
            meter_pending()
            engine.meter.expire(max(now_us, engine.last_ts or 0))
            engine._deliver_names()
            next_scan = now_us + SCAN_INTERVAL_US
            if now >= next_health:
                next_health = now + health_interval
                engine.stats.kernel_drops, engine.stats.if_drops = capture.read_stats()
                engine.stats.flows_exported = engine.meter.flows_exported
                engine.stats.flows_evicted = engine.meter.flows_evicted
                engine.sink.set_health(engine.stats.as_health())
    meter_pending()
