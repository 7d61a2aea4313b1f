"""hostflow/ui without Streamlit: formatting, windows, URL state, the Sankey graph, counts, exports."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import zipfile
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from bokeh.embed import json_item

from hostflow.ui import explain, fmt, sankey, state, tables, timez
from hostflow.ui.state import Filters, State, View

UTC = ZoneInfo("UTC")
T0 = 1_644_897_600_000_000  # 2022-02-15 04:00 UTC
XSS = '<img src=x onerror="window.__xss=1">'


def peers_frame() -> pd.DataFrame:
    """Rows shaped like the collector's host_peers answer (docs/CONTRACT.md)."""
    rows = [
        ("wss-primary.slack.com", "https", "internet", "unicast", 6, 60_000, 480_000, 84, 399, 6, 1, "dns"),
        ("mail.google.com", "https", "internet", "unicast", 6, 10_000, 350_000, 14, 291, 2, 1, "dns"),
        ("nas.local", "microsoft-ds", "intranet", "unicast", 6, 1_200_000, 30_000, 1714, 25, 2, 1, "mdns"),
        (XSS, "https", "internet", "unicast", 6, 2_000, 8_000, 2, 6, 2, 1, "dns"),
        ("224.0.0.251", "mdns", "intranet", "multicast", 17, 600, 0, 2, 0, 2, 1, ""),
        ("other", "", "", "", 0, 500, 700, 2, 2, 4, 3, ""),
    ]
    columns = ["peer", "service", "scope", "cast", "protocol", "bytes_sent", "bytes_received", "packets_sent",
               "packets_received", "flows", "endpoints", "name_source"]  # fmt: skip
    frame = pd.DataFrame(rows, columns=columns)
    frame.insert(1, "label", frame["peer"])
    frame["first_seen"] = T0 + 60_000_000
    frame["last_seen"] = T0 + 120_000_000
    return frame


# ---------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 KB"),
        (512_000, "512 KB"),
        (1_234_567, "1.23 MB"),
        (25 * 10**9, "25 GB"),
    ],
)
def test_human_bytes(value: int, text: str) -> None:
    assert fmt.human_bytes(value) == text


def test_markdown_escape_keeps_names_as_text() -> None:
    assert fmt.md_text("[x](javascript:alert(1))") == r"\[x\]\(javascript\:alert\(1\)\)"
    assert fmt.md_text(XSS) == r'\<img src=x onerror="window\.\_\_xss=1"\>'
    assert fmt.md_text(":red[boo]") == r"\:red\[boo\]"
    assert fmt.printable("a\nb\u202ec\x1b[31m") == "a\ufffdb\ufffdc\ufffd[31m"


# ---------------------------------------------------------------- time windows


def test_hour_window_in_a_zone_and_its_label() -> None:
    window = timez.hour_window(dt.date(2022, 2, 15), 13, ZoneInfo("Asia/Tokyo"))
    assert (window.start_us, window.end_us) == (T0, T0 + timez.HOUR_US)
    assert window.describe() == "2022-02-15 13:00–14:00 JST"
    assert timez.latest_hour(T0 + 59 * 60 * 1_000_000, ZoneInfo("Asia/Tokyo")) == (dt.date(2022, 2, 15), 13)


def test_hour_window_across_daylight_saving_changes() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 02:00 does not exist on 2022-03-27 in Berlin: the hour after the gap, still 60 minutes long
    skipped = timez.hour_window(dt.date(2022, 3, 27), 2, berlin)
    assert skipped.end_us - skipped.start_us == timez.HOUR_US
    assert skipped.start.astimezone(UTC).strftime("%H:%M") == "01:00"
    # 02:00 happens twice on 2022-10-30: the first one (still summer time)
    twice = timez.hour_window(dt.date(2022, 10, 30), 2, berlin)
    assert twice.start.astimezone(UTC).strftime("%H:%M") == "00:00"


def test_bad_windows_and_zones_say_what_to_change() -> None:
    with pytest.raises(timez.WindowError, match="before it starts"):
        timez.custom_window(dt.datetime(2022, 2, 15, 5), dt.datetime(2022, 2, 15, 4), UTC)
    with pytest.raises(timez.WindowError, match="at most 31 days"):
        timez.custom_window(dt.datetime(2022, 1, 1), dt.datetime(2022, 3, 1), UTC)
    with pytest.raises(timez.WindowError, match="unknown time zone 'Mars/Olympus'"):
        timez.zone("Mars/Olympus")
    window = timez.custom_window(dt.datetime(2022, 2, 15, 3), dt.datetime(2022, 2, 15, 5), UTC)
    assert window.params() == {"start": T0 - timez.HOUR_US, "end": T0 + timez.HOUR_US}


def test_default_zone_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTFLOW_TZ", "America/Sao_Paulo")
    assert timez.default_zone_name() == "America/Sao_Paulo"
    monkeypatch.setenv("HOSTFLOW_TZ", "Not/AZone")
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    assert timez.default_zone_name() == "Asia/Kolkata"


# ---------------------------------------------------------------- state, filters and the URL


def test_filters_send_only_what_drops_something() -> None:
    assert Filters().params() == {}
    chosen = Filters(protocols=("udp", "tcp"), scopes=("internet",), direction="sent")
    assert chosen.params() == {"protocols": ["tcp", "udp"], "scopes": ["internet"], "direction": "sent"}
    assert chosen.families() == ["protocol", "scope", "direction"]
    assert chosen.relaxed("scope").params() == {"protocols": ["tcp", "udp"], "direction": "sent"}
    assert Filters(casts=()).empty_family() == "cast"


def test_url_round_trip_and_bad_parameters() -> None:
    picked = State(
        probe_id="lab-pi", host="192.168.1.71", tz="Asia/Tokyo", day=dt.date(2022, 2, 15), hour=13,
        filters=Filters(protocols=("tcp",), casts=("unicast",), scopes=("internet",), direction="received"),
        view=View(aggregate="domain", measure="packets", min_volume=10, top_n=15, via_service=False),
    )  # fmt: skip
    query = state.to_query(picked)
    assert query == {
        "probe": "lab-pi", "host": "192.168.1.71", "tz": "Asia/Tokyo", "date": "2022-02-15", "hour": "13",
        "proto": "tcp", "cast": "unicast", "scope": "internet", "dir": "received", "agg": "domain",
        "measure": "packets", "min": "10", "top": "15", "svc": "0",
    }  # fmt: skip
    back, problems = state.from_query(query, State())
    assert back == picked and problems == []
    broken, problems = state.from_query(
        {"hour": "25", "date": "2022-02-15", "proto": "tcp,sctp", "agg": "planet", "top": "500"}, State()
    )
    assert broken == State()
    assert problems == [
        "date/hour: expected date=YYYY-MM-DD and hour=0..23",
        "proto: unknown value(s) sctp",
        "agg: expected one of endpoint, ip, fqdn, domain, org, country",
        "top: expected a whole number from 1 to 50",
    ]


def test_intranet_prefixes_from_environment() -> None:
    assert state.intranet_prefixes("") is None
    assert state.intranet_prefixes("10.0.0.0/8, 192.168.1.7/24 fd00::/8") == [
        "10.0.0.0/8",
        "192.168.1.0/24",
        "fd00::/8",
    ]
    with pytest.raises(state.ConfigError, match="'10.0.0/33' is not a CIDR prefix"):
        state.intranet_prefixes("10.0.0/33")


# ---------------------------------------------------------------- the Sankey graph


def test_graph_is_three_acyclic_columns_with_distinct_ids() -> None:
    graph = sankey.build_graph(peers_frame(), "alice-laptop (192.168.1.71)", "bytes", UTC)
    ids = list(graph.nodes["index"])
    assert ids[0] == "src:host" and len(ids) == len(set(ids))
    assert {i.split(":", 1)[0] for i in ids} == {"src", "svc", "dst"}
    # every edge goes one column to the right: host → service → peer, so no cycle is possible
    column = {"src": 0, "svc": 1, "dst": 2}
    for source, target in zip(graph.edges["source"], graph.edges["target"], strict=True):
        assert column[target.split(":", 1)[0]] == column[source.split(":", 1)[0]] + 1
    labels = dict(zip(graph.nodes["index"], graph.nodes["label"], strict=True))
    assert labels["svc:https"] == "https" and labels["svc:various"] == "various"
    categories = dict(zip(graph.nodes["index"], graph.nodes["category"], strict=True))
    assert categories["dst:224.0.0.251"] == "intranet multicast"
    assert categories["dst:other"] == sankey.OTHER_CATEGORY
    https = graph.edges[graph.edges["target"] == "svc:https"].iloc[0]
    assert https["value"] == 540_000 + 360_000 + 10_000
    assert https["tip_name"] == "3 peers"


def test_graph_values_follow_the_measure_and_two_columns_without_services() -> None:
    graph = sankey.build_graph(peers_frame(), "h", "packets", UTC, via_service=False)
    assert set(graph.edges["source"]) == {"src:host"}
    values = dict(zip(graph.edges["target"], graph.edges["value"], strict=True))
    assert values["dst:wss-primary.slack.com"] == 84 + 399
    assert values["dst:224.0.0.251"] == 2
    flows = sankey.build_graph(peers_frame(), "h", "flows", UTC, via_service=False)
    assert dict(zip(flows.edges["target"], flows.edges["value"], strict=True))["dst:other"] == 4


def test_tooltips_carry_both_directions_and_times() -> None:
    graph = sankey.build_graph(peers_frame(), "h", "bytes", ZoneInfo("Asia/Tokyo"))
    edge = graph.edges[graph.edges["target"] == "dst:wss-primary.slack.com"].iloc[0]
    assert (edge["tip_sent"], edge["tip_received"]) == ("60 KB", "480 KB")
    assert edge["tip_packets"] == "84 sent / 399 received"
    assert (edge["tip_first"], edge["tip_last"]) == ("2022-02-15 13:01:00", "2022-02-15 13:02:00")
    assert edge["tip_source"] == "dns"


def test_figure_labels_show_names_as_plain_text_with_human_values() -> None:
    graph = sankey.build_graph(peers_frame(), "alice-laptop (192.168.1.71)", "bytes", UTC)
    item = json.dumps(json_item(sankey.figure(graph, "bytes")))
    labels = dict(sankey.split_label(text) for text in sankey.figure_labels(item))
    assert labels["alice-laptop (192.168.1.71)"] == "2.14 MB"
    assert labels["wss-primary.slack.com"] == "540 KB"
    assert labels[XSS] == "10 KB"  # the name is data on a canvas, never markup
    # the hover template refers to columns only; Bokeh escapes their values (no "{safe}" anywhere)
    assert "{safe}" not in item and "@tip_name" in item


def test_empty_graph() -> None:
    graph = sankey.build_graph(peers_frame().iloc[0:0], "h", "bytes", UTC)
    assert graph.empty and graph.nodes.empty


# ---------------------------------------------------------------- counts line and empty states


def test_counts_line_of_the_paper() -> None:
    counts = {"flows_total": 466, "endpoints_total": 48, "flows_filtered": 80, "endpoints_filtered": 17,
              "peers_aggregated": 15}  # fmt: skip
    line = explain.counts_line(counts, View(aggregate="domain", top_n=20), drawn=15, folded=False)
    assert line == "466 flows / 48 endpoints → 80 flows / 17 endpoints after filters → 15 domains by domain"
    folded = explain.counts_line(counts, View(aggregate="domain", top_n=10), drawn=10, folded=True)
    assert folded.endswith("→ 15 domains by domain (10 drawn, 5 folded into “other”)")


def test_empty_state_names_the_filter() -> None:
    counts = {"flows_total": 39, "endpoints_total": 14, "flows_filtered": 0, "endpoints_filtered": 0}
    filters = Filters(casts=("multicast",), scopes=("internet",))
    text = explain.explain_empty(counts, filters, View(), "h", "04:00", {"cast": 18, "scope": 2})
    assert text == (
        "All 39 flows of h in 04:00 are filtered out by the cast (18 flows without it) or the scope "
        "(2 flows without it) filter. Active filters: cast: multicast; scope: internet."
    )
    none = explain.explain_empty(counts, filters, View(), "h", "04:00", {"cast": 0, "scope": 0})
    assert "combination of filters" in none
    assert explain.explain_empty({"flows_total": 0}, Filters(), View(), "h", "04:00").startswith(
        "No flows for h in 04:00."
    )
    assert "tick at least one protocol" in explain.explain_empty(
        counts, Filters(protocols=()), View(), "h", ""
    )


# ---------------------------------------------------------------- tables and exports


def test_csv_neutralises_formulas_and_keeps_numbers() -> None:
    frame = pd.DataFrame({"name": ['=HYPERLINK("http://x")', "+1", "ok", "-2"], "bytes": [1, -2, 3, 4]})
    text = tables.csv_bytes(frame).decode()
    assert text.splitlines() == ["name,bytes", '"\'=HYPERLINK(""http://x"")",1', "'+1,-2", "ok,3", "'-2,4"]


def test_excel_writes_names_as_strings_never_formulas() -> None:
    frame = pd.DataFrame({"name": ["=1+1", XSS, "http://example.com/"], "bytes": [10, 20, 30]})
    book = zipfile.ZipFile(io.BytesIO(tables.excel_bytes(frame, "flows")))
    sheet = book.read("xl/worksheets/sheet1.xml").decode()
    strings = book.read("xl/sharedStrings.xml").decode()
    assert "<f>" not in sheet and "hyperlink" not in sheet.lower()
    assert "=1+1" in strings and "&lt;img src=x" in strings
    assert re.findall(r"<v>(\d+)</v>", sheet)[-3:] == ["10", "20", "30"] or "<v>30</v>" in sheet


def test_flow_list_groups_conversations() -> None:
    flows = pd.DataFrame(
        {
            "peer_addr": ["52.89.214.238"] * 3 + ["192.168.1.1"],
            "peer_name": ["wss-primary.slack.com"] * 3 + [""],
            "service": ["https"] * 3 + ["domain"],
            "protocol": [6, 6, 6, 17],
            "bytes": [100, 200, 300, 50],
            "flow_end": [T0, T0 + 5_000_000, T0 + 1_000_000, T0],
        }
    )
    listing = tables.flow_list(flows, "alice (192.168.1.71)", UTC)
    assert listing[
        ["peer", "name", "service", "protocol", "count", "bytes", "last seen"]
    ].values.tolist() == [
        ["52.89.214.238", "wss-primary.slack.com", "https", "TCP", 3, 600, "2022-02-15 04:00:05"],
        ["192.168.1.1", "", "domain", "UDP", 1, 50, "2022-02-15 04:00:00"],
    ]
    assert list(tables.text_filter(listing, "SLACK")["peer"]) == ["52.89.214.238"]
    assert list(tables.sort_frame(listing, "bytes", descending=False)["bytes"]) == [50, 600]


def test_peers_table_rows() -> None:
    table = tables.peers_table(peers_frame(), UTC)
    assert list(table.columns) == tables.PEER_COLUMNS
    assert len(table) == 6 and table.loc[0, "volume"] == "540 KB" and table.loc[5, "protocol"] == ""


def test_host_widget_value_back_to_an_address() -> None:
    from hostflow.ui.common import _host_address

    assert _host_address("alice-laptop (192.168.1.71) · 2.41 MB") == "192.168.1.71"
    assert _host_address("10.9.9.9 · no traffic in this window") == "10.9.9.9"
    # a crafted DHCP name holding another address does not win over the real one, shown last
    assert _host_address("evil (10.0.0.9) (192.168.1.5) · 1 KB") == "192.168.1.5"
    assert _host_address("pc (fe80::1) · 1 KB") == "fe80::1"
    assert _host_address("junk") is None and _host_address(None) is None


# ---------------------------------------------------------------- the Timeline speaks the app's units


def test_timeline_axis_hover_and_table_use_the_same_si_units() -> None:
    from hostflow.ui import charts

    timeline = pd.DataFrame(
        {
            "bucket_start": [T0, T0, T0 + 300_000_000],
            "key": ["slack.com", "google.com", "slack.com"],
            "bytes": [1_500_000, 250_000, 2_048_000],
            "packets": [1200, 300, 2500],
            "flows": [3, 1, 4],
        }
    )
    wide = charts.timeline_frame(timeline, "bytes", UTC)
    item = json_item(charts.timeline_figure(wide, "bytes", 300))
    text = json.dumps(item, separators=(",", ":"))
    # the axis is in MB (1000-based, as human_bytes and the tables say), never KiB/MiB
    assert '"axis_label":"bytes (MB)"' in text and "iB" not in text
    assert '"format":"0.[00]"' in text
    data = next(iter(_sources(item)))
    assert data["s0"] == [1.5, 2.048] and data["s1"] == [0.25, 0.0]  # slack.com, google.com in MB
    assert data["s0_text"] == ["1.5 MB", "2.05 MB"] and data["s1_text"] == ["250 KB", "0 B"]
    assert data["total"] == ["1.75 MB", "2.05 MB"]
    assert fmt.axis_unit(2_048_000, "bytes") == (1_000_000, "MB")
    assert fmt.axis_unit(999, "bytes") == (1, "B") and fmt.axis_unit(3500, "packets") == (1000, "k")
    # the hover of each series names its own column (ours), never a key from the wire
    assert "@s0_text" in text and "@s1_text" in text
    packets = json.dumps(json_item(charts.timeline_figure(charts.timeline_frame(timeline, "packets", UTC),
                                                          "packets", 300)), separators=(",", ":"))  # fmt: skip
    assert '"axis_label":"packets (k)"' in packets and "1.5k pkts" in packets


def _sources(item: object):
    if isinstance(item, dict):
        if item.get("name") == "ColumnDataSource":
            data = item["attributes"]["data"]
            entries = data.get("entries") if isinstance(data, dict) else None
            if entries:
                yield {k: _array(v) for k, v in entries}
        for value in item.values():
            yield from _sources(value)
    elif isinstance(item, list):
        for value in item:
            yield from _sources(value)


def _array(value: object) -> object:
    """A serialised column back to a list (Bokeh sends float columns as typed arrays)."""
    if isinstance(value, dict) and value.get("type") == "ndarray":
        import base64

        import numpy as np

        raw = value["array"]
        buffer = base64.b64decode(raw["data"]) if isinstance(raw, dict) else raw
        return (
            np.frombuffer(buffer, dtype=value["dtype"]).tolist()
            if isinstance(buffer, bytes)
            else list(buffer)
        )
    return value
