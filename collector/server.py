"""`python -m collector serve`: the daemon. One writer thread owns every DuckDB write (HTTP batches,
imports, NetFlow records, retention); uvicorn serves the API; SIGTERM/SIGINT stop accepting,
finish the requests in flight, drain the write queue, checkpoint and close.
"""

from __future__ import annotations

import concurrent.futures
import functools
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import uvicorn

from collector.api import ApiState, build_app
from collector.config import Config
from collector.metrics import Metrics
from collector.netflow import ColumnBatch
from collector.store import BatchItem, Store, open_store
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


@dataclass(eq=False)
class _WriteJob:
    """One decoded flush on its way to the store."""

    records: int
    items: list[BatchItem] = field(default_factory=list)
    done: bool = False


class NetflowSink:
    """Collects flows from the UDP listeners and writes them in few, large transactions.

    The listeners hand over ColumnBatches (``on_batch``). They wait until ``flush_records``
    records are pending or the oldest has waited ``flush_seconds``; then the sink's decode thread
    takes about ``flush_records`` of them (the rest, if the store is behind, make the next flush),
    merges them, decodes them into Arrow columns (``ColumnBatch.tables()``) and queues ONE write
    job: ``Store.ingest_columns_many``, one transaction for every exporter and observation domain.
    Decoding the next flush overlaps the write of this one (DuckDB releases the GIL while it
    inserts), and the decode thread waits for that write before queueing another, so at most one
    decoded flush waits. Few large transactions because DuckDB pays about 10 ms per commit whatever
    its size, and an insert of a full row group (122,880 rows) or more is written straight to the
    database file instead of the WAL, never costing a checkpoint later (measured on 1M rows, CPU
    per row including the checkpoints: 3.6 µs in 50,000-row commits, 1.5 µs in 200,000-row ones;
    5,000-row commits stored 32k rows/s wall, 200,000-row ones 600k/s). One second, so that from
    200k records/s on every flush is a full 200,000 records.

    Records count as pending from hand-over until stored; past ``max_pending`` a batch is dropped
    and counted (``netflow_drops_total{reason="store_backlog"}``). ``_flush`` (a writer job: the
    daemon's shutdown) stores everything pending, including a flush being decoded at that moment.
    ``on_flows`` takes Flow lists (the per-record path, tools and tests), written at once.
    """

    IDLE_EXIT = 5.0  # seconds without batches after which the decode thread ends (restarted on demand)

    def __init__(
        self,
        store: Store,
        writer: Writer,
        metrics: Metrics,
        max_pending: int = 2_000_000,
        flush_records: int = 200_000,
        flush_seconds: float = 1.0,
    ) -> None:
        self.store, self.writer, self.metrics = store, writer, metrics
        self.max_pending = max_pending
        self.flush_records = flush_records
        self.flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: dict[str, list[Flow]] = defaultdict(list)
        self._flows_scheduled = False
        self._batches: list[ColumnBatch] = []
        self._batch_records = 0  # in self._batches
        self._pending_records = 0  # handed over and not yet stored (or failed)
        self._first_at = 0.0  # monotonic time the oldest waiting batch arrived
        self._decoding = False
        self._draining = False
        self._queued: list[_WriteJob] = []  # submitted to the writer, not started
        self._orphans: list[_WriteJob] = []  # decoded while a drain ran
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ hand-over

    def on_flows(self, flows: list[Flow], exporter: str) -> None:
        if not flows:
            return
        with self._lock:
            self._pending[exporter].extend(flows)
            if not self._flows_scheduled:
                self._flows_scheduled = True
                self.writer.submit(self._write_flows)

    def on_batch(self, batch: ColumnBatch) -> None:
        with self._lock:
            if self._pending_records + batch.records > self.max_pending:
                dropped = batch.records
            else:
                dropped = 0
                if not self._batches:
                    self._first_at = time.monotonic()
                self._batches.append(batch)
                self._batch_records += batch.records
                self._pending_records += batch.records
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._decode_loop, name="netflow-decode", daemon=True
                    )
                    self._thread.start()
                elif len(self._batches) == 1 or self._batch_records >= self.flush_records:
                    self._wake.notify_all()
        if dropped:
            self.metrics.inc("netflow_drops_total", dropped, reason="store_backlog")
            log.warning("event=netflow_backlog_drop records=%d pending_limit=%d", dropped, self.max_pending)

    # ------------------------------------------------------------ decode thread

    def _due_in(self) -> float:
        """Seconds until the waiting batches are due (0: now); caller holds the lock."""
        if self._batch_records >= self.flush_records:
            return 0.0
        return max(0.0, self._first_at + self.flush_seconds - time.monotonic())

    def _decode_loop(self) -> None:
        previous: _WriteJob | None = None
        while True:
            with self._lock:
                idle_since = time.monotonic()
                while self._draining or not self._batches or self._due_in() > 0:
                    if not self._batches and time.monotonic() - idle_since > self.IDLE_EXIT:
                        self._thread = None
                        return
                    self._wake.wait(
                        self._due_in() if self._batches and not self._draining else self.IDLE_EXIT
                    )
                # at most about flush_records per flush, even behind: steady progress, bounded transactions
                taken = cut = 0
                while cut < len(self._batches) and taken < self.flush_records:
                    taken += self._batches[cut].records
                    cut += 1
                batches, self._batches = self._batches[:cut], self._batches[cut:]
                self._batch_records -= taken
                self._decoding = True
            job = _WriteJob(taken)
            try:
                job.items = self._decode(batches)
            except Exception as exc:  # noqa: BLE001 - counted; the thread must go on
                self._failed("-", job.records, exc)
            with self._lock:
                # one decoded flush waits for the store, no more; a drain takes it over
                while previous is not None and not previous.done and not self._draining:
                    self._wake.wait()
                if self._draining:
                    self._orphans.append(job)
                else:
                    self._queued.append(job)
                    self.writer.submit(functools.partial(self._run_job, job))
                    previous = job
                self._decoding = False
                self._wake.notify_all()

    @staticmethod
    def _decode(batches: list[ColumnBatch]) -> list[BatchItem]:
        merged = batches[0]
        for batch in batches[1:]:
            merged.absorb(batch)
        return [
            BatchItem(None, exporter, table, probe_id=probe_id)
            for exporter, probe_id, table in merged.tables()
        ]

    # ------------------------------------------------------------ writer jobs

    def _run_job(self, job: _WriteJob) -> None:
        with self._lock:
            if job not in self._queued:
                return  # a drain (_flush) wrote it already
            self._queued.remove(job)
        self._write(job)

    def _write(self, job: _WriteJob) -> None:
        try:
            if job.items:
                results = self.store.ingest_columns_many(job.items)
                for item, result in zip(job.items, results, strict=True):
                    if isinstance(result, Exception):
                        self._failed(item.source, item.flows.num_rows, result)
                    else:
                        newest = pc.max(item.flows.column("flow_end")).cast(pa.int64()).as_py()
                        self._stored(result.flows, newest)
        except Exception as exc:  # noqa: BLE001 - the writer must go on; the rows are counted lost
            self._failed("-", job.records, exc)
        finally:
            with self._lock:
                self._pending_records -= job.records
                job.done = True
                self._wake.notify_all()

    def _write_flows(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, defaultdict(list)
            self._flows_scheduled = False
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

    def _flush(self) -> None:
        """Store everything pending now, on the calling (writer) thread: waiting batches, a flush
        being decoded, and write jobs queued behind this one (the queue may end right after it)."""
        with self._lock:
            self._draining = True
            self._wake.notify_all()
            while self._decoding:
                self._wake.wait()
            jobs, self._queued = self._queued, []
            jobs += self._orphans
            self._orphans = []
            batches, self._batches, self._batch_records = self._batches, [], 0
        try:
            self._write_flows()
            for job in jobs:
                self._write(job)
            if batches:
                job = _WriteJob(sum(batch.records for batch in batches))
                job.items = self._decode(batches)
                self._write(job)
        finally:
            with self._lock:
                self._draining = False
                self._wake.notify_all()

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
