"""Probe metering speed and memory, ours beside softflowd's.

    .venv/bin/python bench/bench_probe.py [--packets 2000000] [--flows 200000]

1. Writes a seeded pcap of mixed traffic (TCP/UDP/ICMP, IPv4/IPv6, some VLAN tags, frame sizes
   60…1514, ~20k concurrent conversations) with struct, into a temp dir.
2. Times ``meter_files`` on it (one core) and ``softflowd -r`` on the same file (exporting
   IPFIX to a local UDP socket nobody reads), prints packets/s of both and the ratio.
3. Peak RSS of a process metering ``--flows`` distinct active conversations (both directions).
Live capture speed is not measured here yet.
"""

from __future__ import annotations

import argparse
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

from probe.options import MeterOptions  # noqa: E402
from probe.pipeline import meter_files  # noqa: E402
from probe.sink import MemorySink  # noqa: E402


class CountingSink(MemorySink):
    def add_flows(self, flows) -> None:  # keep nothing: we measure metering, not storage
        self.count = getattr(self, "count", 0) + len(flows)


def _frame(rng: random.Random, conv: int, reply: bool) -> bytes:
    base = conv * 7919
    a = struct.pack("!I", 0x0A000000 | (base & 0xFFFF))
    b = struct.pack("!I", 0xC0A80000 | ((base >> 16) & 0xFF) << 8 | (conv & 0xFF))
    kind = conv % 10
    sport, dport = 1024 + conv % 60000, (443, 80, 53, 123, 8080)[conv % 5]
    if reply:
        a, b, sport, dport = b, a, dport, sport
    size = rng.choice((40, 52, 52, 60, 120, 576, 1400, 1460, 1500))
    if kind < 6:  # TCP over IPv4
        body = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 0x50, 0x18, 1000, 0, 0) + bytes(
            max(0, size - 40)
        )
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, 6, 0, a, b) + body
        eth_type = 0x0800
    elif kind < 8:  # UDP over IPv4
        body = struct.pack("!HHHH", sport, dport, 8 + max(0, size - 28), 0) + bytes(max(0, size - 28))
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, 17, 0, a, b) + body
        eth_type = 0x0800
    elif kind == 8:  # TCP over IPv6
        body = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 0x50, 0x18, 1000, 0, 0) + bytes(
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


def write_pcap(path: Path, packets: int, seed: int = 7) -> int:
    rng = random.Random(seed)
    cache: dict[tuple[int, bool], bytes] = {}
    ts = 1_700_000_000_000_000
    active = list(range(20_000))
    next_conv = len(active)
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        chunk = []
        for _ in range(packets):
            slot = rng.randrange(len(active))
            if rng.random() < 0.002:  # a conversation ends, a new one begins
                active[slot] = next_conv
                next_conv += 1
            conv = active[slot]
            key = (conv, rng.random() < 0.45)
            frame = cache.get(key)
            if frame is None:
                if len(cache) > 200_000:
                    cache.clear()
                frame = cache[key] = _frame(rng, *key)
            ts += rng.randrange(1, 60)
            chunk.append(
                struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(frame), len(frame)) + frame
            )
            if len(chunk) >= 10_000:
                out.write(b"".join(chunk))
                chunk = []
        out.write(b"".join(chunk))
    return next_conv


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_files(path: Path, packets: int) -> None:
    sink = CountingSink()
    start, cpu = time.perf_counter(), time.process_time()
    stats = meter_files([str(path)], MeterOptions(names=False), sink)
    ours_wall, ours = time.perf_counter() - start, time.process_time() - cpu
    assert stats.packets == packets
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        start, children = time.perf_counter(), _children_cpu()
        subprocess.run(["softflowd", "-r", str(path), "-6", "-d", "-v", "10", "-m", "1000000", "-c", "none",
                        "-n", f"127.0.0.1:{port}", "-p", str(path.with_suffix(".pid"))],
                       check=True, capture_output=True)  # fmt: skip
        theirs_wall, theirs = time.perf_counter() - start, _children_cpu() - children
    print(f"file metering, {packets:,} packets ({path.stat().st_size / 1e6:.0f} MB), packets per CPU second")
    print("  (CPU time, not wall time, so other work on this machine counts against neither side)")
    print(f"  hostflow probe  {packets / ours:>12,.0f} packets/s  (CPU {ours:.1f} s, wall {ours_wall:.1f} s, "
          f"{stats.flows_exported:,} flows)")  # fmt: skip
    print(
        f"  softflowd -r    {packets / theirs:>12,.0f} packets/s  (CPU {theirs:.1f} s, wall {theirs_wall:.1f} s)"
    )
    print(f"  ratio ours/softflowd: {theirs / ours:.2f}")


def bench_memory(flows: int) -> None:
    code = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from probe.meter import FlowMeter
from probe.options import MeterOptions
meter = FlowMeter(MeterOptions(max_flows={flows} * 2), lambda flows: None)
def hwm():  # VmHWM is per process image; ru_maxrss would carry the parent's peak across exec
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
base = hwm()
for i in range({flows}):
    a = (0x0A000000 + i).to_bytes(4, "big"); b = (0xC0A80000 + i % 65000).to_bytes(4, "big")
    meter.add(1_700_000_000_000_000 + i, 0, 4, 6, a, b, 40000 + i % 20000, 443, 0x18, 0, 100, b"", b"")
    meter.add(1_700_000_000_000_001 + i, 0, 4, 6, b, a, 443, 40000 + i % 20000, 0x18, 0, 100, b"", b"")
print(len(meter.pairs), base, hwm())
"""
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    pairs, base_kb, peak_kb = (int(x) for x in out)
    print(f"memory: {pairs:,} conversations ({2 * pairs:,} unidirectional flows) in the table:")
    print(
        f"  peak RSS {peak_kb / 1024:.0f} MB (interpreter and imports alone: {base_kb / 1024:.0f} MB); goal ≤ 150 MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=2_000_000)
    parser.add_argument("--flows", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        path = Path(tmp) / "mixed.pcap"
        start = time.perf_counter()
        write_pcap(path, args.packets)
        print(f"generated {path.name}: {args.packets:,} packets in {time.perf_counter() - start:.1f} s")
        bench_files(path, args.packets)
    bench_memory(args.flows)
    print(f"(bench process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
    os.sync()


if __name__ == "__main__":
    main()
