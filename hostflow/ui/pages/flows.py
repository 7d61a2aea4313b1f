"""Flows: the selected host's conversations as a list, like TWSNMP FC's flow report."""

from __future__ import annotations

import streamlit as st

from hostflow.ui import common, tables
from hostflow.ui.common import PageError, query
from hostflow.ui.explain import explain_empty
from hostflow.ui.fmt import md_text

LIMIT = 20_000
SORTS = ("bytes", "count", "last seen", "peer", "name", "service")


def body() -> None:
    ctx = common.page_context()
    host = common.require_host(ctx)
    common.heading(f"Flows of {ctx.host_label}", ctx)
    filters = ctx.state.filters
    if filters.empty_family():
        raise PageError(
            explain_empty({"flows_total": 1}, filters, common.current_view(), host, ""), kind="info"
        )
    flows = query("host_flows", **ctx.host_params(), limit=LIMIT)
    if flows.empty:
        window = ctx.window.describe() if ctx.window else ""
        raise PageError(
            f"No flows of {ctx.host_label} in {window} pass the filters ({'; '.join(filters.active()) or 'none'}).",
            kind="info",
        )
    listing = tables.flow_list(flows, ctx.host_label, ctx.tz)
    search, order, descending = st.columns([3, 1, 1], vertical_alignment="bottom")
    text = search.text_input("Filter: host, peer, name or service contains", key="f_text")
    sort = order.selectbox("Sort by", SORTS, key="f_sort")
    desc = descending.toggle("Largest first", value=True, key="f_desc")
    shown = tables.sort_frame(
        tables.text_filter(listing, text, ["host", "peer", "name", "service"]), sort, desc
    )
    st.markdown(f"**{len(shown)} of {len(listing)} conversations** · {len(flows)} flows")
    if len(flows) >= LIMIT:
        st.warning(f"Only the first {LIMIT} flows of this window are listed: pick a shorter window.")
    st.dataframe(
        shown,
        hide_index=True,
        width="stretch",
        column_config={"bytes": st.column_config.NumberColumn("bytes", format="localized")},
        key="flows_table",
    )
    common.downloads(shown, f"hostflow-flows-{host}", "flows", excel=True)
    st.caption(md_text(f"Host {ctx.host_label}; times in {ctx.state.tz}."))


common.guard(body)
