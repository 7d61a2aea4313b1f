"""NetFlow v9 records/s decoded and stored: our collector against nfdump's nfcapd on the same export.

The export is synthesised: one softflowd-style IPv4 template (13 fields, 45-byte records), 30
records per datagram, the template repeated every 1000 datagrams, 1,000,000 records by default.

In process (one core, no sockets):
- decode only, per-record path (``NetflowDecoder.feed`` → Flow objects) and columnar path
  (``feed(..., batch)`` + ``batch.tables()`` → Arrow columns);
- decode + store in a DuckDB file: columnar + ``Store.ingest_columns`` (what the collector does),
  and per-record + ``Store.ingest`` (the old way; on at most 200,000 records, it is slow).

Over loopback, the same datagrams replayed by one sender at each ``--rates`` value (records/s;
0 = as fast as the sending socket takes them) to:
- nfcapd 1.7 (``-B`` 32 MB receive buffer, like ours), stopped with SIGTERM once the sender is
  done; stored = ``nfdump -r FILE -I`` flows; elapsed = first send until nfcapd has exited
  (it writes its file on exit);
- our collector process, ``python -m collector serve --netflow-port`` (UDP listener → columnar
  batches → writer thread → DuckDB); elapsed = first send until ``flows_stored_total`` stops
  growing (polled on /metrics every 50 ms); stored = rows in the DuckDB file after it stopped.
records/s = stored / elapsed; loss = 1 - stored / sent.

    .venv/bin/python bench/bench_netflow.py [--records 1000000] [--rates 250000,1000000,0]
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
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collector.netflow import NetflowDecoder  # noqa: E402

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
RECEIVE_BUFFER = 32 * 1024 * 1024
PER_RECORD_STORE_LIMIT = 200_000
QUIET = 10.0  # seconds without a new stored row before our collector is taken to be done


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


# ---------------------------------------------------------------- in process


def decode_per_record(datagrams: list[bytes]) -> tuple[float, int]:
    decoder = NetflowDecoder()
    start = time.perf_counter()
    flows = 0
    for datagram in datagrams:
        flows += len(decoder.feed(datagram, "127.0.0.1", 0))
    return time.perf_counter() - start, flows


def decode_columnar(datagrams: list[bytes], store=None, chunk: int = 50_000) -> tuple[float, int]:
    """Columnar decode in batches of ``chunk`` records (as the listener hands them over), optionally stored."""
    decoder = NetflowDecoder()
    batch = decoder.new_batch()
    flows = 0
    start = time.perf_counter()
    for index, datagram in enumerate(datagrams):
        decoder.feed(datagram, "127.0.0.1", 0, batch)
        if batch.records >= chunk or index == len(datagrams) - 1:
            for exporter, probe_id, table in batch.tables():
                if store is not None:
                    flows += store.ingest_columns(None, exporter, table, probe_id=probe_id).flows
                else:
                    flows += table.num_rows
    return time.perf_counter() - start, flows


def store_per_record(datagrams: list[bytes], workdir: Path) -> tuple[float, int]:
    from collector.store import Store

    store = Store(str(workdir / "per-record.duckdb"))
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


def store_columnar(datagrams: list[bytes], workdir: Path) -> tuple[float, int]:
    from collector.store import Store

    store = Store(str(workdir / "columnar.duckdb"))
    try:
        return decode_columnar(datagrams, store, chunk=200_000)
    finally:
        store.close()


# ---------------------------------------------------------------- over loopback


def send(datagrams: list[bytes], port: int, rate: int) -> float:
    """Send everything to 127.0.0.1:port, paced to ``rate`` records/s (0: unpaced); returns the start."""
    per_second = rate / PER_DATAGRAM if rate else 0.0
    start = time.perf_counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        address = ("127.0.0.1", port)
        for index, datagram in enumerate(datagrams):
            if per_second and index % 32 == 0:
                ahead = start + index / per_second - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            sock.sendto(datagram, address)
    return start


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_nfcapd(datagrams: list[bytes], workdir: Path, rate: int) -> tuple[float, int] | None:
    nfcapd, nfdump = shutil.which("nfcapd"), shutil.which("nfdump")
    if not nfcapd or not nfdump:
        return None
    flow_dir = workdir / f"nfcapd-{rate}"
    flow_dir.mkdir()
    port = free_port(socket.SOCK_DGRAM)
    proc = subprocess.Popen(
        [nfcapd, "-b", "127.0.0.1", "-p", str(port), "-w", str(flow_dir), "-B", str(RECEIVE_BUFFER),
         "-P", str(flow_dir / "nfcapd.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        start = send(datagrams, port, rate)
        # nfcapd has no counter to poll: let it drain its socket buffer, then stop it; it writes
        # the flows file on exit, so elapsed ends when it has exited.
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        elapsed = time.perf_counter() - start - 0.2
    finally:
        if proc.poll() is None:
            proc.kill()
    files = [p for p in flow_dir.iterdir() if p.name.startswith("nfcapd.") and p.name != "nfcapd.pid"]
    stored = 0
    for path in files:
        stats = subprocess.run([nfdump, "-r", str(path), "-I"], capture_output=True, text=True, check=True)
        stored += next(
            int(line.split(":")[1]) for line in stats.stdout.splitlines() if line.startswith("Flows:")
        )
    return elapsed, stored


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def run_ours(datagrams: list[bytes], workdir: Path, rate: int) -> tuple[float, int, float]:
    """(elapsed, rows stored, kernel drops) for `python -m collector serve` with a NetFlow port."""
    import duckdb

    db = workdir / f"ours-{rate}.duckdb"
    port, http_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    url = f"http://127.0.0.1:{http_port}"
    log = (workdir / f"ours-{rate}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "serve", "--db", str(db), "--http-port", str(http_port),
         "--netflow-port", str(port), "--token", "bench=bench", "--log-level", "warning"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    stored_metric = 'hostflow_collector_flows_stored_total{origin="netflow"}'
    total = sum(struct.unpack_from("!H", datagram, 2)[0] for datagram in datagrams)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _metric(url, stored_metric)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"collector did not start; see {log.name}") from None
                time.sleep(0.1)
        start = send(datagrams, port, rate)
        # done when every record is stored, or nothing more was stored for QUIET seconds (a loss)
        last_value, last_change = -1.0, time.perf_counter()
        while last_value < total and time.perf_counter() - last_change < QUIET:
            value = _metric(url, stored_metric)
            if value != last_value:
                last_value, last_change = value, time.perf_counter()
            time.sleep(0.05)
        elapsed = last_change - start
        kernel_drops = _metric(url, "hostflow_collector_netflow_kernel_drops_total")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
        stopped = time.perf_counter()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    with duckdb.connect(str(db), read_only=True) as con:
        stored = con.execute("SELECT count(*) FROM flows").fetchone()[0]
    if stored > last_value:  # the rest was written by the final flush at shutdown: count that time
        elapsed = stopped - start
    return elapsed, stored, kernel_drops


# ---------------------------------------------------------------- report


def line(label: str, ours: float, reference: float | None, note: str = "") -> None:
    ref_text = f"{reference:14,.0f}" if reference else f"{'—':>14}"
    ratio = f"{ours / reference:7.2f}" if reference else f"{'—':>7}"
    print(f"{label:<44}{ours:14,.0f}{ref_text}{ratio}  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument(
        "--rates", default="250000,1000000,0", help="replay rates in records/s, comma-separated; 0 = unpaced"
    )
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    datagrams = make_datagrams(args.records)
    total = args.records
    print(
        f"NetFlow v9 export: {total:,} records in {len(datagrams):,} datagrams "
        f"({PER_DATAGRAM} records of 45 bytes each), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'records/s':<44}{'ours':>14}{'nfcapd':>14}{'ratio':>7}")
    with tempfile.TemporaryDirectory(prefix="hf-bench-nf") as tmp:
        workdir = Path(tmp)
        elapsed, flows = decode_per_record(datagrams)
        per_record = flows / elapsed
        line("decode only, per-record path (in process)", per_record, None, f"{flows:,} in {elapsed:.2f} s")
        elapsed, flows = decode_columnar(datagrams)
        line(
            "decode only, columnar path (in process)", flows / elapsed, None, f"{flows:,} in {elapsed:.2f} s"
        )
        subset = datagrams[: PER_RECORD_STORE_LIMIT // PER_DATAGRAM]
        elapsed, flows = store_per_record(subset, workdir)
        line("per-record + Store.ingest (DuckDB)", flows / elapsed, None, f"{flows:,} in {elapsed:.2f} s")
        elapsed, flows = store_columnar(datagrams, workdir)
        line(
            "columnar + Store.ingest_columns (DuckDB)", flows / elapsed, None, f"{flows:,} in {elapsed:.2f} s"
        )
        for rate in rates:
            pace = f"{rate:,}/s" if rate else "unpaced"
            reference = run_nfcapd(datagrams, workdir, rate)
            ours_elapsed, ours_stored, kernel_drops = run_ours(datagrams, workdir, rate)
            ours_rate = ours_stored / ours_elapsed
            if reference is None:
                print("nfcapd: not installed (scripts/setup.sh installs nfdump)")
                ref_rate = None
                ref_note = ""
            else:
                ref_elapsed, ref_stored = reference
                ref_rate = ref_stored / ref_elapsed
                ref_note = (
                    f"nfcapd {ref_stored:,} stored in {ref_elapsed:.2f} s, loss {1 - ref_stored / total:.1%}"
                )
            line(
                f"loopback at {pace}: stored/elapsed",
                ours_rate,
                ref_rate,
                f"ours {ours_stored:,} stored in {ours_elapsed:.2f} s, loss {1 - ours_stored / total:.1%} "
                f"(kernel drops {kernel_drops:,.0f} datagrams); {ref_note}",
            )


if __name__ == "__main__":
    os.environ.setdefault("TZ", "UTC")
    main()
