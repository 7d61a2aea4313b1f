"""Findings: what deserves a look in the window: unnamed internet peers, new peers, unusual ports."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pandas as pd
import streamlit as st

from hostflow.ui import common
from hostflow.ui.common import query
from hostflow.ui.fmt import fmt_time, human_bytes, printable, protocol_name


def findings_table(frame: pd.DataFrame, tz: ZoneInfo) -> pd.DataFrame:
    out = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        values = frame[column]
        if column in ("first_seen", "last_seen"):
            out[column.replace("_", " ")] = values.map(lambda v: fmt_time(v, tz))
        elif column == "protocol":
            out[column] = values.map(lambda v: protocol_name(int(v)) if pd.notna(v) else "")
        elif values.dtype == object:
            out[column.replace("_", " ")] = values.fillna("").map(printable)
        else:
            out[column.replace("_", " ")] = values
    if "bytes" in frame:
        out.insert(list(out.columns).index("bytes") + 1, "volume", frame["bytes"].map(human_bytes))
    return out.reset_index(drop=True)


SECTIONS = (
    (
        "findings_unnamed",
        "Internet peers contacted with no name seen",
        "No DNS answer, SNI or HTTP Host ever named these addresses: hard-coded IPs, which malware and "
        "badly made devices use.",
        True,
    ),
    (
        "findings_new_peers",
        "Peers first seen in this window",
        "Pairs that never talked before this window.",
        True,
    ),
    (
        "findings_ports",
        "Server ports with no registered service",
        "Ports absent from the IANA registry: check what listens there.",
        False,
    ),
)


def body() -> None:
    ctx = common.page_context()
    common.heading("Findings", ctx)
    for name, title, help_text, takes_intranet in SECTIONS:
        params = ctx.base_params()
        if not takes_intranet:
            params.pop("intranet", None)
        frame = query(name, **params)
        st.markdown(f"##### {title} ({len(frame)})")
        st.caption(help_text)
        if frame.empty:
            st.success("Nothing here in this window.")
            continue
        table = findings_table(frame, ctx.tz)
        st.dataframe(table, hide_index=True, width="stretch", key=f"{name}_table")
        common.downloads(table, f"hostflow-{name}", name)


common.guard(body)
