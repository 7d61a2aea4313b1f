"""The Streamlit layer every page shares: cached queries, the sidebar, the page context.

Everything that can be decided without Streamlit lives in the sibling modules; this one only wires
widgets to them. app.py renders the sidebar on every run, so its widgets keep their values when the
user moves between pages.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import re
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import streamlit as st

from hostflow.client import QueryClient, QueryError
from hostflow.ui import state as st_state
from hostflow.ui import tables, timez
from hostflow.ui.fmt import human_bytes, md_text, printable
from hostflow.ui.state import CASTS, DIRECTIONS, PROTOCOLS, SCOPES, ConfigError, Filters, State, View

log = logging.getLogger("hostflow.app")

CACHE_SECONDS = 30
ALL_PROBES = "all probes"


class PageError(Exception):
    """Stop the page with a message for the user (shown by ``guard``)."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False, max_entries=512)
def _cached_query(url: str, token: str, query_name: str, params_json: str) -> pd.DataFrame:
    return QueryClient(url, token).query(query_name, **json.loads(params_json))


def query(query_name: str, /, **params: Any) -> pd.DataFrame:
    """A named query through the cache; raises PageError with the collector's one-line reason."""
    client = QueryClient()
    clean = {key: value for key, value in params.items() if value is not None}
    try:
        return _cached_query(
            client.url, client.token, query_name, json.dumps(clean, sort_keys=True, default=str)
        )
    except QueryError as exc:
        log.warning("query %s failed: %s", query_name, exc)
        raise PageError(
            f"{exc}. Check that the collector runs and HOSTFLOW_COLLECTOR_URL points to it."
        ) from None


def queries(*calls: tuple[str, dict[str, Any]]) -> list[pd.DataFrame]:
    """Several named queries at once: the collector answers them in parallel, so a redraw waits
    for the slowest one instead of their sum."""
    if len(calls) < 2:
        return [query(name, **params) for name, params in calls]
    from concurrent.futures import ThreadPoolExecutor

    from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

    script_ctx = get_script_run_ctx()
    with ThreadPoolExecutor(
        max_workers=len(calls), initializer=lambda: add_script_run_ctx(ctx=script_ctx)
    ) as pool:
        futures = [pool.submit(query, name, **params) for name, params in calls]
        return [future.result() for future in futures]


@st.cache_data(max_entries=64, show_spinner=False)
def figure_json(nodes: pd.DataFrame, edges: pd.DataFrame, measure: str) -> str:
    """The Sankey built once per distinct graph: going back to a view already seen costs nothing."""
    from hostflow.ui.sankey import Graph
    from hostflow.ui.sankey import figure_json as build

    return build(Graph(nodes=nodes, edges=edges), measure)


def show_figure(graph: Any, measure: str, key: str) -> None:
    """Draw a Sankey through streamlit-bokeh from the cached serialised figure."""
    import streamlit_bokeh as sb

    data = {
        "figure": figure_json(graph.nodes, graph.edges, measure),
        "bokeh_theme": "streamlit",
        "use_container_width": True,
    }
    if getattr(sb, "_IS_USING_CCV2", False) and getattr(sb, "_IS_USING_UPDATED_ISOLATE_STYLES_PARAM", False):
        # streamlit_bokeh() only accepts a live Bokeh model and serialises it on every run; its
        # component takes the same JSON, which we cache (streamlit-bokeh is pinned in requirements).
        sb._component_func(key=key, data=data)
        return
    from hostflow.ui.sankey import figure

    sb.streamlit_bokeh(figure(graph, measure), use_container_width=True, theme="streamlit", key=key)


def guard(run: Any) -> None:
    """Run a page body; a PageError becomes one st.error / st.info line, never a traceback."""
    try:
        run()
    except PageError as exc:
        # messages quote host names and other data from the wire: shown as text, never as markdown
        (st.info if exc.kind == "info" else st.error)(md_text(str(exc)))


@dataclass
class Context:
    """What the sidebar decided, for the page to draw."""

    state: State
    tz: Any
    window: timez.Window | None
    hosts: pd.DataFrame
    host_label: str
    intranet: list[str] | None
    first_seen: int
    last_seen: int

    def base_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.window is not None:
            params.update(self.window.params())
        if self.state.probe_id:
            params["probe_id"] = self.state.probe_id
        if self.intranet:
            params["intranet"] = self.intranet
        return params

    def host_params(self) -> dict[str, Any]:
        return {**self.base_params(), "host": self.state.host, **self.state.filters.params()}


def _seed_from_url() -> list[str]:
    """On a session's first run, put the URL's parameters into the widgets' keys."""
    if st.session_state.get("_url_read"):
        return []
    st.session_state["_url_read"] = True
    params = {key: st.query_params.get_all(key) for key in st.query_params}
    if not params:
        return []
    parsed, problems = st_state.from_query(params, State(tz=""))
    seeds: dict[str, Any] = {
        "w_probe": parsed.probe_id,
        "w_host": parsed.host,
        "w_tz": parsed.tz or None,
        "w_protocols": list(parsed.filters.protocols) if "proto" in params else None,
        "w_casts": list(parsed.filters.casts) if "cast" in params else None,
        "w_scopes": list(parsed.filters.scopes) if "scope" in params else None,
        "w_direction": parsed.filters.direction if "dir" in params else None,
        "w_aggregate": parsed.view.aggregate if "agg" in params else None,
        "w_measure": parsed.view.measure if "measure" in params else None,
        "w_min_volume": parsed.view.min_volume if "min" in params else None,
        "w_top_n": parsed.view.top_n if "top" in params else None,
        "w_via_service": parsed.view.via_service if "svc" in params else None,
    }
    if parsed.custom and parsed.start and parsed.end:
        seeds.update(
            w_mode="custom window",
            w_from_day=parsed.start.date(),
            w_from_time=parsed.start.time(),
            w_to_day=parsed.end.date(),
            w_to_time=parsed.end.time(),
        )
    elif parsed.day is not None:
        seeds.update(w_mode="one hour", w_day=parsed.day, w_hour=parsed.hour)
    for key, value in seeds.items():
        if value is not None:
            st.session_state[key] = value
    st.session_state["_view"] = parsed.view
    return problems


def _probe_choice(probes: pd.DataFrame) -> str | None:
    ids = sorted(str(p) for p in probes["probe_id"].dropna().unique()) if not probes.empty else []
    if len(ids) <= 1:
        st.session_state.pop("w_probe", None)
        return None
    options = [ALL_PROBES, *ids]
    if st.session_state.get("w_probe") not in options:
        st.session_state["w_probe"] = ALL_PROBES
    choice = st.sidebar.selectbox("Probe", options, key="w_probe", format_func=printable)
    return None if choice == ALL_PROBES else choice


def _shift_hour(hours: int) -> None:
    day, hour = st.session_state.get("w_day"), st.session_state.get("w_hour")
    if day is None or hour is None:
        return
    moment = dt.datetime.combine(day, dt.time(hour)) + dt.timedelta(hours=hours)
    st.session_state["w_day"], st.session_state["w_hour"] = moment.date(), moment.hour


def _window(tz: Any, first_seen: int, last_seen: int) -> timez.Window:
    first_day, last_day = timez.data_days(first_seen, last_seen, tz)
    latest_day, latest_hour = timez.latest_hour(last_seen, tz)
    mode = st.sidebar.radio("Window", ["one hour", "custom window"], key="w_mode", horizontal=True)
    if mode == "one hour":
        st.session_state.setdefault("w_day", latest_day)
        st.session_state.setdefault("w_hour", latest_hour)
        day = st.sidebar.date_input(
            "Date",
            key="w_day",
            min_value=min(first_day, st.session_state["w_day"]),
            max_value=max(last_day, st.session_state["w_day"]),
            format="YYYY-MM-DD",
        )
        hour = st.sidebar.selectbox(
            "Hour",
            list(range(24)),
            key="w_hour",
            format_func=lambda h: f"{h:02d}:00–{(h + 1) % 24:02d}:00",
        )
        back, forward = st.sidebar.columns(2)
        back.button("◀ hour before", key="w_prev", on_click=_shift_hour, args=(-1,), width="stretch")
        forward.button("hour after ▶", key="w_next", on_click=_shift_hour, args=(1,), width="stretch")
        return timez.hour_window(day, int(hour), tz)
    st.session_state.setdefault("w_from_day", latest_day)
    st.session_state.setdefault("w_from_time", dt.time(max(latest_hour - 2, 0)))
    st.session_state.setdefault("w_to_day", latest_day)
    st.session_state.setdefault("w_to_time", dt.time(latest_hour, 59))
    left, right = st.sidebar.columns(2)
    from_day = left.date_input("From", key="w_from_day", format="YYYY-MM-DD")
    from_time = right.time_input("at", key="w_from_time", step=dt.timedelta(minutes=15))
    left, right = st.sidebar.columns(2)
    to_day = left.date_input("To", key="w_to_day", format="YYYY-MM-DD")
    to_time = right.time_input("at ", key="w_to_time", step=dt.timedelta(minutes=15))
    return timez.custom_window(
        dt.datetime.combine(from_day, from_time), dt.datetime.combine(to_day, to_time), tz
    )


def host_label(row: dict[str, Any] | None, addr: str) -> str:
    if not row:
        return addr
    name = printable(row.get("name") or "")
    return f"{name} ({addr})" if name and name != addr else addr


def _host_address(value: object) -> str | None:
    """The address in a host widget value. When the options change under it (another hour), the
    browser can send back the old option's label ("name (addr) · volume") instead of the address."""
    if not isinstance(value, str) or not value:
        return None
    inside = re.findall(r"\(([0-9A-Fa-f:.]+)\)", value)
    for candidate in (value, *reversed(inside), value.split(" ", 1)[0]):
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None


def _host_choice(hosts: pd.DataFrame, probe_id: str | None) -> tuple[str | None, str]:
    rows = {str(r["addr"]): r for r in hosts.to_dict("records")} if not hosts.empty else {}
    options = list(rows)
    if st.session_state.get("_host_probe", probe_id) != probe_id:
        st.session_state.pop("w_host", None)  # another probe sees other hosts: start from its busiest
    st.session_state["_host_probe"] = probe_id
    wanted = _host_address(st.session_state.get("w_host"))
    st.session_state["w_host"] = wanted
    if wanted and wanted not in rows:
        options.insert(0, wanted)  # from the URL or an earlier window: kept, and explained if empty
    if not options:
        return None, ""

    def label(addr: str) -> str:
        row = rows.get(addr)
        if row is None:
            return f"{printable(addr)} · no traffic in this window"
        volume = human_bytes(int(row.get("bytes_sent") or 0) + int(row.get("bytes_received") or 0))
        return f"{host_label(row, addr)} · {volume}"

    if wanted not in options:
        st.session_state["w_host"] = options[0]
    addr = st.sidebar.selectbox("Host (by traffic; type to search)", options, key="w_host", format_func=label)
    return addr, host_label(rows.get(addr), addr)


def _filters() -> Filters:
    box = st.sidebar.expander("Filters", expanded=True)
    for key, every in (("w_protocols", PROTOCOLS), ("w_casts", CASTS), ("w_scopes", SCOPES)):
        st.session_state.setdefault(key, list(every))
    protocols = box.multiselect("Protocol", PROTOCOLS, key="w_protocols", placeholder="none: nothing shown")
    casts = box.multiselect("Cast", CASTS, key="w_casts", placeholder="none: nothing shown")
    scopes = box.multiselect("Scope", SCOPES, key="w_scopes", placeholder="none: nothing shown")
    direction = box.radio("Direction", DIRECTIONS, key="w_direction", horizontal=True)
    return Filters(tuple(protocols), tuple(casts), tuple(scopes), str(direction))


def view_controls() -> View:
    """The Sankey page's own options (aggregation, measure, thresholds), drawn in the sidebar."""
    box = st.sidebar.expander("Peers", expanded=True)
    # Widget state is dropped while another page is shown; the last view (a plain key) survives it.
    saved = st.session_state.get("_view") or View()
    for key, value in (
        ("w_aggregate", saved.aggregate),
        ("w_measure", saved.measure),
        ("w_min_volume", saved.min_volume),
        ("w_top_n", saved.top_n),
        ("w_via_service", saved.via_service),
    ):
        st.session_state.setdefault(key, value)
    if st.session_state["w_top_n"] not in st_state.TOP_N_CHOICES:
        wanted = int(st.session_state["w_top_n"])
        st.session_state["w_top_n"] = min(st_state.TOP_N_CHOICES, key=lambda n: abs(n - wanted))
    aggregate = box.selectbox(
        "Aggregate peers by",
        st_state.AGGREGATES,
        key="w_aggregate",
        format_func=lambda a: st_state.AGGREGATE_LABELS[a],
    )
    measure = box.radio("Measure", st_state.MEASURES, key="w_measure", horizontal=True)
    steps = st_state.MIN_VOLUME_STEPS[str(measure)]
    if st.session_state.get("w_min_volume") not in steps:
        st.session_state["w_min_volume"] = 0
    min_volume = box.select_slider(
        "Minimum volume per peer",
        steps,
        key="w_min_volume",
        format_func=lambda v: (
            "none" if v == 0 else (human_bytes(v) if measure == "bytes" else f"{v} {measure}")
        ),
    )
    top_n = box.select_slider("Peers drawn (the rest → “other”)", st_state.TOP_N_CHOICES, key="w_top_n")
    via_service = box.toggle("Through the service (host → service → peer)", key="w_via_service")
    view = View(str(aggregate), str(measure), int(min_volume), int(top_n), bool(via_service))
    st.session_state["_view"] = view
    return view


def sidebar() -> Context | None:
    """Draw the shared sidebar; None (after saying why) when there is nothing to show at all."""
    problems = _seed_from_url()
    st.sidebar.markdown("### hostflow")
    for problem in problems:
        st.sidebar.warning(md_text(f"Ignored a link parameter: {problem}"))
    try:
        intranet = st_state.intranet_prefixes()
    except ConfigError as exc:
        st.error(md_text(str(exc)))
        return None
    probes = query("probes")
    probe_id = _probe_choice(probes)
    span = query("time_range", **({"probe_id": probe_id} if probe_id else {}))
    flows = int(span["flows"].iloc[0]) if not span.empty and pd.notna(span["flows"].iloc[0]) else 0
    tz_default = timez.default_zone_name()
    if st.session_state.get("w_tz") is None:
        st.session_state["w_tz"] = tz_default
    tz_name = st.sidebar.selectbox("Time zone", timez.zone_choices(st.session_state["w_tz"]), key="w_tz")
    try:
        tz = timez.zone(tz_name)
    except timez.WindowError as exc:
        st.error(md_text(str(exc)))
        return None
    if flows == 0:
        st.info(
            md_text(
                "No data at all: the collector has stored no flows yet"
                + (f" from probe {probe_id}" if probe_id else "")
                + ". Start a probe, point a NetFlow exporter at the collector, or import a capture."
            )
        )
        return None
    first_seen, last_seen = int(span["first_seen"].iloc[0]), int(span["last_seen"].iloc[0])
    try:
        window = _window(tz, first_seen, last_seen)
    except timez.WindowError as exc:
        st.error(md_text(f"Bad window: {exc}"))
        return None
    base = {**window.params(), **({"probe_id": probe_id} if probe_id else {})}
    if intranet:
        base["intranet"] = intranet
    hosts = query("hosts", **base)
    addr, label = _host_choice(hosts, probe_id)
    filters = _filters()
    state = State(probe_id=probe_id, host=addr, tz=tz_name, filters=filters)
    if st.session_state.get("w_mode") == "custom window":
        state = replace(
            state, custom=True, start=window.start.replace(tzinfo=None), end=window.end.replace(tzinfo=None)
        )
    else:
        state = replace(state, day=st.session_state.get("w_day"), hour=st.session_state.get("w_hour"))
    return Context(state, tz, window, hosts, label, intranet, first_seen, last_seen)


def publish_url(state: State) -> None:
    """Mirror the state into the page URL so a view can be bookmarked or shared."""
    wanted = st_state.to_query(state)
    current = {key: st.query_params.get(key) for key in st.query_params}
    if current != wanted:
        st.query_params.from_dict(wanted)


def context() -> Context | None:
    return st.session_state.get("_context")


def require_host(ctx: Context) -> str:
    if not ctx.state.host:
        raise PageError(
            f"No host has traffic in {ctx.window.describe() if ctx.window else 'this window'}: "
            "pick another hour.",
            kind="info",
        )
    return ctx.state.host


def current_view() -> View:
    """The Sankey options as last set (also on pages that do not draw their widgets)."""
    return st.session_state.get("_view") or View()


def page_context() -> Context:
    """The sidebar's context for a page file; stops the page (the sidebar said why) when there is none."""
    ctx = context()
    if ctx is None:
        st.stop()
    return ctx  # type: ignore[return-value]


def downloads(frame: pd.DataFrame, stem: str, key: str, excel: bool = False) -> None:
    """CSV (and Excel) download buttons for the table just shown."""
    columns = st.columns(6 if excel else 8)
    columns[0].download_button(
        "CSV",
        tables.csv_bytes(frame),
        file_name=f"{stem}.csv",
        mime="text/csv",
        key=f"{key}_csv",
        icon=":material/download:",
    )
    if excel:
        columns[1].download_button(
            "Excel",
            tables.excel_bytes(frame, sheet=stem[:31]),
            file_name=f"{stem}.xlsx",
            mime="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            key=f"{key}_xlsx",
            icon=":material/download:",
        )


def heading(title: str, ctx: Context | None = None) -> None:
    """A page title; ``title`` may hold names from the wire, so it is escaped."""
    st.markdown(f"#### {md_text(title)}")
    if ctx is not None and ctx.window is not None:
        st.caption(md_text(ctx.window.describe()))
