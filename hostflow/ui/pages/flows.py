"""Flows: conversations as a list, like TWSNMP FC's flow report (host, peer, name, service, count,
bytes, last seen), for every host of the window (one ``flows`` query) or for the selected host only."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from hostflow.ui import common, tables
from hostflow.ui.common import Context, PageError, query
from hostflow.ui.explain import explain_empty
from hostflow.ui.fmt import md_text

LIMIT = 50_000
SORTS = ("bytes", "count", "last seen", "host", "peer", "name", "service")
ALL_HOSTS, THIS_HOST = "all hosts", "this host"


def host_flows(ctx: Context, host: str) -> pd.DataFrame:
    return query("host_flows", **{**ctx.host_params(), "host": host}, limit=LIMIT)


def all_hosts_flows(ctx: Context) -> tuple[list[tuple[str, str, pd.DataFrame]], int]:
    """Every flow of the window once, under its host (the collector's ``flows`` query decides
    which side that is). Returns (host, label, flows) rows, busiest host first, and how many flows
    passed the filters in all (more than those returned when the limit cut the list)."""
    params = {**ctx.base_params(), **ctx.state.filters.params()}
    flows = query("flows", **params, limit=LIMIT)
    if flows.empty:
        return [], 0
    rows = {str(r["addr"]): r for r in ctx.hosts.to_dict("records")} if not ctx.hosts.empty else {}
    by_host = dict(tuple(flows.groupby("host", sort=False)))
    volume = sorted(by_host, key=lambda addr: -int(by_host[addr]["bytes"].sum()))  # stable: ties keep order
    out = [(str(addr), common.host_label(rows.get(str(addr)), str(addr)), by_host[addr]) for addr in volume]
    return out, int(flows["matched"].iloc[0])


def body() -> None:
    ctx = common.page_context()
    which = st.radio("Hosts", (ALL_HOSTS, THIS_HOST), key="f_hosts", horizontal=True)
    every = which == ALL_HOSTS
    if every:
        common.heading("Flows of all hosts", ctx)
    else:
        common.require_host(ctx)
        common.heading(f"Flows of {ctx.host_label}", ctx)
    filters = ctx.state.filters
    if filters.empty_family():
        raise PageError(
            explain_empty({"flows_total": 1}, filters, common.current_view(), ctx.host_label, ""), kind="info"
        )
    if every:
        per_host, matched = all_hosts_flows(ctx)
    else:
        host = common.require_host(ctx)
        flows = host_flows(ctx, host)
        per_host = [(host, ctx.host_label, flows)] if not flows.empty else []
        matched = len(flows)
    if not per_host:
        window = ctx.window.describe() if ctx.window else ""
        who = "any host" if every else ctx.host_label
        raise PageError(
            f"No flows of {who} in {window} pass the filters ({'; '.join(filters.active()) or 'none'}).",
            kind="info",
        )
    listing = pd.concat(
        [tables.flow_list(flows, label, ctx.tz) for _, label, flows in per_host], ignore_index=True
    )
    listing = tables.sort_frame(listing, "bytes", True)
    flow_count = sum(len(flows) for _, _, flows in per_host)
    search, order, descending = st.columns([3, 1, 1], vertical_alignment="bottom")
    text = search.text_input("Filter: host, peer, name or service contains", key="f_text")
    sort = order.selectbox("Sort by", SORTS, key="f_sort")
    desc = descending.toggle("Largest first", value=True, key="f_desc")
    shown = tables.sort_frame(
        tables.text_filter(listing, text, ["host", "peer", "name", "service"]), sort, desc
    )
    hosts_note = f" of {len(per_host)} hosts" if every else ""
    st.markdown(f"**{len(shown)} of {len(listing)} conversations** · {flow_count} flows{hosts_note}")
    if matched > flow_count:
        st.warning(
            f"Showing {flow_count} of {matched} flows (the oldest {LIMIT} of this window): "
            "pick a shorter window or narrower filters to see them all."
        )
    elif not every and flow_count >= LIMIT:
        st.warning(f"Only the first {LIMIT} flows of this host are listed: pick a shorter window.")
    st.dataframe(
        shown,
        hide_index=True,
        width="stretch",
        column_config={"bytes": st.column_config.NumberColumn("bytes", format="localized")},
        key="flows_table",
    )
    stem = "hostflow-flows-all-hosts" if every else f"hostflow-flows-{ctx.state.host}"
    common.downloads(shown, stem, "flows", excel=True)
    where = "All hosts" if every else f"Host {ctx.host_label}"
    st.caption(md_text(f"{where}; times in {ctx.state.tz}."))


common.guard(body)
