"""Time from a filter change to the redrawn Sankey, for the busiest host-hour of the demo database.

The demo database is built the way `make run` builds it (hostflow/run.py): a collector on a fresh DuckDB
file and `python -m probe read data/captures/* data/generated/lab-2026-11-20.pcap --collector URL`;
data/demo.duckdb is reused (on a copy) when `make run` has made it ready, and our own build is kept in
var/bench/ for the next run. The busiest host-hour (most flows) is opened through the app's URL.

What is timed: Streamlit's AppTest rerun of app.py after one sidebar widget changes (the same script
run a browser triggers, without the browser's paint). "cold" clears every app cache before each change
(every query reaches the collector, every figure is built); "new view" keeps the caches, as a user
does within a minute, and each change leads to a view not seen yet; "warm" repeats views already seen.
Goal from the issue: p95 ≤ 1 s with ≤ 50 peers drawn. Also printed: the host_peers query alone; the
Sankey build + serialisation alone, our glyphs and the former hv.render alternately in one loop;
and the Flows page's all-hosts list, one ``flows`` query against the former hosts + host_flows per host. `--synthetic` uses the older one-host, 400-peer hour instead.

    .venv/bin/python bench/bench_app.py [--rounds 2] [--synthetic] [--baseline]

``--baseline`` draws the Sankey as the app did before (``hv.render`` of the element, 0.5 s of
HoloViews bookkeeping per figure) so one machine state gives both figures: run it and then without.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


def holoviews_figure(graph, measure: str, title: str = ""):
    """The Sankey as the app drew it before (hv.render of an hv.Sankey), for ``--baseline``."""
    from bokeh.models import HoverTool

    from hostflow.ui import sankey
    from hostflow.ui.fmt import human_measure

    hv = sankey._holoviews()
    value_dim = hv.Dimension("value", label=measure, value_format=lambda v: human_measure(v, measure))
    nodes = hv.Dataset(graph.nodes, "index", ["label", "category"])
    right_nodes = int(graph.nodes["index"].str.startswith("dst:").sum())
    element = hv.Sankey((graph.edges, nodes), kdims=["source", "target"],
                        vdims=[value_dim, "category", "tip_from", "tip_to", *sankey.TIP_COLUMNS])  # fmt: skip
    element = element.opts(
        labels="label", label_position="outer", node_color="category", edge_color="category",
        cmap=sankey.PALETTE, node_line_alpha=0, edge_alpha=0.55, edge_line_alpha=0, node_width=14,
        node_padding=16, iterations=sankey.LAYOUT_ITERATIONS, height=max(420, min(1600, 34 * right_nodes + 100)),
        responsive=False, width=1000, title=title, tools=[HoverTool(tooltips=sankey.EDGE_TOOLTIPS)],
        inspection_policy="edges", default_tools=[], toolbar=None, fontsize={"labels": "10pt", "title": "11pt"},
    )  # fmt: skip
    plot = hv.render(element, backend="bokeh")
    plot.name = "hostflow-sankey"
    return plot


def flows_page_queries(client, window: dict[str, int]) -> tuple[float, float, int]:
    """The Flows page's all-hosts list: (s for one ``flows`` query, s for the former ``hosts`` +
    one ``host_flows`` per host (at most 60), flows listed), medians of 3."""
    one, loop, listed = [], [], 0
    for _ in range(3):
        started_s = time.perf_counter()
        listed = len(client.query("flows", **window, limit=50_000))
        one.append(time.perf_counter() - started_s)
        started_s = time.perf_counter()
        for addr in client.query("hosts", **window).head(60)["addr"]:
            client.query("host_flows", **window, host=str(addr), limit=20_000)
        loop.append(time.perf_counter() - started_s)
    return statistics.median(one), statistics.median(loop), listed


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


@contextlib.contextmanager
def demo_collector(tmp: Path) -> Iterator[str]:
    """A collector on a copy of the demo database (built like `make run` when there is none)."""
    from hostflow import run
    from tests.plugins.common import free_port

    ready = run.DEMO_DB.with_name(run.DEMO_DB.name + ".ready")
    kept = ROOT / "var" / "bench" / "demo.duckdb"
    db = tmp / "demo.duckdb"
    if ready.exists():
        shutil.copy(run.DEMO_DB, db)
    elif kept.exists():
        shutil.copy(kept, db)
    port = free_port()
    proc = run.start_collector(db, port, netflow=False, probe_id="demo")
    url = f"http://127.0.0.1:{port}"
    try:
        if not ready.exists() and not kept.exists():
            command = [sys.executable, "-m", "probe", "read", *map(str, run.demo_captures()), "--collector", url,
                       "--token", run.DEMO_TOKEN, "--probe-id", "demo", "--spool-dir", str(tmp / "spool")]  # fmt: skip
            subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(db, kept)
            proc = run.start_collector(db, port, netflow=False, probe_id="demo")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def busiest_host_hour(url: str) -> tuple[str, int]:
    """(host, hour start in µs) with the most flows of any host in any hour: the busiest hosts of the
    whole span, then each one's flows per hour (the captures span years, most hours are empty)."""
    from hostflow.client import QueryClient

    client = QueryClient(url, "")
    span = client.query("time_range")
    whole = {"start": int(span["first_seen"].iloc[0]), "end": int(span["last_seen"].iloc[0]) + 1}
    best = ("", 0, -1)
    for addr in client.query("hosts", **whole).nlargest(5, "flows")["addr"]:
        hours = client.query("timeline", host=str(addr), bucket=3600, by="service", **whole)
        if hours.empty:
            continue
        per_hour = hours.groupby("bucket_start")["flows"].sum()
        if int(per_hour.max()) > best[2]:
            best = (str(addr), int(per_hour.idxmax()), int(per_hour.max()))
    return best[0], best[1]


def synthetic_collector(tmp: Path) -> contextlib.AbstractContextManager[str]:
    @contextlib.contextmanager
    def started() -> Iterator[str]:
        with lab.collector(tmp, load=False) as collector:
            scenario = busy_hour()
            collector.post(lab.TOKEN, make_batch(lab.PROBE, "bench:1", scenario.flows, scenario.names))
            yield collector.url

    return started()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the same walk through the sidebar")
    parser.add_argument(
        "--synthetic", action="store_true", help="one host with 400 peers instead of the demo"
    )
    parser.add_argument(
        "--baseline", action="store_true", help="draw the Sankey the way the app did before (hv.render)"
    )
    args = parser.parse_args()
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from hostflow.client import QueryClient
    from hostflow.ui import sankey

    real_figure = sankey.figure
    if args.baseline:
        sankey.figure = holoviews_figure  # figure_json (and its cache) calls it through the module

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        started = synthetic_collector(Path(tmp)) if args.synthetic else demo_collector(Path(tmp))
        with started as url:
            host, hour = (lab.HOST, lab.HOUR) if args.synthetic else busiest_host_hour(url)
            client = QueryClient(url, "")
            params = {"host": host, "start": hour, "end": hour + 3600 * lab.S}
            counts = client.query("host_counts", **params).iloc[0]
            os.environ["HOSTFLOW_COLLECTOR_URL"] = url
            os.environ["HOSTFLOW_TZ"] = "UTC"
            moment = dt.datetime.fromtimestamp(hour / lab.S, dt.UTC)
            timings: dict[str, list[float]] = {"cold": [], "new view": [], "warm": []}
            drawn: list[int] = []
            for mode in timings:
                st.cache_data.clear()
                at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
                at.query_params.update(host=host, date=moment.date().isoformat(), hour=str(moment.hour))
                at.run()
                assert not at.exception, at.exception
                for round_number in range(args.rounds if mode == "warm" else 1):
                    for kind, label, value in changes():
                        if mode == "cold":
                            st.cache_data.clear()
                        apply(at, kind, label, value)
                        started_s = time.perf_counter()
                        at.run()
                        elapsed = time.perf_counter() - started_s
                        assert not at.exception, at.exception
                        if mode != "warm" or round_number > 0:
                            timings[mode].append(elapsed)
                        charts = [c for c in at.get("bidi_component") if "sankey" in c.proto.id]
                        if charts:
                            figure_json = json.loads(charts[0].proto.json)["figure"]
                            drawn.append(sum(1 for t in sankey.figure_labels(figure_json)))
            started_s = time.perf_counter()
            peers = client.query("host_peers", **params, aggregate="fqdn", top_n=50, measure="bytes")
            query_s = time.perf_counter() - started_s
            span = client.query("time_range")
            whole = {"start": int(span["first_seen"].iloc[0]), "end": int(span["last_seen"].iloc[0]) + 1}
            flows_page = {
                "this hour": flows_page_queries(client, {"start": params["start"], "end": params["end"]}),
                "whole span": flows_page_queries(client, whole),
            }
            # both drawings alternately in one loop, so a machine whose load changes meanwhile
            # weighs on both alike
            drawings = {"glyphs": real_figure, "hv.render": holoviews_figure}
            renders: dict[str, list[float]] = {name: [] for name in drawings}
            graph = sankey.build_graph(peers, "host", "bytes", ZoneInfo("UTC"))
            for _ in range(5):
                for name, draw in drawings.items():
                    sankey.figure = draw
                    started_s = time.perf_counter()
                    sankey.figure_json(graph, "bytes")
                    renders[name].append(time.perf_counter() - started_s)
    where = "synthetic hour" if args.synthetic else "demo database, busiest host-hour"
    where += ", BASELINE (hv.render)" if args.baseline else ", HoloViews layout + Bokeh glyphs"
    print(f"{where}: host {host}, {moment:%Y-%m-%d %H:00} UTC, {int(counts['flows_total'])} flows, "
          f"{int(counts['endpoints_total'])} endpoints")  # fmt: skip
    print(f"Sankey nodes drawn per chart: max {max(drawn, default=0)} (≤ 50 peers + services + host)")
    print(
        f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)"
    )
    print(f"{'':34} {'n':>3} {'p50 s':>8} {'p95 s':>8} {'goal p95 s':>11} {'p95/goal':>9}")
    for name, values in timings.items():
        if values:
            p95 = percentile(values, 0.95)
            print(f"{'filter change → Sankey, ' + name:34} {len(values):3} {statistics.median(values):8.3f} "
                  f"{p95:8.3f} {GOAL_P95:11.2f} {p95 / GOAL_P95:9.2f}")  # fmt: skip
    print(f"{'host_peers query (top 50)':34} {1:3} {query_s:8.3f}")
    for name, values in renders.items():
        print(f"{'Sankey build+serialise, ' + name:34} {len(values):3} {statistics.median(values):8.3f} "
              f"{percentile(values, 0.95):8.3f}")  # fmt: skip
    for name, (one, loop, listed) in flows_page.items():
        print(f"Flows page, all hosts, {name}: one flows query {one:.3f} s ({listed} flows) vs hosts + "
              f"host_flows per host {loop:.3f} s: {loop / one:.1f}× faster")  # fmt: skip
    ratio = statistics.median(renders["hv.render"]) / statistics.median(renders["glyphs"])
    print(f"Sankey build+serialise: HoloViews layout + Bokeh glyphs is {ratio:.1f}× faster than hv.render")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
