"""The ClickHouse storage backend: the same primitives as the DuckDB Store, on a sharded cluster.

The named queries (collector/queries.py) call a few backend primitives; this module implements
them in SQL that runs on Debian 12's clickhouse-server 18.16 (no DateTime64, no ASOF JOIN, no
window functions, no TTL) and on current releases. Newer features (LowCardinality, codecs, TTL
retention) are switched on only when the server's version has them (``Features``).

Backend primitives (the seam shared with collector/store.py; every one returns pyarrow data with
the column names the DuckDB Store returns, times as µs integers):

    ingest(batch_id, source, flows, names, health=None, probe_id=None) -> IngestResult
    ingest_columns(batch_id, source, flow_table, name_table, health=None, *, probe_id=None)
    flow_time_range(probe_id) -> {"first_seen", "last_seen", "flows"}
    source_summary() -> probe_id, source, last_seen, batches, flows, hostname, version, iface,
        packets_captured, kernel_drops, parse_errors, flows_exported, spool_bytes, spool_batches
    address_totals(start, end, probe_id) -> addr, bytes_sent, bytes_received, packets, flows,
        peers, first_seen, last_seen
    host_flow_rows(host, start, end, probe_id, limit) -> flow_start, flow_end, direction,
        peer_addr, peer_port, host_port, protocol, packets, bytes, tcp_flags, initiator,
        end_reason, dst_mac, probe_id, sampling
    host_flow_groups(host, start, end, probe_id, bucket_us) -> bucket_start, direction,
        peer_addr, peer_is_server, service_port, protocol, bcast_mac, bytes, packets, flows,
        first_seen, last_seen
    pair_groups(start, end, probe_id, since=None) -> src_addr, dst_addr, protocol, service_port,
        server_addr, bytes, flows, first_ever, first_seen
    name_candidates(addrs, start, end) -> ts, addr, name, source, client_addr, ttl, cname_chain
    names_search(start, end, client, addr, text, limit) -> ts, client_addr, addr, name, source,
        qtype, ttl, cname_chain, rcode, probe_id
    query(name, params), apply_retention(now_us=None), counts(), schema_versions(), close()

Layout (docs/scale.md explains it): on every node a local ReplacingMergeTree table per kind
(``flows_local`` partitioned by day of flow_start, ordered by (flow_hour, src_addr, dst_addr,
flow_start, batch_id, row_no); ``names_local`` by (addr, ts, …)), and a Distributed table of the
same name without ``_local`` over the cluster. Sharding keys: flows by cityHash64(batch_id), so a
batch lands whole on one shard and a resent batch on the same one; names by cityHash64(addr), so
one address's names live together and attribution reads them with one indexed filter per shard.

Idempotency without transactions: every row carries (batch_id, row_no), both fixed by the batch's
content. A batch already in ``batches`` is answered as a duplicate; a batch whose earlier write
was cut short (collector killed) or that two collectors write at the same moment is written
again, and its rows are identical in the whole sorting key, on the same shard and partition: the
ReplacingMergeTree collapses them, and every read uses FINAL so they never count twice even
before the merge.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import queue
import re
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from clickhouse_driver import Client
from clickhouse_driver.errors import Error as ClickHouseError

from collector.columns import conform
from collector.store import HEALTH_COLUMNS, IngestResult, RecordIngest
from hostflow.records import FLOW_FIELDS, FLOW_TYPES, NAME_FIELDS, NAME_TYPES, to_us

log = logging.getLogger("collector.clickhouse")

US = 1_000_000
HOUR_US = 3600 * US
DEFAULT_PORT = 9000
NAME_CHUNK = 2000  # addresses per IN list (keeps each query far below max_query_size)
TABLE_EXISTS = 57  # ClickHouse error code: a concurrent CREATE … IF NOT EXISTS lost the race

# Contract types (records.py) → ClickHouse types. Times are Int64 µs: 18.16 has no DateTime64.
CH_TYPES: dict[str, str] = {
    "VARCHAR": "String",
    "TIMESTAMP": "Int64",
    "UTINYINT": "UInt8",
    "USMALLINT": "UInt16",
    "UINTEGER": "UInt32",
    "UBIGINT": "UInt64",
    "VARCHAR[]": "Array(String)",
}
# Few distinct values: LowCardinality where the server has it.
LOW_CARDINALITY = {"probe_id", "end_reason", "initiator", "source", "qtype", "src_mac", "dst_mac"}


class ClickHouseConfigError(ValueError):
    """A bad ClickHouse address or setting; the message says what is expected."""


@dataclass(frozen=True)
class ClickHouseSettings:
    """Where the cluster is: native-protocol addresses of every node, database, cluster, user."""

    hosts: tuple[str, ...]
    database: str = "hostflow"
    cluster: str = "hostflow"
    user: str = "default"
    password: str = ""
    secure: bool = False

    @classmethod
    def from_url(cls, url: str, password: str | None = None) -> ClickHouseSettings:
        """``clickhouse://USER:PASSWORD@HOST:PORT,HOST:PORT/DATABASE?cluster=NAME&secure=1``.

        List every node: the schema is created on each. ``password`` (e.g. read from a file)
        replaces the one in the URL, which is better left out of command lines.
        """
        parsed = urllib.parse.urlsplit(url.strip())
        if parsed.scheme not in ("clickhouse", "clickhouses"):
            raise ClickHouseConfigError(
                f"clickhouse: {url!r} is not a clickhouse://[user[:password]@]host:port[,host:port…]/database URL"
            )
        userinfo, _, hostpart = parsed.netloc.rpartition("@")
        user, _, url_password = userinfo.partition(":")
        hosts = []
        for item in hostpart.split(","):
            item = item.strip()
            if not item:
                continue
            if item.startswith("["):
                host, _, rest = item[1:].partition("]")
                port = rest[1:] if rest.startswith(":") else str(DEFAULT_PORT)
            elif item.count(":") == 1:
                host, port = item.split(":")
            else:
                host, port = item, str(DEFAULT_PORT)
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ClickHouseConfigError(f"clickhouse: {item!r} has no valid port")
            hosts.append(f"{host}:{int(port)}")
        if not hosts:
            raise ClickHouseConfigError(f"clickhouse: {url!r} names no host")
        database = parsed.path.strip("/") or "hostflow"
        query = dict(urllib.parse.parse_qsl(parsed.query))
        unknown = set(query) - {"cluster", "secure"}
        if unknown:
            raise ClickHouseConfigError(f"clickhouse: unknown URL option(s) {', '.join(sorted(unknown))}")
        for name in (database, query.get("cluster", "hostflow")):
            if not name.replace("_", "").isalnum():
                raise ClickHouseConfigError(f"clickhouse: {name!r} is not a plain database/cluster name")
        return cls(
            hosts=tuple(hosts),
            database=database,
            cluster=query.get("cluster", "hostflow"),
            user=urllib.parse.unquote(user) or "default",
            password=password if password is not None else urllib.parse.unquote(url_password),
            secure=parsed.scheme == "clickhouses" or query.get("secure", "") in ("1", "true"),
        )


@dataclass(frozen=True)
class Features:
    """What the server can do, from its version."""

    version: tuple[int, ...]

    @property
    def modern(self) -> bool:
        # 20.1 is where LowCardinality, column codecs and table TTL are all stable
        return self.version >= (20, 1)

    def string(self, column: str) -> str:
        return "LowCardinality(String)" if self.modern and column in LOW_CARDINALITY else "String"

    def codec(self, column: str) -> str:
        if not self.modern:
            return ""
        if column in ("flow_start", "flow_end", "ts"):
            return " CODEC(DoubleDelta, LZ4)"
        return ""


def _column_type(features: Features, column: str, contract_type: str) -> str:
    if contract_type == "VARCHAR":
        return features.string(column)
    return CH_TYPES[contract_type]


TTL_COLUMNS = {"flows_local": "flow_end", "names_local": "ts"}  # rows expire by these times


def ttl_days(retention_days: float | None) -> int | None:
    return max(1, int(round(retention_days))) if retention_days else None


def ttl_expression(column: str, days: int) -> str:
    return f"toDateTime(intDiv({column}, 1000000)) + INTERVAL {days} DAY"


def table_ddl(
    features: Features, database: str, cluster: str, retention_days: float | None = None
) -> list[str]:
    """CREATE statements for one node: local tables, then the Distributed tables over them."""
    db = database

    def columns(types: dict[str, str]) -> str:
        return ", ".join(f"{n} {_column_type(features, n, t)}{features.codec(n)}" for n, t in types.items())

    ttl_flows = ttl_names = ""
    days = ttl_days(retention_days)
    if features.modern and days:
        ttl_flows = f" TTL {ttl_expression(TTL_COLUMNS['flows_local'], days)}"
        ttl_names = f" TTL {ttl_expression(TTL_COLUMNS['names_local'], days)}"
    health = "probe_id String, source String, ts Int64, received_at Int64, raw String, batch_id String"
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, description String,"
        " applied_at DateTime) ENGINE = ReplacingMergeTree ORDER BY version",
        f"CREATE TABLE IF NOT EXISTS {db}.flows_local ({columns(FLOW_TYPES)}, batch_id String, row_no UInt32,"
        " flow_hour UInt32 DEFAULT intDiv(flow_start, 3600000000))"
        " ENGINE = ReplacingMergeTree PARTITION BY toDate(toDateTime(intDiv(flow_start, 1000000)))"
        f" ORDER BY (flow_hour, src_addr, dst_addr, flow_start, batch_id, row_no){ttl_flows}",
        f"CREATE TABLE IF NOT EXISTS {db}.names_local ({columns(NAME_TYPES)}, batch_id String, row_no UInt32)"
        " ENGINE = ReplacingMergeTree PARTITION BY toDate(toDateTime(intDiv(ts, 1000000)))"
        f" ORDER BY (addr, ts, batch_id, row_no){ttl_names}",
        # a row per probe batch (marker = 1: its id is stored), NetFlow flush (marker 0) or migrated
        # counters (``batches`` > 1); source counters are the sums over distinct batch_id
        f"CREATE TABLE IF NOT EXISTS {db}.batches_local (batch_id String, probe_id String, source String,"
        " batches UInt64, flows UInt64, names UInt64, received_at Int64, marker UInt8)"
        " ENGINE = ReplacingMergeTree ORDER BY batch_id",
        f"CREATE TABLE IF NOT EXISTS {db}.probe_health_local ({health})"
        " ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(toDateTime(intDiv(received_at, 1000000)))"
        " ORDER BY (probe_id, received_at, batch_id)",
        f"CREATE TABLE IF NOT EXISTS {db}.flows AS {db}.flows_local"
        f" ENGINE = Distributed({cluster}, {db}, flows_local, cityHash64(batch_id))",
        f"CREATE TABLE IF NOT EXISTS {db}.names AS {db}.names_local"
        f" ENGINE = Distributed({cluster}, {db}, names_local, cityHash64(addr))",
        f"CREATE TABLE IF NOT EXISTS {db}.batches AS {db}.batches_local"
        f" ENGINE = Distributed({cluster}, {db}, batches_local, cityHash64(batch_id))",
        f"CREATE TABLE IF NOT EXISTS {db}.probe_health AS {db}.probe_health_local"
        f" ENGINE = Distributed({cluster}, {db}, probe_health_local, cityHash64(probe_id))",
    ]


SCHEMA_VERSION = 1
SCHEMA_DESCRIPTION = "flows, names, batches, probe_health: local ReplacingMergeTree + Distributed"


def health_values(health: dict[str, Any]) -> dict[str, Any]:
    """The typed probe_health columns from a batch's health object (the DuckDB Store's rules)."""
    out: dict[str, Any] = {}
    for key, sql_type in HEALTH_COLUMNS.items():
        value = health.get(key)
        if key == "parse_errors":
            value = json.dumps(value or {}, sort_keys=True)
        elif value is not None and sql_type == "BIGINT":
            value = int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        elif value is not None and sql_type == "DOUBLE":
            value = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        elif value is not None:
            value = str(value)
        out[key] = value
    return out


def _split_host(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class ClickHouseStore(RecordIngest):
    """ClickHouse implementation of the storage interface; safe to share between threads."""

    def __init__(
        self,
        settings: ClickHouseSettings,
        *,
        retention_days: float | None = None,
        create: bool = True,
        connect_timeout: float = 10.0,
    ) -> None:
        self.settings = settings
        self.retention_days = retention_days
        self.connect_timeout = connect_timeout
        self.writer_id = uuid.uuid4().hex[:12]
        self._sequence = itertools.count(1)
        self._idle: queue.LifoQueue[Client] = queue.LifoQueue()
        self._closed = False
        with self._client() as client:
            info = client.execute("SELECT version()")[0][0]
        self.server_version = info
        self.features = Features(tuple(int(p) for p in info.split(".")[:3] if p.isdigit()))
        if create:
            self.ensure_schema()
        self.db = settings.database

    # ------------------------------------------------------------ connections

    def _new_client(self, address: str | None = None) -> Client:
        hosts = [address] if address else list(self.settings.hosts)
        # collectors start on different nodes so their inserts and queries spread over the cluster
        first = 0 if address else os.getpid() % len(hosts)
        ordered = hosts[first:] + hosts[:first]
        host, port = _split_host(ordered[0])
        return Client(
            host=host,
            port=port,
            user=self.settings.user,
            password=self.settings.password,
            secure=self.settings.secure,
            alt_hosts=",".join(ordered[1:]) or None,
            connect_timeout=self.connect_timeout,
            send_receive_timeout=300,
            settings={"insert_distributed_sync": 1, "max_query_size": 4 * 1024 * 1024},
        )

    @contextlib.contextmanager
    def _client(self) -> Iterator[Client]:
        """One connection per concurrent user (a clickhouse-driver Client is not thread-safe)."""
        try:
            client = self._idle.get_nowait()
        except queue.Empty:
            client = self._new_client()
        ok = False
        try:
            yield client
            ok = True
        finally:
            if ok and not self._closed:
                self._idle.put(client)
            else:
                client.disconnect()

    def execute(self, statement: str, params: Any = None, **kwargs: Any) -> Any:
        with self._client() as client:
            return client.execute(statement, params, **kwargs)

    def ensure_schema(self) -> None:
        """Create the database and tables on every node (there is no ZooKeeper for ON CLUSTER DDL)."""
        statements = table_ddl(
            self.features, self.settings.database, self.settings.cluster, self.retention_days
        )
        for address in self.settings.hosts:
            client = self._new_client(address)
            try:
                for statement in statements:
                    try:
                        client.execute(statement)
                    except ClickHouseError as exc:
                        if getattr(exc, "code", None) != TABLE_EXISTS:
                            raise
                self._reconcile_columns(client)
                self._reconcile_ttl(client)
                done = client.execute(
                    f"SELECT count() FROM {self.settings.database}.schema_migrations WHERE version = %(v)s",
                    {"v": SCHEMA_VERSION},
                )[0][0]
                if not done:
                    client.execute(
                        f"INSERT INTO {self.settings.database}.schema_migrations VALUES",
                        [(SCHEMA_VERSION, SCHEMA_DESCRIPTION, int(time.time()))],
                        types_check=True,
                    )
                newer = client.execute(
                    f"SELECT max(version) FROM {self.settings.database}.schema_migrations"
                )[0][0]
                if newer > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"ClickHouse schema version {newer} on {address} is newer than this collector's "
                        f"{SCHEMA_VERSION}: upgrade hostflow"
                    )
            finally:
                client.disconnect()

    def _reconcile_columns(self, client: Client) -> None:
        """Add contract columns that records.py gained after the tables were made."""
        db = self.settings.database
        for kind, types in (("flows", FLOW_TYPES), ("names", NAME_TYPES)):
            present = {row[0] for row in client.execute(f"DESCRIBE TABLE {db}.{kind}_local")}
            for name, contract_type in types.items():
                if name in present:
                    continue
                ch_type = _column_type(self.features, name, contract_type)
                for table in (f"{kind}_local", kind):
                    client.execute(f"ALTER TABLE {db}.{table} ADD COLUMN {name} {ch_type}")
                log.info("event=column_added table=%s column=%s type=%s", kind, name, ch_type)

    def _reconcile_ttl(self, client: Client) -> None:
        """Make the tables' TTL follow a changed retention_days: CREATE … IF NOT EXISTS keeps the TTL a
        table was made with, which would go on deleting rows by the old setting. Without
        retention_days (a collector without retention, or migrate-to-clickhouse) a TTL is left alone
        and named in the log: removing it is the operator's call."""
        if not self.features.modern:
            return
        db = self.settings.database
        days = ttl_days(self.retention_days)
        for table, column in TTL_COLUMNS.items():
            engine = client.execute(
                "SELECT engine_full FROM system.tables WHERE database = %(db)s AND name = %(table)s",
                {"db": db, "table": table},
            )[0][0]
            found = re.search(r"\bTTL\b.*?(?:toIntervalDay\((\d+)\)|INTERVAL (\d+) DAY)", engine)
            present = int(found.group(1) or found.group(2)) if found else None
            if present == days:
                continue
            if days is None:
                log.warning(
                    "event=ttl_kept table=%s.%s days=%s: retention_days is unset, yet rows expire after %s"
                    " days; ALTER TABLE %s.%s REMOVE TTL on every node keeps them",
                    db, table, present, present, db, table,
                )  # fmt: skip
                continue
            client.execute(f"ALTER TABLE {db}.{table} MODIFY TTL {ttl_expression(column, days)}")
            log.info("event=ttl_changed table=%s.%s days=%s was=%s", db, table, days, present)

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
        """Store a batch; a batch_id already stored → duplicate, nothing written.

        Answers only once every row is on its shard (insert_distributed_sync=1). The marker in
        ``batches`` is written last: a batch cut short before it is written again on resend, and
        the rows of both writes collapse (see the module docstring).
        """
        flows = conform(flows, "flow") if flows is not None and flows.num_rows else None
        names = conform(names, "name") if names is not None and names.num_rows else None
        n_flows = flows.num_rows if flows is not None else 0
        n_names = names.num_rows if names is not None else 0
        if probe_id is None:
            for table in (flows, names):
                if table is not None:
                    probe_id = table.column("probe_id")[0].as_py()
                    break
        probe_id = probe_id or ""
        counted = 1
        if batch_id is None:
            counted = 0
            batch_id = f"{source}:{self.writer_id}:{next(self._sequence)}"
        elif self.batch_stored(batch_id):
            return IngestResult(batch_id, 0, 0, duplicate=True)
        now = time.time_ns() // 1000
        with self._client() as client:
            if flows is not None:
                self._insert(client, "flows", FLOW_FIELDS, flows, batch_id)
            if names is not None:
                self._insert(client, "names", NAME_FIELDS, names, batch_id)
            if health:
                ts = health.get("ts")
                try:
                    ts_us = to_us(ts) if ts is not None else now
                except ValueError:
                    ts_us = now
                raw = json.dumps(health, sort_keys=True, default=str)
                client.execute(
                    f"INSERT INTO {self.db}.probe_health (probe_id, source, ts, received_at, raw, batch_id) VALUES",
                    [(probe_id, source, ts_us, now, raw, batch_id)],
                )
            client.execute(
                f"INSERT INTO {self.db}.batches (batch_id, probe_id, source, batches, flows, names, received_at,"
                " marker) VALUES",
                [(batch_id, probe_id, source, counted, n_flows, n_names, now, counted)],
            )
        return IngestResult(batch_id if counted else None, n_flows, n_names)

    def batch_stored(self, batch_id: str) -> bool:
        rows = self.execute(f"SELECT count() FROM {self.db}.batches WHERE batch_id = %(b)s", {"b": batch_id})
        return bool(rows[0][0])

    def _insert(
        self,
        client: Client,
        table: str,
        fields: Sequence[str],
        data: pa.Table,
        batch_id: str,
        first_row: int = 0,
    ) -> None:
        columns: list[list[Any]] = []
        for name in fields:
            column = data.column(name)
            if pa.types.is_timestamp(column.type):
                column = column.cast(pa.int64())
            columns.append(column.to_pylist())
        columns.append([batch_id] * data.num_rows)
        columns.append(list(range(first_row, first_row + data.num_rows)))
        client.execute(
            f"INSERT INTO {self.db}.{table} ({', '.join(fields)}, batch_id, row_no) VALUES",
            columns,
            columnar=True,
        )

    def insert_rows(self, table: str, data: pa.Table, batch_id: str, first_row: int = 0) -> None:
        """Insert contract rows under a fixed (batch_id, row_no) identity (the migration's path)."""
        fields = FLOW_FIELDS if table == "flows" else NAME_FIELDS
        data = conform(data, "flow" if table == "flows" else "name")
        with self._client() as client:
            self._insert(client, table, fields, data, batch_id, first_row)

    def apply_retention(self, now_us: int | None = None) -> int:
        """Drop whole days older than retention_days on every node; returns the flows dropped.

        Day partitions make this a metadata operation (no rewrite); a day goes once all of it is
        past the cutoff. Servers with TTL also expire rows by themselves (table_ddl).
        """
        if not self.retention_days:
            return 0
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        cutoff_s = (now_us - int(self.retention_days * 86_400 * US)) // US
        cutoff_day = time.strftime("%Y-%m-%d", time.gmtime(cutoff_s - cutoff_s % 86_400))
        dropped = 0
        db = self.settings.database
        for address in self.settings.hosts:
            client = self._new_client(address)
            try:
                parts = client.execute(
                    "SELECT table, partition, sum(rows) FROM system.parts WHERE database = %(db)s AND active"
                    " AND table IN ('flows_local', 'names_local') GROUP BY table, partition",
                    {"db": db},
                )
                for table, partition, rows in parts:
                    day = partition.strip("'")
                    if day < cutoff_day:
                        client.execute(f"ALTER TABLE {db}.{table} DROP PARTITION '{day}'")
                        if table == "flows_local":
                            dropped += int(rows)
            finally:
                client.disconnect()
        log.info("event=retention cutoff_day=%s flows_dropped=%d", cutoff_day, dropped)
        return dropped

    def checkpoint(self) -> None:
        """Nothing to do: ClickHouse writes parts durably on insert."""

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().disconnect()
            except queue.Empty:
                return

    def __enter__(self) -> ClickHouseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ reads

    def _table(
        self, statement: str, params: dict[str, Any] | None = None, rename: dict[str, str] | None = None
    ) -> pa.Table:
        with self._client() as client:
            data, types = client.execute(statement, params or {}, with_column_types=True, columnar=True)
        rename = rename or {}
        arrays = {}
        for (name, ch_type), values in zip(types, data or [[] for _ in types], strict=True):
            arrays[rename.get(name, name)] = pa.array(list(values), _arrow_type(ch_type))
        return pa.table(arrays) if arrays else pa.table({})

    def query(self, name: str, params: dict[str, Any]) -> pa.Table:
        from collector import queries

        return queries.run(self, name, params)

    def schema_versions(self) -> list[int]:
        rows = self.execute(f"SELECT DISTINCT version FROM {self.db}.schema_migrations ORDER BY version")
        return [int(row[0]) for row in rows]

    def counts(self) -> dict[str, int]:
        db = self.db
        flows = self.execute(f"SELECT count() FROM {db}.flows FINAL")[0][0]
        names = self.execute(f"SELECT count() FROM {db}.names FINAL")[0][0]
        batches = self.execute(f"SELECT uniqExact(batch_id) FROM {db}.batches WHERE marker = 1")[0][0]
        return {"flows": int(flows), "names": int(names), "batches": int(batches)}

    def _flow_window(self, start: int, end: int, probe_id: str | None) -> tuple[str, dict[str, Any]]:
        """Time window on flow_start, with the redundant flow_hour bounds the primary key prunes on."""
        where = (
            "flow_hour >= %(hour_lo)s AND flow_hour <= %(hour_hi)s"
            " AND flow_start >= %(start)s AND flow_start < %(end)s"
        )
        params: dict[str, Any] = {
            "start": start,
            "end": end,
            "hour_lo": max(0, start) // HOUR_US,
            "hour_hi": min(max(end - 1, 0) // HOUR_US, 2**32 - 1),
        }
        if probe_id:
            where += " AND probe_id = %(probe)s"
            params["probe"] = probe_id
        return where, params

    def flow_time_range(self, probe_id: str | None) -> dict[str, Any]:
        where, params = ("probe_id = %(probe)s", {"probe": probe_id}) if probe_id else ("1", {})
        first, last, flows = self.execute(
            f"SELECT min(flow_start), max(flow_end), count() FROM {self.db}.flows FINAL WHERE {where}", params
        )[0]
        if not flows:
            return {"first_seen": None, "last_seen": None, "flows": 0}
        return {"first_seen": int(first), "last_seen": int(last), "flows": int(flows)}

    def source_summary(self) -> pa.Table:
        db = self.db
        sources = self.execute(
            "SELECT probe_id, source, max(received_at), sum(batches), sum(flows) FROM ("
            " SELECT batch_id, any(probe_id) AS probe_id, any(source) AS source, max(received_at) AS received_at,"
            f" any(batches) AS batches, any(flows) AS flows FROM {db}.batches GROUP BY batch_id"
            ") GROUP BY probe_id, source ORDER BY probe_id, source"
        )
        latest = {
            probe: json.loads(raw)
            for probe, raw in self.execute(
                f"SELECT probe_id, argMax(raw, received_at) FROM {db}.probe_health GROUP BY probe_id"
            )
        }
        rows = []
        for probe, source, last_seen, batches, flows in sources:
            health = health_values(latest[probe]) if probe in latest else dict.fromkeys(HEALTH_COLUMNS)
            rows.append(
                {
                    "probe_id": probe,
                    "source": source,
                    "last_seen": int(last_seen),
                    "batches": int(batches),
                    "flows": int(flows),
                    **{
                        key: health[key]
                        for key in (
                            "hostname",
                            "version",
                            "iface",
                            "packets_captured",
                            "kernel_drops",
                            "parse_errors",
                            "flows_exported",
                            "spool_bytes",
                            "spool_batches",
                        )
                    },
                }
            )
        return pa.Table.from_pylist(rows, schema=SOURCE_SCHEMA)

    def address_totals(self, start: int, end: int, probe_id: str | None) -> pa.Table:
        where, params = self._flow_window(start, end, probe_id)
        return self._table(
            "SELECT side.1 AS addr_, sum(side.3) AS bytes_sent_, sum(side.4) AS bytes_received_,"
            " sum(packets) AS packets_, count() AS flows_, uniqExact(side.2) AS peers_,"
            " min(flow_start) AS first_seen, max(flow_end) AS last_seen FROM ("
            " SELECT arrayJoin([(src_addr, dst_addr, bytes, toUInt64(0)), (dst_addr, src_addr, toUInt64(0), bytes)])"
            f" AS side, packets, flow_start, flow_end FROM {self.db}.flows FINAL WHERE {where}"
            ") GROUP BY addr_",
            params,
            rename={
                "addr_": "addr",
                "bytes_sent_": "bytes_sent",
                "bytes_received_": "bytes_received",
                "packets_": "packets",
                "flows_": "flows",
                "peers_": "peers",
            },
        )

    _HOST_SIDE = (
        "if(src_addr = %(host)s, 'sent', 'received') AS direction,"
        " if(src_addr = %(host)s, dst_addr, src_addr) AS peer_addr,"
        " if(src_addr = %(host)s, dst_port, src_port) AS peer_port,"
        " if(src_addr = %(host)s, src_port, dst_port) AS host_port"
    )

    def _host_where(
        self, host: str, start: int, end: int, probe_id: str | None
    ) -> tuple[str, dict[str, Any]]:
        where, params = self._flow_window(start, end, probe_id)
        params["host"] = host
        return where + " AND (src_addr = %(host)s OR dst_addr = %(host)s)", params

    def host_flow_rows(self, host: str, start: int, end: int, probe_id: str | None, limit: int) -> pa.Table:
        where, params = self._host_where(host, start, end, probe_id)
        params["limit"] = limit
        return self._table(
            f"SELECT flow_start, flow_end, {self._HOST_SIDE}, protocol, packets, bytes, tcp_flags, initiator,"
            f" end_reason, dst_mac, probe_id, sampling FROM {self.db}.flows FINAL WHERE {where}"
            " ORDER BY flow_start, peer_addr, peer_port, host_port, direction, protocol, flow_end, bytes, packets,"
            " probe_id LIMIT %(limit)s",
            params,
        )

    def flow_rows(self, start: int, end: int, probe_id: str | None) -> pa.Table:
        """Every flow in the window as stored, oldest first (the same total order as the DuckDB store)."""
        from collector.store import Store

        where, params = self._flow_window(start, end, probe_id)
        return self._table(
            "SELECT flow_start, flow_end, src_addr, src_port, dst_addr, dst_port, protocol, packets, bytes,"
            f" tcp_flags, initiator, end_reason, dst_mac, probe_id, sampling FROM {self.db}.flows FINAL"
            f" WHERE {where} ORDER BY {Store.FLOW_ROW_ORDER}",
            params,
        )

    def host_flow_groups(
        self, host: str, start: int, end: int, probe_id: str | None, bucket_us: int
    ) -> pa.Table:
        where, params = self._host_where(host, start, end, probe_id)
        params["bucket"] = bucket_us
        table = self._table(
            "SELECT intDiv(flow_start, %(bucket)s) * %(bucket)s AS bucket_start, direction, peer_addr,"
            " peer_is_server, multiIf(protocol IN (1, 58), 0, peer_is_server, peer_port, host_port) AS service_port,"
            " protocol, bcast_mac, sum(bytes) AS bytes_, sum(packets) AS packets_, count() AS flows_,"
            " min(flow_start) AS first_seen, max(flow_end) AS last_seen FROM ("
            f" SELECT flow_start, flow_end, bytes, packets, protocol, {self._HOST_SIDE},"
            " multiIf(initiator = 'src', src_addr = %(host)s, initiator = 'dst', src_addr != %(host)s,"
            "  src_addr = %(host)s, dst_port <= src_port, src_port <= dst_port) AS peer_is_server,"
            f" dst_mac = 'ff:ff:ff:ff:ff:ff' AS bcast_mac FROM {self.db}.flows FINAL WHERE {where}"
            ") GROUP BY bucket_start, direction, peer_addr, peer_is_server, service_port, protocol, bcast_mac"
            " ORDER BY bucket_start, peer_addr",
            params,
            rename={"bytes_": "bytes", "packets_": "packets", "flows_": "flows"},
        )
        return _as_bool(table, "peer_is_server", "bcast_mac")

    def pair_groups(self, start: int, end: int, probe_id: str | None, since: int | None = None) -> pa.Table:
        where, params = self._flow_window(start if since is None else since, end, probe_id)
        params["from"] = start
        table = self._table(
            "SELECT src_addr, dst_addr, protocol,"
            " multiIf(protocol IN (1, 58), 0, initiator = 'src', dst_port, initiator = 'dst', src_port,"
            "  least(src_port, dst_port)) AS service_port,"
            " multiIf(initiator = 'src', dst_addr, initiator = 'dst', src_addr, dst_port <= src_port, dst_addr,"
            "  src_addr) AS server_addr,"
            " sumIf(bytes, flow_start >= %(from)s) AS bytes_, countIf(flow_start >= %(from)s) AS flows_,"
            " min(flow_start) AS first_ever, minIf(flow_start, flow_start >= %(from)s) AS first_seen"
            f" FROM {self.db}.flows FINAL WHERE {where}"
            " GROUP BY src_addr, dst_addr, protocol, service_port, server_addr",
            params,
            rename={"bytes_": "bytes", "flows_": "flows"},
        )
        # DuckDB's FILTER aggregates give NULL when nothing is in the window; keep that meaning
        flows = table.column("flows").to_pylist()
        for column in ("bytes", "first_seen"):
            values = [v if n else None for v, n in zip(table.column(column).to_pylist(), flows, strict=True)]
            table = table.set_column(
                table.schema.get_field_index(column), column, pa.array(values, pa.int64())
            )
        return table

    def name_candidates(self, addrs: Sequence[str], start: int, end: int) -> pa.Table:
        wanted = sorted(set(addrs))
        tables = []
        for offset in range(0, len(wanted), NAME_CHUNK):
            tables.append(
                self._table(
                    "SELECT ts, addr, name, source, client_addr, ttl, cname_chain"
                    f" FROM {self.db}.names FINAL WHERE addr IN %(addrs)s AND ts >= %(start)s AND ts < %(end)s"
                    " ORDER BY addr, ts",
                    {"addrs": tuple(wanted[offset : offset + NAME_CHUNK]), "start": start, "end": end},
                )
            )
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return NAME_CANDIDATE_SCHEMA.empty_table()
        return pa.concat_tables([t.cast(NAME_CANDIDATE_SCHEMA) for t in tables])

    def names_search(
        self, start: int, end: int, client: str | None, addr: str | None, text: str | None, limit: int
    ) -> pa.Table:
        where = "ts >= %(start)s AND ts < %(end)s"
        params: dict[str, Any] = {"start": start, "end": end, "limit": limit}
        if client:
            where += " AND client_addr = %(client)s"
            params["client"] = client
        if addr:
            where += " AND addr = %(addr)s"
            params["addr"] = addr
        if text:
            where += " AND position(name, %(text)s) > 0"
            params["text"] = text.lower()
        return self._table(
            "SELECT ts, client_addr, addr, name, source, qtype, ttl, cname_chain, rcode, probe_id"
            f" FROM {self.db}.names FINAL WHERE {where}"
            " ORDER BY ts, addr, name, source, client_addr, probe_id, qtype, ttl, rcode LIMIT %(limit)s",
            params,
        )

    # ------------------------------------------------------------ used by the migration

    def hour_totals(self, kind: str, batch_prefix: str | None = None) -> dict[int, tuple[int, int]]:
        """hour (µs) → (rows, byte sum) of flows, or (rows, 0) of names; optionally one batch prefix."""
        time_col, measure = ("flow_start", "sum(bytes)") if kind == "flows" else ("ts", "0")
        where, params = "1", {}
        if batch_prefix:
            where, params = "startsWith(batch_id, %(prefix)s)", {"prefix": batch_prefix}
        rows = self.execute(
            f"SELECT intDiv({time_col}, {HOUR_US}) * {HOUR_US} AS hour, count(), {measure}"
            f" FROM {self.db}.{kind} FINAL WHERE {where} GROUP BY hour",
            params,
        )
        return {int(hour): (int(count), int(total)) for hour, count, total in rows}

    def insert_batch_markers(self, rows: list[tuple[str, str, str, int, int, int, int, int]]) -> None:
        """(batch_id, probe_id, source, batches, flows, names, received_at, marker) rows into ``batches``."""
        with self._client() as client:
            client.execute(
                f"INSERT INTO {self.db}.batches (batch_id, probe_id, source, batches, flows, names, received_at,"
                " marker) VALUES",
                rows,
            )

    def insert_health_rows(self, rows: list[tuple[str, str, int, int, str, str]]) -> None:
        """(probe_id, source, ts, received_at, raw, batch_id) rows into ``probe_health``."""
        with self._client() as client:
            client.execute(
                f"INSERT INTO {self.db}.probe_health (probe_id, source, ts, received_at, raw, batch_id) VALUES",
                rows,
            )


SOURCE_SCHEMA = pa.schema(
    [
        ("probe_id", pa.string()),
        ("source", pa.string()),
        ("last_seen", pa.int64()),
        ("batches", pa.int64()),
        ("flows", pa.int64()),
        ("hostname", pa.string()),
        ("version", pa.string()),
        ("iface", pa.string()),
        ("packets_captured", pa.int64()),
        ("kernel_drops", pa.int64()),
        ("parse_errors", pa.string()),
        ("flows_exported", pa.int64()),
        ("spool_bytes", pa.int64()),
        ("spool_batches", pa.int64()),
    ]
)
NAME_CANDIDATE_SCHEMA = pa.schema(
    [
        ("ts", pa.int64()),
        ("addr", pa.string()),
        ("name", pa.string()),
        ("source", pa.string()),
        ("client_addr", pa.string()),
        ("ttl", pa.int64()),
        ("cname_chain", pa.list_(pa.string())),
    ]
)


def _arrow_type(ch_type: str) -> pa.DataType:
    inner = ch_type
    for wrapper in ("LowCardinality(", "Nullable("):
        if inner.startswith(wrapper):
            inner = inner[len(wrapper) : -1]
    if inner.startswith("Array("):
        return pa.list_(_arrow_type(inner[len("Array(") : -1]))
    if inner in ("String",) or inner.startswith("FixedString"):
        return pa.string()
    if inner.startswith(("Int", "UInt")):
        return pa.int64() if inner != "UInt64" else pa.uint64()
    if inner.startswith("Float"):
        return pa.float64()
    return pa.string()


def _as_bool(table: pa.Table, *columns: str) -> pa.Table:
    for column in columns:
        index = table.schema.get_field_index(column)
        table = table.set_column(index, column, table.column(column).cast(pa.bool_()))
    return table


def open_clickhouse(config: Any) -> ClickHouseStore:
    """The backend a collector's Config asks for (backend = "clickhouse")."""
    password = None
    if config.clickhouse_password_file:
        password = Path(config.clickhouse_password_file).read_text().strip()
    settings = ClickHouseSettings.from_url(config.clickhouse, password)
    return ClickHouseStore(settings, retention_days=config.retention_days)
