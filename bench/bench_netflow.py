"""NetFlow v9 records/s decoded and stored: our collector against nfdump's nfcapd on the same export.

The export is synthesised: one softflowd-style IPv4 template (13 fields, 45-byte records), 30
records per datagram, the template repeated every 1000 datagrams, 1,000,000 records by default.

In process (one core, no sockets):
- decode only, per-record path (``NetflowDecoder.feed`` → Flow objects) and columnar path
  (``feed(..., batch)`` + ``batch.tables()`` → Arrow columns);
- decode + store in a DuckDB file: columnar + ``Store.ingest_columns`` (what the collector does),
  and per-record + ``Store.ingest`` (the old way; on at most 200,000 records, it is slow);
- DuckDB's own INSERT of the same records decoded beforehand (Arrow, 200,000 rows a transaction),
  printed beside nfcapd's unpaced run: no collector that stores into this table can pass it; and
  the same without the text columns (addresses, MACs, ids as text: the data contract's choice).

Over loopback, the same datagrams replayed by one sender at each ``--rates`` value (records/s;
0 = as fast as the sending socket takes them) to:
- nfcapd 1.7 (``-B`` 32 MB receive buffer, like ours), stopped with SIGTERM once the sender is
  done; stored = ``nfdump -r FILE -I`` flows; elapsed = first send until nfcapd has exited
  (it writes its file on exit);
- our collector process, ``python -m collector serve --netflow-port`` (UDP listener → columnar
  batches → decode thread → writer thread → DuckDB, one transaction per flush of up to 200,000
  records or 1 s); elapsed = first send until ``flows_stored_total`` stops growing (polled on
  /metrics every 50 ms); stored = rows in the DuckDB file after it stopped.
records/s = stored / elapsed; loss = 1 - stored / sent. Also the CPU time (user + system, all
threads, from /proc) each process spent from the first datagram until it had stored everything,
per stored record: unlike records/s it hardly depends on what else the machine runs.

Highest loss-free rate (``--search``, on by default), the same steps for both sides: a fresh
process per step, the export replayed at R records/s for ``--step-seconds``; ``GRACE`` seconds
after the last datagram both are sent SIGTERM. A step is loss-free when every record sent is
stored: nfcapd's count is what its file holds after exit (it keeps nothing but its socket buffer
and a few blocks); ours is ``flows_stored_total`` at that moment, before the shutdown flush, so
records still queued in memory count as lost (a backlog must not pass for keeping up). Rates
double from ``--start`` until a step loses, then a binary search narrows the edge to 5 %. A step
whose sender fell more than 10 % short of R (it is one Python process) ends the search upwards;
the searches of all sides advance in turn, one step each, so machine load falls on all alike.

    .venv/bin/python bench/bench_netflow.py [--records 1000000] [--rates 250000,1000000,0]
        [--search/--no-search] [--step-seconds 3] [--start 100000] [--max 3200000] [--baseline TREE]

``--baseline TREE`` runs the collector of another checkout too, at every rate and in the search,
interleaved with ours, so a change is compared under the same machine load.
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
from collections.abc import Generator
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
GRACE = 2.0  # search steps: seconds after the last datagram before each side is stopped


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


def insert_ceiling(
    datagrams: list[bytes], workdir: Path, numbers_only: bool = False
) -> tuple[float, float, int]:
    """DuckDB's own INSERT of the same records already decoded (Arrow, 200,000 rows a transaction).

    No decoding, validation or bookkeeping: the most any collector that stores into this DuckDB
    table could reach here. ``numbers_only``: the same rows without their text columns (addresses,
    MACs, probe id, end reason, initiator) into a table of just the others, to show what the text
    costs. Returns (elapsed s, CPU s of this process, rows).
    """
    import duckdb
    import pyarrow as pa

    from collector.store import Store

    path = workdir / f"ceiling{'-numbers' if numbers_only else ''}.duckdb"
    decoder = NetflowDecoder()
    batch = decoder.new_batch()
    tables = []
    for index, datagram in enumerate(datagrams):
        decoder.feed(datagram, "127.0.0.1", 0, batch)
        if batch.records >= 200_000 or index == len(datagrams) - 1:
            tables.extend(table for _exporter, _probe, table in batch.tables())
    if numbers_only:
        text = [field.name for field in tables[0].schema if pa.types.is_string(field.type)]
        tables = [table.drop(text) for table in tables]
    else:
        Store(str(path)).close()  # the collector's own schema
    con = duckdb.connect(str(path))
    if numbers_only:
        con.register("incoming", tables[0])
        con.execute("CREATE TABLE flows AS SELECT * FROM incoming LIMIT 0")
        con.unregister("incoming")
    columns = ", ".join(tables[0].column_names)
    cpu = time.process_time()
    start = time.perf_counter()
    for table in tables:
        con.execute("BEGIN TRANSACTION")
        con.register("incoming", table)
        con.execute(f"INSERT INTO flows ({columns}) SELECT * FROM incoming")
        con.execute("COMMIT")
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    rows = con.execute("SELECT count(*) FROM flows").fetchone()[0]
    con.close()
    return elapsed, cpu, rows


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


def start_nfcapd(workdir: Path, tag: str) -> tuple[subprocess.Popen, int, Path]:
    flow_dir = workdir / f"nfcapd-{tag}"
    flow_dir.mkdir()
    port = free_port(socket.SOCK_DGRAM)
    proc = subprocess.Popen(
        [shutil.which("nfcapd") or "nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", str(flow_dir),
         "-B", str(RECEIVE_BUFFER), "-P", str(flow_dir / "nfcapd.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # nfcapd has no readiness signal
    return proc, port, flow_dir


def nfcapd_stored(flow_dir: Path) -> int:
    stored = 0
    for path in flow_dir.iterdir():
        if path.name.startswith("nfcapd.") and path.name != "nfcapd.pid":
            stats = subprocess.run(
                [shutil.which("nfdump") or "nfdump", "-r", str(path), "-I"], capture_output=True, text=True, check=True
            )  # fmt: skip
            stored += next(
                int(line.split(":")[1]) for line in stats.stdout.splitlines() if line.startswith("Flows:")
            )
    return stored


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen, timeout: float = 300) -> None:
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_nfcapd(datagrams: list[bytes], workdir: Path, rate: int) -> tuple[float, int, float] | None:
    """(elapsed, flows stored, CPU seconds while receiving) for nfcapd."""
    if not shutil.which("nfcapd") or not shutil.which("nfdump"):
        return None
    proc, port, flow_dir = start_nfcapd(workdir, str(rate))
    try:
        cpu = cpu_seconds(proc.pid)
        start = send(datagrams, port, rate)
        # nfcapd has no counter to poll: let it drain its socket buffer, then stop it; it writes
        # the flows file on exit, so elapsed ends when it has exited.
        time.sleep(0.2)
        cpu = cpu_seconds(proc.pid) - cpu
    finally:
        stop(proc, 120)
    elapsed = time.perf_counter() - start - 0.2
    return elapsed, nfcapd_stored(flow_dir), cpu


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


STORED_METRIC = 'hostflow_collector_flows_stored_total{origin="netflow"}'


def start_ours(workdir: Path, tag: str, tree: Path = ROOT) -> tuple[subprocess.Popen, int, str, Path]:
    """``python -m collector serve`` (of the checkout ``tree``) with a NetFlow port, once its /metrics answers."""
    db = workdir / f"ours-{tag}.duckdb"
    port, http_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    url = f"http://127.0.0.1:{http_port}"
    log_path = workdir / f"ours-{tag}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector", "serve", "--db", str(db), "--http-port", str(http_port),
             "--netflow-port", str(port), "--token", "bench=bench", "--log-level", "warning"],
            cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            _metric(url, STORED_METRIC)
            return proc, port, url, db
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"collector did not start; see {log_path}") from None
            time.sleep(0.1)


def rows_in(db: Path) -> int:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT count(*) FROM flows").fetchone()[0]


def run_ours(
    datagrams: list[bytes], workdir: Path, rate: int, tree: Path = ROOT
) -> tuple[float, int, float, float]:
    """(elapsed, rows stored, kernel drops, CPU seconds until stored) for `python -m collector serve`
    with a NetFlow port (its CPU includes answering the /metrics polls, 20 a second)."""
    total = sum(struct.unpack_from("!H", datagram, 2)[0] for datagram in datagrams)
    proc, port, url, db = start_ours(workdir, f"{rate}-{len(list(workdir.iterdir()))}", tree)
    try:
        cpu = cpu_seconds(proc.pid)
        start = send(datagrams, port, rate)
        # done when every record is stored, or nothing more was stored for QUIET seconds (a loss)
        last_value, last_change = -1.0, time.perf_counter()
        while last_value < total and time.perf_counter() - last_change < QUIET:
            value = _metric(url, STORED_METRIC)
            if value != last_value:
                last_value, last_change = value, time.perf_counter()
            time.sleep(0.05)
        elapsed = last_change - start
        kernel_drops = _metric(url, "hostflow_collector_netflow_kernel_drops_total")
        cpu = cpu_seconds(proc.pid) - cpu
    finally:
        stop(proc)
    stopped = time.perf_counter()
    stored = rows_in(db)
    if stored > last_value:  # the rest was written by the final flush at shutdown: count that time
        elapsed = stopped - start
    return elapsed, stored, kernel_drops, cpu


# ---------------------------------------------------------------- highest loss-free rate


def replay(pool: list[bytes], records: int) -> list[bytes]:
    """``records`` records made by cycling through ``pool``, sequence numbers running on."""
    out: list[bytes] = []
    made = 0
    while made < records:
        datagram = bytearray(pool[len(out) % len(pool)])
        struct.pack_into("!I", datagram, 12, len(out))
        out.append(bytes(datagram))
        made += struct.unpack_from("!H", datagram, 2)[0]
    return out


def step_nfcapd(datagrams: list[bytes], workdir: Path, rate: int) -> tuple[int, float]:
    """(records stored, seconds the sender took) for one search step against nfcapd."""
    proc, port, flow_dir = start_nfcapd(workdir, f"step-{rate}-{len(list(workdir.iterdir()))}")
    try:
        start = send(datagrams, port, rate)
        sent_in = time.perf_counter() - start
        time.sleep(GRACE)
    finally:
        stop(proc, 120)
    return nfcapd_stored(flow_dir), sent_in


def step_ours(
    datagrams: list[bytes], workdir: Path, rate: int, sent: int, tree: Path = ROOT
) -> tuple[int, float]:
    """(records stored within GRACE of the last datagram, seconds the sender took) for our collector."""
    proc, port, url, _db = start_ours(workdir, f"step-{rate}-{len(list(workdir.iterdir()))}", tree)
    try:
        start = send(datagrams, port, rate)
        done = time.perf_counter()
        stored = _metric(url, STORED_METRIC)
        while stored < sent and time.perf_counter() < done + GRACE:
            time.sleep(min(0.25, max(0.0, done + GRACE - time.perf_counter())))  # few polls: they cost it CPU
            stored = _metric(url, STORED_METRIC)
    finally:
        stop(proc)
    return int(stored), done - start


def edge_search(start: int, maximum: int) -> Generator[int, tuple[bool, bool], tuple[int, str]]:
    """Yields the rates to try, is sent (no loss, the sender reached the rate) for each: doubles
    from ``start`` until a step loses, then bisects to 5 %; returns (best rate, where the edge lies)."""
    good, bad = 0, None
    rate = start
    while rate <= maximum:
        lossless, reached = yield rate
        if not lossless:
            bad = rate
            break
        good = rate
        if not reached:  # the sender is the limit: no higher rate can be offered
            return good, f"at least {good:,} (the sender's limit)"
        rate *= 2
    if bad is None:
        return good, f"at least {good:,} (the highest rate tried)"
    while bad - good > max(10_000, good // 20):
        rate = (good + bad) // 2
        lossless, _reached = yield rate
        if lossless:
            good = rate
        else:
            bad = rate
    return good, f"between {good:,} and {bad:,}"


def attempt(name: str, step, pool: list[bytes], seconds: float, rate: int) -> tuple[bool, bool]:
    """One step: (no loss, the sender reached the rate)."""
    datagrams = replay(pool, int(rate * seconds))
    sent = sum(struct.unpack_from("!H", d, 2)[0] for d in datagrams)
    stored, sent_in = step(datagrams, rate, sent)
    achieved = sent / sent_in
    verdict = "no loss" if stored >= sent else f"LOSS {1 - stored / sent:.1%}"
    reached = achieved >= 0.9 * rate
    print(
        f"  {name:<7} offered {rate:>10,}/s for {seconds:g} s (sender reached {achieved:,.0f}/s): "
        f"stored {stored:,} of {sent:,} -> {verdict}{'' if reached else '; sender too slow'} "
        f"(load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    return stored >= sent, reached


# ---------------------------------------------------------------- report


def line(label: str, ours: float, reference: float | None, note: str = "", decimals: int = 0) -> None:
    ref_text = f"{reference:14,.{decimals}f}" if reference else f"{'—':>14}"
    ratio = f"{ours / reference:7.2f}" if reference else f"{'—':>7}"
    print(f"{label:<44}{ours:14,.{decimals}f}{ref_text}{ratio}  {note}", flush=True)


def search(
    pool: list[bytes], workdir: Path, seconds: float, start: int, maximum: int, baseline: Path | None
) -> None:
    print(f"highest loss-free rate ({seconds:g} s steps, both stopped {GRACE:g} s after the last datagram):")
    contenders = {
        "nfcapd": lambda datagrams, rate, _sent: step_nfcapd(datagrams, workdir, rate),
        "ours": lambda datagrams, rate, sent: step_ours(datagrams, workdir, rate, sent),
    }
    if baseline is not None:
        contenders["before"] = lambda datagrams, rate, sent: step_ours(
            datagrams, workdir, rate, sent, baseline
        )
    # the searches advance in turn, a step each, so the machine's load falls on all alike
    searches = {name: edge_search(start, maximum) for name in contenders}
    rates = {name: next(search) for name, search in searches.items()}
    found: dict[str, tuple[int, str]] = {}
    while rates:
        for name in list(rates):
            outcome = attempt(name, contenders[name], pool, seconds, rates[name])
            try:
                rates[name] = searches[name].send(outcome)
            except StopIteration as done:
                found[name] = done.value
                del rates[name]
    notes = "; ".join(f"{name} {edge}" for name, (_good, edge) in found.items())
    line("highest loss-free offered rate", found["ours"][0], found["nfcapd"][0], notes)
    if baseline is not None:
        line("  the same, collector before", found["before"][0], found["nfcapd"][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument(
        "--rates", default="250000,1000000,0", help="replay rates in records/s, comma-separated; 0 = unpaced"
    )
    parser.add_argument("--search", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--step-seconds", type=float, default=3.0)
    parser.add_argument("--start", type=int, default=100_000)
    parser.add_argument("--max", type=int, default=3_200_000)
    parser.add_argument(
        "--baseline", type=Path, help="another checkout (e.g. git worktree of HEAD): its collector is run too"
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
        ceiling = insert_ceiling(datagrams, workdir)
        numbers_ceiling = insert_ceiling(datagrams, workdir, numbers_only=True)
        for rate in rates:
            pace = f"{rate:,}/s" if rate else "unpaced"
            reference = run_nfcapd(datagrams, workdir, rate)
            if reference is None:
                print("nfcapd: not installed (scripts/setup.sh installs nfdump)")
                reference = (0.0, 0, 0.0)
            ref_elapsed, ref_stored, ref_cpu = reference
            ref_rate = ref_stored / ref_elapsed if ref_elapsed else None
            ref_note = (
                f"nfcapd {ref_stored:,} stored in {ref_elapsed:.2f} s, loss {1 - ref_stored / total:.1%}"
            )
            ref_cpu_us = ref_cpu / ref_stored * 1e6 if ref_stored else None
            contenders = [("", ROOT)] + ([("before", args.baseline)] if args.baseline is not None else [])
            for name, tree in contenders:
                elapsed, stored, kernel_drops, cpu = run_ours(datagrams, workdir, rate, tree)
                label = f"loopback at {pace}: stored/elapsed" if not name else "  the same, collector before"
                line(
                    label,
                    stored / elapsed,
                    ref_rate,
                    f"{name or 'ours'} {stored:,} stored in {elapsed:.2f} s, loss {1 - stored / total:.1%} "
                    f"(kernel drops {kernel_drops:,.0f} datagrams)" + ("" if name else f"; {ref_note}"),
                )
                line(
                    "  CPU µs per stored record (lower is better)",
                    cpu / stored * 1e6,
                    ref_cpu_us,
                    f"{name or 'ours'} {cpu:.2f} s CPU, nfcapd {ref_cpu:.2f} s",
                    decimals=2,
                )
            if rate == 0:  # beside nfcapd's own figures of the unpaced run
                elapsed, cpu, rows = ceiling
                line(
                    "DuckDB's own INSERT, records pre-decoded",
                    rows / elapsed,
                    ref_rate,
                    f"{rows:,} rows in {elapsed:.2f} s: the ceiling of storing into DuckDB here",
                )
                line("  its CPU µs per row", cpu / rows * 1e6, ref_cpu_us, "", decimals=2)
                elapsed, cpu, rows = numbers_ceiling
                line(
                    "  the same rows without their text columns",
                    rows / elapsed,
                    ref_rate,
                    f"{cpu / rows * 1e6:.2f} µs CPU a row: addresses etc. as text cost the rest",
                )
        if args.search:
            search(datagrams, workdir, args.step_seconds, args.start, args.max, args.baseline)


if __name__ == "__main__":
    os.environ.setdefault("TZ", "UTC")
    main()
