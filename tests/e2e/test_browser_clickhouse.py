"""The browser walk of test_browser.py, unchanged, with the collector storing in ClickHouse.

The collector is the real daemon with ``--backend clickhouse`` on the two-shard 18.16 cluster
(tests/plugins/clickhouse.py), loaded with the same lab batches over HTTP; the app, chromium and
every step and expected label/count are test_browser.py's own (its ``app_collector`` fixture is
the one thing replaced).
"""

from __future__ import annotations

import pytest

from tests.e2e import test_browser as walk
from tests.e2e.test_browser import app_url, browser  # noqa: F401  (fixtures, fed by app_collector below)
from tests.test_clickhouse import lab_collector

pytestmark = [pytest.mark.browser, pytest.mark.clickhouse]


@pytest.fixture(scope="module")
def app_collector(clickhouse_cluster):
    return lambda tmp: lab_collector(clickhouse_cluster, tmp / "app.runtime")


@pytest.fixture(autouse=True)
def screenshots_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """This walk's screenshots go to tests/artifacts/clickhouse/, beside the DuckDB walk's."""
    (walk.ARTIFACTS / "clickhouse").mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(walk, "ARTIFACTS", walk.ARTIFACTS / "clickhouse")


test_sankey_in_chromium = walk.test_sankey_in_chromium
test_every_page_renders_without_error = walk.test_every_page_renders_without_error
