"""Names: the names a host looked up (its DNS log), and who an address or a domain is."""

from __future__ import annotations

import ipaddress
from zoneinfo import ZoneInfo

import pandas as pd
import streamlit as st

from hostflow.ui import common
from hostflow.ui.common import query
from hostflow.ui.fmt import fmt_time, md_text, printable

LIMIT = 5000


def names_table(names: pd.DataFrame, tz: ZoneInfo) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "time": names["ts"].map(lambda v: fmt_time(v, tz)),
            "client": names["client_addr"].fillna("").map(printable),
            "address": names["addr"].fillna("").map(printable),
            "name": names["name"].fillna("").map(printable),
            "source": names["source"].fillna(""),
            "type": names["qtype"].fillna(""),
            "ttl": names["ttl"].fillna(0).astype("int64"),
            "CNAME chain": names["cname_chain"].map(
                lambda chain: " > ".join(printable(c) for c in chain) if chain is not None else ""
            ),
            "rcode": names["rcode"].fillna(0).astype("int64"),
        }
    )


def lookup_params(text: str) -> dict[str, str]:
    """An IP address looks up what it was called; anything else is a name substring."""
    text = text.strip()
    if not text:
        return {}
    try:
        return {"addr": str(ipaddress.ip_address(text))}
    except ValueError:
        return {"name": text.lower().rstrip(".")}


def body() -> None:
    ctx = common.page_context()
    common.heading("Names", ctx)
    lookup = st.text_input("Look up an IP address or a domain (part of a name)", key="n_lookup")
    only_host = st.toggle(
        f"Only names seen by {printable(ctx.host_label)}" if ctx.state.host else "Only the selected host",
        value=True,
        key="n_only_host",
        disabled=not ctx.state.host,
    )
    params = {**(ctx.window.params() if ctx.window else {}), **lookup_params(lookup), "limit": LIMIT}
    if only_host and ctx.state.host:
        params["host"] = ctx.state.host
    names = query("names", **params)
    table = names_table(names, ctx.tz) if not names.empty else pd.DataFrame()
    what = f"matching “{printable(lookup.strip())}”" if lookup.strip() else "in this window"
    st.markdown(f"**{len(table)} name records** {md_text(what)}")
    if table.empty:
        st.info("No name was seen here: widen the window, untick the host, or check the spelling.")
        return
    st.dataframe(table, hide_index=True, width="stretch", key="names_table")
    common.downloads(table, "hostflow-names", "names")


common.guard(body)
