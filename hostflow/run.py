"""`make run`: start the collector and the app on the demo database (or on a capture given with PCAP=).

The first run builds the database through the real data path: the collector starts on an empty
file and `python -m probe read … --collector URL` meters the captures into it. A ready marker beside
the database says the build finished; without it the next run starts the build again from scratch.
Ctrl-C (or SIGTERM) stops the app and the collector cleanly.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
DEMO_DB = DATA / "demo.duckdb"
DEMO_TOKEN = "demo-probe-token"
LAB_DAY = dt.date(2026, 11, 20)


def log(message: str) -> None:
    print(f"hostflow: {message}", file=sys.stderr, flush=True)


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def udp_port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"hostflow: {proc.args[2]} exited with code {proc.returncode} at start-up")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"hostflow: {url} did not answer within {timeout:.0f} s")


def demo_captures() -> list[Path]:
    """The real captures in data/captures/ plus the generated lab day (written on first use)."""
    from hostflow.labgen import write_lab_day

    lab = DATA / "generated" / f"lab-{LAB_DAY.isoformat()}.pcap"
    if not lab.exists():
        log(f"generating a day of lab traffic into {lab.relative_to(ROOT)} (seeded, ~10 s)")
        partial = lab.with_suffix(".partial")
        write_lab_day(partial, LAB_DAY)
        partial.replace(lab)
    return sorted((DATA / "captures").glob("*.pcap*")) + [lab]


def start_collector(db: Path, port: int, netflow: bool, probe_id: str) -> subprocess.Popen:
    nf_port = 2055 if netflow and udp_port_free("127.0.0.1", 2055) else 0
    ipfix_port = 4739 if netflow and udp_port_free("127.0.0.1", 4739) else 0
    command = [
        sys.executable, "-m", "collector", "serve", "--db", str(db),
        "--http-host", "127.0.0.1", "--http-port", str(port),
        "--netflow-port", str(nf_port), "--ipfix-port", str(ipfix_port),
        "--token", f"{DEMO_TOKEN}={probe_id}",
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT)
    wait_http(f"http://127.0.0.1:{port}/health", proc, 60)
    log(
        f"collector on http://127.0.0.1:{port} (db {db})"
        + (f", NetFlow v5/v9 on udp/{nf_port}" if nf_port else "")
        + (f", IPFIX on udp/{ipfix_port}" if ipfix_port else "")
    )
    return proc


def meter_into(captures: list[Path], url: str, probe_id: str) -> None:
    log(f"metering {len(captures)} capture(s) into the collector")
    command = [sys.executable, "-m", "probe", "read", *map(str, captures), "--collector", url, "--token",
               DEMO_TOKEN, "--probe-id", probe_id, "--spool-dir", str(ROOT / "var" / "spool")]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(
            f"hostflow: the probe failed (exit {result.returncode}); the database will be rebuilt next time"
        )


def pcap_db(pcap: Path) -> Path:
    digest = hashlib.sha256(str(pcap.resolve()).encode() + str(pcap.stat().st_size).encode()).hexdigest()[:10]
    return ROOT / "var" / f"pcap-{pcap.stem}-{digest}.duckdb"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run hostflow's collector and app (make run).")
    parser.add_argument("--pcap", type=Path, help="open the app on this capture instead of the demo")
    parser.add_argument("--db", type=Path, help="database file (default: data/demo.duckdb)")
    parser.add_argument("--collector-port", type=int, default=8470)
    parser.add_argument("--app-port", type=int, default=8501)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args(argv)

    if args.pcap is not None and not args.pcap.is_file():
        log(f"{args.pcap}: no such capture file")
        return 1
    db = args.db or (pcap_db(args.pcap) if args.pcap else DEMO_DB)
    db.parent.mkdir(parents=True, exist_ok=True)
    ready = db.with_name(db.name + ".ready")
    for port in (args.collector_port, args.app_port):
        if not port_free("127.0.0.1", port):
            log(
                f"port {port} on 127.0.0.1 is taken (another hostflow running?): stop it or pick another port"
            )
            return 1
    if not ready.exists():
        for stale in (db, db.with_name(db.name + ".wal")):
            stale.unlink(missing_ok=True)

    procs: list[subprocess.Popen] = []

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        probe_id = re.sub(r"[^A-Za-z0-9._-]", "_", args.pcap.stem) if args.pcap else "demo"
        collector = start_collector(db, args.collector_port, netflow=args.pcap is None, probe_id=probe_id)
        procs.append(collector)
        url = f"http://127.0.0.1:{args.collector_port}"
        if not ready.exists():
            captures = [args.pcap] if args.pcap else demo_captures()
            meter_into(captures, url, probe_id=probe_id)
            ready.write_text(dt.datetime.now(dt.UTC).isoformat() + "\n")
        env = dict(os.environ, HOSTFLOW_COLLECTOR_URL=url)
        app = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", "127.0.0.1",
             "--server.port", str(args.app_port), "--server.headless", "true",
             "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env,
        )  # fmt: skip
        procs.append(app)
        wait_http(f"http://127.0.0.1:{args.app_port}/_stcore/health", app, 60)
        print(
            f"\n  hostflow is running: open http://127.0.0.1:{args.app_port}  (Ctrl-C stops it)\n", flush=True
        )
        while all(proc.poll() is None for proc in procs):
            time.sleep(0.5)
        log("a component stopped; shutting down")
        return 1
    except KeyboardInterrupt:
        log("stopping")
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
