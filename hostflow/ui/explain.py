"""The counts line under the Sankey and the sentence that explains an empty view."""

from __future__ import annotations

from collections.abc import Mapping

from hostflow.ui.fmt import human_measure
from hostflow.ui.state import AGGREGATE_NOUNS, Filters, View


def plural(count: int, noun: str, many: str = "") -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {many or noun + 's'}"


def counts_line(counts: Mapping[str, int], view: View, drawn: int, folded: bool) -> str:
    """'466 flows / 48 endpoints → 80 flows / 17 endpoints after filters → 15 domains by domain'.

    ``drawn`` is the number of peer nodes in the chart (without "other"); ``folded`` says whether an
    "other" node holds the rest.
    """
    noun, many = AGGREGATE_NOUNS.get(view.aggregate, ("peer", "peers"))
    peers = int(counts.get("peers_aggregated", 0))
    line = (
        f"{plural(int(counts.get('flows_total', 0)), 'flow')} / "
        f"{plural(int(counts.get('endpoints_total', 0)), 'endpoint')} → "
        f"{plural(int(counts.get('flows_filtered', 0)), 'flow')} / "
        f"{plural(int(counts.get('endpoints_filtered', 0)), 'endpoint')} after filters → "
        f"{plural(peers, noun, many)} by {view.aggregate}"
    )
    if folded or drawn < peers:
        rest = max(peers - drawn, 0)
        line += f" ({drawn} drawn"
        if folded:
            line += f", {rest} folded into “other”" if rest else ", the rest folded into “other”"
        elif rest:
            line += f", {rest} under the minimum volume"
        line += ")"
    return line


def explain_empty(
    counts: Mapping[str, int] | None,
    filters: Filters,
    view: View,
    host: str,
    window: str,
    relaxed: Mapping[str, int] | None = None,
) -> str:
    """Why the chart is empty, naming what to change. ``relaxed`` maps a filter family ('protocol',
    'cast', 'scope', 'direction') to the flow count with that one family set back to all."""
    if not counts or int(counts.get("flows_total", 0)) == 0:
        return f"No flows for {host} in {window}. Pick another hour, or another host from the list."
    total = int(counts["flows_total"])
    empty = filters.empty_family()
    if empty:
        return f"No {empty} is ticked, so all {plural(total, 'flow')} are filtered out: tick at least one {empty}."
    if int(counts.get("flows_filtered", 0)) == 0:
        culprits = [f"{family} ({n} flows without it)" for family, n in (relaxed or {}).items() if n > 0]
        active = "; ".join(filters.active()) or "none"
        if culprits:
            return (
                f"All {plural(total, 'flow')} of {host} in {window} are filtered out by the "
                f"{' or the '.join(culprits)} filter. Active filters: {active}."
            )
        return (
            f"All {plural(total, 'flow')} of {host} in {window} are filtered out by the combination of "
            f"filters ({active}); no single one of them explains it: widen several."
        )
    return (
        f"All peers of {host} in {window} are under the minimum volume of "
        f"{human_measure(view.min_volume, view.measure)}: lower it to see them."
    )
