"""`make install-probe` / `make install-collector` into a staging root: the tree, the units (checked by
systemd-analyze), the configs, and the installed probe running with nothing but its own requirements."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from probe import cmeter
from probe.config import FIELDS, read_config_file
from tests.plugins.common import FIXTURES, ROOT

IPHONE = FIXTURES / "probe" / "ndpi-iphone.pcap"
HEAVY = ("duckdb", "pandas", "pyarrow", "streamlit", "holoviews", "bokeh")


def make_install(target: str, stage: Path, **variables: str) -> subprocess.CompletedProcess:
    args = [f"{key}={value}" for key, value in {"DESTDIR": str(stage), **variables}.items()]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["INSTALL_PYTHON"] = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or "python3"
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "-f", "deploy/install.mk", target, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def probe_stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stage = tmp_path_factory.mktemp("stage-probe")
    make_install("install-probe", stage)
    return stage


@pytest.fixture(scope="module")
def collector_stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stage = tmp_path_factory.mktemp("stage-collector")
    make_install("install-collector", stage, PREFIX="/srv/hostflow", SKIP_PIP="1")
    return stage


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def verify_unit(unit: Path, stage: Path, prefix: str) -> str:
    """systemd-analyze verify (silent when the unit is clean) and the offline security score."""
    # verify checks that ExecStart exists on this machine: point it into the staging root
    checked = stage / "verify" / unit.name
    checked.parent.mkdir(exist_ok=True)
    checked.write_text(unit.read_text().replace(f"ExecStart={prefix}", f"ExecStart={stage}{prefix}"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(checked)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(checked)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert match, security.stdout + security.stderr
    return match.group(1)


# ---------------------------------------------------------------- probe


def test_probe_tree(probe_stage: Path) -> None:
    home = probe_stage / "opt/hostflow/probe"
    for module in (
        "probe/__main__.py",
        "probe/export.py",
        "probe/pipeline.py",
        "hostflow/records.py",
        "hostflow/fileio.py",
    ):
        assert (home / "lib" / module).is_file(), module
    assert not (home / "lib/collector").exists() and not (home / "lib/hostflow/ui").exists()
    assert (home / "venv/bin/python").exists()
    # the C flow table is built on the machine (a compiler is there), never copied from the tree
    built = [path.name for path in (home / "lib/probe").glob("*.so")]
    assert built == [cmeter.library_path(home / "lib/probe/_cmeter.c").name]
    assert (home / "lib/requirements.txt").read_text() == (ROOT / "probe/requirements.txt").read_text()
    assert (
        (probe_stage / "usr/lib/sysusers.d/hostflow.conf")
        .read_text()
        .splitlines()[-1]
        .startswith("u hostflow ")
    )
    config = probe_stage / "etc/hostflow/probe.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640  # it holds the token
    assert stat.S_IMODE((probe_stage / "var/lib/hostflow").stat().st_mode) == 0o750
    assert (probe_stage / "opt/hostflow/share/doc/deploy.md").is_file()


def test_probe_venv_has_only_the_probe_requirements(probe_stage: Path) -> None:
    python = probe_stage / "opt/hostflow/probe/venv/bin/python"
    script = "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m)))"
    found = subprocess.run(
        [python, "-c", script, "scapy", "dns", "numpy", *HEAVY], capture_output=True, text=True, check=True
    )
    assert found.stdout.split() == ["scapy", "dns", "numpy"]  # numpy: the vectorised file path


def test_the_installed_probe_reads_a_capture(probe_stage: Path, tmp_path: Path) -> None:
    """Run as installed: its own venv and code only, no pyarrow."""
    home = probe_stage / "opt/hostflow/probe"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(home / "lib"),
        "HOME": str(tmp_path),
        "HOSTFLOW_PROBE_CONFIG": "none",
    }
    command = [str(home / "venv/bin/python"), "-m", "probe", "read", str(IPHONE)]
    result = subprocess.run(
        [*command, "--output", "out.jsonl"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert sum('"kind":"flow"' in line for line in lines) == 90
    assert sum('"kind":"name"' in line for line in lines) == 65
    result = subprocess.run(
        [*command, "--output", "out.parquet"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1 and "needs pyarrow" in result.stderr and "Traceback" not in result.stderr


def test_probe_unit(probe_stage: Path) -> None:
    unit = probe_stage / "etc/systemd/system/hostflow-probe.service"
    settings = unit_settings(unit)
    assert settings["ExecStart"] == ["/opt/hostflow/probe/venv/bin/python -m probe capture"]
    assert settings["User"] == ["hostflow"]
    assert set(settings["CapabilityBoundingSet"][0].split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert set(settings["AmbientCapabilities"][0].split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "Restart": "on-failure", "ReadWritePaths": "/var/lib/hostflow"}.items():  # fmt: skip
        assert settings[key] == [value], key
    environment = dict(item.split("=", 1) for item in settings["Environment"])
    assert environment["HOSTFLOW_PROBE_CONFIG"] == "/etc/hostflow/probe.toml"
    assert environment["HOSTFLOW_SPOOL_DIR"].startswith("/var/lib/hostflow/")  # inside ReadWritePaths
    assert environment["PYTHONPATH"] == "/opt/hostflow/probe/lib"
    assert float(verify_unit(unit, probe_stage, "/opt/hostflow")) <= 2.5


def test_probe_config_example_is_complete_and_valid(probe_stage: Path) -> None:
    values = read_config_file(probe_stage / "etc/hostflow/probe.toml")
    assert values["iface"] and values["collector_url"] and values["token"]
    # every setting but those that only make sense on a command line is shown in the example
    assert set(FIELDS) - set(values) == {"output", "snaplen", "http_timeout", "close_timeout"}


def test_a_reinstall_keeps_the_edited_config(probe_stage: Path) -> None:
    config = probe_stage / "etc/hostflow/probe.toml"
    edited = config.read_text().replace('token = "change-me"', 'token = "edited"')
    config.write_text(edited)
    result = make_install("install-probe", probe_stage, SKIP_PIP="1")
    assert "keeping the existing" in result.stderr
    assert config.read_text() == edited


def test_probe_requirements_resolve_for_the_pi_without_a_compiler(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
         "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_28_aarch64",
         "--python-version", "3.11", "-r",
         str(ROOT / "probe/requirements.txt"), "-d", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = sorted(p.name.split("-")[0].lower() for p in tmp_path.glob("*.whl"))
    assert wheels == ["dnspython", "numpy", "scapy"]  # numpy: manylinux_2_28 (Pi OS 11/12 glibc)


# ---------------------------------------------------------------- collector


def test_collector_tree_and_unit_follow_the_prefix(collector_stage: Path) -> None:
    home = collector_stage / "srv/hostflow/collector"
    assert (home / "lib/collector/__main__.py").is_file() and (home / "lib/hostflow/records.py").is_file()
    assert not (home / "lib/probe").exists()
    unit = collector_stage / "etc/systemd/system/hostflow-collector.service"
    settings = unit_settings(unit)
    assert settings["ExecStart"] == [
        "/srv/hostflow/collector/venv/bin/python -m collector serve --config /etc/hostflow/collector.toml"
    ]
    assert settings["CapabilityBoundingSet"] == [""] and settings["AmbientCapabilities"] == [""]
    assert settings["ReadWritePaths"] == ["/var/lib/hostflow"]
    assert "/opt/hostflow" not in unit.read_text()
    assert float(verify_unit(unit, collector_stage, "/srv/hostflow")) <= 2.0


def test_collector_config_example_loads(collector_stage: Path) -> None:
    from collector import config as collector_config

    parser = argparse.ArgumentParser()
    collector_config.add_arguments(parser)
    path = collector_stage / "etc/hostflow/collector.toml"
    settings = collector_config.load(parser.parse_args(["--config", str(path)]), environ={})
    settings.check()
    assert settings.db == "/var/lib/hostflow/hostflow.duckdb"
    assert settings.tokens == {"change-me": "pi-lab-1"}
    assert read_config_file(ROOT / "deploy/probe.toml")["probe_id"] == "pi-lab-1"  # the pair matches
