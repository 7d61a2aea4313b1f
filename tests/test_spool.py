"""The probe's spool: durable, ordered, bounded, one owner, sequence numbers never reused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from probe.spool import BATCH_SUFFIX, COLUMNS_SUFFIX, Spool, SpoolError
from tests.plugins.common import ROOT


def test_batches_come_back_oldest_first_and_leave_when_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    seqs = [spool.next_seq() for _ in range(3)]
    for seq in reversed(seqs):
        spool.put(seq, f"body {seq}".encode())
    pending = spool.pending()
    assert [b.seq for b in pending] == seqs
    assert [spool.read(b) for b in pending] == [f"body {s}".encode() for s in seqs]
    assert spool.bytes == sum(len(f"body {s}") for s in seqs)
    spool.remove(pending[0])
    assert [b.seq for b in spool.pending()] == seqs[1:]
    assert sorted(p.name for p in tmp_path.glob("*.json.gz")) == [f"{s:012d}.json.gz" for s in seqs[1:]]
    spool.close()


def test_sequence_survives_a_restart_and_is_never_reused(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = [spool.next_seq() for _ in range(5)]
    spool.put(first[-1], b"x")
    spool.close()
    again = Spool(tmp_path)
    assert again.next_seq() == first[-1] + 1
    assert [b.seq for b in again.pending()] == [first[-1]]
    again.close()


def test_a_new_spool_starts_from_the_clock_not_from_zero(tmp_path: Path) -> None:
    # a wiped spool must not hand out batch ids the collector already stored (they would be
    # dropped as duplicates)
    before = int(time.time()) * 100
    spool = Spool(tmp_path)
    seq = spool.next_seq()
    assert before <= seq <= (int(time.time()) + 1) * 100
    assert len(f"{seq:012d}") == 12
    spool.close()


def test_lost_sequence_file_still_continues_after_spooled_batches(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    seq = spool.next_seq()
    spool.put(seq + 10**11, b"far ahead")  # a batch numbered above anything the clock would give
    spool.close()
    (tmp_path / "sequence").unlink()
    again = Spool(tmp_path)
    assert again.next_seq() == seq + 10**11 + 1
    again.close()


def test_over_the_bound_the_oldest_batches_are_dropped_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=250)
    seqs = [spool.next_seq() for _ in range(5)]
    for seq in seqs:
        spool.put(seq, bytes(100))
    assert [b.seq for b in spool.pending()] == seqs[-2:]
    assert spool.dropped_batches == 3
    assert spool.bytes == 200
    big = spool.next_seq()
    spool.put(big, bytes(1000))  # larger than the bound alone: kept, everything older dropped
    assert [b.seq for b in spool.pending()] == [big]
    assert spool.dropped_batches == 5
    spool.close()


def test_one_spool_one_probe(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(SpoolError, match="in use by another probe"):
        Spool(tmp_path)
    spool.close()
    Spool(tmp_path).close()


def test_unwritable_spool_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError, match=str(blocker)):
        Spool(blocker / "spool")


def test_quarantine_moves_the_batch_aside_with_its_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    seq = spool.next_seq()
    batch = spool.put(seq, b"refused body")
    target = spool.quarantine(batch, "collector refused batch: 400 bad flow")
    assert spool.pending() == []
    assert target.read_bytes() == b"refused body"
    assert target.with_name(target.name + ".reason").read_text() == "collector refused batch: 400 bad flow\n"
    assert spool.quarantined_batches == 1
    spool.close()
    (tmp_path / "sequence").unlink()
    again = Spool(tmp_path)
    assert again.pending() == []  # never resent
    assert again.next_seq() > seq  # and its id never reused
    again.close()


def test_a_batch_is_whole_or_absent_after_kill_9(tmp_path: Path) -> None:
    """A writer killed at a random moment leaves only complete batches (and no stray temp files)."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from probe.spool import Spool
        spool = Spool(sys.argv[1])
        while True:
            seq = spool.next_seq()
            spool.put(seq, bytes([seq % 251]) * 200_000)
            print(seq, flush=True)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    confirmed = [int(child.stdout.readline()) for _ in range(20)]
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    spool = Spool(tmp_path)
    found = {b.seq: spool.read(b) for b in spool.pending()}
    assert set(confirmed) <= set(found)
    for seq, body in found.items():
        assert body == bytes([seq % 251]) * 200_000
    assert not list(tmp_path.glob(".*.tmp"))
    assert spool.next_seq() > max(found)
    spool.close()


def test_json_and_columnar_batches_share_one_sequence(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first, second, third = spool.next_seq(), spool.next_seq(), spool.next_seq()
    spool.put(second, b"columnar", COLUMNS_SUFFIX)
    spool.put(first, b"old json", BATCH_SUFFIX)
    spool.put(third, b"json again")
    with pytest.raises(ValueError, match="unknown spool suffix"):
        spool.put(third + 1, b"x", ".txt")
    spool.close()
    reopened = Spool(tmp_path)  # as after a restart: found on disk, oldest first, whatever the format
    pending = reopened.pending()
    assert [(b.seq, b.columnar, reopened.read(b)) for b in pending] == [
        (first, False, b"old json"), (second, True, b"columnar"), (third, False, b"json again"),
    ]  # fmt: skip
    assert reopened.next_seq() == third + 1
    reopened.quarantine(pending[1], "refused")
    assert [p.name for p in (tmp_path / "quarantine").iterdir() if not p.name.endswith(".reason")] == [
        f"{second:012d}{COLUMNS_SUFFIX}"
    ]
    reopened.close()


def test_a_batch_rewritten_as_json_is_one_batch_even_after_a_power_cut(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    seq = spool.next_seq()
    batch = spool.put(seq, b"columnar", COLUMNS_SUFFIX)
    rewritten = spool.replace(batch, b"json", BATCH_SUFFIX)
    assert [(b.seq, b.columnar) for b in spool.pending()] == [(seq, False)] and not batch.path.exists()
    spool.close()
    batch.path.write_bytes(b"columnar")  # as if the power went before the old file was removed
    reopened = Spool(tmp_path)
    assert [(b.seq, reopened.read(b)) for b in reopened.pending()] == [(seq, b"json")]
    assert not batch.path.exists() and rewritten.path.exists()
    reopened.close()
