"""Where the probe's records go: a collector (batched, spooled, retried) or a file.

CollectorSink: records are buffered, sealed into batches (``batch_flows`` records or
``batch_seconds`` old, whichever comes first, and an empty heartbeat batch after
``heartbeat_seconds`` of silence), every batch is written to the spool before it is sent and
removed only once the collector has stored it. Batches travel in the columnar encoding
(hostflow.records.encode_columns, gzip'd), or as gzip'd JSON with ``encoding="json"``; spooled
JSON batches from an older probe are still sent as JSON. Unreachable collector or 5xx: keep spooling, resend
oldest first with backoff. 4xx (other than 409 and 413): the batch is quarantined, never retried.

FileSink: JSON lines (``.jsonl``, or ``-`` for standard output), CSV or Parquet (docs/CONTRACT.md
"Files"), written through hostflow.fileio.
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from hostflow.records import (
    COLUMNS_MAGIC,
    COLUMNS_MEDIA_TYPE,
    FLOW_FIELDS,
    NAME_FIELDS,
    Flow,
    Name,
    decode_columns,
    encode_columns,
    make_batch,
    make_columns_batch,
)
from probe.health import Health, write_health_file
from probe.spool import BATCH_SUFFIX, COLUMNS_SUFFIX, Spool, SpooledBatch

log = logging.getLogger("hostflow.probe.export")

BATCH_PATH = "/api/v1/batches"
RETRY_CODES = frozenset({408, 425, 429})
OLD_COLLECTOR_ANSWER = "body is not valid JSON"  # a collector without the columnar encoding
MAX_BUFFERED_BATCHES = 20  # records held in memory while the spool cannot be written, in batches


class ExportError(RuntimeError):
    """The output cannot be used (bad URL, unwritable file); the message says what to do."""


def batch_url(collector_url: str) -> str:
    base = collector_url.rstrip("/")
    return base if base.endswith(BATCH_PATH) else base + BATCH_PATH


def safe_url(url: str) -> str:
    """The URL without any user:password part, for log lines."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def encode_batch(batch: dict[str, Any]) -> bytes:
    return gzip.compress(json.dumps(batch, separators=(",", ":")).encode(), compresslevel=6)


def decode_batch(body: bytes) -> dict[str, Any]:
    """A spooled body (gzip'd JSON or gzip'd columnar) → the make_batch dict."""
    raw = gzip.decompress(body)
    return decode_columns(raw) if raw.startswith(COLUMNS_MAGIC) else json.loads(raw)


def encode_columns_batch(batch: dict[str, Any]) -> bytes:
    """A make_batch dict → the gzip'd columnar body (level 1: 7-8x smaller than raw, cheap on a Pi)."""
    columns = []
    for kind, fields in (("flow", FLOW_FIELDS), ("name", NAME_FIELDS)):
        rows = batch[f"{kind}s"]
        columns.append({f: [row[i] for row in rows] for i, f in enumerate(fields)})
    return gzip.compress(encode_columns(batch, *columns), compresslevel=1)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class CollectorSink:
    """A Sink that delivers batches to a collector over HTTP(S), through the spool."""

    def __init__(
        self,
        url: str,
        token: str,
        probe_id: str,
        spool: Spool,
        health: Health | None = None,
        *,
        batch_flows: int = 5_000,
        batch_seconds: float = 5.0,
        heartbeat_seconds: float = 30.0,
        ca_file: str = "",
        http_timeout: float = 10.0,
        retry_max_seconds: float = 30.0,
        close_timeout: float = 15.0,
        health_file: Path | None = None,
        encoding: str = "columns",
    ) -> None:
        if encoding not in ("columns", "json"):
            raise ExportError(f"batch encoding {encoding!r}: use columns or json")
        if not url.startswith(("http://", "https://")):
            raise ExportError(f"collector URL {url!r} must start with http:// or https://")
        self.url = batch_url(url)
        self.token = token
        self.probe_id = probe_id
        self.spool = spool
        self.health = health or Health()
        self.batch_flows = max(1, batch_flows)
        self.batch_seconds = batch_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.http_timeout = http_timeout
        self.retry_max_seconds = retry_max_seconds
        self.close_timeout = close_timeout
        self.health_file = health_file
        self.columnar = encoding == "columns"  # json: for a collector older than the columnar encoding
        self.refusals: list[str] = []  # one line per quarantined batch, for the CLI's exit status
        self.batches_delivered = 0
        self.records_lost = 0  # only when the spool cannot be written at all
        self._ssl = self._ssl_context(ca_file) if self.url.startswith("https://") else None
        self._cond = threading.Condition()
        self._flows: list[Flow] = []
        self._names: list[Name] = []
        self._first_buffered = 0.0
        self._last_sealed = time.monotonic()
        self._closing = False
        self._sealer_done = threading.Event()
        self._deadline: float | None = None
        self._wake_sender = threading.Event()
        self._close_requested = threading.Event()
        self._failures = 0
        self._health_changed = False
        self._sealer = threading.Thread(target=self._seal_loop, name="probe-batcher", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="probe-sender", daemon=True)
        self._sealer.start()
        self._sender.start()

    @staticmethod
    def _ssl_context(ca_file: str) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ExportError(f"CA file {ca_file!r}: {exc}") from None

    # ------------------------------------------------------------ the Sink protocol

    def add_flows(self, flows: list[Flow]) -> None:
        if flows:
            self._buffer(flows, [])

    def add_names(self, names: list[Name]) -> None:
        if names:
            self._buffer([], names)

    def set_health(self, health: dict[str, Any]) -> None:
        self.health.update_engine(health)
        self._health_changed = True

    def close(self) -> None:
        """Seal what is buffered, then keep delivering until the spool is empty or close_timeout ends."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self._sealer.join()
        self._deadline = time.monotonic() + self.close_timeout
        self._close_requested.set()
        self._wake_sender.set()
        self._sender.join()
        self._write_health_file()
        left = self.spool.batches
        if left:
            log.warning(
                "%d batch(es) not delivered to %s; kept in the spool %s, sent on the next start",
                left,
                safe_url(self.url),
                self.spool.directory,
            )
        self.spool.close()

    @property
    def undelivered(self) -> int:
        return self.spool.batches

    # ------------------------------------------------------------ sealing batches

    def _buffer(self, flows: list[Flow], names: list[Name]) -> None:
        with self._cond:
            if self._closing:
                raise ExportError("records handed over after close")
            if not self._flows and not self._names:
                self._first_buffered = time.monotonic()
            self._flows.extend(flows)
            self._names.extend(names)
            if len(self._flows) + len(self._names) >= self.batch_flows:
                self._cond.notify_all()

    def _take(self, force: bool) -> tuple[list[Flow], list[Name]] | None:
        """Under the lock: the next batch's records if one is due."""
        count = len(self._flows) + len(self._names)
        now = time.monotonic()
        due = (
            count >= self.batch_flows
            or (count and now - self._first_buffered >= self.batch_seconds)
            or now - self._last_sealed >= self.heartbeat_seconds
            or (force and count)
        )
        if not due:
            return None
        flows = self._flows[: self.batch_flows]
        names = self._names[: max(0, self.batch_flows - len(flows))]
        del self._flows[: len(flows)]
        del self._names[: len(names)]
        self._first_buffered = now
        self._last_sealed = now
        return flows, names

    def _seal_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    taken = self._take(force=self._closing)
                    if taken is None:
                        if self._closing:
                            break
                        self._cond.wait(timeout=0.2)
                        continue
                if not self._try_seal(*taken):
                    with self._cond:
                        self._cond.wait(timeout=1.0)
            flows, names = self._final_records()
            if not self._try_seal(flows, names, final=True, requeue=False):
                self.records_lost += len(flows) + len(names)
        except Exception:
            log.exception("batcher stopped; records still buffered are lost")
        finally:
            self._sealer_done.set()
            self._wake_sender.set()

    def _try_seal(
        self, flows: list[Flow], names: list[Name], final: bool = False, requeue: bool = True
    ) -> bool:
        """Seal; when the spool cannot be written (disk full, read-only), keep the records for the
        next try, at most MAX_BUFFERED_BATCHES batches' worth (the oldest beyond it are lost, counted)."""
        try:
            self._seal(flows, names, final=final)
            return True
        except OSError as exc:
            log.error("cannot write to the spool %s (%s); records kept in memory", self.spool.directory, exc)
            if not requeue:
                return False
            with self._cond:
                self._flows[:0] = flows
                self._names[:0] = names
                excess = len(self._flows) + len(self._names) - MAX_BUFFERED_BATCHES * self.batch_flows
                if excess > 0:
                    dropped_flows = min(excess, len(self._flows))
                    del self._flows[:dropped_flows]
                    del self._names[: excess - dropped_flows]
                    self.records_lost += excess
                    log.error("%d records lost while the spool cannot be written", self.records_lost)
            return False

    def _final_records(self) -> tuple[list[Flow], list[Name]]:
        with self._cond:
            flows, names = self._flows, self._names
            self._flows, self._names = [], []
        return flows, names

    def _seal(self, flows: list[Flow], names: list[Name], final: bool = False) -> SpooledBatch | None:
        """Write one batch to the spool (a heartbeat when empty; the final one carries the last health)."""
        if final and not flows and not names and not self._health_changed:
            return None
        self._health_changed = False
        seq = self.spool.next_seq()
        health = self.health.snapshot(self.spool.bytes, self.spool.batches, self.spool.dropped_batches)
        health["flows_exported"] += len(flows)  # in the spool: the collector's to store from now on
        batch_id, sent_at = f"{self.probe_id}:{seq:012d}", time.time_ns() // 1000
        if self.columnar:
            body = make_columns_batch(self.probe_id, batch_id, flows, names, health=health, sent_at=sent_at)
            spooled = self.spool.put(seq, gzip.compress(body, compresslevel=1), COLUMNS_SUFFIX)
        else:
            batch = make_batch(self.probe_id, batch_id, flows, names, health=health, sent_at=sent_at)
            spooled = self.spool.put(seq, encode_batch(batch), BATCH_SUFFIX)
        self.health.add_exported(len(flows), len(names))
        log.debug("spooled batch %012d: %d flows, %d names", seq, len(flows), len(names))
        self._write_health_file()
        self._wake_sender.set()
        return spooled

    def _write_health_file(self) -> None:
        if self.health_file is None:
            return
        try:
            write_health_file(
                self.health_file,
                self.health.snapshot(self.spool.bytes, self.spool.batches, self.spool.dropped_batches),
            )
        except OSError as exc:
            log.warning("cannot write %s: %s", self.health_file, exc)

    # ------------------------------------------------------------ sending

    def _send_loop(self) -> None:
        backoff = 0.0
        while True:
            batch = self.spool.oldest()
            closing = self._deadline is not None
            if batch is None:
                if closing and self._sealer_done.is_set():
                    return
                self._wake_sender.wait(timeout=0.5)
                self._wake_sender.clear()
                continue
            if closing and time.monotonic() >= self._deadline:
                return
            try:
                outcome = self._deliver(batch)
            except Exception:
                log.exception("unexpected error sending batch %012d; will retry", batch.seq)
                outcome = "retry"
            if outcome != "retry":
                if self._failures:
                    log.warning(
                        "collector %s reachable again after %d failed attempt(s); %d batch(es) spooled",
                        safe_url(self.url),
                        self._failures,
                        self.spool.batches,
                    )
                self._failures = 0
                backoff = 0.0
                continue
            self._failures += 1
            backoff = min(self.retry_max_seconds, max(0.5, backoff * 2))
            if self._deadline is None:
                # New batches do not cut the backoff short; closing does, so the time left is spent trying.
                self._close_requested.wait(timeout=backoff)
            else:
                time.sleep(min(backoff, 0.5, max(0.0, self._deadline - time.monotonic())))

    def _post(self, body: bytes, columnar: bool = False) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url, data=body, method="POST")
        request.add_header("Content-Type", COLUMNS_MEDIA_TYPE if columnar else "application/json")
        request.add_header("Content-Encoding", "gzip")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.http_timeout, context=self._ssl) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read()
            except (OSError, http.client.HTTPException):
                detail = b""
            return exc.code, detail

    def _deliver(self, batch: SpooledBatch) -> str:
        """One attempt: "delivered", "quarantined", "split", "rewritten" or "retry"."""
        try:
            body = self.spool.read(batch)
        except OSError as exc:
            log.error("spooled batch %s unreadable (%s); dropped", batch.path, exc)
            self.spool.remove(batch)
            return "quarantined"
        try:
            status, answer = self._post(body, batch.columnar)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            level = logging.WARNING if self._failures == 0 else logging.DEBUG
            log.log(level, "collector %s unreachable (%s); batches stay spooled", safe_url(self.url), reason)
            return "retry"
        detail = _error_text(answer)
        if status == 200 or status == 409:
            reply = _json_or_empty(answer)
            duplicate = bool(reply.get("duplicate")) or status == 409
            flows = reply.get("flows") if isinstance(reply.get("flows"), int) else 0
            self.batches_delivered += 1
            log.debug("batch %012d stored (%d flows, duplicate=%s)", batch.seq, flows, duplicate)
            self.spool.remove(batch)
            return "delivered"
        if status == 413:
            return self._split(batch, body, detail)
        if status >= 500 or status in RETRY_CODES:
            level = logging.WARNING if self._failures == 0 else logging.DEBUG
            log.log(level, "collector answered %d (%s); batches stay spooled", status, detail)
            return "retry"
        if status == 400 and batch.columnar and detail.startswith(OLD_COLLECTOR_ANSWER):
            return self._as_json(batch, body)
        reason = f"collector refused batch {self.probe_id}:{batch.seq:012d}: {status} {detail}".strip()
        log.error("%s; quarantined in %s", reason, self.spool.quarantine_dir)
        self.spool.quarantine(batch, reason)
        self.refusals.append(reason)
        return "quarantined"

    def _as_json(self, batch: SpooledBatch, body: bytes) -> str:
        """A collector older than the columnar encoding read the body as JSON: from now on send
        JSON, starting with this batch (rewritten in the spool under the same sequence number)."""
        if self.columnar:
            log.warning("collector %s does not know the columnar encoding; sending JSON", safe_url(self.url))
        self.columnar = False
        try:
            self.spool.replace(batch, encode_batch(decode_batch(body)), BATCH_SUFFIX)
        except (ValueError, KeyError, TypeError) as exc:
            reason = f"batch {self.probe_id}:{batch.seq:012d} unreadable, cannot resend it as JSON: {exc}"
            log.error("%s; quarantined", reason)
            self.spool.quarantine(batch, reason)
            self.refusals.append(reason)
            return "quarantined"
        return "rewritten"

    def _split(self, batch: SpooledBatch, body: bytes, detail: str) -> str:
        """413: the batch is too big for the collector; send it again as two halves."""
        try:
            content = decode_batch(body)
            flows, names = content["flows"], content["names"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reason = (
                f"collector refused batch {self.probe_id}:{batch.seq:012d}: 413, and it is unreadable: {exc}"
            )
            log.error("%s; quarantined", reason)
            self.spool.quarantine(batch, reason)
            self.refusals.append(reason)
            return "quarantined"
        if len(flows) + len(names) <= 1:
            reason = f"collector refused batch {content['batch_id']}: 413 {detail} (a single record)"
            log.error("%s; quarantined", reason)
            self.spool.quarantine(batch, reason)
            self.refusals.append(reason)
            return "quarantined"
        half_flows, half_names = len(flows) // 2, len(names) // 2
        for part_flows, part_names in (
            (flows[:half_flows], names[:half_names]),
            (flows[half_flows:], names[half_names:]),
        ):
            seq = self.spool.next_seq()
            part = dict(content, batch_id=f"{self.probe_id}:{seq:012d}", flows=part_flows, names=part_names)
            if batch.columnar:
                self.spool.put(seq, encode_columns_batch(part), COLUMNS_SUFFIX)
            else:
                self.spool.put(seq, encode_batch(part), BATCH_SUFFIX)
        log.warning(
            "collector refused batch %s as too large (413); resent as two halves", content["batch_id"]
        )
        self.spool.remove(batch)
        return "split"


def _json_or_empty(answer: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(answer or b"{}")
    except ValueError:
        return {}
    return reply if isinstance(reply, dict) else {}


def _error_text(answer: bytes) -> str:
    reply = _json_or_empty(answer)
    if "error" in reply:
        return _one_line(str(reply["error"]))
    return _one_line(answer.decode("utf-8", "replace")) if answer else ""


class FileSink:
    """A Sink that writes records to a file through hostflow.fileio (JSON lines, CSV or Parquet)."""

    def __init__(self, path: str) -> None:
        from hostflow import fileio

        self.path = path
        self.health: dict[str, Any] = {}
        if fileio.kind_from_suffix(path) == fileio.UNKNOWN:
            raise ExportError(
                f"--output {path}: unknown format; use a name ending in .jsonl, .csv or .parquet, or -"
            )
        try:
            self._writer = fileio.open_writer(path)
        except ImportError:
            raise ExportError(
                f"--output {path}: writing Parquet needs pyarrow, which this install does not have "
                "(the Raspberry Pi install leaves it out): write .jsonl or .csv, or pip install pyarrow"
            ) from None
        except OSError as exc:
            raise ExportError(f"--output {path}: {exc.strerror or exc}") from None

    def add_flows(self, flows: list[Flow]) -> None:
        self._writer.write_flows(flows)

    def add_names(self, names: list[Name]) -> None:
        self._writer.write_names(names)

    def set_health(self, health: dict[str, Any]) -> None:
        self.health = dict(health)

    def close(self) -> None:
        self._writer.close()

    @property
    def flows_written(self) -> int:
        return self._writer.flows_written

    @property
    def names_written(self) -> int:
        return self._writer.names_written
