"""The probe's C parts (probe/_cmeter.c), loaded with ctypes: FlowMeter's flows, faster.

Why C. Metering a file cost about 1.55 µs of Python and numpy per packet (pcap record walk 0.25,
array decode 0.3, ``fastpath.BatchMeter`` grouping the batch by conversation 0.4 plus Python work
per conversation per batch 0.5, Flow records 0.14, names 0.07), where softflowd's whole budget is
about 1.0 µs a packet (bench/bench_probe.py: softflowd 993,688 packets per CPU second, ours
638,323). Three C functions replace the first three steps with their exact rules: the pcap
record walk (``cm_walk_pcap``, used by ``fastpath.PcapChunks``), the Ethernet/IP decoder
(``cm_decode_ethernet``, used by ``fastpath.decode_chunk``; also ``cm_chain_epb``, pcapng's block
chain for ``fastpath.PcapngChunks``) and the flow table (``CMeter``, with
``FlowMeter``'s semantics: the same keys, timeouts, closes, table order, eviction and idle scans).
A chunk costs a few tens of nanoseconds a packet in each; file metering went to 1.6-2.4x
softflowd's rate (docs/sizing-probe.md). tests/test_cmeter.py compares each part with the
Python/numpy one on every fixture, generated traffic and random packets and frames.

What stays in Python: the Flow records themselves. Ended pairs come out of C as fixed-size
records, drained after every call, and go through ``FlowMeter._export_values`` like the Python
table's.

Build and load. ``python -m probe.cmeter build`` runs ``$CC`` (default ``cc``) ``-O2 -shared
-fPIC`` on probe/_cmeter.c (plain C99 and libc: a Raspberry Pi needs gcc and libc6-dev, not the
Python headers) into ``probe/_cmeter-<sha256 of the source, 12 hex>-<machine>.so``. The loader
only opens the library whose name carries the current source's hash, so a stale build is never
used. No library (or one that does not load): ``load()`` returns None, the probe logs it once and
meters with ``probe.fastpath``/``FlowMeter`` as before; ``HOSTFLOW_PROBE_CMETER=0`` forces that.

Times the C table cannot hold (beyond ±2**62 µs, which only a damaged pcapng gives) move the
table to Python for the rest of the run (``CMeter`` is a ``FlowMeter``): the pairs are copied
over in table order, so the result stays exact.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import struct
import subprocess
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hostflow.records import END_ACTIVE, END_EVICTED, END_FIN, END_IDLE, END_RST, Flow
from probe.meter import (
    D_DST_MAC,
    D_SRC_MAC,
    EMPTY_PAIR,
    MOVE_GRANULARITY_US,
    P_CLOSED,
    P_DIR0,
    P_DIR1,
    P_FINS,
    P_FIRST_DIR,
    P_LAST,
    P_MOVED,
    P_START,
    P_SYN_DIR,
    P_VERSION,
    TCP_END_GRACE_S,
    FlowMeter,
)
from probe.options import MeterOptions

try:
    import numpy as np
except ImportError:  # pragma: no cover - add_columns needs numpy; add does not
    np = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_cmeter.c")
ABI = 4
MAC_SRC, MAC_DST = 1, 2  # bits of the macs column, as probe.fastpath's Columns
TIME_LIMIT = 1 << 62  # times (µs) the C table takes: differences of two stay inside int64
OUT_LIMIT = 4096  # ended pairs drained at a time
INT64_MAX = (1 << 63) - 1
BUILD_FLAGS = ("-O2", "-std=c99", "-Wall", "-shared", "-fPIC")

# the C record (cm_flow): 4 address words, 13 pair fields, then 10 fields per direction
_RECORD = struct.Struct("<4Q33q")
_DIR0, _DIR1 = 17, 27
# FlowMeter.add's arguments as _cmeter.c's cm_packet: add() packs packets and hands them over together,
# since one ctypes call per packet costs twice FlowMeter.add itself
_PACKET = struct.Struct("<11q16s16s8s8s")
PACKED = 256  # packets handed over at a time (or before anything else is done with the table)
# reason codes of _cmeter.c (0: not closed); R_FLUSH is the reason flush() is given
_REASONS = {1: END_IDLE, 2: END_ACTIVE, 3: END_FIN, 4: END_RST, 5: END_EVICTED}
_R_EVICTED, _R_FLUSH = 5, 6
_CLOSED_TEXT = {0: "", 3: END_FIN, 4: END_RST}
# the columns add_columns hands over, in _cmeter.c's order
COLUMNS = ("ts", "vlan", "version", "proto", "sport", "dport", "flags", "tos", "nbytes", "src_hi", "src_lo",
           "dst_hi", "dst_lo", "smac", "dmac", "macs")  # fmt: skip
_UNSIGNED = frozenset(("src_hi", "src_lo", "dst_hi", "dst_lo", "smac", "dmac"))


def library_path(source: Path = SOURCE) -> Path:
    """The library built from ``source`` as it is now: its name carries the source's hash."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    return source.with_name(f"_cmeter-{digest}-{platform.machine() or 'unknown'}.so")


def build(source: Path = SOURCE, cc: str | None = None) -> Path:
    """Compile ``source`` next to itself; remove this machine's older builds. Raises BuildError."""
    target = library_path(source)
    compiler = cc or os.environ.get("CC") or "cc"
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    command = [*compiler.split(), *BUILD_FLAGS, "-o", str(partial), str(source)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise BuildError(
            f"no C compiler {compiler!r}: install gcc and libc6-dev (or set CC), then run "
            "python -m probe.cmeter build again; meanwhile the probe meters in Python"
        ) from None
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        first = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[0]
        raise BuildError(f"{' '.join(command)} failed ({done.returncode}): {first}")
    os.replace(partial, target)
    for old in target.parent.glob(f"_cmeter-*-{platform.machine() or 'unknown'}.so"):
        if old != target:
            old.unlink(missing_ok=True)
    return target


class BuildError(RuntimeError):
    """The C flow table could not be built; the message says why and what to do."""


_loaded: dict[Path, Any] = {}
_told: set[Path] = set()


def load(source: Path = SOURCE) -> Any | None:
    """The C library built from ``source`` as it is now, or None (logged once per path)."""
    try:
        path = library_path(source)
    except OSError as exc:
        return _unavailable(source, f"cannot read {source}: {exc.strerror}")
    if path in _loaded:
        return _loaded[path]
    if not path.exists():
        return _unavailable(path, f"{path.name} is not built (python -m probe.cmeter build)")
    try:
        lib = ctypes.CDLL(str(path))
        _declare(lib)
    except (OSError, AttributeError) as exc:
        return _unavailable(path, f"{path.name} does not load: {exc}")
    if lib.cm_abi() != ABI or lib.cm_record_size() != _RECORD.size or lib.cm_packet_size() != _PACKET.size:
        return _unavailable(path, f"{path.name} does not match probe/cmeter.py: rebuild it")
    _loaded[path] = lib
    return lib


def library() -> Any | None:
    """``load()``, unless ``HOSTFLOW_PROBE_CMETER=0`` asks for the Python path."""
    if os.environ.get("HOSTFLOW_PROBE_CMETER", "1") == "0":
        return None
    return load()


def _unavailable(path: Path, why: str) -> None:
    if path not in _told:
        _told.add(path)
        log.info("C flow table unavailable: %s; metering in Python", why)
    return None


def _declare(lib: Any) -> None:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    signatures = {
        "cm_abi": ([], ctypes.c_int),
        "cm_record_size": ([], i64),
        "cm_new": ([i64, i64, i64, i64, i64], ptr),
        "cm_free": ([ptr], None),
        "cm_packet_size": ([], i64),
        "cm_add_packed": ([ptr, ptr, i64], None),
        "cm_add_columns": ([ptr, ptr, i64, ptr, i64, ptr, i64, i64], ctypes.c_int),
        "cm_expire": ([ptr, i64], None),
        "cm_flush": ([ptr, i64], i64),
        "cm_dump": ([ptr], None),
        "cm_count": ([ptr], i64),
        "cm_last_room_scan": ([ptr], i64),
        "cm_failed": ([ptr], ctypes.c_int),
        "cm_out_count": ([ptr], i64),
        "cm_out_data": ([ptr], ptr),
        "cm_out_clear": ([ptr], None),
        "cm_walk_pcap": ([ptr, i64, ctypes.c_int, i64, i64, ptr, ptr, ptr, i64, ptr, ptr], i64),
        "cm_decode_ethernet": ([ptr, i64, ptr, ptr, i64, i64, ptr], None),
        "cm_chain_epb": ([ptr, i64, i64, ptr, i64], i64),
    }
    for name, (arguments, result) in signatures.items():
        function = getattr(lib, name)
        function.argtypes = arguments
        function.restype = result


def _clamp(value: int) -> int:
    return max(-INT64_MAX, min(value, INT64_MAX))


class CMeter(FlowMeter):
    """``FlowMeter`` with its table in C; the same public interface, plus ``add_columns``."""

    @classmethod
    def create(
        cls, options: MeterOptions, emit: Callable[[list[Flow]], None], **kwargs: Any
    ) -> CMeter | None:
        """A CMeter, or None when the library is not available (or cannot hold the table)."""
        lib = kwargs.pop("lib", None) or load()
        if lib is None:
            return None
        try:
            return cls(options, emit, lib=lib, **kwargs)
        except MemoryError:
            log.warning("C flow table: no memory for %d pairs; metering in Python", options.max_flows)
            return None

    def __init__(
        self,
        options: MeterOptions,
        emit: Callable[[list[Flow]], None],
        *,
        tcp_end_grace: float = TCP_END_GRACE_S,
        batch: int = 2000,
        lib: Any = None,
    ) -> None:
        super().__init__(options, emit, tcp_end_grace=tcp_end_grace, batch=batch)
        self._lib = lib if lib is not None else load()
        if self._lib is None:
            raise RuntimeError("the C flow table is not built: python -m probe.cmeter build")
        self._table = self._lib.cm_new(self.max_pairs, _clamp(self.idle_us), _clamp(self.active_us),
                                       _clamp(self.grace_us), MOVE_GRANULARITY_US)  # fmt: skip
        if not self._table:
            raise MemoryError(f"C flow table of {self.max_pairs} pairs")
        self._finalizer = weakref.finalize(self, self._lib.cm_free, self._table)
        self._flush_reason = ""
        self.out_limit = OUT_LIMIT  # ended pairs drained at a time
        self._mac_texts: dict[int, str] = {}
        self._state = (ctypes.c_int64 * 5)()
        self._packed_limit = PACKED
        self._packets = ctypes.create_string_buffer(PACKED * _PACKET.size)
        self._packets_address = ctypes.addressof(self._packets)
        self._packed = 0
        self._state_address = ctypes.addressof(self._state)

    @property
    def in_c(self) -> bool:
        """False once the table has moved to Python (a time the C table cannot hold)."""
        return self._table is not None

    @property
    def pair_count(self) -> int:
        """Pairs in the table (``len(meter.pairs)`` of a FlowMeter)."""
        if self._table is None:
            return len(self.pairs)
        self._hand_over()
        return self._lib.cm_count(self._table)

    # ------------------------------------------------------------ per packet

    def add(self, ts: int, vlan: int, version: int, proto: int, src: bytes, dst: bytes, sport: int,
            dport: int, flags: int, tos: int, nbytes: int, src_mac: bytes, dst_mac: bytes) -> None:  # fmt: skip
        if self._table is not None:
            size = len(src)
            if -TIME_LIMIT <= ts < TIME_LIMIT and len(dst) == size and (size == 4 or size == 16):
                macs = (MAC_SRC if src_mac else 0) | (MAC_DST if dst_mac else 0)
                _PACKET.pack_into(self._packets, self._packed * _PACKET.size, ts, vlan, version, proto, size, sport,
                                  dport, flags, tos, nbytes, macs, src, dst, src_mac, dst_mac)  # fmt: skip
                self._packed += 1
                if self._packed == self._packed_limit:
                    self._hand_over()
                return
            self._to_python()
        FlowMeter.add(
            self, ts, vlan, version, proto, src, dst, sport, dport, flags, tos, nbytes, src_mac, dst_mac
        )

    def _hand_over(self) -> None:
        """Meter the packets ``add`` packed so far (before anything else reads or changes the table)."""
        if self._packed:
            self._lib.cm_add_packed(self._table, self._packets_address, self._packed)
            self._packed = 0
            self._drain()

    def add_columns(self, cols: Any, ip: Any, next_scan: int | None, scan_us: int) -> tuple[int | None, int]:
        """Meter packets ``ip`` (ascending int64 indices) of ``fastpath.Columns`` ``cols`` in one C call
        (it pauses only to hand ended pairs over when many end at once).

        Every packet of ``cols`` (IP or not) drives the idle scans as probe.pipeline's per-packet
        loop does: the first sets ``next_scan`` when it is None, one at or past it expires pairs at
        its time and sets the next ``scan_us`` later. Returns (next_scan, scans done).
        """
        n = cols.n
        ts = np.ascontiguousarray(cols.ts, dtype=np.int64)
        if (
            self._table is not None
            and n
            and not (-TIME_LIMIT <= int(ts.min()) and int(ts.max()) < TIME_LIMIT)
        ):
            self._to_python()
        if self._table is None:
            return self._add_columns_python(cols, ip, next_scan, scan_us)
        self._hand_over()
        arrays = [ts] + [
            np.ascontiguousarray(getattr(cols, name), dtype=np.uint64 if name in _UNSIGNED else np.int64)
            for name in COLUMNS[1:]
        ]
        pointers = (ctypes.c_void_p * len(arrays))(*(array.ctypes.data for array in arrays))
        ip = np.ascontiguousarray(ip, dtype=np.int64)
        state = self._state
        state[0] = state[1] = state[4] = 0
        state[2] = _clamp(next_scan) if next_scan is not None else 0
        state[3] = next_scan is not None
        lib, table = self._lib, self._table
        while True:
            if lib.cm_add_columns(table, pointers, n, ip.ctypes.data, len(ip), self._state_address, scan_us,
                                  self.out_limit) < 0:  # fmt: skip
                raise MemoryError("C flow table: no memory for ended flows")
            self._drain()
            if state[0] >= n:
                break
        scans = state[4]
        if scans:
            self.deliver()
            next_scan = state[2]
        elif state[3] and next_scan is None:
            next_scan = state[2]
        return next_scan, scans

    def _add_columns_python(
        self, cols: Any, ip: Any, next_scan: int | None, scan_us: int
    ) -> tuple[int | None, int]:
        from probe import fastpath  # only after a move to Python: numpy is there (cols are arrays)

        return fastpath.BatchMeter(self).add_in_order(cols, np.asarray(ip), next_scan, scan_us)

    # ------------------------------------------------------------ expiry

    def expire(self, now: int) -> None:
        if self._table is not None and not -TIME_LIMIT <= now < TIME_LIMIT:
            self._to_python()
        if self._table is None:
            FlowMeter.expire(self, now)
            return
        self._hand_over()
        self._lib.cm_expire(self._table, now)
        self._drain()
        self.deliver()

    def flush(self, reason: str) -> None:
        if self._table is None:
            FlowMeter.flush(self, reason)
            return
        self._hand_over()
        self._flush_reason = reason
        while self._lib.cm_flush(self._table, self.out_limit):
            self._drain()
        self._drain()
        self.deliver()

    # ------------------------------------------------------------ ended pairs out of C

    def _drain(self) -> None:
        lib, table = self._lib, self._table
        count = lib.cm_out_count(table)
        if not count:
            return
        if lib.cm_failed(table):
            raise MemoryError("C flow table: no memory for ended flows")
        records = ctypes.string_at(lib.cm_out_data(table), count * _RECORD.size)
        lib.cm_out_clear(table)  # before any Flow is handed on: a sink that raises must not see them twice
        export, mac = self._export_values, self._mac_text
        flush_reason = self._flush_reason
        for record in _RECORD.iter_unpack(records):
            key = _key(record)
            proto, _addr_a, port_a, _addr_b, port_b = key
            version, first_dir, syn_dir, reason = record[8], record[12], record[13], record[16]
            directions = []
            for side, base in ((0, _DIR0), (1, _DIR1)):
                if record[base]:
                    macs = record[base + 9]
                    directions.append((side, *record[base : base + 7], mac(record[base + 7], macs & MAC_SRC),
                                       mac(record[base + 8], macs & MAC_DST)))  # fmt: skip
            opener = self._initiator(proto, port_a, port_b, syn_dir, first_dir)
            made = export(
                key, version, opener, directions, flush_reason if reason == _R_FLUSH else _REASONS[reason]
            )
            if reason == _R_EVICTED:
                self.flows_evicted += made

    def _mac_text(self, value: int, present: int) -> str:
        if not present:
            return ""
        texts = self._mac_texts
        text = texts.get(value)
        if text is None:
            if len(texts) > 100_000:
                texts.clear()
            text = texts[value] = self._mac(value.to_bytes(6, "big"))
        return text

    # ------------------------------------------------------------ the move to Python

    def _to_python(self) -> None:
        """Copy the pairs into ``self.pairs`` in table order and free the C table (FlowMeter from now on)."""
        lib, table = self._lib, self._table
        self._hand_over()
        lib.cm_dump(table)
        if lib.cm_failed(table):
            raise MemoryError("C flow table: no memory to copy the table to Python")
        count = lib.cm_out_count(table)
        records = (ctypes.c_char * (count * _RECORD.size)).from_address(lib.cm_out_data(table))
        pairs: dict[tuple, list] = {}
        for record in _RECORD.iter_unpack(records):
            pair = list(EMPTY_PAIR)
            (pair[P_START], pair[P_LAST], pair[P_MOVED], pair[P_FIRST_DIR], pair[P_SYN_DIR],
             pair[P_FINS]) = record[9:15]  # fmt: skip
            pair[P_CLOSED] = _CLOSED_TEXT[record[15]]
            pair[P_VERSION] = record[8]
            for base, at in ((P_DIR0, _DIR0), (P_DIR1, _DIR1)):
                if record[at]:
                    macs = record[at + 9]
                    pair[base : base + D_SRC_MAC] = record[at : at + 7]
                    pair[base + D_SRC_MAC] = record[at + 7].to_bytes(6, "big") if macs & MAC_SRC else b""
                    pair[base + D_DST_MAC] = record[at + 8].to_bytes(6, "big") if macs & MAC_DST else b""
            pairs[_key(record)] = pair
        self._last_room_scan = lib.cm_last_room_scan(table)
        lib.cm_out_clear(table)
        self.pairs = pairs
        self._table = None
        self._finalizer()
        log.info(
            "a packet time beyond what the C flow table holds: %d pairs moved to the Python table", len(pairs)
        )


def _key(record: tuple) -> tuple:
    """FlowMeter's table key, (proto, lower address, its port, higher address, its port), of a C record."""
    a_hi, a_lo, b_hi, b_lo, proto, alen, port_a, port_b = record[:8]
    if alen == 4:
        return proto, a_lo.to_bytes(4, "big"), port_a, b_lo.to_bytes(4, "big"), port_b
    return (
        proto,
        (a_hi << 64 | a_lo).to_bytes(16, "big"),
        port_a,
        (b_hi << 64 | b_lo).to_bytes(16, "big"),
        port_b,
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["build"]:
        print("usage: python -m probe.cmeter build   (compiles probe/_cmeter.c with $CC, default cc)",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        path = build()
    except BuildError as exc:
        print(f"probe.cmeter: {exc}", file=sys.stderr)
        return 1
    print(f"built {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
