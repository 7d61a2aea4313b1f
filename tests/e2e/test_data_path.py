"""The whole data path on a real capture: probe read → collector (HTTP, DuckDB) → app (AppTest).

The reference is tshark on the same file: the bytes the Sankey draws out of the host node equal the
sum of the IP lengths of that host's packets, and the names tshark decodes from the host's TLS
ClientHellos are the peer labels the Sankey shows.
"""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.plugins.common import FIXTURES, ROOT

CAPTURE = FIXTURES / "pcap" / "ndpi-iphone.pcap"
HOST = "192.168.2.17"  # the iPhone


def tshark(path: Path, display_filter: str, *fields: str) -> list[list[str]]:
    command = ["tshark", "-r", str(path), "-Y", display_filter, "-T", "fields"]
    for field in fields:
        command += ["-e", field]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def column(value: Any) -> list[Any]:
    """A Bokeh ColumnDataSource column as plain values (ndarrays are base64, maybe gzipped)."""
    if isinstance(value, dict) and value.get("type") == "ndarray":
        raw = base64.b64decode(value["array"]["data"])
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return np.frombuffer(raw, dtype=value["dtype"]).tolist()
    return value


def sources(node: Any) -> list[dict[str, list[Any]]]:
    found = []
    if isinstance(node, dict):
        if node.get("name") == "ColumnDataSource":
            data = node.get("attributes", {}).get("data", {})
            if isinstance(data, dict) and data.get("entries"):
                found.append({key: column(value) for key, value in data["entries"]})
        for value in node.values():
            found += sources(value)
    elif isinstance(node, list):
        for value in node:
            found += sources(value)
    return found


def sankey_edges(at: AppTest) -> dict[str, list[Any]]:
    charts = [c for c in at.get("bidi_component") if "sankey" in c.proto.id]
    assert len(charts) == 1, "no Sankey on the page"
    figure = json.loads(charts[0].proto.json)["figure"]
    if isinstance(figure, str):
        figure = json.loads(figure)
    edges = [s for s in sources(figure) if {"source", "target", "value"} <= set(s)]
    assert len(edges) == 1
    return edges[0]


@pytest.fixture
def filled_collector(collector_server):
    result = subprocess.run(
        [sys.executable, "-m", "probe", "read", str(CAPTURE), "--collector", collector_server.url,
         "--token", collector_server.probe_token, "--probe-id", collector_server.probe_id],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # nothing but data on standard output, and there is none here
    return collector_server


def test_probe_to_collector_to_sankey_on_a_real_capture(filled_collector, monkeypatch) -> None:
    monkeypatch.setenv("HOSTFLOW_COLLECTOR_URL", filled_collector.url)
    monkeypatch.setenv("HOSTFLOW_TZ", "UTC")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    host_box = next(w for w in at.sidebar.selectbox if w.label.startswith("Host"))
    host_box.set_value(HOST).run()
    hour_box = next(w for w in at.sidebar.selectbox if w.label == "Hour")
    assert hour_box.value == 10  # the capture: 2020-02-23 10:42:32–10:43:20 UTC
    edges = sankey_edges(at)

    # Bytes: everything drawn out of the host node equals tshark's IP bytes of the host's packets.
    drawn = sum(v for s, v in zip(edges["source"], edges["value"], strict=True) if s == "src:host")
    ip_lengths = tshark(CAPTURE, f"ip.addr=={HOST}", "ip.len")
    # (an ICMP error quotes an inner IP header: the outermost length comes first)
    assert drawn == sum(int(row[0].split(",")[0]) for row in ip_lengths) == 203_238

    # Names: every server name the iPhone sent in a TLS ClientHello labels a peer.
    sni = {
        row[0]
        for row in tshark(
            CAPTURE, f"ip.src=={HOST} && tls.handshake.type==1", "tls.handshake.extensions_server_name"
        )
        if row and row[0]
    }
    labels = {target.removeprefix("dst:") for target in edges["target"]}
    assert sni and sni <= labels, sni - labels
    assert {"gateway.icloud.com", "mesu.apple.com", "lucas-imac.local"} <= labels


def test_bad_capture_file_gives_a_clear_error(collector_server, tmp_path: Path) -> None:
    bogus = tmp_path / "notes.pcap"
    bogus.write_text("this is not a capture\n")
    result = subprocess.run(
        [sys.executable, "-m", "probe", "read", str(bogus), "--collector", collector_server.url,
         "--token", collector_server.probe_token, "--probe-id", collector_server.probe_id],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert str(bogus) in result.stderr and len(result.stderr.strip().splitlines()) == 1
