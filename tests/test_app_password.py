"""The optional app password: nothing of the data shows before it is given, a wrong one is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests import ui_scenario as lab
from tests.plugins.common import ROOT

APP = str(ROOT / "app.py")


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lab.Collector]:
    with lab.collector(tmp_path_factory.mktemp("password-collector")) as server:
        yield server


def shows_data(at: AppTest) -> bool:
    return bool(at.sidebar.selectbox) or bool(at.get("bidi_component"))


def test_password_gates_the_app(collector: lab.Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTFLOW_COLLECTOR_URL", collector.url)
    monkeypatch.setenv("HOSTFLOW_TZ", "UTC")
    monkeypatch.setenv("HOSTFLOW_APP_PASSWORD", "correct horse")
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception and not shows_data(at)
    at.text_input[0].input("wrong")
    at.button[0].click().run()
    assert [e.value for e in at.error] == ["Wrong password."] and not shows_data(at)
    at.text_input[0].input("correct horse")
    at.button[0].click().run()
    assert not at.exception and shows_data(at)
    assert "alice-laptop (192.168.1.71)" in str(at.get("bidi_component")[0].proto.json)


def test_password_from_a_file_and_an_unreadable_file(
    collector: lab.Collector, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOSTFLOW_COLLECTOR_URL", collector.url)
    secret = tmp_path / "app.password"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("HOSTFLOW_APP_PASSWORD_FILE", str(secret))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.text_input[0].input("from-a-file")
    at.button[0].click().run()
    assert shows_data(at)
    monkeypatch.setenv("HOSTFLOW_APP_PASSWORD_FILE", str(tmp_path / "missing"))
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not shows_data(at) and "cannot read" in at.error[0].value


def test_no_password_set_means_no_prompt(collector: lab.Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTFLOW_COLLECTOR_URL", collector.url)
    monkeypatch.delenv("HOSTFLOW_APP_PASSWORD", raising=False)
    monkeypatch.delenv("HOSTFLOW_APP_PASSWORD_FILE", raising=False)
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.text_input or at.text_input[0].label != "Password"
    assert shows_data(at)
