"""The main page through Streamlit's AppTest against a real collector filled with the lab hour.

Each widget is changed the way a user would, and the node labels (from the streamlit-bokeh
component's figure), the counts line and the table are checked against what the records say.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from streamlit.testing.v1 import AppTest

from hostflow.ui.sankey import figure_labels, split_label
from tests import ui_scenario as lab
from tests.plugins.common import ROOT, free_port

APP = str(ROOT / "app.py")
HOUR_END = lab.HOUR + 3600 * lab.S


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lab.Collector]:
    with lab.collector(tmp_path_factory.mktemp("app-collector")) as server:
        yield server


@pytest.fixture
def app(collector: lab.Collector, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    return lab.app_test(collector.url, monkeypatch)


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def labels(at: AppTest) -> dict[str, str]:
    """Node label → value text, as painted on the canvas."""
    charts = [c for c in at.get("bidi_component") if "sankey" in c.proto.id]
    assert len(charts) == 1, "no Sankey on the page"
    figure = json.loads(charts[0].proto.json)["figure"]
    return dict(split_label(text) for text in figure_labels(figure))


def counts(at: AppTest) -> str:
    lines = [m.value.strip("*") for m in at.markdown if "endpoints after filters" in m.value]
    assert len(lines) == 1, [m.value for m in at.markdown]
    return lines[0]


def expected_line(lab_counts: tuple[int, int, int, int], peers: int, noun: str, aggregate: str) -> str:
    total, endpoints, kept, kept_endpoints = lab_counts
    return (
        f"{total} flows / {endpoints} endpoints → {kept} flows / {kept_endpoints} endpoints after filters → "
        f"{peers} {noun} by {aggregate}"
    )


def plain(markdown: str) -> str:
    """The text a user reads from an escaped markdown string."""
    return re.sub(r"\\(.)", r"\1", markdown)


def radio(at: AppTest, label: str):
    return next(w for w in at.sidebar.radio if w.label == label)


def multiselect(at: AppTest, label: str):
    return next(w for w in at.sidebar.multiselect if w.label == label)


def sidebar_select(at: AppTest, label: str):
    return next(w for w in at.sidebar.selectbox if w.label.startswith(label))


def test_default_view_is_the_latest_hour_of_the_busiest_host(app: AppTest) -> None:
    at = run(app)
    assert sidebar_select(at, "Hour").value == 4 and sidebar_select(at, "Time zone").value == "UTC"
    assert sidebar_select(at, "Host").value == lab.HOST
    assert at.caption[0].value.startswith(r"2022\-02\-15 04\:00–05\:00 UTC")
    reference = lab.expected_counts(lab.build(), lab.HOST, lab.HOUR, HOUR_END)
    assert counts(at) == expected_line(reference, 12, "names", "fqdn")
    nodes = labels(at)
    assert nodes["alice-laptop (192.168.1.71)"] == "2.41 MB"
    assert nodes["wss-primary.slack.com"] == "540 KB"  # 3 × (20 KB up + 160 KB down)
    assert nodes["mail.google.com"] == "360 KB" and nodes["https"] == "1.18 MB"
    assert {"224.0.0.251", "192.168.1.255", "162.159.200.1", "8.8.8.8", "nas.local"} <= set(nodes)
    table = at.dataframe[0].value
    assert (
        len(table) == 12 and table.loc[0, "name"] == "nas.local" and table.loc[0, "bytes sent"] == 1_200_000
    )
    assert at.query_params["host"] == lab.HOST and at.query_params["hour"] == "4"


def test_hostile_name_stays_text_everywhere(app: AppTest) -> None:
    at = run(app)
    assert labels(at)[lab.XSS] == "10 KB"
    for element in [*at.markdown, *at.caption, *at.info, *at.error]:
        assert "<img" not in element.value, element.value  # escaped, or absent, in every markdown element
    assert lab.XSS in set(at.dataframe[0].value["name"])  # tables are data grids: shown as text


def test_time_zone_moves_the_hour_not_the_data(app: AppTest) -> None:
    at = run(app)
    sidebar_select(at, "Time zone").select("Asia/Tokyo")
    run(at)
    # the stored hour's numbers stay; the window now reads 04:00 local, an hour without traffic
    sidebar_select(at, "Hour").select(13)
    run(at)
    assert at.caption[0].value.startswith(r"2022\-02\-15 13\:00–14\:00 JST")
    reference = lab.expected_counts(lab.build(), lab.HOST, lab.HOUR, HOUR_END)
    assert counts(at) == expected_line(reference, 12, "names", "fqdn")


def test_hour_buttons_date_and_empty_hour(app: AppTest) -> None:
    at = run(app)
    next(b for b in at.sidebar.button if b.label.startswith("◀")).click()
    run(at)
    assert sidebar_select(at, "Hour").value == 3
    reference = lab.expected_counts(lab.build(), lab.HOST, lab.HOUR - 3600 * lab.S, lab.HOUR)
    assert reference == (4, 2, 4, 2)
    assert counts(at) == expected_line(reference, 2, "names", "fqdn")
    assert set(labels(at)) >= {"www.google.com", "192.168.1.1"}
    sidebar_select(at, "Hour").select(2)
    run(at)
    assert [plain(i.value) for i in at.info] == [
        "No flows for 192.168.1.71 in 2022-02-15 02:00–03:00 UTC. "
        "Pick another hour, or another host from the list."
    ]
    assert not at.get("bidi_component")
    # the date picker offers only the days holding data: an earlier day is refused
    at.sidebar.date_input[0].set_value(dt.date(2022, 2, 14))
    sidebar_select(at, "Hour").select(4)
    run(at)
    assert at.sidebar.date_input[0].value == dt.date(2022, 2, 15)
    assert counts(at).startswith("39 flows / 13 endpoints")


def test_custom_window_and_bad_window(app: AppTest) -> None:
    at = run(app)
    at.sidebar.radio[0].set_value("custom window")
    run(at)
    at.sidebar.date_input[0].set_value(dt.date(2022, 2, 15))
    at.sidebar.time_input[0].set_value(dt.time(3, 0))
    at.sidebar.date_input[1].set_value(dt.date(2022, 2, 15))
    at.sidebar.time_input[1].set_value(dt.time(5, 0))
    run(at)
    reference = lab.expected_counts(lab.build(), lab.HOST, lab.HOUR - 3600 * lab.S, HOUR_END)
    assert counts(at) == expected_line(reference, 12, "names", "fqdn")
    assert at.query_params["from"] == "2022-02-15T03:00" and at.query_params["to"] == "2022-02-15T05:00"
    at.sidebar.time_input[1].set_value(dt.time(2, 0))
    run(at)
    assert len(at.error) == 1 and plain(at.error[0].value) == (
        "Bad window: the window ends (2022-02-15 02:00) before it starts (2022-02-15 03:00): "
        "pick an end after the start"
    )
    assert not at.get("bidi_component")


def test_probe_and_host_choice(app: AppTest) -> None:
    at = run(app)
    hosts = sidebar_select(at, "Host")
    assert hosts.options[0].startswith("alice-laptop (192.168.1.71) · 2.4")
    hosts.select(lab.HOST2)
    run(at)
    assert set(labels(at)) == {"bob-iphone (192.168.1.72)", "https", "domain", "app.slack.com",
                               "www.google.com", "192.168.1.1"}  # fmt: skip
    sidebar_select(at, "Probe").select(lab.PROBE2)
    run(at)
    assert sidebar_select(at, "Host").value == lab.HOST3
    assert "www.example.com" in labels(at)
    assert at.query_params["probe"] == lab.PROBE2


@pytest.mark.parametrize(
    ("widget", "value", "protocols", "scopes", "casts", "peers"),
    [
        ("Protocol", ["tcp"], {6}, None, None, 7),
        ("Scope", ["internet"], None, {"internet"}, None, 8),
        ("Cast", ["multicast", "broadcast"], None, None, {"multicast", "broadcast"}, 2),
    ],
)
def test_each_filter_family(
    app: AppTest, widget: str, value: list[str], protocols: set[int] | None, scopes: set[str] | None,
    casts: set[str] | None, peers: int,
) -> None:  # fmt: skip
    at = run(app)
    multiselect(at, widget).set_value(value)
    run(at)
    reference = lab.expected_counts(lab.build(), lab.HOST, lab.HOUR, HOUR_END, protocols, scopes, casts)
    assert counts(at) == expected_line(reference, peers, "names", "fqdn")
    assert len(at.dataframe[0].value) == peers


def test_direction(app: AppTest) -> None:
    at = run(app)
    radio(at, "Direction").set_value("received")
    run(at)
    nodes = labels(at)
    assert "224.0.0.251" not in nodes and "192.168.1.255" not in nodes  # nothing comes back from them
    assert nodes["wss-primary.slack.com"] == "480 KB"
    radio(at, "Direction").set_value("sent")
    run(at)
    assert labels(at)["wss-primary.slack.com"] == "60 KB" and "224.0.0.251" in labels(at)


def test_all_filtered_out_says_which_filter(app: AppTest) -> None:
    at = run(app)
    multiselect(at, "Scope").set_value(["internet"])
    multiselect(at, "Cast").set_value(["multicast"])
    run(at)
    assert not at.get("bidi_component")
    assert counts(at).startswith("39 flows / 13 endpoints → 0 flows / 0 endpoints after filters")
    records = lab.build()
    without_cast = lab.expected_counts(records, lab.HOST, lab.HOUR, HOUR_END, scopes={"internet"})[2]
    without_scope = lab.expected_counts(records, lab.HOST, lab.HOUR, HOUR_END, casts={"multicast"})[2]
    assert (without_cast, without_scope) == (24, 2)
    assert plain(at.info[0].value) == (
        "All 39 flows of alice-laptop (192.168.1.71) in 2022-02-15 04:00–05:00 UTC are filtered out by the "
        f"cast ({without_cast} flows without it) or the scope ({without_scope} flows without it) filter. "
        "Active filters: cast: multicast; scope: internet."
    )
    multiselect(at, "Protocol").set_value([])
    run(at)
    assert "tick at least one protocol" in plain(at.info[0].value)


@pytest.mark.parametrize(
    ("aggregate", "noun", "peers", "present"),
    [
        ("domain", "domains", 10, {"slack.com", "google.com"}),
        # HTTPS and QUIC to www.google.com (tcp and udp 443) are two endpoints, labelled with the protocol
        # because they share address and port; every other endpoint keeps the short ip:port
        (
            "endpoint",
            "endpoints",
            13,
            {"wss-primary.slack.com:443", "www.google.com:443/tcp", "www.google.com:443/udp"},
        ),
        ("ip", "addresses", 12, {"wss-primary.slack.com", "162.159.200.1"}),
        ("country", "countries", None, set()),
        ("org", "organisations", None, set()),
    ],
)
def test_aggregation(app: AppTest, aggregate: str, noun: str, peers: int | None, present: set[str]) -> None:
    at = run(app)
    sidebar_select(at, "Aggregate").select(aggregate)
    run(at)
    line = counts(at)
    assert line.startswith("39 flows / 13 endpoints → 39 flows / 13 endpoints after filters → ")
    assert f" {noun} by {aggregate}" in line
    if peers is not None:
        assert line.endswith(f"→ {peers} {noun} by {aggregate}")
    assert present <= set(labels(at))
    assert at.query_params["agg"] == aggregate


def test_measure_min_volume_top_n_and_service_column(app: AppTest) -> None:
    at = run(app)
    radio(at, "Measure").set_value("packets")
    run(at)
    assert labels(at)["wss-primary.slack.com"] == "483 pkts"
    radio(at, "Measure").set_value("flows")
    run(at)
    assert labels(at)["192.168.1.1"] == "10 flows"
    radio(at, "Measure").set_value("bytes")
    run(at)
    at.sidebar.select_slider[0].set_value(100_000)  # minimum volume
    run(at)
    nodes = labels(at)
    assert {k for k in nodes if "." in k and "(" not in k} == {
        "nas.local", "wss-primary.slack.com", "mail.google.com", "www.google.com", "app.slack.com",
    }  # fmt: skip
    # under 100 KB: 10 000 + 2 400 + 1 100 (five lookups) + 672 + 600 + 250 + 152 bytes
    assert nodes["other"] == "15.2 KB" and counts(at).endswith("(5 drawn, 7 folded into “other”)")
    at.sidebar.select_slider[0].set_value(0)
    at.sidebar.select_slider[1].set_value(5)  # top N
    run(at)
    assert counts(at).endswith("→ 12 names by fqdn (5 drawn, 7 folded into “other”)")
    assert len(at.dataframe[0].value) == 6
    at.sidebar.toggle[0].set_value(False)
    run(at)
    nodes = labels(at)
    assert "https" not in nodes and "various" not in nodes and len(nodes) == 7


def test_link_parameters_restore_a_view_and_bad_ones_are_named(app: AppTest) -> None:
    app.query_params.update(
        {
            "host": lab.HOST2,
            "date": "2022-02-15",
            "hour": "4",
            "agg": "domain",
            "scope": "internet",
            "top": "nine",
        }
    )
    at = run(app)
    assert sidebar_select(at, "Host").value == lab.HOST2
    assert set(labels(at)) == {"bob-iphone (192.168.1.72)", "https", "slack.com", "google.com"}
    assert [plain(w.value) for w in at.sidebar.warning] == [
        "Ignored a link parameter: top: expected a whole number from 1 to 50"
    ]


def test_unknown_host_from_a_link(app: AppTest) -> None:
    app.query_params.update({"host": "10.9.9.9"})
    at = run(app)
    assert sidebar_select(at, "Host").value == "10.9.9.9"
    assert plain(at.info[0].value).startswith("No flows for 10.9.9.9 in 2022-02-15 04:00–05:00 UTC.")


def test_collector_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTFLOW_COLLECTOR_URL", f"http://127.0.0.1:{free_port()}")
    at = run(AppTest.from_file(APP, default_timeout=120))
    assert len(at.error) == 1
    assert plain(at.error[0].value).startswith("cannot reach the collector at http://127.0.0.1:")
    assert "HOSTFLOW_COLLECTOR_URL" in plain(at.error[0].value)


def test_no_data_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with lab.collector(tmp_path, load=False) as empty:
        at = run(lab.app_test(empty.url, monkeypatch))
    assert plain(at.info[0].value).startswith("No data at all: the collector has stored no flows yet.")
    assert not at.error


def test_bad_intranet_setting(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTFLOW_INTRANET", "192.168.0.0/16,banana")
    at = run(app)
    assert (
        plain(at.error[0].value) == "HOSTFLOW_INTRANET: 'banana' is not a CIDR prefix (e.g. 192.168.0.0/16)"
    )


def test_intranet_setting_changes_scope(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    # with only 192.168.1.0/24 inside, the second probe's 10.1.0.5 is no intranet host any more
    monkeypatch.setenv("HOSTFLOW_INTRANET", "192.168.1.0/24")
    at = run(app)
    assert not any(lab.HOST3 in option for option in sidebar_select(at, "Host").options)
    multiselect(at, "Scope").set_value(["intranet"])
    run(at)
    assert "nas.local" in labels(at)


def test_a_view_seen_before_reuses_its_figure(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    import streamlit as st

    from hostflow.ui import sankey

    builds: list[str] = []
    real_figure = sankey.figure

    def counted(graph: sankey.Graph, measure: str, title: str = "") -> object:
        builds.append(measure)
        return real_figure(graph, measure, title)

    monkeypatch.setattr(sankey, "figure", counted)
    st.cache_data.clear()
    at = run(app)
    first = labels(at)
    radio(at, "Measure").set_value("packets")
    run(at)
    assert labels(at) != first
    radio(at, "Measure").set_value("bytes")
    run(at)
    assert labels(at) == first
    assert builds == ["bytes", "packets"]  # going back to bytes drew the cached figure


def test_fewer_layout_iterations_keep_the_picture() -> None:
    """The Sankey lays out with LAYOUT_ITERATIONS instead of HoloViews' 32: every node is still drawn,
    each side stays in its column, and no node overlaps another in its column."""
    import holoviews as hv
    from holoviews.element.sankey import _layout_sankey

    from hostflow.ui import sankey
    from tests.test_ui_logic import peers_frame

    sankey._holoviews()
    graph = sankey.build_graph(peers_frame(), "alice", "bytes", ZoneInfo("UTC"))
    element = hv.Sankey((graph.edges, hv.Dataset(graph.nodes, "index", ["label", "category"])),
                        kdims=["source", "target"], vdims=["value"])  # fmt: skip
    columns: dict[str, set[float]] = {}
    for iterations in (32, sankey.LAYOUT_ITERATIONS):
        _, _, layout = _layout_sankey.instance(iterations=iterations, node_padding=16, node_width=14).layout(
            element
        )
        assert {node["index"] for node in layout["nodes"]} == set(graph.nodes["index"])
        by_column: dict[float, list[tuple[float, float]]] = {}
        for node in layout["nodes"]:
            by_column.setdefault(node["x0"], []).append((node["y0"], node["y1"]))
            columns.setdefault(node["index"], set()).add(node["x0"])
        for spans in by_column.values():
            spans.sort()
            assert all(low[1] <= high[0] for low, high in zip(spans, spans[1:], strict=False)), spans
    assert all(len(xs) == 1 for xs in columns.values())
    assert sankey.LAYOUT_ITERATIONS < 32
