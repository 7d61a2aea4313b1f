"""Flows: conversations as a list, like TWSNMP FC's flow report (host, peer, name, service, count,
bytes, last seen), for every host of the window or for the selected host only."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from hostflow.ui import common, tables
from hostflow.ui.common import Context, PageError, query
from hostflow.ui.explain import explain_empty
from hostflow.ui.fmt import md_text

LIMIT = 20_000
MAX_HOSTS = 60
SORTS = ("bytes", "count", "last seen", "host", "peer", "name", "service")
ALL_HOSTS, THIS_HOST = "all hosts", "this host"


def host_flows(ctx: Context, host: str) -> pd.DataFrame:
    return query("host_flows", **{**ctx.host_params(), "host": host}, limit=LIMIT)


def all_hosts_flows(ctx: Context) -> tuple[list[tuple[str, str, pd.DataFrame]], int]:
    """Each host's flows, a flow between two listed hosts kept once (the collector has no all-hosts
    flow query: one host_flows per host, asked in parallel). Returns (host, label, flows) rows and
    how many hosts were left out."""
    hosts = ctx.hosts.head(MAX_HOSTS).to_dict("records") if not ctx.hosts.empty else []
    addrs = [str(row["addr"]) for row in hosts]
    frames = common.queries(
        *[("host_flows", {**ctx.host_params(), "host": addr, "limit": LIMIT}) for addr in addrs]
    )
    listed = set(addrs)
    out = []
    for row, addr, flows in zip(hosts, addrs, frames, strict=True):
        if ctx.state.filters.direction == "both" and not flows.empty:
            # A→B is A's "sent" flow and B's "received" one: list it under the sender only.
            flows = flows[~((flows["direction"] == "received") & flows["peer_addr"].isin(listed))]
        if not flows.empty:
            out.append((addr, common.host_label(row, addr), flows))
    return out, max(0, len(ctx.hosts) - MAX_HOSTS)


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
        per_host, left_out = all_hosts_flows(ctx)
    else:
        host = common.require_host(ctx)
        flows = host_flows(ctx, host)
        per_host, left_out = ([(host, ctx.host_label, flows)] if not flows.empty else []), 0
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
    if any(len(flows) >= LIMIT for _, _, flows in per_host):
        st.warning(f"Only the first {LIMIT} flows per host of this window are listed: pick a shorter window.")
    if left_out:
        st.warning(f"Only the {MAX_HOSTS} busiest hosts are listed ({left_out} more): pick a shorter window.")
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
