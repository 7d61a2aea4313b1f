"""Live capture speed: the highest rate ``capture_live`` meters with no loss, on a veth pair.

    .venv/bin/python bench/bench_probe_live.py [--seconds 4] [--start 25000] [--max 400000] [--recv]

Two network namespaces made for the run (names carry the pid; always deleted), joined by a veth.
In namespace a, ``capture_live`` on its end (a fresh process per step, default options: names
on, the PACKET_MMAP ring of 32 MB; ``--recv``: the packet-by-packet fallback reader); in
namespace b, ``tcpreplay --pps=N`` sends a generated pcap of mixed traffic (2,000 conversations)
for a few seconds. A step is loss-free when the capture received every packet tcpreplay sent and
the kernel reported no drops (PACKET_STATISTICS). Rates double until a step loses packets, then a
binary search narrows the edge. First, what the sender reaches on its own (nobody capturing):
on a 2-core machine tcpreplay and the probe share the CPU, and the kernel's copy of each packet
into the capture ring is done on the sender's time. Traffic never leaves the namespaces. Needs
root and tcpreplay (scripts/setup.sh test).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_probe import write_pcap  # noqa: E402
from tests.plugins.netns import veth_pair  # noqa: E402

CAPTURE = """
import json, resource, signal, sys, threading, time
sys.path.insert(0, sys.argv[2])
from probe.options import MeterOptions
from probe.pipeline import capture_live
from probe.sink import MemorySink

class Counting(MemorySink):
    flows_seen = 0
    def add_flows(self, flows):
        self.flows_seen += len(flows)
    def set_health(self, health):  # progress for the driver: it stops us once we have caught up
        print(json.dumps({"progress": health["packets_captured"]}), flush=True)

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
sink = Counting()
stats = capture_live(sys.argv[1], MeterOptions(), sink, stop, health_interval=0.5,
                     ready=lambda: print("ready", flush=True))
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"packets": stats.packets, "kernel_drops": stats.kernel_drops, "if_drops": stats.if_drops,
                  "flows": sink.flows_seen, "cpu": usage.ru_utime + usage.ru_stime}), flush=True)
"""


def _step(net, pcap: Path, rate: int, seconds: float, pcap_packets: int, ring: bool = True) -> dict:
    env = {**os.environ, "HOSTFLOW_PROBE_RING": "1" if ring else "0"}
    capture = net.popen("a", [sys.executable, "-c", CAPTURE, net.if_a, str(ROOT)], stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL, text=True, env=env)  # fmt: skip
    try:
        assert capture.stdout.readline().strip() == "ready"
        loops = max(1, round(rate * seconds / pcap_packets))
        started = time.perf_counter()
        sent = net.run("b", ["tcpreplay", "-i", net.if_b, f"--pps={rate}", f"--loop={loops}", str(pcap)],
                       capture_output=True, text=True)  # fmt: skip
        elapsed = time.perf_counter() - started
        match = re.search(r"Successful packets:\s+(\d+)", sent.stdout)
        sent_packets = int(match.group(1)) if match else -1
        rated = re.search(r"Rated:.*?([\d.]+) pps", sent.stdout)
        _drained(capture, sent_packets)
        capture.terminate()
        out, _ = capture.communicate(timeout=60)
    finally:
        if capture.poll() is None:
            capture.kill()
    result = json.loads(out.strip().splitlines()[-1])
    result.update(
        rate=rate, sent=sent_packets, send_seconds=elapsed, sender_pps=float(rated.group(1)) if rated else 0
    )
    result["lossless"] = result["kernel_drops"] == 0 and result["packets"] >= sent_packets > 0
    return result


def _drained(capture: subprocess.Popen, sent: int, patience: float = 3.0) -> None:
    """Wait until the capture has read everything sent, or its count stopped growing for a while."""
    seen, changed = -1, time.monotonic()
    while time.monotonic() - changed < patience:
        line = capture.stdout.readline()
        if not line:
            return
        count = json.loads(line).get("progress", seen)
        if count >= sent:
            return
        if count != seen:
            seen, changed = count, time.monotonic()


def _show(result: dict) -> None:
    achieved = _achieved(result)
    print(f"  asked {result['rate']:>8,} pps (sent {result['sent']:,} at {achieved:,.0f} pps): received "
          f"{result['packets']:,}, kernel drops {result['kernel_drops']:,}, capture CPU {result['cpu']:.1f} s "
          f"({result['cpu'] / max(result['packets'], 1) * 1e6:.1f} µs/packet, start-up included) "
          f"-> {'no loss' if result['lossless'] else 'LOSS'}", flush=True)  # fmt: skip


def _sender_alone(net, pcap: Path, seconds: float, pcap_packets: int) -> None:
    """tcpreplay's own rate with nobody capturing: at 100,000 packets/s asked, and flat out."""
    for label, args in (("asked 100,000 pps", ["--pps=100000"]), ("--topspeed", ["--topspeed"])):
        loops = max(1, round(100_000 * seconds / pcap_packets))
        out = net.run("b", ["tcpreplay", "-i", net.if_b, *args, f"--loop={loops}", str(pcap)],
                      capture_output=True, text=True).stdout  # fmt: skip
        match = re.search(r"Rated:.*?([\d.]+) pps", out)
        print(f"  sender alone, {label}: {float(match.group(1)) if match else 0:,.0f} packets/s", flush=True)


def bench_live(seconds: float = 4.0, start: int = 25_000, maximum: int = 400_000, ring: bool = True) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        pcap = Path(tmp) / "live.pcap"
        pcap_packets = 20_000
        write_pcap(pcap, pcap_packets, seed=3, concurrent=2_000, turnover=0.002)
        with veth_pair() as net:
            reader = "PACKET_MMAP ring" if ring else "recv per packet"
            print(f"live capture on a veth ({net.if_a} in {net.ns_a}, {reader}), {seconds:.0f} s per step:",
                  flush=True)  # fmt: skip
            _sender_alone(net, pcap, seconds, pcap_packets)
            good, bad = 0, None
            best = 0.0  # highest rate really sent in a loss-free step (tcpreplay may fall short of asked)
            rate = start
            while rate <= maximum:
                result = _step(net, pcap, rate, seconds, pcap_packets, ring)
                _show(result)
                if not result["lossless"]:
                    bad = rate
                    break
                good, best = rate, max(best, _achieved(result))
                rate *= 2
            while bad is not None and bad - good > max(5_000, good // 10):
                rate = (good + bad) // 2
                result = _step(net, pcap, rate, seconds, pcap_packets, ring)
                _show(result)
                if result["lossless"]:
                    good, best = rate, max(best, _achieved(result))
                else:
                    bad = rate
            edge = (
                f"between {good:,} and {bad:,} asked" if bad else f"above {good:,} asked (the highest tried)"
            )
            print(f"  highest loss-free rate: {best:,.0f} packets/s sent and all metered (the edge lies {edge}); "
                  "goal >= 100,000")  # fmt: skip


def _achieved(result: dict) -> float:
    """Packets per second tcpreplay really sent (its own figure)."""
    return result["sender_pps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--start", type=int, default=25_000)
    parser.add_argument("--max", type=int, default=400_000)
    parser.add_argument("--recv", action="store_true", help="the packet-by-packet reader, not the ring")
    args = parser.parse_args()
    bench_live(args.seconds, args.start, args.max, ring=not args.recv)


if __name__ == "__main__":
    main()
