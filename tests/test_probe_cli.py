"""`python -m probe`: outputs, settings precedence, exit codes and messages, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostflow import fileio
from hostflow.records import Flow, Name
from probe.config import ConfigError, load_config
from tests.plugins.common import FIXTURES, ROOT, free_port

IPHONE = FIXTURES / "probe" / "ndpi-iphone.pcap"
CORRUPT = FIXTURES / "probe" / "libpcap-shb-option-too-long.pcapng"
EMPTY = FIXTURES / "probe" / "tcpdump-empty.pcapng"


def probe_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTFLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    env["HOSTFLOW_PROBE_CONFIG"] = "none"  # never the machine's /etc/hostflow/probe.toml
    env.update(extra)
    return env


def run_probe(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "probe", *args],
        cwd=cwd,
        env=env or probe_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("hostflow-probe: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]
    assert result.stdout == ""


def tshark_ip_totals(path: Path) -> tuple[int, int]:
    """(IP packets, IP-layer bytes) as tshark counts them: the independent reference."""
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "ip or ipv6", "-T", "fields", "-e", "ip.len", "-e", "ipv6.plen"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    packets = total = 0
    for line in out.splitlines():
        ip_len, ipv6_plen = (line.split("\t") + [""])[:2]
        packets += 1
        # ICMP errors quote an inner header: the first value is the outer one
        total += int(ip_len.split(",")[0]) if ip_len else int(ipv6_plen.split(",")[0]) + 40
    return packets, total


def records(path: Path) -> tuple[list[Flow], list[Name]]:
    found = list(fileio.read_records(path))
    return [r for r in found if isinstance(r, Flow)], [r for r in found if isinstance(r, Name)]


# ---------------------------------------------------------------- outputs


@pytest.fixture(scope="module")
def jsonl_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    folder = tmp_path_factory.mktemp("cli")
    result = run_probe("read", str(IPHONE), "--output", "out.jsonl", "--probe-id", "lab-1", cwd=folder)
    return result, folder / "out.jsonl"


def test_read_to_jsonl_meters_every_ip_byte_tshark_sees(jsonl_run) -> None:
    result, path = jsonl_run
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # data went to the file; nothing else on stdout
    flows, names = records(path)
    assert (
        (sum(f.packets for f in flows), sum(f.bytes for f in flows))
        == tshark_ip_totals(IPHONE)
        == (486, 214148)
    )
    assert {f.probe_id for f in flows} == {n.probe_id for n in names} == {"lab-1"}
    assert {f.end_reason for f in flows} <= {"end-of-capture", "fin", "rst", "idle", "active"}
    assert any(n.source == "dns" for n in names) and any(n.source == "sni" for n in names)
    assert "read 1 file(s): 500 packets" in result.stderr


def test_output_dash_is_pure_json_lines_identical_to_the_file(jsonl_run, tmp_path: Path) -> None:
    result = run_probe("read", str(IPHONE), "--output", "-", "--probe-id", "lab-1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(json.loads(line)["kind"] in ("flow", "name") for line in lines)
    assert sorted(lines) == sorted(jsonl_run[1].read_text().splitlines())


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_csv_and_parquet_hold_the_same_records_as_jsonl(jsonl_run, tmp_path: Path, suffix: str) -> None:
    result = run_probe("read", str(IPHONE), "--output", f"out{suffix}", "--probe-id", "lab-1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / f"out.names{suffix}").is_file()
    flows, names = records(tmp_path / f"out{suffix}")
    want_flows, want_names = records(jsonl_run[1])
    key = lambda r: json.dumps(r.__repr__())  # noqa: E731 - every field, in order
    assert sorted(flows, key=key) == sorted(want_flows, key=key)
    assert sorted(names, key=key) == sorted(want_names, key=key)


def test_an_empty_capture_gives_an_empty_output(tmp_path: Path) -> None:
    result = run_probe("read", str(EMPTY), "--output", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_output_dash_into_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    reader = subprocess.Popen(["head", "-n", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    probe = subprocess.Popen(
        # six copies: more than a pipe buffer holds, so the writes after `head` exits fail
        [sys.executable, "-m", "probe", "read", *[str(IPHONE)] * 6, "--output", "-"],
        cwd=tmp_path,
        env=probe_env(),
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert reader.stdin is not None and reader.stdout is not None
    reader.stdin.close()
    _, stderr = probe.communicate(timeout=60)
    first = reader.stdout.read()
    reader.stdout.close()
    reader.wait(timeout=10)
    assert json.loads(first)["kind"] in ("flow", "name")
    assert probe.returncode == 0
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


# ---------------------------------------------------------------- help and exit codes


@pytest.mark.parametrize("command", [[], ["read"], ["capture"]])
def test_help_has_examples(command: list[str], tmp_path: Path) -> None:
    result = run_probe(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "examples:" in result.stdout and "--output -" in result.stdout
    assert "HOSTFLOW_PROBE_TOKEN" in result.stdout and "exit status" in result.stdout


def test_missing_file_is_bad_input(tmp_path: Path) -> None:
    result = run_probe("read", "nope.pcap", "--output", "-", cwd=tmp_path)
    assert_one_line_error(result, 1, "nope.pcap", "no such file")


def test_corrupt_capture_is_bad_input_with_the_packet_named(tmp_path: Path) -> None:
    result = run_probe("read", str(CORRUPT), "--output", "out.jsonl", cwd=tmp_path)
    assert_one_line_error(result, 1, f"{CORRUPT}: packet 1:", "runs past its block")


def test_a_bpf_filter_on_files_is_refused(tmp_path: Path) -> None:
    result = run_probe("read", str(IPHONE), "--output", "-", "--bpf", "tcp", cwd=tmp_path)
    assert_one_line_error(result, 1, "BPF")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["read", str(IPHONE)], "no destination"),
        (["read", str(IPHONE), "--output", "-", "--collector", "http://127.0.0.1:1"], "not both"),
        (["read", str(IPHONE), "--output", "-", "--idle-timeout", "soon"], "invalid float value"),
        (["read", str(IPHONE), "--output", "-", "--frobnicate"], "unrecognized arguments"),
        (["read", str(IPHONE), "--output", "x.txt"], "unknown format"),
        (["read", str(IPHONE), "--collector", "ftp://host"], "must start with http"),
        (["read", str(IPHONE), "--output", "-", "--idle-timeout", "90"], "active_timeout"),
        (["capture", "--output", "-"], "--iface"),
        (["read", str(IPHONE), "--output", "-", "--config", "missing.toml"], "missing.toml: not found"),
        (["launch"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], fragment: str, tmp_path: Path) -> None:
    result = run_probe(*args, cwd=tmp_path)
    code = 1 if fragment == "unknown format" else 2
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr
    assert result.stdout == ""


def test_capture_on_a_missing_interface_is_bad_input(tmp_path: Path) -> None:
    result = run_probe("capture", "--iface", "nosuch0", "--output", "-", cwd=tmp_path)
    assert_one_line_error(result, 1, "nosuch0")


def test_capture_with_a_bad_filter_fails_at_start(tmp_path: Path) -> None:
    result = run_probe(
        "capture", "--iface", "lo", "--bpf", "tcp port", "--output", "-", cwd=tmp_path, timeout=30
    )
    assert_one_line_error(result, 1, "tcp port")


# ---------------------------------------------------------------- settings


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "probe.toml"
    config.write_text('probe_id = "from-file"\nidle_timeout = 5.0\n[probe]\nactive_timeout = 30\n')

    def probe_ids(*extra: str, **env: str) -> set[str]:
        result = run_probe(
            "read",
            str(IPHONE),
            "--output",
            "-",
            "--config",
            str(config),
            *extra,
            cwd=tmp_path,
            env=probe_env(**env),
        )
        assert result.returncode == 0, result.stderr
        return {json.loads(line)["probe_id"] for line in result.stdout.splitlines()}

    assert probe_ids() == {"from-file"}
    assert probe_ids(HOSTFLOW_PROBE_ID="from-env") == {"from-env"}
    assert probe_ids("--probe-id", "from-cli", HOSTFLOW_PROBE_ID="from-env") == {"from-cli"}
    # the config file may also come from the environment
    result = run_probe(
        "read", str(IPHONE), "--output", "-", cwd=tmp_path, env=probe_env(HOSTFLOW_PROBE_CONFIG=str(config))
    )
    assert {json.loads(line)["probe_id"] for line in result.stdout.splitlines()} == {"from-file"}


def test_load_config_merges_every_source(tmp_path: Path) -> None:
    config = tmp_path / "probe.toml"
    config.write_text(
        'collector_url = "http://file:8470"\ntoken = "file-token"\nbatch_flows = 100\nnames = false\n'
        "idle_timeout = 5.0\nactive_timeout = 30.0\n"
    )
    env = {"HOSTFLOW_PROBE_TOKEN": "env-token", "HOSTFLOW_BATCH_FLOWS": "200", "HOSTFLOW_NAMES": "yes"}
    merged = load_config({"batch_flows": 300, "idle_timeout": None}, env, str(config))
    assert merged.collector_url == "http://file:8470"
    assert merged.token == "env-token"
    assert merged.batch_flows == 300
    assert merged.names is True
    assert merged.idle_timeout == 5.0 and merged.active_timeout == 30.0
    assert merged.redacted()["token"] == "(set)"
    options = merged.meter_options()
    assert (options.idle_timeout, options.active_timeout, options.names) == (5.0, 30.0, True)


def test_ring_setting_from_every_source(tmp_path: Path) -> None:
    config = tmp_path / "probe.toml"
    config.write_text("ring = false\n")
    assert load_config({}, {}, None).ring is True
    assert load_config({}, {}, str(config)).ring is False
    assert load_config({}, {"HOSTFLOW_PROBE_RING": "1"}, str(config)).ring is True
    assert load_config({"ring": False}, {"HOSTFLOW_PROBE_RING": "1"}, None).ring is False


@pytest.mark.parametrize(
    ("text", "env", "fragment"),
    [
        ("idle_timeout = 'soon'\n", {}, "idle_timeout: expected a number > 0"),
        ("colector_url = 'http://x'\n", {}, "unknown setting 'colector_url'"),
        ("iface = \n", {}, "not valid TOML"),
        ("", {"HOSTFLOW_MAX_FLOWS": "-3"}, "HOSTFLOW_MAX_FLOWS: expected a whole number"),
        ("", {"HOSTFLOW_NAMES": "maybe"}, "HOSTFLOW_NAMES: expected true or false"),
    ],
)
def test_bad_settings_name_their_source(
    tmp_path: Path, text: str, env: dict[str, str], fragment: str
) -> None:
    config = tmp_path / "probe.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_config({}, env, str(config))
    result = run_probe(
        "read", str(IPHONE), "--output", "-", "--config", str(config), cwd=tmp_path, env=probe_env(**env)
    )
    assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- to a collector


def stored_flows(collector) -> int:
    status, answer = collector.query_json("time_range", probe_id=collector.probe_id)
    assert status == 200, answer
    return answer["rows"][0][2] if answer["rows"] else 0


def collector_args(url: str, spool: Path, *extra: str) -> list[str]:
    return ["--collector", url, "--probe-id", "test-probe", "--spool-dir", str(spool), "--batch-seconds", "0.2",
            "--retry-max-seconds", "0.5", *extra]  # fmt: skip


def test_read_to_the_collector(collector_server, tmp_path: Path) -> None:
    env = probe_env(HOSTFLOW_PROBE_TOKEN=collector_server.probe_token)
    result = run_probe(
        "read", str(IPHONE), *collector_args(collector_server.url, tmp_path / "spool"), cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert stored_flows(collector_server) == 90
    status, answer = collector_server.query_json("names", limit=1000)
    assert status == 200 and len(answer["rows"]) == 65
    assert list((tmp_path / "spool" / "test-probe").glob("*.hfc1.gz")) == []


def test_a_refused_token_is_exit_1_and_never_printed(collector_server, tmp_path: Path) -> None:
    secret = "wrong-token-5f2c9a"
    result = run_probe(
        "read", str(IPHONE), *collector_args(collector_server.url, tmp_path / "spool", "--log-level", "debug"),
        cwd=tmp_path, env=probe_env(HOSTFLOW_PROBE_TOKEN=secret),
    )  # fmt: skip
    assert result.returncode == 1
    assert "collector refused batch test-probe:" in result.stderr and ": 401 " in result.stderr
    assert secret not in result.stderr and "Traceback" not in result.stderr
    assert stored_flows(collector_server) == 0


def test_unreachable_collector_keeps_the_batches_for_the_next_run(collector_server, tmp_path: Path) -> None:
    env = probe_env(HOSTFLOW_PROBE_TOKEN=collector_server.probe_token)
    spool = tmp_path / "spool"
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_probe(
        "read", str(IPHONE), *collector_args(dead, spool, "--close-timeout", "1"), cwd=tmp_path, env=env
    )
    assert_one_line_error(result, 1, "unreachable", "1 batch(es) kept in", str(spool / "test-probe"))
    kept = list((spool / "test-probe").glob("*.hfc1.gz"))
    assert len(kept) == 1
    result = run_probe(
        "read", str(IPHONE), *collector_args(collector_server.url, spool), cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    assert stored_flows(collector_server) == 180  # the kept run and this one
    assert not kept[0].exists()


# ---------------------------------------------------------------- live capture


def _promiscuity(iface: str) -> int:
    shown = subprocess.run(
        ["ip", "-d", "link", "show", iface], capture_output=True, text=True, check=True
    ).stdout
    return int(re.search(r"promiscuity (\d+)", shown).group(1))


@pytest.mark.netns
@pytest.mark.parametrize("reader", ["ring", "--no-ring"])
def test_capture_is_promiscuous_while_running_and_flushes_on_sigterm(tmp_path: Path, reader: str) -> None:
    from tests.e2e.test_resilience import mirror_lab, send

    with mirror_lab() as lab:
        before = _promiscuity(lab.capture_iface)  # a bridge port is promiscuous already: count ours on top
        probe = subprocess.Popen(
            [sys.executable, "-m", "probe", "capture", "--iface", lab.capture_iface, "--output", "out.jsonl",
             "--idle-timeout", "100", "--active-timeout", "200", *([reader] if reader != "ring" else [])],
            cwd=tmp_path, env=probe_env(), stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        lab.children.append(probe)
        deadline = time.monotonic() + 30
        while _promiscuity(lab.capture_iface) != before + 1:
            assert probe.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # the capture socket opens after the promiscuous membership
        send(lab, 7100, 40000, flows=20, packets=2, size=50, seconds=0.2)
        time.sleep(0.5)
        probe.send_signal(signal.SIGTERM)
        _, stderr = probe.communicate(timeout=30)
        assert probe.returncode == 0, stderr
        assert _promiscuity(lab.capture_iface) == before
    flows, _ = records(tmp_path / "out.jsonl")
    ours = [f for f in flows if f.dst_port == 7100]
    assert sorted(f.src_port for f in ours) == list(range(40000, 40020))
    assert {(f.packets, f.bytes, f.end_reason) for f in ours} == {(2, 2 * (20 + 8 + 50), "shutdown")}
    assert "SIGTERM: stopping" in stderr and "Traceback" not in stderr
    assert ("PACKET_MMAP ring" in stderr) == (reader == "ring")
