"""NetFlow v9 collection speed: our decoder (alone, + DuckDB Store, and behind the UDP listener)
against nfdump's nfcapd receiving the same datagrams over loopback.

The export is synthesised: one softflowd-style IPv4 template (13 fields, 45-byte records), 30
records per datagram, the template repeated every 1000 datagrams. The loopback runs send every
datagram as fast as the sending socket takes it to each collector in turn and count what each one
stored (nfcapd: ``nfdump -I``); records/s there = records stored / time from first send until the
collector went quiet.

    .venv/bin/python bench/bench_netflow.py [--records 1000000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collector.netflow import NetflowDecoder  # noqa: E402
from collector.udp import start_udp_listeners  # noqa: E402

TEMPLATE_ID = 256
FIELDS = [
    (8, 4),
    (12, 4),
    (21, 4),
    (22, 4),
    (1, 4),
    (2, 4),
    (10, 2),
    (14, 2),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 1),
    (5, 1),
]
RECORD = struct.Struct("!4s4sIIIIHHHHBBB")
PER_DATAGRAM = 30
EXPORT_SECS = 1_700_000_000
UPTIME_MS = 3_600_000


def make_datagrams(records: int) -> list[bytes]:
    template = struct.pack("!HH", TEMPLATE_ID, len(FIELDS)) + b"".join(struct.pack("!HH", *f) for f in FIELDS)
    template_set = struct.pack("!HH", 0, 4 + len(template)) + template
    out = []
    made = 0
    sequence = 0
    while made < records:
        count = min(PER_DATAGRAM, records - made)
        body = b"".join(
            RECORD.pack(
                bytes([10, (i >> 16) & 255, (i >> 8) & 255, i & 255]),
                bytes([192, 0, 2, i % 250 + 1]),
                UPTIME_MS - 5000,
                UPTIME_MS - 9000,
                1500 + i % 1000,
                3 + i % 7,
                1,
                2,
                1024 + i % 60000,
                443,
                6,
                0x1B,
                0,
            )  # fmt: skip
            for i in range(made, made + count)
        )
        data_set = struct.pack("!HH", TEMPLATE_ID, 4 + len(body)) + body
        sets = (template_set if sequence % 1000 == 0 else b"") + data_set
        header = struct.pack("!HHIIII", 9, count, UPTIME_MS, EXPORT_SECS, sequence, 1)
        out.append(header + sets)
        made += count
        sequence += 1
    return out


def bench_decode(datagrams: list[bytes]) -> tuple[float, int]:
    decoder = NetflowDecoder()
    start = time.perf_counter()
    flows = 0
    for datagram in datagrams:
        flows += len(decoder.feed(datagram, "127.0.0.1", 0))
    return time.perf_counter() - start, flows


def bench_decode_store(datagrams: list[bytes], workdir: Path) -> tuple[float, int] | None:
    try:
        from collector.store import Store
    except ImportError:
        return None
    store = Store(str(workdir / "bench.duckdb"))
    decoder = NetflowDecoder()
    pending: list = []
    stored = 0
    start = time.perf_counter()
    for datagram in datagrams:
        pending.extend(decoder.feed(datagram, "127.0.0.1", 0))
        if len(pending) >= 50_000:
            stored += store.ingest(None, "127.0.0.1", pending, []).flows
            pending = []
    if pending:
        stored += store.ingest(None, "127.0.0.1", pending, []).flows
    elapsed = time.perf_counter() - start
    store.close()
    return elapsed, stored


def blast(datagrams: list[bytes], port: int) -> float:
    """Send everything to 127.0.0.1:port as fast as the socket takes it; returns the start time."""
    start = time.perf_counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in datagrams:
            sock.sendto(datagram, ("127.0.0.1", port))
    return start


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_listener(datagrams: list[bytes]) -> tuple[float, int]:
    received = [0]
    last = [time.perf_counter()]
    lock = threading.Lock()

    def on_flows(flows: list, _exporter: str) -> None:
        with lock:
            received[0] += len(flows)
            last[0] = time.perf_counter()

    listener = start_udp_listeners("127.0.0.1", [0], on_flows)
    start = blast(datagrams, listener.ports[0])
    _wait_quiet(lambda: listener.metrics.packets)
    listener.stop()
    return last[0] - start, received[0]


def _wait_quiet(counter, quiet: float = 1.0) -> None:
    seen, since = -1, time.perf_counter()
    while time.perf_counter() - since < quiet:
        now = counter()
        if now != seen:
            seen, since = now, time.perf_counter()
        time.sleep(0.05)


def bench_nfcapd(datagrams: list[bytes], workdir: Path) -> tuple[float, int] | None:
    nfcapd, nfdump = shutil.which("nfcapd"), shutil.which("nfdump")
    if not nfcapd or not nfdump:
        return None
    flow_dir = workdir / "nfcapd"
    flow_dir.mkdir()
    port = free_udp_port()
    proc = subprocess.Popen(
        [nfcapd, "-b", "127.0.0.1", "-p", str(port), "-w", str(flow_dir), "-B", str(8 * 1024 * 1024),
         "-P", str(workdir / "nfcapd.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)
    start = blast(datagrams, port)
    sent = time.perf_counter()
    # nfcapd keeps no counter we can read while it runs: stop it after the sender is done and
    # its socket buffer has drained (well under a second for 8 MB), then count what it wrote.
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    stats = subprocess.run([nfdump, "-R", str(flow_dir), "-I"], capture_output=True, text=True, check=True)
    flows = next(int(line.split(":")[1]) for line in stats.stdout.splitlines() if line.startswith("Flows:"))
    return sent - start, flows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    datagrams = make_datagrams(args.records)
    print(
        f"NetFlow v9: {args.records:,} records in {len(datagrams):,} datagrams ({PER_DATAGRAM} per datagram)"
    )
    with tempfile.TemporaryDirectory(prefix="hf-bench-nf") as tmp:
        workdir = Path(tmp)
        elapsed, flows = bench_decode(datagrams)
        decode_rate = flows / elapsed
        print(
            f"ours, decode only (in process):         {decode_rate:12,.0f} records/s  ({flows:,} in {elapsed:.2f} s)"
        )
        stored = bench_decode_store(datagrams, workdir)
        if stored:
            elapsed, flows = stored
            print(
                f"ours, decode + Store.ingest (DuckDB):   {flows / elapsed:12,.0f} records/s  ({flows:,} in {elapsed:.2f} s)"
            )
        else:
            print("ours, decode + Store.ingest: collector/store.py not available")
        elapsed, flows = bench_listener(datagrams)
        listener_rate = flows / elapsed
        print(
            f"ours, UDP listener over loopback:       {listener_rate:12,.0f} records/s  "
            f"({flows:,} of {args.records:,} received, {elapsed:.2f} s)"
        )
        reference = bench_nfcapd(datagrams, workdir)
        if reference is None:
            print("nfcapd: not installed (scripts/setup.sh test installs nfdump)")
            return
        elapsed, flows = reference
        nfcapd_rate = flows / elapsed
        print(
            f"nfcapd 1.7 over loopback (reference):   {nfcapd_rate:12,.0f} records/s  "
            f"({flows:,} of {args.records:,} stored, {elapsed:.2f} s)"
        )
        print(
            f"ratio ours/nfcapd: decode only {decode_rate / nfcapd_rate:.2f}, listener {listener_rate / nfcapd_rate:.2f}"
        )


if __name__ == "__main__":
    os.environ.setdefault("TZ", "UTC")
    main()
