"""Time zones and windows: the user picks local dates and hours, the collector wants UTC µs."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

HOUR_US = 3_600_000_000
MAX_WINDOW = dt.timedelta(days=31)


class WindowError(ValueError):
    """A window the user cannot mean: the message says what to change."""


def zone(name: str | None) -> ZoneInfo:
    """A ZoneInfo, or a WindowError naming the zone that does not exist."""
    try:
        return ZoneInfo((name or "UTC").strip() or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Paris or UTC"
        ) from None


def system_zone_name() -> str:
    """The machine's zone name (from TZ or /etc/localtime), UTC when it has none we can name."""
    env = os.environ.get("TZ", "").lstrip(":")
    if env and env in available_timezones():
        return env
    try:
        link = os.path.realpath("/etc/localtime")
        marker = "/zoneinfo/"
        if marker in link:
            name = link.split(marker, 1)[1]
            if name in available_timezones():
                return name
    except OSError:
        pass
    return "UTC"


def default_zone_name() -> str:
    """HOSTFLOW_TZ when it names a zone, else the system zone, else UTC."""
    configured = os.environ.get("HOSTFLOW_TZ", "").strip()
    if configured:
        try:
            zone(configured)
            return configured
        except WindowError:
            pass
    return system_zone_name()


def zone_choices(current: str) -> list[str]:
    names = sorted(available_timezones() - {"localtime", "Factory"})
    if "UTC" in names:
        names.remove("UTC")
    names.insert(0, "UTC")
    if current not in names:
        names.insert(0, current)
    return names


def to_us(moment: dt.datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    delta = moment.astimezone(dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int, tz: ZoneInfo) -> dt.datetime:
    return (
        dt.datetime.fromtimestamp(us // 1_000_000, dt.UTC).replace(microsecond=us % 1_000_000).astimezone(tz)
    )


@dataclass(frozen=True)
class Window:
    start_us: int
    end_us: int
    tz: ZoneInfo

    @property
    def start(self) -> dt.datetime:
        return from_us(self.start_us, self.tz)

    @property
    def end(self) -> dt.datetime:
        return from_us(self.end_us, self.tz)

    def describe(self) -> str:
        start, end = self.start, self.end
        if start.date() == end.date() or (end - start <= dt.timedelta(days=1) and end.time() == dt.time(0)):
            tail = end.strftime("%H:%M") if end.time() != dt.time(0) else "24:00"
            return f"{start:%Y-%m-%d %H:%M}–{tail} {start.tzname()}"
        return f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} {end.tzname()}"

    def params(self) -> dict[str, int]:
        return {"start": self.start_us, "end": self.end_us}


def hour_window(day: dt.date, hour: int, tz: ZoneInfo) -> Window:
    """The local hour [hour:00, hour+1:00) of ``day``; across a DST change it is still 60 minutes.

    zoneinfo (PEP 495, fold=0) maps an hour skipped by the spring change to the UTC hour after the
    gap, and an hour that happens twice in autumn to its first occurrence.
    """
    if not 0 <= hour <= 23:
        raise WindowError(f"hour {hour} is not between 0 and 23")
    start = to_us(dt.datetime.combine(day, dt.time(hour), tzinfo=tz))
    return Window(start, start + HOUR_US, tz)


def day_window(day: dt.date, tz: ZoneInfo) -> Window:
    start = to_us(dt.datetime.combine(day, dt.time(0), tzinfo=tz))
    end = to_us(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=tz))
    return Window(start, end, tz)


def custom_window(start: dt.datetime, end: dt.datetime, tz: ZoneInfo) -> Window:
    """Naive datetimes are local to ``tz``; raises WindowError for an empty, reversed or huge window."""
    start = start if start.tzinfo else start.replace(tzinfo=tz)
    end = end if end.tzinfo else end.replace(tzinfo=tz)
    if end <= start:
        raise WindowError(
            f"the window ends ({end:%Y-%m-%d %H:%M}) before it starts ({start:%Y-%m-%d %H:%M}): "
            "pick an end after the start"
        )
    if end - start > MAX_WINDOW:
        raise WindowError(f"the window spans {(end - start).days} days; pick at most {MAX_WINDOW.days} days")
    return Window(to_us(start), to_us(end), tz)


def latest_hour(last_seen_us: int, tz: ZoneInfo) -> tuple[dt.date, int]:
    """The local date and hour holding the newest flow (the default view)."""
    moment = from_us(int(last_seen_us), tz)
    return moment.date(), moment.hour


def data_days(first_seen_us: int, last_seen_us: int, tz: ZoneInfo) -> tuple[dt.date, dt.date]:
    return from_us(int(first_seen_us), tz).date(), from_us(int(last_seen_us), tz).date()
