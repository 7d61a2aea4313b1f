"""Probe metering speed and memory, ours beside softflowd's.

    .venv/bin/python bench/bench_probe.py [--packets 2000000] [--flows 200000]

1. Writes a seeded pcap of mixed traffic (TCP/UDP/ICMP, IPv4/IPv6, some VLAN tags, frame sizes
   60…1514, ~20k concurrent conversations) with struct, into a temp dir.
2. Times ``meter_files`` on it (one core) and ``softflowd -r`` on the same file (exporting
   IPFIX to a local UDP socket nobody reads), prints packets/s of both and the ratio; then the
   same for the same packets rewritten as pcapng (``--no-pcapng`` skips it).
3. Peak RSS of a process whose flow table holds ``--flows`` conversations (both directions),
   then ``--flows`` one-way flows.
4. With ``--live`` (root, tcpreplay): bench/bench_probe_live.py, the highest loss-free rate of
   live capture on a veth between two network namespaces.
5. With ``--compare TREE`` (another copy of the repository, e.g. ``git archive HEAD | tar -x -C
   /tmp/before``): that tree's ``meter_files`` beside this one's on the same pcap, each in a fresh
   process, interleaved with softflowd for ``--rounds`` rounds (CPU seconds and peak RSS per side).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from probe import cmeter  # noqa: E402
from probe.options import MeterOptions  # noqa: E402
from probe.pipeline import meter_files  # noqa: E402
from probe.sink import MemorySink  # noqa: E402


class CountingSink(MemorySink):
    def add_flows(self, flows) -> None:  # keep nothing: we measure metering, not storage
        self.count = getattr(self, "count", 0) + len(flows)


def _frame(rng: random.Random, conv: int, reply: bool, tcp_flags: int = 0x18) -> bytes:
    base = conv * 7919
    a = struct.pack("!I", 0x0A000000 | (base & 0xFFFF))
    b = struct.pack("!I", 0xC0A80000 | ((base >> 16) & 0xFF) << 8 | (conv & 0xFF))
    kind = conv % 10
    sport, dport = 1024 + conv % 60000, (443, 80, 53, 123, 8080)[conv % 5]
    if reply:
        a, b, sport, dport = b, a, dport, sport
    size = rng.choice((40, 52, 52, 60, 120, 576, 1400, 1460, 1500))
    if kind < 6:  # TCP over IPv4
        body = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 0x50, tcp_flags, 1000, 0, 0) + bytes(
            max(0, size - 40)
        )
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, 6, 0, a, b) + body
        eth_type = 0x0800
    elif kind < 8:  # UDP over IPv4
        body = struct.pack("!HHHH", sport, dport, 8 + max(0, size - 28), 0) + bytes(max(0, size - 28))
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, 17, 0, a, b) + body
        eth_type = 0x0800
    elif kind == 8:  # TCP over IPv6
        body = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 0x50, tcp_flags, 1000, 0, 0) + bytes(
            max(0, size - 60)
        )
        ip = (
            struct.pack(
                "!IHBB16s16s",
                6 << 28,
                len(body),
                6,
                64,
                b"\x20\x01" + bytes(10) + a,
                b"\x20\x01" + bytes(10) + b,
            )
            + body
        )
        eth_type = 0x86DD
    else:  # ICMP echo
        ip = (
            struct.pack("!BBHHHBBH4s4s", 0x45, 0, 84, 0, 0, 64, 1, 0, a, b)
            + struct.pack("!BBHI", 0 if reply else 8, 0, 0, 0)
            + bytes(56)
        )
        eth_type = 0x0800
    tag = struct.pack("!HH", 0x8100, 10 + conv % 4) if conv % 7 == 0 else b""
    frame = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02" + tag + struct.pack("!H", eth_type) + ip
    return frame + bytes(max(0, 60 - len(frame)))


def _is_tcp(conv: int) -> bool:
    return conv % 10 < 6 or conv % 10 == 8


def write_pcap(path: Path, packets: int, seed: int = 7, *, concurrent: int = 20_000, turnover: float = 0.002,
               mean_gap_us: int = 30) -> int:  # fmt: skip
    """A seeded pcap of mixed traffic; returns how many conversations it holds.

    ``concurrent`` conversations are open at any time; each packet ends one and opens another with
    probability ``turnover``. TCP conversations that open in the file start with SYN, SYN+ACK;
    one that ends closes with FIN+ACK both ways, or (one in five) a RST.
    """
    rng = random.Random(seed)
    cache: dict[tuple[int, bool], bytes] = {}
    ts = 1_700_000_000_000_000
    active = list(range(concurrent))
    next_conv = len(active)
    written = 0
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        chunk = []

        def emit(frame: bytes) -> None:
            nonlocal ts, written, chunk
            ts += rng.randrange(1, 2 * mean_gap_us)
            chunk.append(
                struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(frame), len(frame)) + frame
            )
            written += 1
            if len(chunk) >= 10_000:
                out.write(b"".join(chunk))
                chunk = []

        while written < packets:
            slot = rng.randrange(len(active))
            if rng.random() < turnover:  # a conversation ends, a new one begins
                old = active[slot]
                if _is_tcp(old):
                    if rng.random() < 0.2:
                        emit(_frame(rng, old, rng.random() < 0.5, 0x04))
                    else:
                        emit(_frame(rng, old, False, 0x11))
                        emit(_frame(rng, old, True, 0x11))
                        emit(_frame(rng, old, False, 0x10))
                active[slot] = next_conv
                if _is_tcp(next_conv):
                    emit(_frame(rng, next_conv, False, 0x02))
                    emit(_frame(rng, next_conv, True, 0x12))
                next_conv += 1
            conv = active[slot]
            key = (conv, rng.random() < 0.45)
            frame = cache.get(key)
            if frame is None:
                if len(cache) > 200_000:
                    cache.clear()
                frame = cache[key] = _frame(rng, *key)
            emit(frame)
        out.write(b"".join(chunk))
    return next_conv


def pcap_to_pcapng(pcap: Path, out: Path, *, nanoseconds: bool = False) -> None:
    """Rewrite a little-endian µs pcap as pcapng (SHB, one IDB, EPBs), optionally with ns timestamps."""
    with open(pcap, "rb") as source, open(out, "wb") as sink:
        linktype = struct.unpack_from("<I", source.read(24), 20)[0] & 0xFFFF
        options = struct.pack("<HHB3x", 9, 1, 9) + bytes(4) if nanoseconds else b""
        sink.write(struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28))
        sink.write(struct.pack("<IIHHI", 1, 20 + len(options), linktype, 0, 0) + options
                   + struct.pack("<I", 20 + len(options)))  # fmt: skip
        blocks = []
        while header := source.read(16):
            sec, usec, caplen, wirelen = struct.unpack("<IIII", header)
            frame = source.read(caplen)
            ts = (sec * 1_000_000 + usec) * (1000 if nanoseconds else 1)
            padded = frame + bytes(-caplen % 4)
            length = 32 + len(padded)
            blocks.append(struct.pack("<IIIIIII", 6, length, 0, ts >> 32, ts & 0xFFFFFFFF, caplen, wirelen)
                          + padded + struct.pack("<I", length))  # fmt: skip
            if len(blocks) >= 10_000:
                sink.write(b"".join(blocks))
                blocks = []
        sink.write(b"".join(blocks))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _meter(path: Path, **kwargs) -> tuple[float, float, object]:
    """(CPU s, wall s, stats) of meter_files on one file, flows counted and dropped."""
    vectorised = kwargs.pop("vectorised", True)
    c_table = kwargs.pop("c_table", True)  # False: HOSTFLOW_PROBE_CMETER=0 for this run
    before = os.environ.get("HOSTFLOW_PROBE_CMETER")
    if not c_table:
        os.environ["HOSTFLOW_PROBE_CMETER"] = "0"
    try:
        start, cpu = time.perf_counter(), time.process_time()
        stats = meter_files([str(path)], MeterOptions(**kwargs), CountingSink(), vectorised=vectorised)
        return time.process_time() - cpu, time.perf_counter() - start, stats
    finally:
        if before is None:
            os.environ.pop("HOSTFLOW_PROBE_CMETER", None)
        else:
            os.environ["HOSTFLOW_PROBE_CMETER"] = before


def _softflowd(path: Path) -> tuple[float, float]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        start, children = time.perf_counter(), _children_cpu()
        subprocess.run(["softflowd", "-r", str(path), "-6", "-d", "-v", "10", "-m", "1000000", "-c", "none",
                        "-n", f"127.0.0.1:{port}", "-p", str(path.with_suffix(".pid"))],
                       check=True, capture_output=True)  # fmt: skip
        return _children_cpu() - children, time.perf_counter() - start


def bench_files(path: Path, per_packet: bool, pcapng: Path | None = None) -> None:
    runs = [("probe, names off", {"names": False}), ("probe, names on", {}),
            ("probe, C table off, names off", {"names": False, "c_table": False}),
            ("probe, C table off, names on", {"c_table": False})]  # fmt: skip
    if per_packet:
        runs.append(("probe per-packet path, names off", {"names": False, "vectorised": False}))
    results = []
    theirs, theirs_wall = _softflowd(path)
    for label, kwargs in runs:
        results.append((label, *_meter(path, **kwargs)))
        if label == "probe, names on":  # the per-packet reader maps the whole file: measure before it
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    theirs2, theirs_wall2 = _softflowd(path)  # before and after ours: the machine's load drifts
    theirs, theirs_wall = (theirs + theirs2) / 2, (theirs_wall + theirs_wall2) / 2
    if pcapng is not None:
        ng_theirs, ng_wall = _softflowd(pcapng)
        ng_ours = _meter(pcapng)
    packets = results[0][3].packets
    print(f"file metering, {packets:,} packets ({path.stat().st_size / 1e6:.0f} MB), packets per CPU second")
    c_table = "off (HOSTFLOW_PROBE_CMETER=0)" if os.environ.get("HOSTFLOW_PROBE_CMETER") == "0" else (
        "on" if cmeter.load() is not None else "not built (python -m probe.cmeter build)")  # fmt: skip
    print(f"  C flow table (probe/_cmeter.c): {c_table}")
    print("  (CPU time, not wall time, so other work on this machine counts against neither side;")
    print("   softflowd is the mean of a run before and one after ours)")
    print(
        f"  {'softflowd -r':<34} {packets / theirs:>10,.0f} packets/s  (CPU {theirs:.1f} s, wall {theirs_wall:.1f} s)"
    )
    for label, cpu, wall, stats in results:
        print(f"  {label:<34} {packets / cpu:>10,.0f} packets/s  (CPU {cpu:.1f} s, wall {wall:.1f} s, "
              f"{stats.flows_exported:,} flows, {stats.names:,} names)  ratio ours/softflowd {theirs / cpu:.2f}")  # fmt: skip
    print(f"  peak RSS of the vectorised runs (bench process, pcap generation included): {peak_mb:.0f} MB")
    if pcapng is not None:
        cpu, wall, stats = ng_ours
        print(f"the same packets as pcapng ({pcapng.stat().st_size / 1e6:.0f} MB):")
        print(f"  {'softflowd -r':<34} {packets / ng_theirs:>10,.0f} packets/s  (CPU {ng_theirs:.1f} s, "
              f"wall {ng_wall:.1f} s)")  # fmt: skip
        print(f"  {'probe, names on':<34} {packets / cpu:>10,.0f} packets/s  (CPU {cpu:.1f} s, wall {wall:.1f} s, "
              f"{stats.flows_exported:,} flows)  ratio ours/softflowd {ng_theirs / cpu:.2f}")  # fmt: skip


_METER_CHILD = """
import sys, time
sys.path.insert(0, {tree!r})
from probe.options import MeterOptions
from probe.pipeline import meter_files
from probe.sink import MemorySink
class CountingSink(MemorySink):
    def add_flows(self, flows):
        self.count = getattr(self, "count", 0) + len(flows)
cpu = time.process_time()
stats = meter_files([{path!r}], MeterOptions(names={names!r}), CountingSink())
cpu = time.process_time() - cpu
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(cpu, stats.packets, stats.flows_exported, hwm)
"""


def _meter_child(tree: Path, path: Path, names: bool) -> tuple[float, int, int, float]:
    """(CPU s, packets, flows, peak RSS MB) of meter_files from ``tree`` in a fresh process."""
    code = _METER_CHILD.format(tree=str(tree), path=str(path), names=names)
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    return float(out[0]), int(out[1]), int(out[2]), int(out[3]) / 1024


def bench_compare(path: Path, before: Path, rounds: int) -> None:
    """Another tree's file metering beside this one's, interleaved with softflowd, in one run."""
    sides = [(f"{label}, names {'on' if names else 'off'}", tree, names)
             for names in (True, False) for label, tree in (("before", before), ("after", ROOT))]  # fmt: skip
    cpu = {label: 0.0 for label, _tree, _names in sides}
    peak = {label: 0.0 for label, _tree, _names in sides}
    flows = {}
    theirs = 0.0
    packets = 0
    for _ in range(rounds):
        theirs += _softflowd(path)[0]
        for label, tree, names in sides:
            seconds, packets, flows[label], rss = _meter_child(tree, path, names)
            cpu[label] += seconds
            peak[label] = max(peak[label], rss)
        theirs += _softflowd(path)[0]
    theirs /= 2 * rounds
    print(
        f"before ({before}) / after ({ROOT}), {packets:,} packets, {rounds} interleaved rounds, packets per CPU s:"
    )
    print(f"  {'softflowd -r':<22} {packets / theirs:>10,.0f}  ratio 1")
    for label, _tree, _names in sides:
        mean = cpu[label] / rounds
        print(f"  {label:<22} {packets / mean:>10,.0f}  ratio {theirs / mean:.2f}  peak RSS {peak[label]:.0f} MB  "
              f"{flows[label]:,} flows")  # fmt: skip


def bench_memory(flows: int) -> None:
    """Peak RSS of a flow table holding ``flows`` conversations, and ``flows`` one-way flows."""
    tables = [("FlowMeter", "the Python table")]
    if cmeter.load() is not None:
        tables.append(("CMeter", "the C table"))
    for (meter_class, table), (label, both) in itertools.product(
        tables, (("conversations (both directions)", True), ("one-way flows", False))
    ):
        code = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from probe.{"cmeter" if meter_class == "CMeter" else "meter"} import {meter_class}
from probe.options import MeterOptions
meter = {meter_class}(MeterOptions(max_flows={flows} * 2), lambda flows: None)
def hwm():  # VmHWM is per process image; ru_maxrss would carry the parent's peak across exec
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
base = hwm()
for i in range({flows}):
    a = (0x0A000000 + i).to_bytes(4, "big"); b = (0xC0A80000 + i % 65000).to_bytes(4, "big")
    meter.add(1_700_000_000_000_000 + i, 0, 4, 6, a, b, 40000 + i % 20000, 443, 0x18, 0, 100, b"", b"")
    if {both}:
        meter.add(1_700_000_000_000_001 + i, 0, 4, 6, b, a, 443, 40000 + i % 20000, 0x18, 0, 100, b"", b"")
print(meter.pair_count if {meter_class == "CMeter"} else len(meter.pairs), base, hwm())
"""
        out = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        ).stdout.split()
        pairs, base_kb, peak_kb = (int(x) for x in out)
        flows_held = 2 * pairs if both else pairs
        print(f"memory, {table}, {pairs:,} {label} = {flows_held:,} unidirectional flows in it:")
        print(f"  peak RSS {peak_kb / 1024:.0f} MB (interpreter and imports alone: {base_kb / 1024:.0f} MB); "
              "goal <= 150 MB")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=2_000_000)
    parser.add_argument("--flows", type=int, default=200_000)
    parser.add_argument("--per-packet", action="store_true", help="also time the per-packet path (slow)")
    parser.add_argument("--skip-files", action="store_true")
    parser.add_argument("--no-pcapng", action="store_true", help="skip the same packets as pcapng")
    parser.add_argument("--live", action="store_true", help="also measure live capture on a veth (root)")
    parser.add_argument(
        "--compare", type=Path, metavar="TREE", help="time another copy of the repository beside this one"
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of --compare")
    args = parser.parse_args()
    if not args.skip_files:
        with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
            path = Path(tmp) / "mixed.pcap"
            start = time.perf_counter()
            write_pcap(path, args.packets)
            print(f"generated {path.name}: {args.packets:,}+ packets in {time.perf_counter() - start:.1f} s")
            pcapng = None
            if not args.no_pcapng:
                pcapng = path.with_suffix(".pcapng")
                pcap_to_pcapng(path, pcapng)
            if args.compare is not None:
                bench_compare(path, args.compare.resolve(), args.rounds)
            else:
                bench_files(path, args.per_packet, pcapng)
    if args.compare is None:
        bench_memory(args.flows)
    if args.live:
        from bench.bench_probe_live import bench_live

        bench_live()
    os.sync()


if __name__ == "__main__":
    main()
