"""The batched UDP listener and the collector's NetFlow sink: real exports over loopback into a real
DuckDB store through the columnar path, kernel drops counted, store backlog bounded."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pyarrow as pa

from collector.metrics import Metrics
from collector.netflow import NetflowDecoder
from collector.server import NetflowSink, Writer
from collector.store import Store
from collector.udp import start_udp_listeners
from hostflow.records import FLOW_FIELDS
from tests.test_netflow_decode import FIXTURES, udp_datagrams

CAPTURES = ["pmacct-400-traffic-00.pcap", "graylog-nprobe-netflow9.pcap", "akvorado-nfv5.pcap"]


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def stored_rows(store: Store) -> list[tuple]:
    table = store.sql(f"SELECT {', '.join(FLOW_FIELDS)} FROM flows")
    columns = [
        col.cast(pa.int64()).to_pylist() if pa.types.is_timestamp(col.type) else col.to_pylist()
        for col in table.columns
    ]
    return sorted(zip(*columns, strict=True))


def test_exports_over_loopback_are_stored_as_the_per_record_path_decodes(tmp_path: Path) -> None:
    payloads = [d[3] for name in CAPTURES for d in udp_datagrams(FIXTURES / name)]
    reference = NetflowDecoder()
    expected = [flow for payload in payloads for flow in reference.feed(payload, "127.0.0.1", 0)]
    assert len(expected) == 657 + 152 + 29

    store = Store(str(tmp_path / "nf.duckdb"))
    writer = Writer()
    writer.start()
    metrics = Metrics()
    sink = NetflowSink(store, writer, metrics)
    listener = start_udp_listeners("127.0.0.1", [0], on_batch=sink.on_batch)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for payload in payloads:
                sender.sendto(payload, ("127.0.0.1", listener.ports[0]))
        wait_for(lambda: metrics.get("flows_stored_total", origin="netflow") >= len(expected))
        assert listener.metrics.packets == len(payloads) and listener.metrics.kernel_drops == 0
        assert metrics.get("flows_stored_total", origin="netflow") == len(expected)
        want = sorted(tuple(getattr(flow, name) for name in FLOW_FIELDS) for flow in expected)
        assert stored_rows(store) == want
        sources = store.sql("SELECT probe_id, source, flows FROM sources ORDER BY probe_id").to_pylist()
        per_probe: dict[str, int] = {}
        for flow in expected:
            per_probe[flow.probe_id] = per_probe.get(flow.probe_id, 0) + 1
        assert {(s["probe_id"], s["source"], s["flows"]) for s in sources} == {
            (probe, "127.0.0.1", count) for probe, count in per_probe.items()
        }
    finally:
        listener.stop()
        writer.stop()
        store.close()


def test_kernel_drops_are_counted() -> None:
    """While the decoder is busy (its lock held) a small socket buffer overflows: every datagram
    sent is either decoded or counted as dropped by the kernel (SO_RXQ_OVFL)."""
    template = next(d[3] for d in udp_datagrams(FIXTURES / "akvorado-nfv5.pcap"))
    batches: list[int] = []
    listener = start_udp_listeners(
        "127.0.0.1", [0], on_batch=lambda batch: batches.append(batch.records), receive_buffer=16_384
    )
    sent = 0
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            with listener.decoder.lock:
                for _ in range(2000):
                    sender.sendto(template, ("127.0.0.1", listener.ports[0]))
                    sent += 1
            wait_for(lambda: listener.metrics.packets > 0)
            time.sleep(0.3)
            sender.sendto(template, ("127.0.0.1", listener.ports[0]))  # carries the final drop count
            sent += 1
            wait_for(lambda: listener.metrics.packets + listener.metrics.kernel_drops == sent)
        assert listener.metrics.kernel_drops > 0
        assert listener.metrics.packets + listener.metrics.kernel_drops == sent
    finally:
        listener.stop()
    assert sum(batches) == listener.metrics.records == 29 * listener.metrics.packets


def test_store_backlog_is_bounded_and_counted(tmp_path: Path) -> None:
    payload = next(d[3] for d in udp_datagrams(FIXTURES / "akvorado-nfv5.pcap"))
    store = Store(str(tmp_path / "nf.duckdb"))
    writer = Writer()
    writer.start()
    metrics = Metrics()
    sink = NetflowSink(store, writer, metrics, max_pending=60)
    decoder = NetflowDecoder()
    release = threading.Event()
    writer.submit(release.wait)  # the store is busy
    try:
        for index in range(3):
            batch = decoder.new_batch()
            decoder.feed(payload, f"192.0.2.{index + 1}", 0, batch)
            sink.on_batch(batch)  # 29 records each: the third one is over the limit
        assert metrics.get("netflow_drops_total", reason="store_backlog") == 29
        release.set()
        wait_for(lambda: metrics.get("flows_stored_total", origin="netflow") >= 58)
        assert metrics.get("flows_stored_total", origin="netflow") == 58
        assert store.sql("SELECT count(*) AS n FROM flows").to_pylist() == [{"n": 58}]
    finally:
        release.set()
        writer.stop()
        store.close()


class CountingStore(Store):
    """The real DuckDB store, noting the (source, rows) of each group-commit transaction."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.transactions: list[list[tuple[str, int]]] = []

    def ingest_columns_many(self, items):  # type: ignore[override]
        self.transactions.append(sorted((item.source, item.flows.num_rows) for item in items))
        return super().ingest_columns_many(items)


def test_small_batches_wait_to_be_written_in_one_transaction(tmp_path: Path) -> None:
    """Below ``flush_records`` the sink holds batches for ``flush_seconds`` and then writes the
    records of every exporter in ONE transaction; reaching ``flush_records`` writes at once; a
    backlog is written about ``flush_records`` at a time."""
    payload = next(d[3] for d in udp_datagrams(FIXTURES / "akvorado-nfv5.pcap"))  # 29 records
    store = CountingStore(str(tmp_path / "nf.duckdb"))
    writer = Writer()
    writer.start()
    metrics = Metrics()
    sink = NetflowSink(store, writer, metrics, flush_records=100, flush_seconds=1.0)
    decoder = NetflowDecoder()

    def hand_over(exporter: str) -> None:
        batch = decoder.new_batch()
        decoder.feed(payload, exporter, 0, batch)
        sink.on_batch(batch)

    try:
        started = time.monotonic()
        for exporter in ("192.0.2.1", "192.0.2.1", "192.0.2.2"):
            hand_over(exporter)
        writer.submit(lambda: None).result()
        assert store.transactions == [] and metrics.get("flows_stored_total", origin="netflow") == 0
        wait_for(lambda: metrics.get("flows_stored_total", origin="netflow") >= 87, timeout=10)
        assert time.monotonic() - started >= 1.0
        assert store.transactions == [[("192.0.2.1", 58), ("192.0.2.2", 29)]]

        store.transactions.clear()
        for _ in range(4):  # 116 records >= flush_records: written without waiting for the timer
            hand_over("192.0.2.3")
        wait_for(lambda: metrics.get("flows_stored_total", origin="netflow") >= 203, timeout=0.9)
        assert store.transactions == [[("192.0.2.3", 116)]]

        store.transactions.clear()
        release = threading.Event()
        writer.submit(release.wait)  # the store is behind: a backlog builds up
        for _ in range(8):
            hand_over("192.0.2.4")
        release.set()
        wait_for(lambda: metrics.get("flows_stored_total", origin="netflow") >= 435, timeout=10)
        # taken about flush_records at a time, not all at once
        assert store.transactions == [[("192.0.2.4", 116)], [("192.0.2.4", 116)]]
        assert store.sql("SELECT count(*) AS n FROM flows").to_pylist() == [{"n": 435}]
    finally:
        writer.stop()
        store.close()
