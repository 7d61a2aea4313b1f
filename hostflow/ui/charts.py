"""Bokeh charts besides the Sankey: a host's traffic over time, and its day-by-hour activity."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from hostflow.ui.fmt import axis_unit, human_measure, printable
from hostflow.ui.timez import from_us

# Tableau 10 (colour-blind aware enough for a dozen series), then grey for the folded rest.
SERIES_COLOURS = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)  # fmt: skip
REST = "the rest"
MAX_SERIES = len(SERIES_COLOURS)


def timeline_frame(
    timeline: pd.DataFrame, measure: str, tz: ZoneInfo, series: int = MAX_SERIES
) -> pd.DataFrame:
    """Wide frame: one row per bucket (local time), one column per key; small keys folded into 'the rest'."""
    if timeline.empty:
        return pd.DataFrame()
    frame = timeline.assign(key=timeline["key"].fillna("").map(lambda k: printable(k) or "(none)"))
    totals = frame.groupby("key")[measure].sum().sort_values(ascending=False, kind="stable")
    keep = list(totals.index[:series]) if len(totals) > series else list(totals.index)
    frame["key"] = frame["key"].where(frame["key"].isin(keep), REST)
    wide = frame.pivot_table(index="bucket_start", columns="key", values=measure, aggfunc="sum", fill_value=0)
    order = [k for k in keep if k in wide.columns] + ([REST] if REST in wide.columns else [])
    wide = wide[order]
    wide.index = [from_us(int(us), tz).replace(tzinfo=None) for us in wide.index]
    return wide


def timeline_figure(wide: pd.DataFrame, measure: str, bucket_seconds: int) -> Any:
    from bokeh.models import ColumnDataSource, HoverTool, Legend, NumeralTickFormatter
    from bokeh.plotting import figure

    keys = [str(k) for k in wide.columns]
    # Field names are our own (s0, s1, …): the keys come from the wire and stay data, never names.
    fields = [f"s{i}" for i in range(len(keys))]
    totals = wide.sum(axis=1)
    divisor, unit = axis_unit(int(totals.max()) if len(totals) else 0, measure)
    data: dict[str, list[Any]] = {"time": list(wide.index)}
    for field, key in zip(fields, wide.columns, strict=True):
        data[field] = [int(v) / divisor for v in wide[key]]  # in the axis unit
        data[f"{field}_text"] = [human_measure(int(v), measure) for v in wide[key]]
    data["total"] = [human_measure(int(v), measure) for v in totals]
    source = ColumnDataSource(data)
    plot = figure(
        x_axis_type="datetime", height=380, sizing_mode="stretch_width", toolbar_location=None,
        tools="", name="hostflow-timeline",
    )  # fmt: skip
    colours = [SERIES_COLOURS[i] if k != REST else "#c8c8c8" for i, k in enumerate(keys)]
    renderers = plot.vbar_stack(
        fields, x="time", width=bucket_seconds * 1000 * 0.9, color=colours, source=source, line_width=0
    )
    legend = Legend(items=[(key, [r]) for key, r in zip(keys, renderers, strict=True)], location="top_left")
    legend.label_text_font_size = "9pt"
    plot.add_layout(legend, "right")
    for renderer, key in zip(renderers, keys, strict=True):
        renderer.name = key
    for renderer, field in zip(renderers, fields, strict=True):
        plot.add_tools(
            HoverTool(renderers=[renderer], formatters={"@time": "datetime"},
                      tooltips=[("", "$name"), ("time", "@time{%F %H:%M}"), (measure, f"@{field}_text"),
                                ("bucket total", "@total")])
        )  # fmt: skip
    # the values are already in the axis unit (SI, as human_bytes prints): plain numbers on the ticks
    plot.yaxis.formatter = NumeralTickFormatter(format="0.[00]")
    plot.yaxis.axis_label = f"{measure} ({unit})" if unit else measure
    plot.xgrid.visible = False
    plot.outline_line_alpha = 0
    return plot


def heatmap_frame(timeline: pd.DataFrame, tz: ZoneInfo, days: list[dt.date]) -> pd.DataFrame:
    """Bytes per (local day, local hour) for the given days; hours without traffic are 0."""
    grid = pd.DataFrame(0, index=[d.isoformat() for d in days], columns=list(range(24)), dtype="int64")
    if timeline.empty:
        return grid
    for bucket, value in timeline.groupby("bucket_start")["bytes"].sum().items():
        moment = from_us(int(bucket), tz)
        row = moment.date().isoformat()
        if row in grid.index:
            grid.loc[row, moment.hour] += int(value)
    return grid


def heatmap_figure(grid: pd.DataFrame) -> Any:
    from bokeh.models import ColumnDataSource, HoverTool, LinearColorMapper
    from bokeh.plotting import figure

    from hostflow.ui.fmt import human_bytes

    rows = [(day, hour, int(grid.loc[day, hour])) for day in grid.index for hour in grid.columns]
    source = ColumnDataSource(
        {
            "day": [r[0] for r in rows],
            "hour": [f"{r[1]:02d}" for r in rows],
            "bytes": [r[2] for r in rows],
            "volume": [human_bytes(r[2]) if r[2] else "no traffic" for r in rows],
        }
    )
    top = max([r[2] for r in rows] + [1])
    mapper = LinearColorMapper(
        palette=["#f4f6f8", "#d6e6f4", "#abd0e6", "#6aaed6", "#3787c0", "#105ba4", "#08306b"], low=0, high=top
    )
    plot = figure(
        x_range=[f"{h:02d}" for h in range(24)], y_range=list(reversed(list(grid.index))),
        height=60 + 28 * len(grid.index), sizing_mode="stretch_width", toolbar_location=None, tools="",
        x_axis_location="above", name="hostflow-heatmap",
    )  # fmt: skip
    plot.rect(x="hour", y="day", width=0.95, height=0.9, source=source, line_width=0,
              fill_color={"field": "bytes", "transform": mapper})  # fmt: skip
    plot.add_tools(HoverTool(tooltips=[("", "@day @hour:00"), ("traffic", "@volume")]))
    plot.grid.visible = False
    plot.outline_line_alpha = 0
    plot.axis.axis_line_alpha = 0
    plot.axis.major_tick_line_alpha = 0
    return plot
