"""The collector daemon with its NetFlow listener: datagrams in, rows stored, decoder counters in /metrics."""

from __future__ import annotations

import socket
import struct
import time

import duckdb

from tests.plugins.common import FIXTURES, free_port

V5 = (FIXTURES / "netflow" / "payloads" / "packet_v5.bin").read_bytes()  # softflowd, 3 records


def metric(text: str, line_start: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    assert len(values) == 1, (line_start, text)
    return values[0]


def test_netflow_datagrams_are_stored_and_counted(collector_factory) -> None:
    port = free_port(socket.SOCK_DGRAM)
    collector = collector_factory(netflow_port=port)
    records = struct.unpack("!HH", V5[:4])[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(V5, ("127.0.0.1", port))
        sock.sendto(b"\x00\x63garbage that is no NetFlow", ("127.0.0.1", port))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, body = collector.query_json("time_range")
        if status == 200 and body["rows"] and body["rows"][0][2] == records:
            break
        time.sleep(0.2)
    assert body["rows"][0][2] == records == 3
    text = collector.metrics()
    assert metric(text, "hostflow_collector_netflow_packets_total ") == 2
    assert metric(text, "hostflow_collector_netflow_records_total ") == records
    drops = [line for line in text.splitlines() if line.startswith("hostflow_collector_netflow_drops_total{")]
    assert len(drops) == 1 and drops[0].endswith(" 1"), drops
    assert collector.proc.poll() is None  # garbage does not stop the daemon


def test_sigterm_stores_every_record_received(collector_factory) -> None:
    """Records the listener has decoded but the sink still holds (it waits up to a second to write
    large transactions) are written by the shutdown flush: none is lost on a clean stop."""
    port = free_port(socket.SOCK_DGRAM)
    collector = collector_factory(netflow_port=port)
    datagrams = 400
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(datagrams):
            sock.sendto(V5, ("127.0.0.1", port))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if metric(collector.metrics(), "hostflow_collector_netflow_packets_total ") == datagrams:
            break
        time.sleep(0.01)
    text = collector.metrics()
    assert metric(text, "hostflow_collector_netflow_records_total ") == 3 * datagrams
    assert metric(text, "hostflow_collector_netflow_kernel_drops_total ") == 0
    assert collector.stop() == 0
    con = duckdb.connect(str(collector.db_path), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM flows").fetchone()[0] == 3 * datagrams
    finally:
        con.close()
