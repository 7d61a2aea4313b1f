"""Timeline: the selected host's traffic over the window, stacked by domain, service or peer."""

from __future__ import annotations

import streamlit as st
from streamlit_bokeh import streamlit_bokeh

from hostflow.ui import charts, common
from hostflow.ui.common import PageError, query
from hostflow.ui.fmt import fmt_time, human_bytes
from hostflow.ui.state import MEASURES

BUCKETS = {60: "1 minute", 300: "5 minutes", 900: "15 minutes", 3600: "1 hour"}


def body() -> None:
    ctx = common.page_context()
    host = common.require_host(ctx)
    common.heading(f"Timeline of {ctx.host_label}", ctx)
    by_col, bucket_col, measure_col = st.columns(3)
    by = by_col.radio("Stack by", ("domain", "service", "peer"), key="t_by", horizontal=True)
    bucket = bucket_col.selectbox("Bucket", list(BUCKETS), index=1, key="t_bucket", format_func=BUCKETS.get)
    measure = measure_col.radio("Measure", MEASURES, key="t_measure", horizontal=True)
    if ctx.state.filters.empty_family():
        raise PageError(f"No {ctx.state.filters.empty_family()} is ticked: nothing to draw.", kind="info")
    timeline = query("timeline", **ctx.host_params(), bucket=int(bucket), by=by)
    if timeline.empty:
        raise PageError("No traffic of this host passes the filters in this window.", kind="info")
    wide = charts.timeline_frame(timeline, str(measure), ctx.tz)
    streamlit_bokeh(
        charts.timeline_figure(wide, str(measure), int(bucket)), use_container_width=True, theme="streamlit",
        key="timeline",
    )  # fmt: skip
    st.caption(
        f"{len(wide)} buckets of {BUCKETS[int(bucket)]}, {len(wide.columns)} series by {by} "
        f"(the smaller ones folded into “{charts.REST}”); times in {ctx.state.tz}."
    )
    table = timeline.assign(
        host=host,
        time=timeline["bucket_start"].map(lambda us: fmt_time(us, ctx.tz, seconds=False)),
        volume=timeline["bytes"].map(human_bytes),
    )
    st.dataframe(table, hide_index=True, width="stretch", key="timeline_table")


common.guard(body)
