"""What the user picked in the sidebar, its query parameters, and its form in the page URL."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

PROTOCOLS = ("tcp", "udp", "icmp", "other")
CASTS = ("unicast", "broadcast", "multicast")
SCOPES = ("intranet", "internet")
DIRECTIONS = ("both", "sent", "received")
AGGREGATES = ("endpoint", "ip", "fqdn", "domain", "org", "country")
MEASURES = ("bytes", "packets", "flows")
TOP_N_CHOICES = (5, 10, 15, 20, 30, 40, 50)
MAX_TOP_N = 50  # layout cost grows fast past this (DESIGN.md: 72 nodes 0.6 s, 139 nodes 0.9 s)

AGGREGATE_LABELS = {
    "endpoint": "endpoint (ip:port)",
    "ip": "IP address",
    "fqdn": "FQDN",
    "domain": "registered domain",
    "org": "organisation",
    "country": "country",
}
AGGREGATE_NOUNS = {  # (one, many)
    "endpoint": ("endpoint", "endpoints"),
    "ip": ("address", "addresses"),
    "fqdn": ("name", "names"),
    "domain": ("domain", "domains"),
    "org": ("organisation", "organisations"),
    "country": ("country", "countries"),
}
# The minimum-volume steps offered per measure (the slider's stops).
MIN_VOLUME_STEPS = {
    "bytes": (0, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000),
    "packets": (0, 2, 5, 10, 100, 1_000, 10_000),
    "flows": (0, 2, 5, 10, 50, 100, 1_000),
}


class ConfigError(ValueError):
    """A setting from the environment that cannot be used; the message names it."""


def intranet_prefixes(raw: str | None = None) -> list[str] | None:
    """HOSTFLOW_INTRANET as a list of CIDR prefixes; None lets the collector use its own list."""
    text = os.environ.get("HOSTFLOW_INTRANET", "") if raw is None else raw
    parts = [part.strip() for part in text.replace(";", ",").replace(" ", ",").split(",") if part.strip()]
    if not parts:
        return None
    prefixes = []
    for part in parts:
        try:
            prefixes.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise ConfigError(
                f"HOSTFLOW_INTRANET: {part!r} is not a CIDR prefix (e.g. 192.168.0.0/16)"
            ) from None
    return prefixes


@dataclass(frozen=True)
class Filters:
    """The 12 kinds of a host's traffic (cast × scope × protocol), plus direction."""

    protocols: tuple[str, ...] = PROTOCOLS
    casts: tuple[str, ...] = CASTS
    scopes: tuple[str, ...] = SCOPES
    direction: str = "both"

    def params(self) -> dict[str, Any]:
        """Query parameters; a family with everything ticked is left out (the contract: missing = all)."""
        out: dict[str, Any] = {}
        for key, chosen, every in (
            ("protocols", self.protocols, PROTOCOLS),
            ("casts", self.casts, CASTS),
            ("scopes", self.scopes, SCOPES),
        ):
            if set(chosen) != set(every):
                out[key] = [value for value in every if value in chosen]
        if self.direction != "both":
            out["direction"] = self.direction
        return out

    def empty_family(self) -> str | None:
        """The family with nothing ticked: the collector reads an empty list as 'all', so never send it."""
        for label, chosen in (("protocol", self.protocols), ("cast", self.casts), ("scope", self.scopes)):
            if not chosen:
                return label
        return None

    def active(self) -> list[str]:
        """Human phrases for the filters that drop something, e.g. ['protocol: tcp', 'direction: sent']."""
        out = []
        for label, chosen, every in (
            ("protocol", self.protocols, PROTOCOLS),
            ("cast", self.casts, CASTS),
            ("scope", self.scopes, SCOPES),
        ):
            if set(chosen) != set(every):
                out.append(f"{label}: {', '.join(v for v in every if v in chosen) or 'none'}")
        if self.direction != "both":
            out.append(f"direction: {self.direction}")
        return out

    def relaxed(self, family: str) -> Filters:
        """The same filters with one family set back to 'all' (to tell which filter emptied a view)."""
        if family == "protocol":
            return replace(self, protocols=PROTOCOLS)
        if family == "cast":
            return replace(self, casts=CASTS)
        if family == "scope":
            return replace(self, scopes=SCOPES)
        if family == "direction":
            return replace(self, direction="both")
        raise ValueError(family)

    def families(self) -> list[str]:
        out = [
            f
            for f, c, e in (
                ("protocol", self.protocols, PROTOCOLS),
                ("cast", self.casts, CASTS),
                ("scope", self.scopes, SCOPES),
            )
            if set(c) != set(e)
        ]
        if self.direction != "both":
            out.append("direction")
        return out


@dataclass(frozen=True)
class View:
    """How the Sankey groups and trims the peers."""

    aggregate: str = "fqdn"
    measure: str = "bytes"
    min_volume: int = 0
    top_n: int = 20
    via_service: bool = True

    def params(self) -> dict[str, Any]:
        return {
            "aggregate": self.aggregate,
            "measure": self.measure,
            "min_volume": int(self.min_volume),
            "top_n": int(self.top_n),
        }


@dataclass(frozen=True)
class State:
    """Everything the sidebar holds. ``day``/``hour`` pick one local hour unless ``custom`` is set."""

    probe_id: str | None = None
    host: str | None = None
    tz: str = "UTC"
    day: dt.date | None = None
    hour: int | None = None
    custom: bool = False
    start: dt.datetime | None = None  # naive, local to tz
    end: dt.datetime | None = None
    filters: Filters = field(default_factory=Filters)
    view: View = field(default_factory=View)


# ---------------------------------------------------------------- the URL form

_LIST_KEYS = {"proto": ("protocols", PROTOCOLS), "cast": ("casts", CASTS), "scope": ("scopes", SCOPES)}


def to_query(state: State) -> dict[str, str]:
    """Short URL parameters; defaults are left out so a shared link stays readable."""
    out: dict[str, str] = {}
    if state.probe_id:
        out["probe"] = state.probe_id
    if state.host:
        out["host"] = state.host
    if state.tz:
        out["tz"] = state.tz
    if state.custom and state.start and state.end:
        out["from"] = state.start.strftime("%Y-%m-%dT%H:%M")
        out["to"] = state.end.strftime("%Y-%m-%dT%H:%M")
    elif state.day is not None and state.hour is not None:
        out["date"] = state.day.isoformat()
        out["hour"] = str(state.hour)
    defaults = Filters()
    for key, (attr, every) in _LIST_KEYS.items():
        chosen = getattr(state.filters, attr)
        if chosen != getattr(defaults, attr):
            out[key] = ",".join(v for v in every if v in chosen) or "none"
    if state.filters.direction != "both":
        out["dir"] = state.filters.direction
    view, default_view = state.view, View()
    for key, attr in (("agg", "aggregate"), ("measure", "measure"), ("min", "min_volume"), ("top", "top_n")):
        if getattr(view, attr) != getattr(default_view, attr):
            out[key] = str(getattr(view, attr))
    if not view.via_service:
        out["svc"] = "0"
    return out


def _one(value: str | Sequence[str]) -> str:
    if isinstance(value, str):
        return value
    return value[-1] if value else ""


def from_query(params: Mapping[str, str | Sequence[str]], base: State) -> tuple[State, list[str]]:
    """Read URL parameters over ``base``; a bad value is ignored and named in the returned problems."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    filters: dict[str, Any] = {}
    view: dict[str, Any] = {}
    get = {key: _one(value) for key, value in params.items()}
    if get.get("probe"):
        values["probe_id"] = get["probe"]
    if get.get("host"):
        values["host"] = get["host"]
    if get.get("tz"):
        values["tz"] = get["tz"]
    if "from" in get or "to" in get:
        try:
            values["start"] = dt.datetime.fromisoformat(get.get("from", ""))
            values["end"] = dt.datetime.fromisoformat(get.get("to", ""))
            values["custom"] = True
        except ValueError:
            problems.append("from/to: expected YYYY-MM-DDTHH:MM")
    elif "date" in get or "hour" in get:
        try:
            day = dt.date.fromisoformat(get.get("date", ""))
            hour = int(get.get("hour", ""))
            if not 0 <= hour <= 23:
                raise ValueError
            values["day"], values["hour"] = day, hour
        except ValueError:
            problems.append("date/hour: expected date=YYYY-MM-DD and hour=0..23")
    for key, (attr, every) in _LIST_KEYS.items():
        if key in get:
            chosen = tuple(v for v in every if v in get[key].split(","))
            unknown = [v for v in get[key].split(",") if v and v not in every and v != "none"]
            if unknown:
                problems.append(f"{key}: unknown value(s) {', '.join(unknown)}")
            else:
                filters[attr] = chosen
    for key, attr, allowed in (("dir", "direction", DIRECTIONS),):
        if key in get:
            if get[key] in allowed:
                filters[attr] = get[key]
            else:
                problems.append(f"{key}: expected one of {', '.join(allowed)}")
    for key, attr, allowed in (("agg", "aggregate", AGGREGATES), ("measure", "measure", MEASURES)):
        if key in get:
            if get[key] in allowed:
                view[attr] = get[key]
            else:
                problems.append(f"{key}: expected one of {', '.join(allowed)}")
    for key, attr, low, high in (("min", "min_volume", 0, 10**15), ("top", "top_n", 1, MAX_TOP_N)):
        if key in get:
            try:
                number = int(get[key])
                if not low <= number <= high:
                    raise ValueError
                view[attr] = number
            except ValueError:
                problems.append(f"{key}: expected a whole number from {low} to {high}")
    if "svc" in get:
        view["via_service"] = get["svc"] not in ("0", "false", "no")
    state = replace(
        base,
        **values,
        filters=replace(base.filters, **filters),
        view=replace(base.view, **view),
    )
    return state, problems
