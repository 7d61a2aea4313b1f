"""The probe's spool: every batch is on disk before it is sent, and stays there until it is stored.

Layout of the spool directory::

    sequence                 next batch sequence number (text)
    lock                     held (flock) by the one probe using this spool
    000000000042.hfc1.gz     a batch body exactly as it is POSTed: the columnar encoding, gzip'd
    000000000041.json.gz     ... or gzip'd JSON (written by older probes; still sent as JSON)
    quarantine/              batches the collector refused (4xx), each with a .reason file beside

Writes go to a temporary name, are fsync'd, then renamed with ``os.replace`` and the directory
fsync'd, so after a power cut a batch file is either whole or absent.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("hostflow.probe.spool")

BATCH_SUFFIX = ".json.gz"  # gzip'd JSON batch
COLUMNS_SUFFIX = ".hfc1.gz"  # gzip'd application/vnd.hostflow.columns+v1 batch
SUFFIXES = (BATCH_SUFFIX, COLUMNS_SUFFIX)
_BATCH_NAME = re.compile(r"^(\d{12,})(\.json\.gz|\.hfc1\.gz)$")


class SpoolError(RuntimeError):
    """The spool cannot be used (not writable, in use by another probe); the message says which."""


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    seq: int
    path: Path
    size: int

    @property
    def columnar(self) -> bool:
        return self.path.name.endswith(COLUMNS_SUFFIX)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not keep half a batch
        raise
    _fsync_dir(path.parent)


class Spool:
    """A directory of batch files, oldest first, bounded by ``max_bytes`` (the oldest are dropped)."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 256 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.quarantine_dir = self.directory / "quarantine"
        self.max_bytes = max_bytes
        self.dropped_batches = 0
        self.quarantined_batches = 0
        self._mutex = threading.Lock()
        try:
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            self._lock_handle = open(self.directory / "lock", "a+")  # noqa: SIM115 - held for the spool's life
        except OSError as exc:
            raise SpoolError(f"spool {self.directory}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_handle.close()
            raise SpoolError(
                f"spool {self.directory} is in use by another probe; give each probe its own --spool-dir"
            ) from None
        self._remove_stale_tmp()
        self._batches: dict[int, SpooledBatch] = {b.seq: b for b in self._scan()}
        self._next_seq = self._initial_seq()

    # ------------------------------------------------------------ state

    def _remove_stale_tmp(self) -> None:
        for folder in (self.directory, self.quarantine_dir):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def _scan(self) -> list[SpooledBatch]:
        found: dict[int, SpooledBatch] = {}
        for path in sorted(self.directory.iterdir()):
            match = _BATCH_NAME.match(path.name)
            if match:
                seq = int(match.group(1))
                if seq in found:  # a power cut inside replace(): both formats; keep the JSON one
                    stale = found[seq] if path.name.endswith(BATCH_SUFFIX) else None
                    if stale is None:
                        path.unlink(missing_ok=True)
                        continue
                    stale.path.unlink(missing_ok=True)
                found[seq] = SpooledBatch(seq, path, path.stat().st_size)
        return sorted(found.values(), key=lambda b: b.seq)

    def _initial_seq(self) -> int:
        seq_file = self.directory / "sequence"
        try:
            stored = int(seq_file.read_text().strip())
        except (OSError, ValueError):
            # A spool without its sequence file (new, or wiped by a reinstall) must not reuse batch
            # ids the collector has already stored: it would drop them as duplicates. Start from
            # the clock (100 ids per second since the epoch fits 12 digits until the year 2286).
            stored = int(time.time()) * 100
        highest = [b.seq for b in self._batches.values()]
        highest += [
            int(m.group(1)) for p in self.quarantine_dir.iterdir() if (m := _BATCH_NAME.match(p.name))
        ]
        return max([stored, *(s + 1 for s in highest)])

    def next_seq(self) -> int:
        """A new sequence number, persisted before it is used so it is never handed out twice."""
        with self._mutex:
            seq = self._next_seq
            self._next_seq += 1
            write_atomic(self.directory / "sequence", f"{self._next_seq}\n".encode())
            return seq

    # ------------------------------------------------------------ batches

    def path_for(self, seq: int, suffix: str = BATCH_SUFFIX) -> Path:
        if suffix not in SUFFIXES:
            raise ValueError(f"unknown spool suffix {suffix!r}")
        return self.directory / f"{seq:012d}{suffix}"

    def put(self, seq: int, body: bytes, suffix: str = BATCH_SUFFIX) -> SpooledBatch:
        """Store a batch durably; then drop the oldest batches while the spool is over its bound.
        ``suffix`` says the body's format (BATCH_SUFFIX: gzip'd JSON, COLUMNS_SUFFIX: columnar)."""
        path = self.path_for(seq, suffix)
        write_atomic(path, body)
        batch = SpooledBatch(seq, path, len(body))
        with self._mutex:
            self._batches[seq] = batch
            self._enforce_bound(keep=seq)
        return batch

    def replace(self, batch: SpooledBatch, body: bytes, suffix: str) -> SpooledBatch:
        """The same batch in another format: the new file is durable before the old one goes."""
        path = self.path_for(batch.seq, suffix)
        write_atomic(path, body)
        replaced = SpooledBatch(batch.seq, path, len(body))
        with self._mutex:
            self._batches[batch.seq] = replaced
        if batch.path != path:
            batch.path.unlink(missing_ok=True)
            _fsync_dir(self.directory)
        return replaced

    def _enforce_bound(self, keep: int) -> None:
        total = sum(b.size for b in self._batches.values())
        for seq in sorted(self._batches):
            if total <= self.max_bytes:
                break
            if seq == keep:
                continue
            dropped = self._batches.pop(seq)
            dropped.path.unlink(missing_ok=True)
            total -= dropped.size
            self.dropped_batches += 1
            log.warning(
                "spool over %d bytes: dropped the oldest batch %012d (%d dropped so far)",
                self.max_bytes,
                seq,
                self.dropped_batches,
            )

    def pending(self) -> list[SpooledBatch]:
        """The batches waiting to be sent, oldest first."""
        with self._mutex:
            return [self._batches[s] for s in sorted(self._batches)]

    def oldest(self) -> SpooledBatch | None:
        with self._mutex:
            return self._batches[min(self._batches)] if self._batches else None

    def read(self, batch: SpooledBatch) -> bytes:
        return batch.path.read_bytes()

    def remove(self, batch: SpooledBatch) -> None:
        with self._mutex:
            self._batches.pop(batch.seq, None)
        batch.path.unlink(missing_ok=True)
        _fsync_dir(self.directory)

    def quarantine(self, batch: SpooledBatch, reason: str) -> Path:
        """Move a refused batch aside (with why), so it is never resent; the quarantine is bounded too."""
        target = self.quarantine_dir / batch.path.name
        write_atomic(target.with_name(batch.path.name + ".reason"), (reason + "\n").encode())
        with self._mutex:
            self._batches.pop(batch.seq, None)
            self.quarantined_batches += 1
        os.replace(batch.path, target)
        _fsync_dir(self.directory)
        self._bound_quarantine()
        return target

    def _bound_quarantine(self) -> None:
        files = sorted(p for p in self.quarantine_dir.iterdir() if _BATCH_NAME.match(p.name))
        total = sum(p.stat().st_size for p in files)
        for path in files[:-1]:
            if total <= self.max_bytes:
                break
            total -= path.stat().st_size
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".reason").unlink(missing_ok=True)

    @property
    def bytes(self) -> int:
        with self._mutex:
            return sum(b.size for b in self._batches.values())

    @property
    def batches(self) -> int:
        with self._mutex:
            return len(self._batches)

    def close(self) -> None:
        if not self._lock_handle.closed:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
