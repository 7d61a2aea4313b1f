"""The app in Debian's chromium (Python playwright) against `streamlit run app.py` and a real collector.

Node labels are painted on a canvas: they are read from the last Bokeh document
(streamlit-bokeh never drops old ones). Tooltips are DOM text. A hostile name from the wire,
``<img src=x onerror="window.__xss=1">``, must never run: the flag stays unset and no dialog opens.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests import ui_scenario as lab
from tests.plugins.common import ROOT, free_port, wait_healthy

pytestmark = pytest.mark.browser

ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
LABELS_JS = """() => {
  const docs = window.Bokeh && window.Bokeh.documents;
  if (!docs || !docs.length) return null;
  for (let i = docs.length - 1; i >= 0; i--) {
    const texts = [];
    let sankey = false;
    for (const model of docs[i].all_models) {
      if (model.name === "hostflow-sankey") sankey = true;
      const data = model.data;
      if (data && data.text) for (const t of data.text) if (t) texts.push(String(t));
    }
    if (sankey) return texts;
  }
  return null;
}"""


@pytest.fixture(scope="module")
def app_collector():
    """Starts the app's collector filled with the lab (DuckDB); test_browser_clickhouse.py overrides it."""
    return lab.collector


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory, app_collector) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("browser")
    with app_collector(tmp) as collector:
        port = free_port()
        env = {
            **os.environ,
            "HOSTFLOW_COLLECTOR_URL": collector.url,
            "HOSTFLOW_TZ": "UTC",
            "PYTHONPATH": str(ROOT),
        }
        env.pop("HOSTFLOW_INTRANET", None)
        log = (tmp / "streamlit.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url + "/_stcore/health", process, tmp / "streamlit.log", timeout=60)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def labels(page, until=None, timeout: float = 30) -> list[str]:
    """The Sankey's node labels (without values), waiting until ``until(labels)`` holds."""
    settle(page)
    deadline = time.monotonic() + timeout
    names: list[str] = []
    while time.monotonic() < deadline:
        texts = page.evaluate(LABELS_JS)
        if texts:
            names = sorted(t.rpartition(" - ")[0] or t for t in texts)
            if until is None or until(set(names)):
                return names
        page.wait_for_timeout(200)
    raise AssertionError(f"the Sankey did not show what was expected; last labels {names}")


def settle(page, timeout: float = 30) -> None:
    """Wait until Streamlit has finished the current rerun (its status widget disappears)."""
    page.wait_for_timeout(300)
    status = page.locator("[data-testid=stStatusWidget]")
    deadline = time.monotonic() + timeout
    while status.count() and status.first.is_visible() and time.monotonic() < deadline:
        page.wait_for_timeout(100)


def counts_line(page, previous: str | None = None, timeout: float = 30) -> str:
    settle(page)
    locator = page.get_by_text("endpoints after filters")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if locator.count():
            text = locator.first.inner_text()
            if text != previous:
                return text
        page.wait_for_timeout(200)
    raise AssertionError(f"the counts line did not change from {previous!r}")


def choose(page, label: str, text: str) -> None:
    """Pick an option of a Streamlit selectbox by typing into it (it is searchable)."""
    box = page.get_by_label(label, exact=False).first
    box.click()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def test_sankey_in_chromium(app_url: str, browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(app_url, wait_until="domcontentloaded")
    labels(
        page,
        lambda got: {"alice-laptop (192.168.1.71)", "wss-primary.slack.com", "nas.local", lab.XSS} <= got,
        timeout=60,
    )
    line = counts_line(page)
    reference = lab.expected_counts(lab.build(), lab.HOST, lab.HOUR, lab.HOUR + 3600 * lab.S)
    assert line == (
        f"{reference[0]} flows / {reference[1]} endpoints → {reference[2]} flows / {reference[3]} endpoints "
        "after filters → 12 names by fqdn"
    )

    # hover across the chart: tooltips appear as DOM text, the hostile name among them stays text
    chart = page.locator("iframe, .stBokehContainer, [class*=stBokeh]").first
    box = chart.bounding_box()
    assert box and box["width"] > 400 and box["height"] > 300
    tooltip_texts: set[str] = set()
    for row in range(8, int(box["height"]) - 8, 6):
        for column in (0.36, 0.5, 0.62):
            page.mouse.move(box["x"] + box["width"] * column, box["y"] + row)
            text = page.evaluate(
                "() => Array.from(document.querySelectorAll('.bk-Tooltip, [class*=tooltip]'))"
                ".map(e => e.shadowRoot ? e.shadowRoot.textContent : e.textContent).join(' ')"
            )
            if text:
                tooltip_texts.add(text)
    shown = " ".join(tooltip_texts)
    assert "sent" in shown and "received" in shown, "no edge tooltip appeared"
    assert page.evaluate("() => window.__xss") is None and dialogs == []

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "app-sankey.png"
    page.mouse.move(5, 5)
    page.screenshot(path=str(shot), full_page=True)
    image = Image.open(shot).convert("RGB")
    crop = image.crop(
        (int(box["x"]), int(box["y"]), int(box["x"] + box["width"]), int(box["y"] + box["height"]))
    )
    colours = crop.getcolors(maxcolors=1_000_000) or []
    background = max(colours)[1] if colours else (255, 255, 255)
    painted = sum(count for count, colour in colours if colour != background)
    assert painted > 0.05 * crop.width * crop.height, f"chart area is almost blank ({painted} pixels)"

    # an hour: the one before, via the sidebar's button
    page.get_by_role("button", name="◀ hour before").click()
    line = counts_line(page, line)
    assert line.startswith("4 flows / 2 endpoints → 4 flows / 2 endpoints after filters")
    page.get_by_role("button", name="hour after ▶").click()
    line = counts_line(page, line)
    labels(page, lambda got: "wss-primary.slack.com" in got)

    # protocol family: keep TCP only (remove the last three chips)
    protocol = page.get_by_label("Protocol").first
    protocol.click()
    for _ in range(3):
        page.keyboard.press("Backspace")
    page.keyboard.press("Escape")
    tcp = lab.expected_counts(lab.build(), lab.HOST, lab.HOUR, lab.HOUR + 3600 * lab.S, protocols={6})
    line = counts_line(page, line)
    assert f"→ {tcp[2]} flows / {tcp[3]} endpoints after filters" in line
    labels(page, lambda got: "224.0.0.251" not in got and "wss-primary.slack.com" in got)

    # scope family: internet only (intranet is the first chip)
    scope = page.get_by_label("Scope").first
    scope.click()
    page.keyboard.press("Backspace")
    page.keyboard.press("Backspace")
    page.keyboard.type("internet")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    both = lab.expected_counts(lab.build(), lab.HOST, lab.HOUR, lab.HOUR + 3600 * lab.S, {6}, {"internet"})
    line = counts_line(page, line)
    assert f"→ {both[2]} flows / {both[3]} endpoints after filters" in line
    labels(page, lambda got: "nas.local" not in got and "mail.google.com" in got)

    # cast family: multicast only → everything filtered out, and the page says which filter
    cast = page.get_by_label("Cast").first
    cast.click()
    for _ in range(3):
        page.keyboard.press("Backspace")
    page.keyboard.type("multicast")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    page.get_by_text("are filtered out by the").wait_for(timeout=30_000)
    cast.click()
    page.keyboard.press("Backspace")
    page.keyboard.type("unicast")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    # the filtered-out page also shows a counts line: wait for the rerun's, not the stale one
    page.get_by_text(f"→ {both[2]} flows / {both[3]} endpoints after filters").first.wait_for(timeout=30_000)
    line = counts_line(page, None)
    assert f"→ {both[2]} flows / {both[3]} endpoints after filters" in line

    # direction, then aggregation by registered domain, then no service column
    page.get_by_text("received", exact=True).click()
    labels(page, lambda got: "198.51.100.7" in got)
    choose(page, "Aggregate peers by", "registered domain")
    labels(page, lambda got: {"slack.com", "google.com"} <= got)
    assert counts_line(page, None).endswith("domains by domain")
    page.get_by_text("Through the service").click()
    labels(page, lambda got: "https" not in got and "slack.com" in got)
    page.wait_for_url(lambda url: "agg=domain" in url and "svc=0" in url, timeout=15_000)

    # another host, and the options survive a visit to another page
    choose(page, "Host (by traffic", "bob")
    labels(page, lambda got: "bob-iphone (192.168.1.72)" in got)
    page.get_by_role("link", name="Names").click()
    page.get_by_text("name records").first.wait_for(timeout=30_000)
    page.get_by_role("link", name="Host Sankey").click()
    labels(page, lambda got: "bob-iphone (192.168.1.72)" in got and "slack.com" in got and "https" not in got)
    page.screenshot(path=str(ARTIFACTS / "app-sankey-filtered.png"), full_page=True)
    assert page.evaluate("() => window.__xss") is None and dialogs == []
    page.close()


@pytest.mark.parametrize("path", ["flows", "hosts", "names", "timeline", "probes", "findings"])
def test_every_page_renders_without_error(app_url: str, browser, path: str) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{app_url}/{path}", wait_until="domcontentloaded")
    page.locator("h4").first.wait_for(timeout=60_000)
    page.locator("[data-testid=stDataFrame]").first.wait_for(timeout=60_000)
    settle(page)
    if path in ("hosts", "timeline"):  # Bokeh charts: wait until painted
        page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=30_000)
        page.wait_for_timeout(1000)
    assert page.locator("[data-testid=stException]").count() == 0
    assert page.locator("[data-testid=stAlertContentError]").count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"app-{path}.png"), full_page=True)
    assert page.evaluate("() => window.__xss") is None and dialogs == []
    page.close()
