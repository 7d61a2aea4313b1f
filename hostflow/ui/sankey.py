"""host → service → peer Sankey from a ``host_peers`` frame (docs/CONTRACT.md), drawn by HoloViews.

The graph is bipartite by construction (ids ``src:``, ``svc:``, ``dst:``): HoloViews' layout never
returns on a cycle, and a host's flows always go both ways.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from hostflow.ui.fmt import (
    fmt_time,
    human_bytes,
    human_count,
    human_measure,
    printable,
    protocol_name,
    shorten,
)

OTHER = "other"
HOST_CATEGORY = "host"
SERVICE_CATEGORY = "service"
OTHER_CATEGORY = "other (folded)"

# Colours by the peer's scope and cast; chosen to stay apart for the common colour-blindnesses.
PALETTE = {
    HOST_CATEGORY: "#4c566a",
    SERVICE_CATEGORY: "#a3a9b5",
    "internet unicast": "#d95f02",
    "internet multicast": "#e6ab02",
    "internet broadcast": "#e6ab02",
    "intranet unicast": "#1b9e77",
    "intranet multicast": "#7570b3",
    "intranet broadcast": "#e7298a",
    OTHER_CATEGORY: "#c8c8c8",
}
LABEL_LIMIT = 40
# HoloViews relaxes the node positions 32 times by default; with one host on the left (and a
# handful of services) the order barely moves after a few passes, and each pass costs time on
# every redraw.
LAYOUT_ITERATIONS = 6

EDGE_TOOLTIPS = [
    ("", "@tip_from → @tip_to"),
    ("name", "@tip_name"),
    ("service", "@tip_service"),
    ("sent", "@tip_sent"),
    ("received", "@tip_received"),
    ("packets", "@tip_packets"),
    ("flows", "@tip_flows"),
    ("first seen", "@tip_first"),
    ("last seen", "@tip_last"),
    ("name from", "@tip_source"),
]


@dataclass
class Graph:
    nodes: pd.DataFrame  # index (id), label, category
    edges: pd.DataFrame  # source, target, value, category, tip_* columns

    @property
    def empty(self) -> bool:
        return self.edges.empty


def _int(value: Any) -> int:
    try:
        if value is None or pd.isna(value):
            return 0
    except (TypeError, ValueError):
        pass
    return int(value)


def measure_of(row: Any, measure: str) -> int:
    if measure == "packets":
        return _int(row.get("packets_sent")) + _int(row.get("packets_received"))
    if measure == "flows":
        return _int(row.get("flows"))
    return _int(row.get("bytes_sent")) + _int(row.get("bytes_received"))


def category_of(row: Any) -> str:
    if str(row.get("peer")) == OTHER:
        return OTHER_CATEGORY
    scope = str(row.get("scope") or "internet")
    cast = str(row.get("cast") or "unicast")
    key = f"{scope} {cast}"
    return key if key in PALETTE else OTHER_CATEGORY


def service_of(row: Any) -> str:
    service = row.get("service")
    if isinstance(service, str) and service.strip():
        return printable(service.strip())
    if str(row.get("peer")) == OTHER:
        return "various"
    protocol = row.get("protocol")
    if isinstance(protocol, str) and protocol:
        return protocol
    return protocol_name(_int(protocol)).lower() if _int(protocol) else "unknown"


def _text(value: Any) -> str:
    if value is None:
        return ""
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return printable(value)


def build_graph(
    peers: pd.DataFrame, host_label: str, measure: str, tz: ZoneInfo, via_service: bool = True
) -> Graph:
    """Nodes and edges for the Sankey: one host node, service nodes (optional), one node per peer row."""
    host_id = "src:host"
    node_rows: dict[str, tuple[str, str]] = {
        host_id: (shorten(printable(host_label), LABEL_LIMIT), HOST_CATEGORY)
    }
    edges: list[dict[str, Any]] = []
    services: dict[str, dict[str, Any]] = {}
    for row in peers.to_dict("records"):
        value = measure_of(row, measure)
        if value <= 0:
            continue
        peer = _text(row.get("peer"))
        label = _text(row.get("label")) or peer
        category = category_of(row)
        peer_id = f"dst:{peer}"
        node_rows.setdefault(peer_id, (shorten(label, LABEL_LIMIT), category))
        service = service_of(row)
        tips = _tips(row, tz)
        if via_service:
            service_id = f"svc:{service}"
            node_rows.setdefault(service_id, (shorten(service, LABEL_LIMIT), SERVICE_CATEGORY))
            _add_to_service(services, service_id, service, host_label, row, value, tz)
            edges.append(
                {
                    "source": service_id,
                    "target": peer_id,
                    "value": value,
                    "category": category,
                    "tip_from": service,
                    "tip_to": label,
                    **tips,
                }
            )
        else:
            edges.append(
                {
                    "source": host_id,
                    "target": peer_id,
                    "value": value,
                    "category": category,
                    "tip_from": printable(host_label),
                    "tip_to": label,
                    **tips,
                }
            )
    for service_id, total in services.items():
        edges.append(_service_edge(host_id, service_id, total, tz))
    nodes = pd.DataFrame(
        [{"index": key, "label": label, "category": category} for key, (label, category) in node_rows.items()]
    )
    edge_frame = pd.DataFrame(edges, columns=_EDGE_COLUMNS) if edges else pd.DataFrame(columns=_EDGE_COLUMNS)
    if edge_frame.empty:
        nodes = nodes.iloc[0:0]
    return Graph(nodes=nodes, edges=edge_frame)


TIP_COLUMNS = [value[1:] for _, value in EDGE_TOOLTIPS[1:]]
_EDGE_COLUMNS = ["source", "target", "value", "category", "tip_from", "tip_to", *TIP_COLUMNS]


def _tips(row: dict[str, Any], tz: ZoneInfo) -> dict[str, str]:
    label = _text(row.get("label"))
    peer = _text(row.get("peer"))
    name = label if label and label != peer else ""
    if name and peer and peer != OTHER:
        name = f"{name} ({peer})"
    endpoints = _int(row.get("endpoints"))
    return {
        "tip_name": name or peer,
        "tip_service": service_of(row),
        "tip_sent": f"{human_bytes(_int(row.get('bytes_sent')))}",
        "tip_received": f"{human_bytes(_int(row.get('bytes_received')))}",
        "tip_packets": f"{human_count(_int(row.get('packets_sent')))} sent / "
        f"{human_count(_int(row.get('packets_received')))} received",
        "tip_flows": f"{_int(row.get('flows'))}" + (f" ({endpoints} endpoints)" if endpoints > 1 else ""),
        "tip_first": fmt_time(row.get("first_seen"), tz),
        "tip_last": fmt_time(row.get("last_seen"), tz),
        "tip_source": _text(row.get("name_source")) or "no name seen",
    }


def _add_to_service(
    services: dict[str, dict[str, Any]],
    service_id: str,
    service: str,
    host_label: str,
    row: dict[str, Any],
    value: int,
    tz: ZoneInfo,
) -> None:
    total = services.setdefault(
        service_id,
        {
            "service": service,
            "host": host_label,
            "value": 0,
            "bytes_sent": 0,
            "bytes_received": 0,
            "packets_sent": 0,
            "packets_received": 0,
            "flows": 0,
            "first_seen": None,
            "last_seen": None,
            "peers": 0,
        },
    )
    total["value"] += value
    for key in ("bytes_sent", "bytes_received", "packets_sent", "packets_received", "flows"):
        total[key] += _int(row.get(key))
    total["peers"] += 1
    for key, pick in (("first_seen", min), ("last_seen", max)):
        seen = row.get(key)
        if seen is not None and not pd.isna(seen):
            total[key] = int(seen) if total[key] is None else pick(total[key], int(seen))


def _service_edge(host_id: str, service_id: str, total: dict[str, Any], tz: ZoneInfo) -> dict[str, Any]:
    tips = _tips(total, tz)
    tips["tip_name"] = f"{total['peers']} peer{'s' if total['peers'] != 1 else ''}"
    tips["tip_service"] = total["service"]
    tips["tip_source"] = ""
    return {
        "source": host_id,
        "target": service_id,
        "value": total["value"],
        "category": SERVICE_CATEGORY,
        "tip_from": printable(total["host"]),
        "tip_to": total["service"],
        **tips,
    }


NODE_WIDTH = 14
NODE_PADDING = 16
WIDTH = 1000


def layout(graph: Graph) -> dict[str, Any]:
    """HoloViews' Sankey layout of the graph: ``nodes`` (index, x0, x1, y0, y1, value) and ``paths``
    (one closed band outline per edge, in the edges' order)."""
    hv = _holoviews()
    nodes = hv.Dataset(graph.nodes, "index", ["label", "category"])
    element = hv.Sankey((graph.edges[["source", "target", "value"]], nodes), kdims=["source", "target"],
                        vdims=["value"])  # fmt: skip
    return {"nodes": element._sankey["nodes"], "paths": list(element._edgepaths.data)}


def figure(graph: Graph, measure: str, title: str = "") -> Any:
    """The Bokeh figure for ``graph``, ready for streamlit_bokeh: HoloViews lays the Sankey out,
    Bokeh glyphs draw it. (hv.render drew the same picture in 0.5 s for 50 peers, mostly by
    splitting the edge paths into HoloViews datasets one by one; these glyphs take a tenth of that.)"""
    from bokeh.models import ColumnDataSource, HoverTool, Range1d
    from bokeh.plotting import figure as bokeh_figure

    placed = layout(graph)
    nodes = placed["nodes"]
    labels = dict(zip(graph.nodes["index"], graph.nodes["label"], strict=True))
    categories = dict(zip(graph.nodes["index"], graph.nodes["category"], strict=True))
    right_nodes = int(graph.nodes["index"].str.startswith("dst:").sum())
    height = max(420, min(1600, 34 * right_nodes + 100))
    x_low = min(n["x0"] for n in nodes)
    x_high = max(n["x1"] for n in nodes)
    y_low = min(n["y0"] for n in nodes)
    y_high = max(n["y1"] for n in nodes)
    # HoloViews' extents (a quarter of the width for labels each side), then widened further so
    # long right-hand labels are not clipped
    span = (x_high - x_low) * 1.5
    x_start, x_end = x_low - (x_high - x_low) * 0.25, x_high + (x_high - x_low) * 0.25
    plot = bokeh_figure(
        width=WIDTH, height=height, title=title, tools="", toolbar_location=None,
        x_range=Range1d(x_start - span * 0.30, x_end + span * 0.42),
        y_range=Range1d(y_low - 0.05 * (y_high - y_low), y_high + 0.05 * (y_high - y_low)),
        name="hostflow-sankey",
    )  # fmt: skip
    edges = graph.edges
    edge_data: dict[str, list[Any]] = {
        "xs": [path[:, 0] for path in placed["paths"]],
        "ys": [path[:, 1] for path in placed["paths"]],
        "color": [PALETTE.get(c, PALETTE[OTHER_CATEGORY]) for c in edges["category"]],
    }
    for column in ("source", "target", "value", "category", "tip_from", "tip_to", *TIP_COLUMNS):
        edge_data[column] = list(edges[column])
    bands = plot.patches("xs", "ys", source=ColumnDataSource(edge_data), fill_color="color",
                         fill_alpha=0.55, line_alpha=0, hover_fill_alpha=0.8)  # fmt: skip
    plot.quad(
        left=[n["x0"] for n in nodes], right=[n["x1"] for n in nodes],
        bottom=[n["y0"] for n in nodes], top=[n["y1"] for n in nodes],
        fill_color=[PALETTE.get(categories[n["index"]], PALETTE[OTHER_CATEGORY]) for n in nodes],
        line_alpha=0,
    )  # fmt: skip
    offset = NODE_WIDTH / 4.0
    left_texts: dict[str, list[Any]] = {"x": [], "y": [], "text": []}
    right_texts: dict[str, list[Any]] = {"x": [], "y": [], "text": []}
    for node in nodes:
        text = f"{labels[node['index']]} - {human_measure(node['value'], measure)}"
        y = (node["y0"] + node["y1"]) / 2
        if node["x0"] == x_low:
            left_texts["x"].append(node["x0"] - offset)
            left_texts["y"].append(y)
            left_texts["text"].append(text)
        else:
            right_texts["x"].append(node["x1"] + offset)
            right_texts["y"].append(y)
            right_texts["text"].append(text)
    for texts, align in ((right_texts, "left"), (left_texts, "right")):
        plot.text("x", "y", text="text", source=ColumnDataSource(texts), text_align=align,
                  text_baseline="middle", text_font_size="10pt")  # fmt: skip
    plot.add_tools(HoverTool(tooltips=EDGE_TOOLTIPS, renderers=[bands]))
    plot.title.text_font_size = "11pt"
    plot.outline_line_alpha = 0
    plot.axis.visible = False
    plot.grid.visible = False
    return plot


def figure_json(graph: Graph, measure: str) -> str:
    """The figure serialised as streamlit-bokeh sends it to the browser (``json_item``)."""
    from bokeh.embed import json_item

    return json.dumps(json_item(figure(graph, measure)))


_HV: Any = None


def _holoviews() -> Any:
    """HoloViews with the bokeh backend loaded once (loading it costs 0.1 s per call)."""
    global _HV
    if _HV is None:
        import holoviews as hv
        from holoviews.element.sankey import _layout_sankey

        hv.extension("bokeh", logo=False)
        # hv.Sankey lays itself out when built, with these class defaults: the layout we draw
        _layout_sankey.iterations = LAYOUT_ITERATIONS
        _layout_sankey.node_width = NODE_WIDTH
        _layout_sankey.node_padding = NODE_PADDING
        _HV = hv
    return _HV


def figure_labels(figure_json: str | dict[str, Any]) -> list[str]:
    """Node label texts from a serialised figure (``json_item``), as Bokeh paints them on the canvas."""
    item = json.loads(figure_json) if isinstance(figure_json, str) else figure_json
    texts: list[str] = []
    for data in _text_sources(item):
        texts.extend(str(t) for t in data if t)
    return texts


def _text_sources(node: Any) -> Iterable[list[Any]]:
    if isinstance(node, dict):
        if node.get("name") == "ColumnDataSource":
            data = node.get("attributes", {}).get("data", {})
            entries = data.get("entries") if isinstance(data, dict) else None
            if entries:
                for key, value in entries:
                    if key == "text" and isinstance(value, list):
                        yield value
        for value in node.values():
            yield from _text_sources(value)
    elif isinstance(node, list):
        for value in node:
            yield from _text_sources(value)


def split_label(text: str) -> tuple[str, str]:
    """'a.example - 1.2 MB' → ('a.example', '1.2 MB'), as HoloViews joins a node label and its value."""
    label, sep, value = text.rpartition(" - ")
    return (label, value) if sep else (text, "")
