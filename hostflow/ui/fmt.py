"""Human-readable values, and text that is safe to show whatever a name on the wire contains."""

from __future__ import annotations

import datetime as dt
import math
import re
from zoneinfo import ZoneInfo

_BYTE_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")
_COUNT_UNITS = ("", "k", "M", "G", "T")

PROTOCOL_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 47: "GRE", 50: "ESP", 132: "SCTP", 2: "IGMP"}


def _scaled(number: float, units: int) -> tuple[float, int]:
    """``number`` divided by 1000 until below 1000 or out of units, and how many times."""
    unit = 0
    while abs(number) >= 1000 and unit < units - 1:
        number /= 1000
        unit += 1
    return number, unit


def human_bytes(value: float | int | None) -> str:
    """1000-based units, as link speeds and the research paper count them: 512000 → '512 KB'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    number, unit = _scaled(float(value), len(_BYTE_UNITS))
    if unit == 0:
        return f"{int(number)} B"
    return f"{number:.3g} {_BYTE_UNITS[unit]}" if abs(number) < 100 else f"{number:.0f} {_BYTE_UNITS[unit]}"


def human_count(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    number, unit = _scaled(float(value), len(_COUNT_UNITS))
    if unit == 0:
        return f"{int(number)}"
    return f"{number:.3g}{_COUNT_UNITS[unit]}"


def human_measure(value: float | int | None, measure: str) -> str:
    if measure == "bytes":
        return human_bytes(value)
    suffix = {"packets": " pkts", "flows": " flows"}.get(measure, "")
    return human_count(value) + suffix


def axis_unit(peak: float | int, measure: str) -> tuple[int, str]:
    """(divisor, unit) for a chart axis whose largest value is ``peak``: the unit human_bytes /
    human_count would print for it (1000-based), so axis, hover and tables speak the same units."""
    units = _BYTE_UNITS if measure == "bytes" else _COUNT_UNITS
    _, unit = _scaled(float(peak), len(units))
    return 1000**unit, units[unit]


def protocol_name(number: int | None) -> str:
    if number is None:
        return ""
    return PROTOCOL_NAMES.get(int(number), str(int(number)))


def us_to_local(us: int | float | None, tz: ZoneInfo) -> dt.datetime | None:
    if us is None or (isinstance(us, float) and math.isnan(us)):
        return None
    return dt.datetime.fromtimestamp(int(us) / 1_000_000, dt.UTC).astimezone(tz)


def fmt_time(us: int | float | None, tz: ZoneInfo, seconds: bool = True) -> str:
    moment = us_to_local(us, tz)
    if moment is None:
        return ""
    return moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$])")


def md_text(text: object) -> str:
    """Escape a string for st.markdown / st.caption so it shows as the characters it holds.

    Names come from the wire and are attacker-controlled: markdown links, images, HTML tags and
    Streamlit's ``:color[...]`` directives in them must not become markup.
    """
    return _MARKDOWN_SPECIAL.sub(r"\\\1", printable(text))


def shorten(text: str, limit: int = 42) -> str:
    """Keep the right end of long names (the registered domain), where they differ least by chance."""
    if len(text) <= limit:
        return text
    return "…" + text[-(limit - 1) :]


def printable(text: object) -> str:
    """Control and format characters (newlines, bidi overrides, escapes) shown as U+FFFD."""
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in str(text))
