"""hostflow: what every host on the intranet talks to. The main page draws one host's peers as a Sankey.

Run with `streamlit run app.py` (or `make run`); the data comes from the collector's query API at
HOSTFLOW_COLLECTOR_URL. The other pages live in pages/.
"""

from __future__ import annotations

import html
from dataclasses import replace

import streamlit as st

from hostflow.ui import access, common, tables
from hostflow.ui.common import Context, PageError, query
from hostflow.ui.explain import counts_line, explain_empty
from hostflow.ui.fmt import md_text
from hostflow.ui.sankey import OTHER, PALETTE, build_graph
from hostflow.ui.state import View


def legend(categories: list[str]) -> None:
    # Only our own constant category names and colours go into this HTML, never data from the wire.
    chips = " ".join(
        f'<span style="display:inline-block;width:0.8em;height:0.8em;background:{PALETTE[c]};'
        f'border-radius:2px;margin:0 0.25em 0 0.9em;vertical-align:middle"></span>{html.escape(c)}'
        for c in categories
        if c in PALETTE
    )
    st.markdown(f'<div style="font-size:0.85em;color:#555">{chips}</div>', unsafe_allow_html=True)


def relaxed_counts(ctx: Context, view: View) -> dict[str, int]:
    """Flows left when each active filter family alone is set back to 'all' (to name the culprit)."""
    out = {}
    for family in ctx.state.filters.families():
        relaxed = replace(ctx.state, filters=ctx.state.filters.relaxed(family))
        params = {**ctx.base_params(), "host": relaxed.host, **relaxed.filters.params()}
        frame = query("host_counts", **params, aggregate=view.aggregate)
        out[family] = int(frame["flows_filtered"].iloc[0]) if not frame.empty else 0
    return out


def draw_sankey(ctx: Context, view: View) -> None:
    host = common.require_host(ctx)
    window = ctx.window.describe() if ctx.window else ""
    st.markdown(f"#### {md_text(ctx.host_label)}")
    st.caption(f"{md_text(window)} · peers by {view.aggregate} · {view.measure}")
    filters = ctx.state.filters
    counts_frame, peers = common.queries(
        ("host_counts", {**ctx.host_params(), "aggregate": view.aggregate}),
        ("host_peers", {**ctx.host_params(), **view.params()}),
    )
    counts = counts_frame.iloc[0].to_dict() if not counts_frame.empty else {}
    if filters.empty_family() or not counts or int(counts.get("flows_total", 0)) == 0:
        raise PageError(explain_empty(counts, filters, view, ctx.host_label, window), kind="info")
    folded = bool((peers["peer"] == OTHER).any()) if not peers.empty else False
    drawn = int((peers["peer"] != OTHER).sum()) if not peers.empty else 0
    st.markdown(f"**{counts_line(counts, view, drawn, folded)}**")
    graph = build_graph(peers, ctx.host_label, view.measure, ctx.tz, via_service=view.via_service)
    if graph.empty:
        relaxed = relaxed_counts(ctx, view) if int(counts.get("flows_filtered", 0)) == 0 else {}
        raise PageError(explain_empty(counts, filters, view, ctx.host_label, window, relaxed), kind="info")
    common.show_figure(graph, view.measure, key="sankey")
    legend([c for c in PALETTE if c in set(graph.nodes["category"])])
    table = tables.peers_table(peers, ctx.tz)
    st.dataframe(table, hide_index=True, width="stretch", key="peers_table")
    st.download_button(
        "Download CSV",
        tables.csv_bytes(table),
        file_name=f"hostflow-{host}-peers.csv",
        mime="text/csv",
        key="peers_csv",
    )


def sankey_page() -> None:
    ctx = common.context()
    if ctx is None:
        return
    view = common.view_controls()
    common.guard(lambda: draw_sankey(ctx, view))


def main() -> None:
    st.set_page_config(page_title="hostflow", page_icon=":material/account_tree:", layout="wide")
    if not access.authorised():
        return
    navigation = st.navigation(
        [
            st.Page(sankey_page, title="Host Sankey", icon=":material/account_tree:", default=True),
            st.Page("hostflow/ui/pages/flows.py", title="Flows", icon=":material/list:"),
            st.Page("hostflow/ui/pages/hosts.py", title="Hosts", icon=":material/computer:"),
            st.Page("hostflow/ui/pages/names.py", title="Names", icon=":material/label:"),
            st.Page("hostflow/ui/pages/timeline.py", title="Timeline", icon=":material/stacked_bar_chart:"),
            st.Page("hostflow/ui/pages/probes.py", title="Probes", icon=":material/sensors:"),
            st.Page("hostflow/ui/pages/findings.py", title="Findings", icon=":material/search:"),
        ]
    )
    try:
        ctx = common.sidebar()
    except PageError as exc:
        st.error(str(exc))
        ctx = None
    st.session_state["_context"] = ctx
    navigation.run()
    if ctx is not None:  # after the page, which may have changed the Sankey options
        common.publish_url(replace(ctx.state, view=common.current_view()))


main()
