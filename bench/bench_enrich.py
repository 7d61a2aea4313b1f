"""Enrichment cost per 1,000,000 flows, single core: service name + registered domain + geo/ASN.

Workload: 1M flows over 50,000 distinct internet peers (80 % IPv4, 20 % IPv6, drawn at random
from all of global address space, the worst case for the geo database's block decoding: real
peers cluster in far fewer blocks), 20,000 distinct names, ports drawn from 200 common and 800
random ones.

Ours, two ways: per flow (each call answered from our caches after the first sight), and
distinct-first (what a query does: ``lookup_many`` on the distinct peers, then a dict map).
Reference: the same answers got the obvious way, per flow, without our caching:
``socket.getservbyport`` (libc, /etc/services), ``PublicSuffixList.privatesuffix`` and
plevin's own public ``lookup`` — the reference is timed on a slice and scaled to 1M.

Also prints import time, time to the first geo answer, and resident memory, each in a fresh
process. Run: ``.venv/bin/python bench/bench_enrich.py [--flows N]``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEERS = 50_000
NAMES = 20_000
SUFFIXES = ["com", "net", "org", "co.uk", "com.au", "de", "io", "co.jp", "com.br", "fr", "cloudfront.net"]


def workload(flows: int, seed: int = 7) -> tuple[list[int], list[int], list[str], list[str]]:
    rng = random.Random(seed)
    peers: list[str] = []
    while len(peers) < PEERS:
        if rng.random() < 0.8:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(rng.getrandbits(32))
        else:
            ip = ipaddress.IPv6Address((0x2000 << 112) | rng.getrandbits(116))
        if ip.is_global and not ip.is_multicast:
            peers.append(str(ip))
    names = [
        f"s{rng.randrange(100)}.edge-{rng.randrange(50)}.site{i}.{rng.choice(SUFFIXES)}" for i in range(NAMES)
    ]
    common = [22, 25, 53, 80, 123, 443, 465, 587, 853, 993, 995, 3478, 5222, 5228, 8080, 8443]
    ports = common * 12 + [rng.randrange(1, 65536) for _ in range(800)]
    protocols = [6 if rng.random() < 0.8 else 17 for _ in range(flows)]
    return (
        protocols,
        [rng.choice(ports) for _ in range(flows)],
        [
            peers[int(rng.paretovariate(1.2)) % PEERS] if rng.random() < 0.5 else rng.choice(peers)
            for _ in range(flows)
        ],
        [names[rng.randrange(NAMES)] for _ in range(flows)],
    )


def ours_per_flow(protocols, ports, peers, names) -> float:
    from hostflow.enrich import GeoASN, registered_domain, service_name

    geo = GeoASN()
    geo.lookup("8.8.8.8")  # open the data files outside the timing: that is the start-up cost
    start = time.process_time()
    for protocol, port, peer, name in zip(protocols, ports, peers, names, strict=True):
        service_name(protocol, port)
        registered_domain(name)
        geo.lookup(peer)
    return time.process_time() - start


def ours_distinct_first(protocols, ports, peers, names) -> float:
    from hostflow.enrich import GeoASN, registered_domain, service_name

    geo = GeoASN()
    geo.lookup("8.8.8.8")
    marks = [time.process_time()]
    services = {pair: service_name(*pair) for pair in set(zip(protocols, ports, strict=True))}
    marks.append(time.process_time())
    domains = {name: registered_domain(name) for name in set(names)}
    marks.append(time.process_time())
    located = geo.lookup_many(peers)
    marks.append(time.process_time())
    for protocol, port, peer, name in zip(protocols, ports, peers, names, strict=True):
        services[protocol, port]
        domains[name]
        located[peer]
    marks.append(time.process_time())
    steps = [later - earlier for earlier, later in zip(marks, marks[1:], strict=False)]
    print(
        "  distinct-first steps, CPU s (not scaled): services {:.2f}, domains {:.2f}, geo {:.2f}, map {:.2f}".format(
            *steps
        )
    )
    return marks[-1] - marks[0]


def reference_per_flow(protocols, ports, peers, names) -> float:
    import plevin
    import plevin_db_country
    import plevin_db_network
    from publicsuffixlist import PublicSuffixList

    psl = PublicSuffixList(only_icann=True)
    country, network = plevin.Plevin(plevin_db_country.PATH), plevin.Plevin(plevin_db_network.PATH)
    country.lookup("8.8.8.8")
    network.lookup("8.8.8.8")
    start = time.process_time()
    for protocol, port, peer, name in zip(protocols, ports, peers, names, strict=True):
        try:
            socket.getservbyport(port, "tcp" if protocol == 6 else "udp")
        except OSError:
            pass
        psl.privatesuffix(name)
        found = network.lookup(peer).network
        country.lookup(peer)
        if found is not None and found.operator is not None:
            found.operator.brand  # noqa: B018  (the brand is derived on access)
    return time.process_time() - start


START_PROBE = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
import hostflow.enrich as enrich
t1 = time.perf_counter()
enrich.service_name(6, 443); enrich.registered_domain("a.b.example.co.uk")
t2 = time.perf_counter()
geo = enrich.GeoASN(); geo.lookup("8.8.8.8")
t3 = time.perf_counter()
rss_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import random, ipaddress
rng = random.Random(1); n = 0
while n < {peers}:
    ip = ipaddress.IPv4Address(rng.getrandbits(32))
    if ip.is_global:
        geo.lookup(str(ip)); n += 1
print(json.dumps({{"import": t1 - t0, "tables": t2 - t1, "geo_open": t3 - t2, "rss_first_mb": rss_first / 1024,
                  "rss_after_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def start_up() -> dict[str, float]:
    code = START_PROBE.format(root=str(ROOT), peers=PEERS)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument(
        "--reference-flows", type=int, default=100_000, help="slice the reference is timed on"
    )
    args = parser.parse_args()

    costs = start_up()
    print(
        f"start-up (fresh process): import {costs['import']:.3f} s, port+PSL tables {costs['tables']:.3f} s, "
        f"geo open+first answer {costs['geo_open']:.3f} s; max RSS {costs['rss_first_mb']:.0f} MB after the "
        f"first answer, {costs['rss_after_mb']:.0f} MB after {PEERS:,} random distinct IPv4 lookups"
    )
    data = workload(args.flows)
    scale = 1_000_000 / args.flows
    per_flow = ours_per_flow(*data) * scale
    distinct = ours_distinct_first(*data) * scale
    cut = min(args.reference_flows, args.flows)
    reference = reference_per_flow(*(column[:cut] for column in data)) * 1_000_000 / cut
    print(
        f"workload: {args.flows:,} flows, {len(set(data[2])):,} distinct peers, {len(set(data[3])):,} names"
    )
    print(f"{'per 1,000,000 flows, CPU s':<48}{'seconds':>10}{'ratio':>10}")
    print(f"{'reference (libc getservbyport + PSL + plevin)':<48}{reference:>10.2f}{1:>10.2f}")
    print(f"{'ours, per-flow calls':<48}{per_flow:>10.2f}{reference / per_flow:>9.1f}x")
    print(f"{'ours, distinct-first (lookup_many + map)':<48}{distinct:>10.2f}{reference / distinct:>9.1f}x")
    print(f"reference timed on {cut:,} flows and scaled; max RSS now {_rss_mb():.0f} MB")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
