"""Tables beneath the charts, the Flows list, and their CSV / Excel downloads."""

from __future__ import annotations

import io
from zoneinfo import ZoneInfo

import pandas as pd

from hostflow.ui.fmt import fmt_time, human_bytes, printable, protocol_name

# A cell starting with one of these is a formula in a spreadsheet (CSV injection, OWASP).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _protocol(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None or pd.isna(value) or int(value) == 0:
        return ""
    return protocol_name(int(value))


def _text_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c])]


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """UTF-8 CSV; text cells that a spreadsheet would run as a formula get a leading apostrophe."""
    safe = frame.copy()
    for column in _text_columns(safe):
        safe[column] = safe[column].map(
            lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v
        )
    return safe.to_csv(index=False).encode("utf-8")


def excel_bytes(frame: pd.DataFrame, sheet: str = "flows") -> bytes:
    """An .xlsx file; every string is written as a string, never as a formula or a link."""
    buffer = io.BytesIO()
    with pd.ExcelWriter(
        buffer,
        engine="xlsxwriter",
        engine_kwargs={"options": {"strings_to_formulas": False, "strings_to_urls": False}},
    ) as writer:
        frame.to_excel(writer, sheet_name=sheet[:31], index=False)
        worksheet = writer.sheets[sheet[:31]]
        for index, column in enumerate(frame.columns):
            width = max([len(str(column))] + [len(str(v)) for v in frame[column].head(200)])
            worksheet.set_column(index, index, min(max(width + 2, 8), 60))
    return buffer.getvalue()


def peers_table(peers: pd.DataFrame, tz: ZoneInfo) -> pd.DataFrame:
    """The Sankey's data as rows: one per drawn peer (and "other"), biggest first."""
    if peers.empty:
        return pd.DataFrame(columns=PEER_COLUMNS)
    out = pd.DataFrame(
        {
            "peer": peers["peer"].map(printable),
            "name": peers["label"].fillna("").map(printable),
            "service": peers["service"].fillna("").map(printable),
            "scope": peers["scope"].fillna(""),
            "cast": peers["cast"].fillna(""),
            "protocol": peers["protocol"].map(_protocol),
            "bytes sent": peers["bytes_sent"].fillna(0).astype("int64"),
            "bytes received": peers["bytes_received"].fillna(0).astype("int64"),
            "volume": (peers["bytes_sent"].fillna(0) + peers["bytes_received"].fillna(0)).map(human_bytes),
            "packets": (peers["packets_sent"].fillna(0) + peers["packets_received"].fillna(0)).astype(
                "int64"
            ),
            "flows": peers["flows"].fillna(0).astype("int64"),
            "endpoints": peers["endpoints"].fillna(0).astype("int64"),
            "first seen": peers["first_seen"].map(lambda v: fmt_time(v, tz)),
            "last seen": peers["last_seen"].map(lambda v: fmt_time(v, tz)),
            "name from": peers["name_source"].fillna(""),
        }
    )
    return out[PEER_COLUMNS].reset_index(drop=True)


PEER_COLUMNS = [
    "peer",
    "name",
    "service",
    "scope",
    "cast",
    "protocol",
    "bytes sent",
    "bytes received",
    "volume",
    "packets",
    "flows",
    "endpoints",
    "first seen",
    "last seen",
    "name from",
]

FLOW_LIST_COLUMNS = ["host", "peer", "name", "service", "protocol", "count", "bytes", "volume", "last seen"]


def flow_list(flows: pd.DataFrame, host: str, tz: ZoneInfo) -> pd.DataFrame:
    """TWSNMP FC's flow report for one host: host, peer, name, service, count, bytes, last seen."""
    if flows.empty:
        return pd.DataFrame(columns=FLOW_LIST_COLUMNS)
    frame = flows.assign(
        peer_name=flows["peer_name"].fillna(""),
        service=flows["service"].fillna(""),
        protocol=flows["protocol"].map(_protocol),
    )
    grouped = (
        frame.groupby(["peer_addr", "peer_name", "service", "protocol"], dropna=False, sort=False)
        .agg(count=("bytes", "size"), bytes=("bytes", "sum"), last=("flow_end", "max"))
        .reset_index()
        .sort_values(["bytes", "count"], ascending=False, kind="stable")
    )
    out = pd.DataFrame(
        {
            "host": printable(host),
            "peer": grouped["peer_addr"].map(printable),
            "name": grouped["peer_name"].map(printable),
            "service": grouped["service"].map(printable),
            "protocol": grouped["protocol"],
            "count": grouped["count"].astype("int64"),
            "bytes": grouped["bytes"].astype("int64"),
            "volume": grouped["bytes"].map(human_bytes),
            "last seen": grouped["last"].map(lambda v: fmt_time(v, tz)),
        }
    )
    return out.reset_index(drop=True)


def text_filter(frame: pd.DataFrame, text: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Rows where any of ``columns`` (default: all text columns) contains ``text``, ignoring case."""
    needle = text.strip().lower()
    if not needle or frame.empty:
        return frame
    columns = columns or _text_columns(frame)
    mask = pd.Series(False, index=frame.index)
    for column in columns:
        mask |= frame[column].astype(str).str.lower().str.contains(needle, regex=False)
    return frame[mask].reset_index(drop=True)


def sort_frame(frame: pd.DataFrame, column: str, descending: bool) -> pd.DataFrame:
    if column not in frame.columns:
        return frame
    key = "bytes" if column == "volume" and "bytes" in frame.columns else column
    return frame.sort_values(key, ascending=not descending, kind="stable").reset_index(drop=True)
