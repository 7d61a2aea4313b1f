"""Hosts: every intranet host with its totals, and one host's activity day by hour."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import streamlit as st
from streamlit_bokeh import streamlit_bokeh

from hostflow.ui import charts, common, timez
from hostflow.ui.common import PageError, query
from hostflow.ui.fmt import fmt_time, human_bytes, md_text, printable

DAYS = (7, 14, 28)


def hosts_table(hosts: pd.DataFrame, tz: timez.ZoneInfo) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "host": hosts["addr"].map(printable),
            "name": hosts["name"].fillna("").map(printable),
            "name from": hosts["name_source"].fillna(""),
            "bytes sent": hosts["bytes_sent"].astype("int64"),
            "bytes received": hosts["bytes_received"].astype("int64"),
            "volume": (hosts["bytes_sent"] + hosts["bytes_received"]).map(human_bytes),
            "packets": hosts["packets"].astype("int64"),
            "flows": hosts["flows"].astype("int64"),
            "peers": hosts["peers"].astype("int64"),
            "first seen": hosts["first_seen"].map(lambda v: fmt_time(v, tz)),
            "last seen": hosts["last_seen"].map(lambda v: fmt_time(v, tz)),
        }
    )


def body() -> None:
    ctx = common.page_context()
    common.heading("Hosts", ctx)
    if ctx.hosts.empty:
        raise PageError("No intranet host has traffic in this window: pick another hour.", kind="info")
    table = hosts_table(ctx.hosts, ctx.tz)
    st.markdown(f"**{len(table)} hosts** with traffic in this window, biggest first")
    st.dataframe(table, hide_index=True, width="stretch", key="hosts_table")
    common.downloads(table, "hostflow-hosts", "hosts", excel=True)
    host = common.require_host(ctx)
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    left.markdown(f"##### Activity of {md_text(ctx.host_label)}, day by hour")
    days = right.selectbox("Days", DAYS, key="h_days", format_func=lambda d: f"last {d} days")
    last_day = ctx.window.end.date() if ctx.window and ctx.window.end.time() != dt.time(0) else None
    last_day = last_day or (ctx.window.end - dt.timedelta(seconds=1)).date()
    day_list = [last_day - dt.timedelta(days=i) for i in range(int(days) - 1, -1, -1)]
    span = timez.custom_window(
        timez.day_window(day_list[0], ctx.tz).start, timez.day_window(day_list[-1], ctx.tz).end, ctx.tz
    )
    params = {**ctx.base_params(), **span.params(), "host": host, **ctx.state.filters.params()}
    timeline = query("timeline", **params, bucket=3600, by="service")
    grid = charts.heatmap_frame(timeline, ctx.tz, day_list)
    streamlit_bokeh(charts.heatmap_figure(grid), use_container_width=True, theme="streamlit", key="heatmap")
    active = int((grid > 0).to_numpy().sum())
    st.caption(
        f"{active} active hours in {len(day_list)} days; darker is more traffic (times in {ctx.state.tz})."
    )


common.guard(body)
