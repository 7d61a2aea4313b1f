"""The collector's HTTP API (docs/CONTRACT.md): batch ingest, admin import, named queries, health,
metrics. Every write goes through the writer (one thread owns the DuckDB writes); a request is
answered 200 only after its transaction committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from collector import queries
from collector.attribution import Rules
from collector.columns import table_from_rows, tables_from_columns
from collector.config import Config
from collector.metrics import Metrics
from collector.store import BatchItem
from hostflow.records import (
    COLUMNS_MEDIA_TYPE,
    FLOW_FIELDS,
    NAME_FIELDS,
    SCHEMA_VERSION,
    ColumnsError,
    ContractError,
    read_columns_header,
)

log = logging.getLogger("collector.api")
ARROW_STREAM = "application/vnd.apache.arrow.stream"
MAX_BATCH_ID = 200


class HttpError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # short label for the rejected-by-reason counter
        self.message = message


@dataclass
class ApiState:
    config: Config
    store: Any
    submit: Callable[[Callable[[], Any]], Any]  # writer.submit: fn → concurrent Future
    metrics: Metrics
    started: float = field(default_factory=time.time)
    queue_depth: Callable[[], int] = lambda: 0


class GroupCommit:
    """Batches that arrive while the writer is busy are stored together, in one transaction, as soon
    as it is free (group commit): a lone batch waits for nobody, and under load DuckDB gets fewer,
    larger inserts. Runs on the event loop; the store call runs on the writer thread."""

    def __init__(
        self,
        store: Any,
        submit: Callable[[Callable[[], Any]], Any],
        metrics: Metrics | None = None,
        max_rows: int = 1_000_000,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.submit = submit
        self.max_rows = max_rows
        self._waiting: list[tuple[BatchItem, asyncio.Future]] = []
        self._busy = False

    async def write(self, item: BatchItem) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if not self._busy:
            self._start()
        return await future

    @staticmethod
    def _rows(item: BatchItem) -> int:
        return sum(t.num_rows for t in (item.flows, item.names) if t is not None)

    def _start(self) -> None:
        group: list[tuple[BatchItem, asyncio.Future]] = []
        rows = 0
        while self._waiting and (not group or rows + self._rows(self._waiting[0][0]) <= self.max_rows):
            group.append(self._waiting.pop(0))
            rows += self._rows(group[-1][0])
        items = [item for item, _ in group]
        if self.metrics is not None:
            self.metrics.inc("write_groups_total")
            self.metrics.inc("write_group_batches_total", len(items))
        self._busy = True
        done = asyncio.wrap_future(self.submit(lambda: self.store.ingest_columns_many(items)))
        done.add_done_callback(lambda task: self._finish(group, task))

    def _finish(self, group: list[tuple[BatchItem, asyncio.Future]], task: asyncio.Future) -> None:
        self._busy = False
        failure = task.exception() if not task.cancelled() else RuntimeError("write cancelled")
        answers = [failure] * len(group) if failure is not None else task.result()
        for (_, future), answer in zip(group, answers, strict=True):
            if future.done():
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        if self._waiting:
            self._start()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise HttpError(413, "too_large", f"body of {declared} bytes is over the limit of {limit}")
        except ValueError:
            raise HttpError(400, "bad_request", "Content-Length is not a number") from None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, "too_large", f"body is over the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise HttpError(400, "disconnect", "client went away before sending the whole body") from None
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise HttpError(400, "bad_gzip", f"body is not valid gzip: {exc}") from None
        if len(body) > limit or inflater.unconsumed_tail:
            raise HttpError(413, "too_large", f"decompressed body is over the limit of {limit} bytes")
    elif encoding not in ("", "identity"):
        raise HttpError(400, "bad_encoding", f"Content-Encoding {encoding!r} is not supported (use gzip)")
    return body


def _parse_envelope(body: bytes, admin: bool = False) -> dict[str, Any]:
    try:
        batch = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, "bad_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(batch, dict):
        raise HttpError(400, "bad_envelope", "body must be a JSON object (the batch envelope)")
    version = batch.get("schema_version")
    if version != SCHEMA_VERSION:
        raise HttpError(
            400, "schema_version", f"schema_version: got {version!r}, this collector accepts {SCHEMA_VERSION}"
        )
    _check_envelope(batch, admin)
    for key in ("flow_fields", "name_fields", "flows", "names"):
        if not isinstance(batch.get(key, []), list):
            raise HttpError(400, "bad_envelope", f"{key}: expected a list")
    return batch


def _check_probe(batch: dict[str, Any], token_probe: str | None) -> None:
    if token_probe is not None and batch["probe_id"] != token_probe:
        raise HttpError(
            403, "forbidden", f"this token belongs to probe {token_probe!r}, not {batch['probe_id']!r}"
        )


def _check_envelope(batch: dict[str, Any], admin: bool) -> None:
    batch_id = batch.get("batch_id")
    if not isinstance(batch_id, str) or not batch_id or len(batch_id) > MAX_BATCH_ID:
        raise HttpError(400, "bad_envelope", f"batch_id: expected text of 1..{MAX_BATCH_ID} characters")
    if not isinstance(batch.get("probe_id", ""), str) or not (batch.get("probe_id") or admin):
        raise HttpError(400, "bad_envelope", "probe_id: expected non-empty text")
    if not isinstance(batch.get("source", ""), str):
        raise HttpError(400, "bad_envelope", "source: expected text")
    if not isinstance(batch.get("health") or {}, dict):
        raise HttpError(400, "bad_envelope", "health: expected an object")


def _parse_columns(
    body: bytes, admin: bool, token_probe: str | None
) -> tuple[dict[str, Any], pa.Table, pa.Table]:
    """A columnar body: the envelope (and the token's probe) is checked before any buffer is read."""
    try:
        header, _ = read_columns_header(body)
    except ColumnsError as exc:
        raise HttpError(400, exc.reason, str(exc)) from None
    _check_envelope(header, admin)
    _check_probe(header, token_probe)
    try:
        _, flows, names = tables_from_columns(body, probe_id_required=not admin)
    except ColumnsError as exc:
        raise HttpError(400, exc.reason, str(exc)) from None
    except ContractError as exc:
        raise HttpError(400, "bad_record", str(exc)) from None
    return header, flows, names


def _tables(batch: dict[str, Any], admin: bool = False) -> tuple[pa.Table, pa.Table]:
    # an import may carry several probes' records; a probe batch carries only its own
    probe_id = None if admin else batch["probe_id"]
    tables = []
    try:
        for kind, fields in (("flow", FLOW_FIELDS), ("name", NAME_FIELDS)):
            rows = batch.get(f"{kind}s") or []
            declared = batch.get(f"{kind}_fields") or ([] if rows else list(fields))
            tables.append(table_from_rows(kind, declared, rows, probe_id))
    except ContractError as exc:
        raise HttpError(400, "bad_record", str(exc)) from None
    return tables[0], tables[1]


def build_app(state: ApiState) -> Starlette:
    config = state.config
    metrics = state.metrics
    context = queries.Context(state.store, config.intranet, Rules(config.grace_s, config.validity_s))
    group = GroupCommit(state.store, state.submit, metrics)

    async def store_batch(request: Request, *, admin: bool) -> Response:
        limit = config.max_import_body if admin else config.max_body
        origin = "import" if admin else "batch"
        try:
            token = _bearer(request)
            if admin:
                if not config.admin_token or token is None or token != config.admin_token:
                    raise HttpError(
                        401, "unauthorized", "import needs the admin token (Authorization: Bearer …)"
                    )
                token_probe = None
            else:
                if token is None or token not in config.tokens:
                    raise HttpError(
                        401, "unauthorized", "missing or unknown probe token (Authorization: Bearer …)"
                    )
                token_probe = config.tokens[token]
            body = await _read_body(request, limit)
            media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
            encoding = "columns" if media_type == COLUMNS_MEDIA_TYPE else "json"
            if media_type == COLUMNS_MEDIA_TYPE:
                batch, flows, names = await run_in_threadpool(_parse_columns, body, admin, token_probe)
            else:
                batch = await run_in_threadpool(_parse_envelope, body, admin)
                _check_probe(batch, token_probe)
                flows, names = await run_in_threadpool(_tables, batch, admin)
        except HttpError as exc:
            metrics.inc("batches_rejected_total", reason=exc.reason)
            log.warning(
                "event=batch_rejected origin=%s status=%d reason=%s detail=%r",
                origin,
                exc.status,
                exc.reason,
                exc.message,
            )
            return _error(exc.status, exc.message)
        batch_id = batch["batch_id"]
        health = batch.get("health") or None

        source = (batch.get("source") or "import")[:200] if admin else "probe"

        try:
            result = await group.write(
                BatchItem(batch_id, source, flows, names, health, batch.get("probe_id") or None)
            )
        except Exception as exc:  # the store failed: the sender keeps the batch and retries
            metrics.inc("store_errors_total")
            metrics.inc("batches_rejected_total", reason="store_unavailable")
            log.error("event=store_failed batch_id=%r error=%r", batch_id, str(exc))
            return _error(503, f"store unavailable, retry later: {exc}")
        metrics.inc("batches_received_total", origin=origin)
        if result.duplicate:
            metrics.inc("batches_duplicate_total", origin=origin)
        else:
            metrics.inc("batches_stored_total", origin=origin)
            metrics.inc("flows_stored_total", result.flows, origin=origin)
            metrics.inc("names_stored_total", result.names, origin=origin)
            if flows.num_rows and not admin:
                newest = flows.column("flow_end").cast(pa.int64()).to_numpy().max()
                metrics.set("ingest_lag_seconds", max(0.0, time.time() - newest / 1e6))
        log.info(
            "event=batch_stored origin=%s encoding=%s probe_id=%s batch_id=%r flows=%d names=%d duplicate=%s",
            origin, encoding, batch["probe_id"], batch_id, result.flows, result.names, result.duplicate,
        )  # fmt: skip
        return JSONResponse(
            {
                "batch_id": batch_id,
                "flows": result.flows,
                "names": result.names,
                "duplicate": result.duplicate,
            }
        )

    async def batches(request: Request) -> Response:
        return await store_batch(request, admin=False)

    async def import_batch(request: Request) -> Response:
        return await store_batch(request, admin=True)

    def _query_allowed(request: Request) -> bool:
        return not config.query_token or _bearer(request) in (config.query_token, config.admin_token or None)

    async def run_query(request: Request) -> Response:
        name = request.path_params["name"]
        if not _query_allowed(request):
            metrics.inc("query_errors_total", reason="unauthorized")
            return _error(401, "this collector needs the query token (Authorization: Bearer …)")
        if name not in queries.REGISTRY:
            metrics.inc("query_errors_total", reason="unknown_query")
            return _error(404, f"unknown query {name!r}; GET /api/v1/queries lists them")
        try:
            body = await _read_body(request, 1024 * 1024)
            params = orjson.loads(body) if body.strip() else {}
        except HttpError as exc:
            return _error(exc.status, exc.message)
        except orjson.JSONDecodeError as exc:
            metrics.inc("query_errors_total", reason="bad_json")
            return _error(400, f"parameters are not valid JSON: {exc}")
        try:
            table = await run_in_threadpool(queries.run, state.store, name, params, context)
        except queries.ParamError as exc:
            metrics.inc("query_errors_total", reason="bad_parameter")
            return _error(400, str(exc))
        except Exception as exc:
            metrics.inc("query_errors_total", reason="failed")
            log.exception("event=query_failed query=%s", name)
            return _error(503, f"query {name} failed: {exc}")
        metrics.inc("queries_total", query=name)
        if ARROW_STREAM in request.headers.get("accept", ""):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            return Response(sink.getvalue().to_pybytes(), media_type=ARROW_STREAM)
        payload = {"columns": table.column_names, "rows": [list(r.values()) for r in table.to_pylist()]}
        return Response(orjson.dumps(payload), media_type="application/json")

    async def list_queries(request: Request) -> Response:
        return Response(orjson.dumps(queries.describe()), media_type="application/json")

    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "schema_version": SCHEMA_VERSION,
                "uptime_s": round(time.time() - state.started, 3),
                "write_queue": state.queue_depth(),
            }
        )

    async def metrics_text(request: Request) -> Response:
        metrics.set("write_queue_depth", state.queue_depth())
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return Starlette(
        routes=[
            Route("/api/v1/batches", batches, methods=["POST"]),
            Route("/api/v1/import", import_batch, methods=["POST"]),
            Route("/api/v1/query/{name}", run_query, methods=["POST"]),
            Route("/api/v1/queries", list_queries, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics_text, methods=["GET"]),
        ]
    )
