"""The DuckDB store: schema and migrations, atomic idempotent batch writes, retention, and the
primitive scans the named queries (collector/queries.py) are built from.

One Store object owns the database file (DuckDB locks the whole file, see DESIGN.md). Writes are
serialised by a lock (the server funnels them through one writer thread anyway); queries run on
their own cursors, so they never wait for a write.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from collector.columns import conform, table_from_flows, table_from_names
from hostflow.records import FLOW_FIELDS, FLOW_TYPES, NAME_FIELDS, NAME_TYPES, Flow, Name

log = logging.getLogger("collector.store")

HEALTH_COLUMNS: dict[str, str] = {
    "hostname": "VARCHAR",
    "version": "VARCHAR",
    "iface": "VARCHAR",
    "packets_captured": "BIGINT",
    "kernel_drops": "BIGINT",
    "if_drops": "BIGINT",
    "parse_errors": "VARCHAR",  # JSON text {"reason": n}
    "flows_exported": "BIGINT",
    "flows_evicted": "BIGINT",
    "spool_bytes": "BIGINT",
    "spool_batches": "BIGINT",
    "spool_dropped_batches": "BIGINT",
    "uptime_s": "DOUBLE",
}


def _columns_sql(types: dict[str, str]) -> str:
    return ", ".join(f"{name} {sql_type}" for name, sql_type in types.items())


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


# Ordered; each runs in its own transaction and is recorded in schema_migrations. Never edit a
# released step: add a new one. Columns added to records.py later are added by _reconcile_columns.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "flows, names, batches, probe_health",
        (
            f"CREATE TABLE flows ({_columns_sql(FLOW_TYPES)})",
            f"CREATE TABLE names ({_columns_sql(NAME_TYPES)})",
            "CREATE TABLE batches (batch_id VARCHAR PRIMARY KEY, probe_id VARCHAR, source VARCHAR,"
            " flows BIGINT, names BIGINT, received_at TIMESTAMP)",
            "CREATE TABLE probe_health (probe_id VARCHAR, source VARCHAR, ts TIMESTAMP, received_at TIMESTAMP, "
            f"{_columns_sql(HEALTH_COLUMNS)}, raw VARCHAR)",
        ),
    ),
    Migration(
        2,
        "sources: per probe / exporter counters (backfilled from batches)",
        (
            "CREATE TABLE sources (probe_id VARCHAR, source VARCHAR, first_seen TIMESTAMP, last_seen TIMESTAMP,"
            " batches BIGINT, flows BIGINT, names BIGINT, PRIMARY KEY (probe_id, source))",
            "INSERT INTO sources SELECT probe_id, source, min(received_at), max(received_at), count(*),"
            " sum(flows)::BIGINT, sum(names)::BIGINT FROM batches GROUP BY probe_id, source",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


@dataclass(frozen=True)
class IngestResult:
    batch_id: str | None
    flows: int
    names: int
    duplicate: bool = False


def open_store(config: Any) -> Any:
    """The configured backend: a DuckDB Store, or the ClickHouse one (collector/clickhouse.py)."""
    if getattr(config, "backend", "duckdb") == "clickhouse":
        from collector.clickhouse import open_clickhouse

        return open_clickhouse(config)
    return Store(config.db, retention_days=config.retention_days)


def apply_migrations(con: duckdb.DuckDBPyConnection, upto: int | None = None) -> list[int]:
    """Bring the schema up to ``upto`` (default: latest); returns the versions applied now."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, description VARCHAR,"
        " applied_at TIMESTAMP)"
    )
    done = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    newer = [v for v in done if v > SCHEMA_VERSION]
    if newer:
        raise RuntimeError(
            f"database schema version {max(newer)} is newer than this collector's {SCHEMA_VERSION}: upgrade hostflow"
        )
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done or (upto is not None and migration.version > upto):
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            for statement in migration.statements:
                con.execute(statement)
            con.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, now()::TIMESTAMP)",
                [migration.version, migration.description],
            )
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        log.info("event=migration version=%d description=%r", migration.version, migration.description)
        applied.append(migration.version)
    return applied


def _reconcile_columns(con: duckdb.DuckDBPyConnection) -> None:
    """Add contract columns that records.py gained after the tables were made (defaults fill old rows)."""
    for table, types in (("flows", FLOW_TYPES), ("names", NAME_TYPES)):
        present = {row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()}
        for name, sql_type in types.items():
            if name not in present:
                default = "''" if sql_type == "VARCHAR" else ("[]" if sql_type.endswith("[]") else "0")
                con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type} DEFAULT {default}")


def _time_sorted(table: pa.Table, column: str) -> pa.Table:
    """The table ordered by ``column`` (stable). Sorting in Arrow, and only when the batch is out of
    order, costs a fraction of an ORDER BY inside the INSERT, which halved DuckDB's insert rate."""
    times = table.column(column)
    if table.num_rows < 2 or pc.all(pc.less_equal(times[:-1], times[1:])).as_py():
        return table
    return table.take(pc.sort_indices(times))


def _us(value: Any) -> int | None:
    """Timestamp column value (datetime or None) → µs."""
    if value is None:
        return None
    from hostflow.records import to_us

    return to_us(value)


class BatchItem(NamedTuple):
    """One batch for ingest_columns_many: the arguments of ingest_columns."""

    batch_id: str | None
    source: str
    flows: pa.Table | None
    names: pa.Table | None = None
    health: dict[str, Any] | None = None
    probe_id: str | None = None


@dataclass(frozen=True)
class _Prepared:
    batch_id: str | None
    source: str
    flows: pa.Table | None
    names: pa.Table | None
    health: dict[str, Any] | None
    probe_id: str
    n_flows: int
    n_names: int


def _prepare(item: BatchItem) -> _Prepared:
    """Tables in the store's schema, each sorted by time; the probe id from the rows if not given."""
    flows = (
        _time_sorted(conform(item.flows, "flow"), "flow_start")
        if item.flows is not None and item.flows.num_rows
        else None
    )
    names = (
        _time_sorted(conform(item.names, "name"), "ts")
        if item.names is not None and item.names.num_rows
        else None
    )
    probe_id = item.probe_id
    if probe_id is None:
        for table in (flows, names):
            if table is not None:
                probe_id = table.column("probe_id")[0].as_py()
                break
    return _Prepared(
        item.batch_id, item.source, flows, names, item.health, probe_id or "",
        flows.num_rows if flows is not None else 0, names.num_rows if names is not None else 0,
    )  # fmt: skip


class RecordIngest:
    """What every backend shares above its own ``ingest_columns``: records → Arrow → one batch."""

    def ingest(
        self,
        batch_id: str | None,
        source: str,
        flows: Sequence[Flow],
        names: Sequence[Name],
        health: dict[str, Any] | None = None,
        probe_id: str | None = None,
    ) -> IngestResult:
        """Store records as one batch; a batch_id already stored → duplicate, nothing written."""
        flow_table = table_from_flows(flows, probe_id)
        name_table = table_from_names(names, probe_id)
        return self.ingest_columns(batch_id, source, flow_table, name_table, health, probe_id=probe_id)

    def ingest_columns_many(self, items: Sequence[BatchItem]) -> list[IngestResult | Exception]:
        """Several batches: here one transaction each (a backend may group them)."""
        answers: list[IngestResult | Exception] = []
        for item in items:
            try:
                answers.append(self.ingest_columns(*item[:5], probe_id=item.probe_id))  # type: ignore[attr-defined]
            except Exception as exc:
                answers.append(exc)
        return answers


class Store(RecordIngest):
    """DuckDB implementation of the storage interface (see collector/backend.py)."""

    def __init__(self, path: str, *, retention_days: float | None = None, read_only: bool = False) -> None:
        self.path = str(path)
        self.retention_days = retention_days
        self.read_only = read_only
        if self.path != ":memory:" and not read_only:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(self.path, read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise RuntimeError(
                    f"{self.path} is open in another process (a running collector?); "
                    "use its HTTP API, or stop it first"
                ) from None
            raise
        self._write_lock = threading.Lock()
        if not read_only:
            apply_migrations(self._con)
            _reconcile_columns(self._con)

    # ------------------------------------------------------------ writes

    def ingest_columns(
        self,
        batch_id: str | None,
        source: str,
        flows: pa.Table | None,
        names: pa.Table | None = None,
        health: dict[str, Any] | None = None,
        *,
        probe_id: str | None = None,
    ) -> IngestResult:
        """Fast path: Arrow tables with the contract's columns (times as µs ints or timestamps).

        Flows are written sorted by flow_start so DuckDB's per-row-group min/max (zone maps) skip
        everything outside a queried time window; no index is needed.
        """
        batch = _prepare(BatchItem(batch_id, source, flows, names, health, probe_id))
        with self._write_lock:
            return self._write_group([batch])[0]

    def ingest_columns_many(self, items: Sequence[BatchItem]) -> list[IngestResult | Exception]:
        """Several batches in ONE transaction (group commit): DuckDB pays about 10 ms a commit, and an
        insert of a full row group (122,880 rows) or more goes straight to the database file instead
        of the WAL. Each batch stays atomic and idempotent; if the group fails, each batch is tried
        on its own, so one bad batch cannot sink the others. Returns a result or the error per item."""
        results: list[IngestResult | Exception] = []
        prepared: list[_Prepared] = []
        for item in items:
            try:
                prepared.append(_prepare(item))
            except Exception as exc:  # a table that does not conform is that batch's answer
                results.append(exc)
                prepared.append(None)  # type: ignore[arg-type]
        ready = [p for p in prepared if p is not None]
        with self._write_lock:
            try:
                stored = iter(self._write_group(ready) if ready else [])
                return [next(stored) if p is not None else results.pop(0) for p in prepared]
            except Exception as exc:
                if len(ready) == 1:
                    return [exc if p is not None else results.pop(0) for p in prepared]
        answers: list[IngestResult | Exception] = []
        for item in items:
            try:
                answers.append(self.ingest_columns(*item[:5], probe_id=item.probe_id))
            except Exception as exc:
                answers.append(exc)
        return answers

    def _write_group(self, batches: list[_Prepared]) -> list[IngestResult]:
        """Under the write lock: one transaction for every batch given; duplicates are skipped."""
        con = self._con
        con.execute("BEGIN TRANSACTION")
        try:
            ids = [b.batch_id for b in batches if b.batch_id is not None]
            # one point look-up per id: the primary key's index answers it, a list filter would scan
            known = {
                i for i in ids if con.execute("SELECT 1 FROM batches WHERE batch_id = ?", [i]).fetchone()
            }
            fresh: list[_Prepared] = []
            results: list[IngestResult] = []
            for batch in batches:
                if batch.batch_id is not None and batch.batch_id in known:
                    results.append(IngestResult(batch.batch_id, 0, 0, duplicate=True))
                    continue
                if batch.batch_id is not None:
                    known.add(batch.batch_id)  # the same id twice in one group: the first one counts
                fresh.append(batch)
                results.append(IngestResult(batch.batch_id, batch.n_flows, batch.n_names))
            if not fresh:
                con.execute("ROLLBACK")
                return results
            for kind, fields, column in (("flows", FLOW_FIELDS, "flow_start"), ("names", NAME_FIELDS, "ts")):
                tables = [getattr(b, kind) for b in fresh if getattr(b, kind) is not None]
                if not tables:
                    continue
                # each table is sorted already: in order of their first times they usually need no sort
                tables.sort(key=lambda t: t.column(column)[0].value)
                table = tables[0] if len(tables) == 1 else _time_sorted(pa.concat_tables(tables), column)
                con.register(f"_incoming_{kind}", table)
                cols = ", ".join(fields)
                con.execute(f"INSERT INTO {kind} ({cols}) SELECT {cols} FROM _incoming_{kind}")
                con.unregister(f"_incoming_{kind}")
            now = time.time_ns() // 1000
            counts: dict[tuple[str, str], list[int]] = {}
            for batch in fresh:
                if batch.batch_id is not None:
                    con.execute(
                        "INSERT INTO batches VALUES (?, ?, ?, ?, ?, make_timestamp(?))",
                        [batch.batch_id, batch.probe_id, batch.source, batch.n_flows, batch.n_names, now],
                    )
                total = counts.setdefault((batch.probe_id, batch.source), [0, 0, 0])
                total[0] += 1 if batch.batch_id is not None else 0
                total[1] += batch.n_flows
                total[2] += batch.n_names
                if batch.health:
                    self._insert_health(con, batch.probe_id, batch.source, batch.health, now)
            for (probe_id, source), (n_batches, n_flows, n_names) in counts.items():
                con.execute(
                    "INSERT INTO sources VALUES (?, ?, make_timestamp(?), make_timestamp(?), ?, ?, ?) "
                    "ON CONFLICT (probe_id, source) DO UPDATE SET last_seen = excluded.last_seen, "
                    "batches = sources.batches + excluded.batches, flows = sources.flows + excluded.flows, "
                    "names = sources.names + excluded.names",
                    [probe_id, source, now, now, n_batches, n_flows, n_names],
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return results

    @staticmethod
    def _insert_health(
        con: duckdb.DuckDBPyConnection, probe_id: str, source: str, health: dict, now: int
    ) -> None:
        values: list[Any] = []
        for key, sql_type in HEALTH_COLUMNS.items():
            value = health.get(key)
            if key == "parse_errors":
                value = json.dumps(value or {}, sort_keys=True)
            elif value is not None and sql_type == "BIGINT":
                value = int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
            elif value is not None and sql_type == "DOUBLE":
                value = (
                    float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
                )
            elif value is not None:
                value = str(value)
            values.append(value)
        ts = health.get("ts")
        try:
            from hostflow.records import to_us

            ts_us = to_us(ts) if ts is not None else now
        except ValueError:
            ts_us = now
        placeholders = ", ".join("?" for _ in HEALTH_COLUMNS)
        con.execute(
            f"INSERT INTO probe_health VALUES (?, ?, make_timestamp(?), make_timestamp(?), {placeholders}, ?)",
            [probe_id, source, ts_us, now, *values, json.dumps(health, sort_keys=True, default=str)],
        )

    def apply_retention(self, now_us: int | None = None) -> int:
        """Delete data older than retention_days; returns the number of flows deleted."""
        if not self.retention_days:
            return 0
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        cutoff = now_us - int(self.retention_days * 86_400_000_000)
        with self._write_lock:
            con = self._con
            con.execute("BEGIN TRANSACTION")
            try:
                deleted = con.execute(
                    "DELETE FROM flows WHERE flow_end < make_timestamp(?)", [cutoff]
                ).fetchone()[0]
                con.execute("DELETE FROM names WHERE ts < make_timestamp(?)", [cutoff])
                con.execute("DELETE FROM probe_health WHERE ts < make_timestamp(?)", [cutoff])
                con.execute("DELETE FROM batches WHERE received_at < make_timestamp(?)", [cutoff])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        log.info("event=retention cutoff_us=%d flows_deleted=%d", cutoff, deleted)
        return int(deleted)

    def checkpoint(self) -> None:
        with self._write_lock:
            self._con.execute("CHECKPOINT")

    def close(self) -> None:
        with self._write_lock:
            if self._con is None:
                return
            if not self.read_only:
                try:
                    self._con.execute("CHECKPOINT")
                except duckdb.Error as exc:
                    log.warning("event=checkpoint_failed error=%r", str(exc))
            self._con.close()
            self._con = None  # type: ignore[assignment]

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ reads

    def sql(self, statement: str, params: Sequence[Any] | dict | None = None) -> pa.Table:
        """Run one read on its own cursor (safe beside the writer). Internal: never reachable from the network."""
        cursor = self._con.cursor()
        try:
            return cursor.sql(statement, params=params or None).to_arrow_table()
        finally:
            cursor.close()

    def query(self, name: str, params: dict[str, Any]) -> pa.Table:
        """Run a named query (docs/CONTRACT.md); raises queries.ParamError for bad parameters."""
        from collector import queries

        return queries.run(self, name, params)

    def schema_versions(self) -> list[int]:
        return (
            self.sql("SELECT version FROM schema_migrations ORDER BY version").column("version").to_pylist()
        )

    def counts(self) -> dict[str, int]:
        row = self.sql(
            "SELECT (SELECT count(*) FROM flows) AS flows, (SELECT count(*) FROM names) AS names,"
            " (SELECT count(*) FROM batches) AS batches"
        ).to_pylist()[0]
        return {k: int(v) for k, v in row.items()}

    # ------------------------------------------------------------ primitive scans (backend interface)

    def _window(
        self, start: int, end: int, probe_id: str | None, time_col: str = "flow_start"
    ) -> tuple[str, list]:
        where = f"{time_col} >= make_timestamp(?) AND {time_col} < make_timestamp(?)"
        params: list[Any] = [start, end]
        if probe_id:
            where += " AND probe_id = ?"
            params.append(probe_id)
        return where, params

    def flow_time_range(self, probe_id: str | None) -> dict[str, Any]:
        where, params = ("probe_id = ?", [probe_id]) if probe_id else ("TRUE", [])
        row = self.sql(
            f"SELECT epoch_us(min(flow_start)) AS first_seen, epoch_us(max(flow_end)) AS last_seen,"
            f" count(*)::BIGINT AS flows FROM flows WHERE {where}",
            params,
        ).to_pylist()[0]
        return row

    def source_summary(self) -> pa.Table:
        return self.sql(
            "SELECT s.probe_id, s.source, epoch_us(s.last_seen) AS last_seen, s.batches, s.flows, h.hostname,"
            " h.version, h.iface, h.packets_captured, h.kernel_drops, h.parse_errors, h.flows_exported,"
            " h.spool_bytes, h.spool_batches FROM sources s LEFT JOIN (SELECT * FROM probe_health"
            " QUALIFY row_number() OVER (PARTITION BY probe_id ORDER BY received_at DESC) = 1) h"
            " ON h.probe_id = s.probe_id ORDER BY s.probe_id, s.source"
        )

    def address_totals(self, start: int, end: int, probe_id: str | None) -> pa.Table:
        """Per address seen on either side: bytes sent/received, packets, flows, distinct peers, times."""
        where, params = self._window(start, end, probe_id)
        return self.sql(
            "SELECT addr, sum(bytes_sent)::BIGINT AS bytes_sent, sum(bytes_received)::BIGINT AS bytes_received,"
            " sum(packets)::BIGINT AS packets, count(*)::BIGINT AS flows, count(DISTINCT peer)::BIGINT AS peers,"
            " epoch_us(min(flow_start)) AS first_seen, epoch_us(max(flow_end)) AS last_seen FROM ("
            f" SELECT src_addr AS addr, dst_addr AS peer, bytes AS bytes_sent, 0 AS bytes_received, packets,"
            f" flow_start, flow_end FROM flows WHERE {where}"
            " UNION ALL"
            f" SELECT dst_addr, src_addr, 0, bytes, packets, flow_start, flow_end FROM flows WHERE {where}"
            ") GROUP BY addr",
            params + params,
        )

    _HOST_SIDE = (
        "CASE WHEN src_addr = $host THEN 'sent' ELSE 'received' END AS direction,"
        " CASE WHEN src_addr = $host THEN dst_addr ELSE src_addr END AS peer_addr,"
        " CASE WHEN src_addr = $host THEN dst_port ELSE src_port END AS peer_port,"
        " CASE WHEN src_addr = $host THEN src_port ELSE dst_port END AS host_port"
    )

    def host_flow_rows(self, host: str, start: int, end: int, probe_id: str | None, limit: int) -> pa.Table:
        """Every flow of ``host`` in the window, oriented from the host's side, oldest first."""
        probe = " AND probe_id = $probe" if probe_id else ""
        params: dict[str, Any] = {"host": host, "start": start, "end": end, "limit": limit}
        if probe_id:
            params["probe"] = probe_id
        return self.sql(
            f"SELECT epoch_us(flow_start) AS flow_start, epoch_us(flow_end) AS flow_end, {self._HOST_SIDE},"
            " protocol, packets::BIGINT AS packets, bytes::BIGINT AS bytes, tcp_flags, initiator, end_reason,"
            " dst_mac, probe_id, sampling FROM flows WHERE flow_start >= make_timestamp($start)"
            f" AND flow_start < make_timestamp($end) AND (src_addr = $host OR dst_addr = $host){probe}"
            " ORDER BY flow_start, peer_addr, peer_port, host_port, direction, protocol, flow_end, bytes, packets,"
            " probe_id LIMIT $limit",  # a total order: every backend returns (and cuts) the same rows
            params,
        )

    FLOW_ROW_ORDER = (
        "flow_start, src_addr, dst_addr, src_port, dst_port, protocol, flow_end, bytes, packets, probe_id,"
        " tcp_flags, initiator, end_reason, sampling, dst_mac"
    )

    def flow_rows(self, start: int, end: int, probe_id: str | None) -> pa.Table:
        """Every flow in the window as stored (src/dst), oldest first, in a total order every backend shares."""
        where, params = self._window(start, end, probe_id)
        return self.sql(
            "SELECT epoch_us(flow_start) AS flow_start, epoch_us(flow_end) AS flow_end, src_addr, src_port,"
            " dst_addr, dst_port, protocol, packets::BIGINT AS packets, bytes::BIGINT AS bytes, tcp_flags,"
            f" initiator, end_reason, dst_mac, probe_id, sampling FROM flows WHERE {where}"
            f" ORDER BY {self.FLOW_ROW_ORDER}",
            params,
        )

    def host_flow_groups(
        self, host: str, start: int, end: int, probe_id: str | None, bucket_us: int
    ) -> pa.Table:
        """The host's flows summed per (time bucket, direction, peer, service port, protocol).

        ``service_port`` is the server side's port: the initiator tells which side that is; without
        it the lower port is taken. ``peer_is_server`` says whether it is the peer's port.
        """
        probe = " AND probe_id = $probe" if probe_id else ""
        params: dict[str, Any] = {"host": host, "start": start, "end": end, "bucket": bucket_us}
        if probe_id:
            params["probe"] = probe_id
        return self.sql(
            "SELECT (epoch_us(flow_start) // $bucket) * $bucket AS bucket_start, direction, peer_addr,"
            " peer_is_server, CASE WHEN protocol IN (1, 58) THEN 0 WHEN peer_is_server THEN peer_port"
            " ELSE host_port END AS service_port,"
            " protocol, bcast_mac, sum(bytes)::BIGINT AS bytes, sum(packets)::BIGINT AS packets,"
            " count(*)::BIGINT AS flows, epoch_us(min(flow_start)) AS first_seen,"
            " epoch_us(max(flow_end)) AS last_seen FROM ("
            f" SELECT flow_start, flow_end, bytes, packets, protocol, {self._HOST_SIDE},"
            " CASE WHEN initiator = 'src' THEN src_addr = $host WHEN initiator = 'dst' THEN src_addr <> $host"
            "  WHEN src_addr = $host THEN dst_port <= src_port ELSE src_port <= dst_port END AS peer_is_server,"
            " dst_mac = 'ff:ff:ff:ff:ff:ff' AS bcast_mac FROM flows WHERE flow_start >= make_timestamp($start)"
            f" AND flow_start < make_timestamp($end) AND (src_addr = $host OR dst_addr = $host){probe}"
            ") GROUP BY ALL ORDER BY bucket_start, peer_addr",
            params,
        )

    def pair_groups(self, start: int, end: int, probe_id: str | None, since: int | None = None) -> pa.Table:
        """Flows summed per (src, dst, service port, protocol); ``since`` also returns each group's
        earliest flow since then (for "first flow ever")."""
        where, params = self._window(start if since is None else since, end, probe_id)
        return self.sql(
            "SELECT src_addr, dst_addr, protocol, CASE WHEN protocol IN (1, 58) THEN 0 WHEN initiator = 'src' THEN dst_port"
            " WHEN initiator = 'dst' THEN src_port ELSE least(src_port, dst_port) END AS service_port,"
            " CASE WHEN initiator = 'src' THEN dst_addr WHEN initiator = 'dst' THEN src_addr"
            " WHEN dst_port <= src_port THEN dst_addr ELSE src_addr END AS server_addr,"
            " sum(bytes) FILTER (WHERE flow_start >= make_timestamp(?))::BIGINT AS bytes,"
            " count(*) FILTER (WHERE flow_start >= make_timestamp(?))::BIGINT AS flows,"
            " epoch_us(min(flow_start)) AS first_ever,"
            " epoch_us(min(flow_start) FILTER (WHERE flow_start >= make_timestamp(?))) AS first_seen"
            f" FROM flows WHERE {where} GROUP BY ALL",
            [start, start, start, *params],
        )

    def name_candidates(self, addrs: Sequence[str], start: int, end: int) -> pa.Table:
        """Name records for these addresses seen in [start, end) (the caller widens the window)."""
        if not addrs:
            return self.sql(
                "SELECT epoch_us(ts) AS ts, addr, name, source, client_addr, ttl, cname_chain FROM names LIMIT 0"
            )
        wanted = sorted(set(addrs))
        # a bound list, not a registered Arrow table (no replacement scan to plan): a linear
        # list_contains is fastest for the usual few dozen peers, a hash semi-join for thousands
        match = "list_contains(?, addr)" if len(wanted) <= 256 else "addr IN (SELECT unnest(?))"
        return self.sql(
            "SELECT epoch_us(ts) AS ts, addr, name, source, client_addr, ttl, cname_chain FROM names"
            f" WHERE ts >= make_timestamp(?) AND ts < make_timestamp(?) AND {match} ORDER BY addr, ts",
            [start, end, wanted],
        )

    def names_search(
        self, start: int, end: int, client: str | None, addr: str | None, text: str | None, limit: int
    ) -> pa.Table:
        where = "ts >= make_timestamp(?) AND ts < make_timestamp(?)"
        params: list[Any] = [start, end]
        if client:
            where += " AND client_addr = ?"
            params.append(client)
        if addr:
            where += " AND addr = ?"
            params.append(addr)
        if text:
            where += " AND contains(name, ?)"
            params.append(text.lower())
        params.append(limit)
        return self.sql(
            "SELECT epoch_us(ts) AS ts, client_addr, addr, name, source, qtype, ttl::BIGINT AS ttl, cname_chain,"
            f" rcode::INTEGER AS rcode, probe_id FROM names WHERE {where}"
            " ORDER BY ts, addr, name, source, client_addr, probe_id, qtype, ttl, rcode LIMIT ?",
            params,
        )
