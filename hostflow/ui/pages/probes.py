"""Probes: every probe and NetFlow exporter, its health and what it delivered."""

from __future__ import annotations

import json
from zoneinfo import ZoneInfo

import pandas as pd
import streamlit as st

from hostflow.ui import common
from hostflow.ui.common import query
from hostflow.ui.fmt import fmt_time, human_bytes, md_text, printable


def parse_errors(text: object) -> str:
    """'{"truncated": 3, "bad-ip": 1}' → 'truncated 3, bad-ip 1'; the JSON comes from the probe."""
    if not isinstance(text, str) or not text.strip():
        return ""
    try:
        counts = json.loads(text)
    except ValueError:
        return printable(text)
    if not isinstance(counts, dict):
        return printable(text)
    return ", ".join(f"{printable(k)} {v}" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0])))


def probes_table(probes: pd.DataFrame, tz: ZoneInfo) -> pd.DataFrame:
    def number(column: str) -> pd.Series:
        return probes[column].fillna(0).astype("int64") if column in probes else 0

    captured = number("packets_captured")
    drops = number("kernel_drops")
    share = [f"{d / (c + d):.2%}" if (c + d) else "" for c, d in zip(captured, drops, strict=True)]
    return pd.DataFrame(
        {
            "probe": probes["probe_id"].map(printable),
            "source": probes["source"].fillna("").map(printable),
            "hostname": probes["hostname"].fillna("").map(printable),
            "interface": probes["iface"].fillna("").map(printable),
            "version": probes["version"].fillna("").map(printable),
            "last seen": probes["last_seen"].map(lambda v: fmt_time(v, tz)),
            "packets": captured,
            "kernel drops": drops,
            "dropped": share,
            "parse errors": probes["parse_errors"].map(parse_errors),
            "flows exported": number("flows_exported"),
            "flows stored": number("flows_stored"),
            "batches": number("batches"),
            "spool": probes["spool_bytes"].fillna(0).map(human_bytes),
            "spooled batches": number("spool_batches"),
        }
    )


def body() -> None:
    ctx = common.context()
    common.heading("Probes and exporters")
    probes = query("probes")
    if probes.empty:
        st.info("No probe or exporter has sent anything yet.")
        return
    table = probes_table(probes, ctx.tz if ctx else ZoneInfo("UTC"))
    st.markdown(f"**{len(table)} sources**")
    st.dataframe(table, hide_index=True, width="stretch", key="probes_table")
    dropping = table[table["kernel drops"] > 0]
    for row in dropping.to_dict("records"):
        st.warning(
            md_text(
                f"{row['probe']} lost {row['kernel drops']} packets in the kernel ({row['dropped']}): "
                "the probe cannot keep up; narrow its BPF filter or give it a faster machine."
            )
        )
    spooling = table[table["spooled batches"] > 0]
    for row in spooling.to_dict("records"):
        st.info(md_text(f"{row['probe']} holds {row['spooled batches']} unsent batches ({row['spool']})."))


common.guard(body)
