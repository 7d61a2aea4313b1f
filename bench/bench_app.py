"""Time from a filter change to the redrawn Sankey, for one busy host-hour.

What is timed: Streamlit's AppTest rerun of app.py after one sidebar widget changes (the same script
run a browser triggers, without the browser's paint), against a real collector holding a demo-like
hour: one host talking to 400 peers (names from DNS, 6 services, intranet and internet, TCP/UDP/ICMP),
about 6,000 flows. "cold" clears the app's query cache before each change (every query reaches the
collector); "warm" repeats changes already seen. Goal from the issue: p95 ≤ 1 s with ≤ 50 peers drawn.
Also printed: the Sankey build + render alone (HoloViews layout and Bokeh serialisation).

    .venv/bin/python bench/bench_app.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hostflow.records import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Name, make_batch  # noqa: E402
from tests import ui_scenario as lab  # noqa: E402

GOAL_P95 = 1.0
PEERS = 400


def busy_hour() -> lab.Scenario:
    rng = random.Random(7)
    scenario = lab.Scenario()
    services = [
        (443, PROTO_TCP),
        (443, PROTO_UDP),
        (80, PROTO_TCP),
        (53, PROTO_UDP),
        (123, PROTO_UDP),
        (0, PROTO_ICMP),
    ]
    for number in range(PEERS):
        inside = number % 5 == 0
        addr = (
            f"192.168.{1 + number // 250}.{10 + number % 240}"
            if inside
            else f"198.18.{number // 250}.{number % 250 + 1}"
        )
        name = f"svc{number}.{rng.choice(['cdn', 'api', 'edge'])}.example{number % 37}.com"
        if not inside:
            scenario.names.append(Name(lab.PROBE, lab.HOUR - 30 * lab.S, addr, name, "dns", lab.HOST, 300))
        port, proto = services[number % len(services)]
        for conversation in range(rng.randint(3, 12)):
            start = lab.HOUR + rng.randint(0, 3500) * lab.S
            scenario.conversation(lab.HOST, addr, port, proto, start, rng.randint(200, 50_000),
                                  rng.randint(200, 900_000), 40000 + conversation + number % 20000)  # fmt: skip
    return scenario


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def changes() -> list[tuple[str, str, object]]:
    """(widget kind, label, value): a user's walk through the sidebar."""
    return [
        ("multiselect", "Scope", ["internet"]),
        ("multiselect", "Protocol", ["tcp"]),
        ("selectbox", "Aggregate peers by", "domain"),
        ("radio", "Measure", "packets"),
        ("select_slider", "Peers drawn (the rest → “other”)", 50),
        ("radio", "Direction", "received"),
        ("selectbox", "Aggregate peers by", "ip"),
        ("multiselect", "Scope", ["intranet", "internet"]),
        ("radio", "Measure", "bytes"),
        ("multiselect", "Protocol", ["tcp", "udp", "icmp", "other"]),
        ("radio", "Direction", "both"),
        ("select_slider", "Peers drawn (the rest → “other”)", 20),
    ]


def apply(at, kind: str, label: str, value: object) -> None:
    widget = next(w for w in getattr(at.sidebar, kind) if w.label == label)
    widget.set_value(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import streamlit as st
    from bokeh.embed import json_item
    from streamlit.testing.v1 import AppTest

    from hostflow.client import QueryClient
    from hostflow.ui import sankey

    with tempfile.TemporaryDirectory() as tmp, lab.collector(Path(tmp), load=False) as collector:
        scenario = busy_hour()
        collector.post(lab.TOKEN, make_batch(lab.PROBE, "bench:1", scenario.flows, scenario.names))
        os.environ["HOSTFLOW_COLLECTOR_URL"] = collector.url
        os.environ["HOSTFLOW_TZ"] = "UTC"
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.run()
        assert not at.exception, at.exception
        cold: list[float] = []
        warm: list[float] = []
        drawn: list[int] = []
        for round_number in range(args.rounds):
            for kind, label, value in changes():
                if round_number == 0:
                    st.cache_data.clear()
                apply(at, kind, label, value)
                started = time.perf_counter()
                at.run()
                (cold if round_number == 0 else warm).append(time.perf_counter() - started)
                assert not at.exception, at.exception
                charts = [c for c in at.get("bidi_component") if "sankey" in c.proto.id]
                if charts:
                    labels = sankey.figure_labels(json.loads(charts[0].proto.json)["figure"])
                    drawn.append(len(labels))
        client = QueryClient(collector.url, "")
        params = {"host": lab.HOST, "start": lab.HOUR, "end": lab.HOUR + 3600 * lab.S}
        started = time.perf_counter()
        peers = client.query("host_peers", **params, aggregate="fqdn", top_n=50, measure="bytes")
        query_s = time.perf_counter() - started
        renders = []
        for _ in range(5):
            started = time.perf_counter()
            graph = sankey.build_graph(peers, "host", "bytes", ZoneInfo("UTC"))
            json.dumps(json_item(sankey.figure(graph, "bytes")))
            renders.append(time.perf_counter() - started)
    print(
        f"flows {len(scenario.flows)}, peers {PEERS}, nodes drawn per chart: max {max(drawn)} (≤ 50 peers + services)"
    )
    print(f"{'':34} {'p50 s':>8} {'p95 s':>8} {'goal p95 s':>11} {'p95/goal':>9}")
    for name, values in (("filter change → Sankey, cold", cold), ("filter change → Sankey, warm", warm)):
        if values:
            p95 = percentile(values, 0.95)
            print(
                f"{name:34} {statistics.median(values):8.3f} {p95:8.3f} {GOAL_P95:11.2f} {p95 / GOAL_P95:9.2f}"
            )
    print(f"{'host_peers query (top 50)':34} {query_s:8.3f}")
    print(
        f"{'Sankey build+render (50 peers)':34} {statistics.median(renders):8.3f} {percentile(renders, 0.95):8.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
