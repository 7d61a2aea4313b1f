"""Every page besides the Sankey, through AppTest, against the real collector with the lab hour."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from hostflow.ui.fmt import human_bytes
from hostflow.ui.sankey import figure_labels
from tests import ui_scenario as lab
from tests.test_app_sankey import plain, run, sidebar_select


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lab.Collector]:
    with lab.collector(tmp_path_factory.mktemp("pages-collector")) as server:
        yield server


@pytest.fixture
def app(collector: lab.Collector, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    return lab.app_test(collector.url, monkeypatch)


def page(app: AppTest, path: str) -> AppTest:
    run(app)
    app.switch_page(path)
    return run(app)


def no_raw_html(at: AppTest) -> None:
    for element in [*at.markdown, *at.caption, *at.info, *at.error, *at.warning, *at.success]:
        assert "<img" not in element.value, element.value


def flow_host(flow) -> str:
    """The host a flow is listed under (docs/CONTRACT.md Decisions): the intranet unicast side when
    exactly one side is one, else the side that opened it."""
    local = [lab.classify(a) == ("unicast", "intranet") for a in (flow.src_addr, flow.dst_addr)]
    if local[0] != local[1]:
        return flow.src_addr if local[0] else flow.dst_addr
    if flow.initiator in ("src", "dst"):
        return flow.src_addr if flow.initiator == "src" else flow.dst_addr
    return flow.src_addr if flow.src_port >= flow.dst_port else flow.dst_addr


def expected_all_hosts(protocols: set[int] | None = None) -> tuple[set[str], int]:
    """The hosts the hour's flows are listed under, and how many flows: the all-hosts list holds
    every flow of the hour exactly once."""
    scenario, start, end = lab.build(), lab.HOUR, lab.HOUR + 3600 * lab.S
    hour = [f for f in scenario.flows if start <= f.flow_start < end]
    chosen = [f for f in hour if not protocols or f.protocol in protocols]
    return {flow_host(f) for f in chosen}, len(chosen)


def host_addrs(labels: pd.Series) -> set[str]:
    return {label.rsplit("(", 1)[-1].rstrip(")") for label in labels}


def test_flows_of_all_hosts_by_default(app: AppTest) -> None:
    at = page(app, "hostflow/ui/pages/flows.py")
    assert at.radio(key="f_hosts").value == "all hosts"
    table = at.dataframe[0].value
    hosts, flows = expected_all_hosts()
    assert len(hosts) >= 3  # the lab hour has several talking hosts, so this is more than one host's list
    assert host_addrs(table["host"]) == hosts
    assert table["count"].sum() == flows
    assert table["bytes"].tolist() == sorted(table["bytes"], reverse=True)
    assert plain(at.markdown[1].value).endswith(f"· {flows} flows of {len(hosts)} hosts")
    no_raw_html(at)


def test_flows_list_filter_sort_and_exports(app: AppTest) -> None:
    at = page(app, "hostflow/ui/pages/flows.py")
    at.radio(key="f_hosts").set_value("this host")
    run(at)
    table = at.dataframe[0].value
    assert list(table.columns) == ["host", "peer", "name", "service", "protocol", "count", "bytes", "volume",
                                   "last seen"]  # fmt: skip
    assert len(table) == 13  # one row per (peer, name, service, protocol) of the 39 flows
    assert table["count"].sum() == 39 and set(table["host"]) == {"alice-laptop (192.168.1.71)"}
    assert table.iloc[0][["peer", "name", "count", "bytes"]].tolist() == [
        "192.168.1.90",
        "nas.local",
        2,
        1_230_000,
    ]
    assert lab.XSS in set(table["name"])
    at.text_input(key="f_text").input("slack")
    run(at)
    assert at.dataframe[0].value["name"].tolist() == ["wss-primary.slack.com", "app.slack.com"]
    assert plain(at.markdown[1].value) == "**2 of 13 conversations** · 39 flows"
    at.selectbox(key="f_sort").select("count")
    run(at)
    assert at.dataframe[0].value["count"].tolist() == [6, 4]
    at.toggle(key="f_desc").set_value(False)
    run(at)
    assert at.dataframe[0].value["count"].tolist() == [4, 6]
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["CSV", "Excel"]
    no_raw_html(at)


def test_flows_follow_the_sidebar_filters(app: AppTest) -> None:
    # AppTest drops the sidebar from its element tree after switch_page (the browser keeps it), so
    # the filter is set on the main page first
    at = run(app)
    next(w for w in at.sidebar.multiselect if w.label == "Protocol").set_value(["udp"])
    run(at)
    at.switch_page("hostflow/ui/pages/flows.py")
    run(at)
    table = at.dataframe[0].value
    assert set(table["protocol"]) == {"UDP"}
    assert table["count"].sum() == expected_all_hosts(protocols={17})[1]
    at.radio(key="f_hosts").set_value("this host")
    run(at)
    table = at.dataframe[0].value
    assert set(table["protocol"]) == {"UDP"}
    reference = lab.expected_counts(lab.build(), lab.HOST, lab.HOUR, lab.HOUR + 3600 * lab.S, protocols={17})
    assert table["count"].sum() == reference[2]


def test_hosts_table_and_heat_map(app: AppTest) -> None:
    at = page(app, "hostflow/ui/pages/hosts.py")
    table = at.dataframe[0].value
    assert table["host"].tolist()[:3] == [lab.HOST, "192.168.1.90", lab.HOST2]
    assert table.loc[0, "name"] == "alice-laptop" and table.loc[0, "name from"] == "dhcp"
    heat = [c for c in at.get("bidi_component") if "heatmap" in c.proto.id]
    assert len(heat) == 1
    figure = json.loads(json.loads(heat[0].proto.json)["figure"])
    assert "hostflow-heatmap" in json.dumps(figure)
    assert (
        at.caption[-1].value.startswith("1 active hours in 7 days")
        or "active hours in 7 days" in at.caption[-1].value
    )  # 03:00 and 04:00 UTC hold alice's traffic
    at.selectbox(key="h_days").select(14)
    run(at)
    assert "in 14 days" in at.caption[-1].value


def test_names_log_and_lookup(app: AppTest) -> None:
    at = page(app, "hostflow/ui/pages/names.py")
    table = at.dataframe[0].value
    alice = [
        n
        for n in lab.build().names
        if n.client_addr == lab.HOST and lab.HOUR <= n.ts < lab.HOUR + 3600 * lab.S
    ]
    assert len(table) == len(alice) and set(table["client"]) == {lab.HOST}
    assert "mail.google.com > googlemail.l.google.com" in set(table["CNAME chain"])
    at.text_input(key="n_lookup").input(lab.XSS_ADDR)
    run(at)
    assert at.dataframe[0].value["name"].tolist() == [lab.XSS]
    at.text_input(key="n_lookup").input("slack")
    at.toggle(key="n_only_host").set_value(False)
    run(at)
    assert set(at.dataframe[0].value["name"]) == {"wss-primary.slack.com", "app.slack.com"}
    assert set(at.dataframe[0].value["client"]) == {lab.HOST, lab.HOST2}
    at.text_input(key="n_lookup").input("no-such-name.example")
    run(at)
    assert plain(at.info[0].value).startswith("No name was seen here")
    no_raw_html(at)


def test_timeline_by_domain_and_service(app: AppTest) -> None:
    at = page(app, "hostflow/ui/pages/timeline.py")

    def legend() -> list[str]:
        chart = [c for c in at.get("bidi_component") if "timeline" in c.proto.id]
        item = json.loads(json.loads(chart[0].proto.json)["figure"])
        found = []

        def walk(node: object) -> None:
            if isinstance(node, dict):
                if node.get("name") == "LegendItem":
                    label = node["attributes"]["label"]
                    found.append(label.get("value") if isinstance(label, dict) else label)
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(item)
        return found

    assert {"slack.com", "google.com", lab.XSS} <= set(legend())
    chart = [c for c in at.get("bidi_component") if "timeline" in c.proto.id][0]
    figure = json.loads(chart.proto.json)["figure"]
    assert re.search(r'"axis_label": "bytes \((kB|KB|MB)\)"', figure) and "iB" not in figure
    table = at.dataframe[0].value
    assert table["volume"].tolist() == [human_bytes(v) for v in table["bytes"]]
    at.radio(key="t_by").set_value("service")
    run(at)
    assert {"https", "microsoft-ds", "domain"} <= set(legend())
    at.selectbox(key="t_bucket").select(3600)
    run(at)
    assert plain(at.caption[-1].value).startswith("1 buckets of 1 hour")
    at.radio(key="t_measure").set_value("flows")
    run(at)
    assert at.dataframe[0].value["flows"].sum() == 39


def test_probes_health(app: AppTest) -> None:
    at = page(app, "hostflow/ui/pages/probes.py")
    table = at.dataframe[0].value
    assert table["probe"].tolist() == [lab.PROBE, lab.PROBE2]
    assert table["kernel drops"].tolist() == [0, 37] and table["parse errors"].tolist() == ["truncated 2", ""]
    assert table["flows stored"].tolist() == [51, 4]
    assert plain(at.warning[0].value).startswith("lab-pi-2 lost 37 packets in the kernel (0.73%)")
    assert plain(at.info[0].value) == "lab-pi-2 holds 1 unsent batches (4.1 KB)."


def test_findings(app: AppTest) -> None:
    at = page(app, "hostflow/ui/pages/findings.py")
    headings = [plain(m.value) for m in at.markdown if m.value.startswith("#####")]
    assert headings == [
        "##### Internet peers contacted with no name seen (3)",
        "##### Peers first seen in this window (15)",
        "##### Server ports with no registered service (1)",
    ]
    unnamed, new, ports = (d.value for d in at.dataframe)
    assert set(unnamed["peer addr"]) == {"162.159.200.1", "198.51.100.7", "8.8.8.8"}
    assert ports[["protocol", "port"]].values.tolist() == [["TCP", 61337]]
    assert lab.XSS_ADDR in set(new["peer addr"])


def test_pages_keep_the_sidebar_and_sankey_options(app: AppTest) -> None:
    run(app)
    sidebar_select(app, "Aggregate").select("domain")
    sidebar_select(app, "Host").select(lab.HOST2)
    run(app)
    app.switch_page("hostflow/ui/pages/names.py")
    run(app)
    assert app.dataframe[0].value["client"].tolist()[0] == lab.HOST2
    # AppTest.switch_page takes files only; the Sankey is a function page of app.py
    app._page_hash = next(
        h for h, info in app._registered_pages.items() if info.get("page_name") == "Host Sankey"
    )
    run(app)
    # (AppTest forgets sidebar widgets after switch_page, so the host is checked in the browser test)
    assert app.session_state["w_aggregate"] == "domain"
    chart = [c for c in app.get("bidi_component") if "sankey" in c.proto.id][0]
    assert any(t.startswith("slack.com") for t in figure_labels(json.loads(chart.proto.json)["figure"]))
