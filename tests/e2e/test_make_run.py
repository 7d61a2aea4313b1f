"""`make run`'s orchestration (hostflow/run.py): build on first use, reuse after, stop cleanly.

Runs the real command on free ports with its own database: a capture (as `make run PCAP=…` does),
then the same database again, which must start without metering anything.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.plugins.common import FIXTURES, ROOT, free_port

CAPTURE = FIXTURES / "pcap" / "ndpi-iphone.pcap"


def start(db: Path, collector_port: int, app_port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hostflow.run", "--pcap", str(CAPTURE), "--db", str(db),
         "--collector-port", str(collector_port), "--app-port", str(app_port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_running(proc: subprocess.Popen, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.stderr.read()[-3000:]}")
        lines.append(line)
        if "hostflow is running" in line:
            return line
    raise AssertionError(f"not running after {timeout} s: {lines}")


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _out, err = proc.communicate(timeout=60)
    return proc.returncode, err


def flows_stored(collector_port: int) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{collector_port}/api/v1/query/time_range",
        data=b"{}",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["rows"][0][2]


def port_closed(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
    except OSError:
        return True
    return False


def test_first_run_builds_second_run_reuses_and_ctrl_c_stops_both(tmp_path: Path) -> None:
    db = tmp_path / "forensic.duckdb"
    collector_port, app_port = free_port(), free_port()
    proc = start(db, collector_port, app_port)
    try:
        line = wait_running(proc)
        assert f"http://127.0.0.1:{app_port}" in line
        assert flows_stored(collector_port) == 90  # what the probe meters from this capture
        with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/_stcore/health", timeout=10) as response:
            assert response.read() == b"ok"
    finally:
        code, err = stop(proc)
    assert code == 0, err[-2000:]
    assert "metering 1 capture(s)" in err
    assert port_closed(collector_port) and port_closed(app_port)
    assert db.with_name(db.name + ".ready").exists()

    started = time.monotonic()
    proc = start(db, collector_port, app_port)
    try:
        wait_running(proc)
        elapsed = time.monotonic() - started
        assert flows_stored(collector_port) == 90  # reused, not metered twice
    finally:
        code, err = stop(proc)
    assert code == 0 and "metering" not in err
    assert elapsed < 60, elapsed  # "starts in seconds": no set-up, no metering (bound generous for CI)


def test_missing_capture_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hostflow.run", "--pcap", str(tmp_path / "nope.pcap")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (
        result.returncode == 1
        and "no such capture file" in result.stderr
        and "Traceback" not in result.stderr
    )
