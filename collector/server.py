"""`python -m collector serve`: the daemon. One writer thread owns every DuckDB write (HTTP batches,
imports, NetFlow records, retention); uvicorn serves the API; SIGTERM/SIGINT stop accepting,
finish the requests in flight, drain the write queue, checkpoint and close.
"""

from __future__ import annotations

import concurrent.futures
import gc
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import uvicorn

from collector.api import ApiState, build_app
from collector.config import Config
from collector.metrics import Metrics
from collector.netflow import ColumnBatch
from collector.store import Store, open_store
from hostflow.records import Flow

log = logging.getLogger("collector.server")


class Writer(threading.Thread):
    """Runs write jobs one at a time, in order; ``stop()`` runs everything queued before it."""

    def __init__(self) -> None:
        super().__init__(name="collector-writer", daemon=True)
        self._jobs: queue.Queue[tuple[concurrent.futures.Future, Callable[[], Any]] | None] = queue.Queue()

    def submit(self, job: Callable[[], Any]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((future, job))
        return future

    def depth(self) -> int:
        return self._jobs.qsize()

    def run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            future, job = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # a failed write is the caller's answer, never the writer's end
                future.set_exception(exc)

    def stop(self) -> None:
        self._jobs.put(None)
        self.join()


class NetflowSink:
    """Collects flows from the UDP listeners and writes them in few transactions (one flush job
    in the queue at a time, taking everything that arrived meanwhile).

    The listeners hand over ColumnBatches (``on_batch``): the writer thread decodes them into Arrow
    columns and stores them with ``Store.ingest_columns``, one transaction per exporter and
    observation domain per flush. While the store is behind, up to ``max_pending`` records wait;
    past that a batch is dropped and counted (``netflow_drops_total{reason="store_backlog"}``).
    ``on_flows`` takes Flow lists (the per-record path)."""

    def __init__(self, store: Store, writer: Writer, metrics: Metrics, max_pending: int = 2_000_000) -> None:
        self.store, self.writer, self.metrics = store, writer, metrics
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._pending: dict[str, list[Flow]] = defaultdict(list)
        self._batches: list[ColumnBatch] = []
        self._pending_records = 0
        self._scheduled = False

    def on_flows(self, flows: list[Flow], exporter: str) -> None:
        if not flows:
            return
        with self._lock:
            self._pending[exporter].extend(flows)
            self._schedule()

    def on_batch(self, batch: ColumnBatch) -> None:
        with self._lock:
            if self._pending_records + batch.records > self.max_pending:
                dropped = batch.records
            else:
                dropped = 0
                self._batches.append(batch)
                self._pending_records += batch.records
                self._schedule()
        if dropped:
            self.metrics.inc("netflow_drops_total", dropped, reason="store_backlog")
            log.warning("event=netflow_backlog_drop records=%d pending_limit=%d", dropped, self.max_pending)

    def _schedule(self) -> None:
        """Queue one flush job unless one is waiting (caller holds the lock)."""
        if not self._scheduled:
            self._scheduled = True
            self.writer.submit(self._flush)

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, defaultdict(list)
            batches, self._batches = self._batches, []
            self._pending_records = 0
            self._scheduled = False
        for exporter, flows in pending.items():
            for flow in flows:
                if not flow.probe_id:
                    flow.probe_id = exporter
            try:
                result = self.store.ingest(None, exporter, flows, [])
            except Exception as exc:
                self._failed(exporter, len(flows), exc)
                continue
            self._stored(result.flows, max(flow.flow_end for flow in flows))
        tables: dict[tuple[str, str], list[pa.Table]] = defaultdict(list)
        for batch in batches:
            for exporter, probe_id, table in batch.tables():
                tables[(exporter, probe_id)].append(table)
        for (exporter, probe_id), parts in tables.items():
            table = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
            try:
                result = self.store.ingest_columns(None, exporter, table, probe_id=probe_id)
            except Exception as exc:
                self._failed(exporter, table.num_rows, exc)
                continue
            newest = pc.max(table.column("flow_end")).cast(pa.int64()).as_py()
            self._stored(result.flows, newest)

    def _stored(self, flows: int, newest_us: int) -> None:
        self.metrics.inc("flows_stored_total", flows, origin="netflow")
        self.metrics.set("ingest_lag_seconds", max(0.0, time.time() - newest_us / 1e6))

    def _failed(self, exporter: str, flows: int, exc: Exception) -> None:
        self.metrics.inc("store_errors_total")
        self.metrics.inc("netflow_drops_total", flows, reason="store_failed")
        log.error("event=netflow_store_failed exporter=%s flows=%d error=%r", exporter, flows, str(exc))


def runtime_path(db: str) -> Path:
    return Path(f"{db}.collector.json")


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _Server(uvicorn.Server):
    """uvicorn, plus a hook once the socket is bound (the runtime file must name a live URL)."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            self._on_started()


def netflow_series(snapshot: dict[str, Any]) -> list[tuple[str, dict[str, object], float]]:
    """The decoder's own counters (collector.netflow.NetflowMetrics) as /metrics series."""
    series: list[tuple[str, dict[str, object], float]] = [
        ("netflow_packets_total", {}, snapshot["packets"]),
        ("netflow_records_total", {}, snapshot["records"]),
        ("netflow_template_misses_total", {}, snapshot["template_misses"]),
        ("netflow_sequence_gaps_total", {}, sum(snapshot["sequence_gaps"].values())),
        ("netflow_kernel_drops_total", {}, snapshot.get("kernel_drops", 0)),
    ]
    series += [
        ("netflow_drops_total", {"reason": reason}, count) for reason, count in snapshot["drops"].items()
    ]
    return series


def _start_netflow(config: Config, sink: NetflowSink, metrics: Metrics) -> Any:
    ports = [p for p in (config.netflow_port, config.ipfix_port) if p]
    if not ports:
        return None
    try:
        from collector.udp import start_udp_listeners
    except ImportError:
        log.error("event=netflow_unavailable detail='collector.udp is missing; NetFlow/IPFIX not received'")
        return None
    handle = start_udp_listeners(config.netflow_host, ports, on_batch=sink.on_batch)
    metrics.add_source(lambda: netflow_series(handle.metrics.snapshot()))
    log.info("event=netflow_listening host=%s ports=%s", config.netflow_host, ports)
    return handle


def _retention_loop(
    store: Store, writer: Writer, metrics: Metrics, interval: float, stop: threading.Event
) -> None:
    while not stop.is_set():
        try:
            deleted = writer.submit(store.apply_retention).result()
            metrics.inc("retention_deleted_flows_total", deleted)
        except Exception as exc:
            log.error("event=retention_failed error=%r", str(exc))
        stop.wait(interval)


def serve(config: Config) -> int:
    _configure_logging(config.log_level)
    # A batch decodes into millions of small lists: with the default thresholds the cyclic GC
    # runs hundreds of times per batch (measured: 2x slower JSON decoding). Nothing here builds cycles.
    gc.freeze()
    gc.set_threshold(200_000, 50, 50)
    # uvicorn re-raises the signal it caught once it has stopped; with the default handlers that
    # would kill us before the write queue is drained, so the process's own handlers do nothing.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    try:
        store = open_store(config)
    except Exception as exc:
        # never the password a URL may carry
        where = (
            "clickhouse://" + config.clickhouse.rpartition("@")[2]
            if config.backend == "clickhouse"
            else config.db
        )
        log.error("event=store_open_failed backend=%s db=%s error=%r", config.backend, where, str(exc))
        print(
            f"collector: cannot open {where}: {(str(exc) or repr(exc)).splitlines()[0]}",
            file=sys.stderr,
        )
        return 1
    metrics = Metrics()
    writer = Writer()
    writer.start()
    sink = NetflowSink(store, writer, metrics)
    stop_retention = threading.Event()
    retention = None
    netflow = None
    runtime = runtime_path(config.db)
    scheme = "https" if config.tls_cert else "http"
    url_host = f"[{config.http_host}]" if ":" in config.http_host else config.http_host
    url = f"{scheme}://{url_host}:{config.http_port}"

    def started() -> None:
        info: dict[str, Any] = {"url": url, "pid": os.getpid()}
        if config.admin_token_file:
            info["admin_token_file"] = str(Path(config.admin_token_file).resolve())
        tmp = runtime.with_name(runtime.name + ".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, runtime)
        log.info(
            "event=listening url=%s db=%s probes=%d retention_days=%s",
            url, config.db, len(set(config.tokens.values())), config.retention_days,
        )  # fmt: skip

    state = ApiState(
        config=config, store=store, submit=writer.submit, metrics=metrics, queue_depth=writer.depth
    )
    app = build_app(state)
    uv_config = uvicorn.Config(
        app,
        host=config.http_host,
        port=config.http_port,
        log_config=None,
        access_log=False,
        lifespan="off",
        ssl_certfile=config.tls_cert or None,
        ssl_keyfile=config.tls_key or None,
        timeout_graceful_shutdown=30,
    )
    server = _Server(uv_config, started)
    code = 0
    try:
        netflow = _start_netflow(config, sink, metrics)
        if config.retention_days:
            retention = threading.Thread(
                target=_retention_loop,
                args=(store, writer, metrics, config.retention_interval_s, stop_retention),
                name="collector-retention",
                daemon=True,
            )
            retention.start()
        server.run()
        if not server.started:
            log.error("event=http_start_failed host=%s port=%d", config.http_host, config.http_port)
            code = 1
    except Exception as exc:
        log.exception("event=serve_failed error=%r", str(exc))
        code = 1
    finally:
        log.info("event=stopping queued_writes=%d", writer.depth())
        if netflow is not None:
            netflow.stop()
        stop_retention.set()
        if retention is not None:
            retention.join(timeout=60)
        writer.submit(lambda: None)
        sink_flush = writer.submit(sink._flush)
        writer.stop()
        if sink_flush.exception() is not None:
            log.error("event=final_flush_failed error=%r", str(sink_flush.exception()))
        store.close()
        try:
            if runtime.exists() and json.loads(runtime.read_text()).get("pid") == os.getpid():
                runtime.unlink()
        except (OSError, ValueError):
            pass
        log.info("event=stopped db=%s", config.db)
    return code
