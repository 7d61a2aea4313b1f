"""A real two-node ClickHouse cluster on free loopback ports, for the ClickHouse backend's tests.

Each node gets its own config, data directory and ports; the cluster `hostflow` has two shards of
one replica each, and the default profile sets insert_distributed_sync=1 so an insert through the
Distributed table is on the shards when it returns. Nodes are stopped by PID (SIGTERM).

``chdb_engine``: ClickHouse 26.9 in process (PyPI chdb-core), shaped like the cluster (hosts,
cluster, nodes, sql) so the same checks run on both; its ``store_class`` is ClickHouseStore with
only the transport under the clickhouse-driver Client replaced (see ChdbClient).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.common import free_port

SERVER = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"
CLUSTER = "hostflow"

USERS_XML = """<?xml version="1.0"?>
<yandex>
  <profiles>
    <default>
      <max_memory_usage>4000000000</max_memory_usage>
      <insert_distributed_sync>1</insert_distributed_sync>
      <load_balancing>random</load_balancing>
    </default>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
  </interval></default></quotas>
</yandex>
"""


@dataclass
class Node:
    name: str
    home: Path
    tcp_port: int
    http_port: int
    interserver_port: int
    proc: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@dataclass
class ClickHouseCluster:
    base: Path
    nodes: list[Node] = field(default_factory=list)
    cluster: str = CLUSTER

    def config_xml(self, node: Node) -> str:
        shards = "".join(
            f"<shard><replica><host>127.0.0.1</host><port>{other.tcp_port}</port></replica></shard>"
            for other in self.nodes
        )
        return f"""<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{node.home}/log/server.log</log>
    <errorlog>{node.home}/log/error.log</errorlog><size>10M</size><count>2</count></logger>
  <http_port>{node.http_port}</http_port>
  <tcp_port>{node.tcp_port}</tcp_port>
  <interserver_http_port>{node.interserver_port}</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <listen_host>127.0.0.1</listen_host>
  <max_connections>256</max_connections>
  <keep_alive_timeout>3</keep_alive_timeout>
  <max_concurrent_queries>50</max_concurrent_queries>
  <uncompressed_cache_size>100000000</uncompressed_cache_size>
  <mark_cache_size>100000000</mark_cache_size>
  <path>{node.home}/data/</path>
  <tmp_path>{node.home}/tmp/</tmp_path>
  <user_files_path>{node.home}/user_files/</user_files_path>
  <format_schema_path>{node.home}/format_schemas/</format_schema_path>
  <users_config>{self.base}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <remote_servers><{self.cluster}>{shards}</{self.cluster}></remote_servers>
  <macros><shard>{node.name}</shard></macros>
</yandex>
"""

    def start(self, count: int = 2) -> None:
        (self.base / "users.xml").write_text(USERS_XML)
        self.nodes = [
            Node(f"ch{i}", self.base / f"ch{i}", free_port(), free_port(), free_port()) for i in range(count)
        ]
        for node in self.nodes:
            for sub in ("data", "tmp", "user_files", "format_schemas", "log"):
                (node.home / sub).mkdir(parents=True, exist_ok=True)
            (node.home / "config.xml").write_text(self.config_xml(node))
            node.proc = subprocess.Popen(
                [SERVER, f"--config-file={node.home}/config.xml"],
                cwd=node.home,
                stdout=subprocess.DEVNULL,
                stderr=(node.home / "log" / "stderr.log").open("wb"),
            )
        for node in self.nodes:
            self._wait(node)

    def _wait(self, node: Node, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                log = (node.home / "log" / "error.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"clickhouse node {node.name} exited ({node.proc.returncode}): {log}")
            try:
                with urllib.request.urlopen(node.http_url + "/ping", timeout=1) as response:
                    if response.read().strip() == b"Ok.":
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"clickhouse node {node.name} did not answer within {timeout} s")

    def sql(self, query: str, node: int = 0) -> str:
        request = urllib.request.Request(self.nodes[node].http_url + "/", data=query.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read().decode()

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()

    @property
    def hosts(self) -> list[str]:
        """Native-protocol addresses, host:port, for clickhouse-driver."""
        return [f"127.0.0.1:{node.tcp_port}" for node in self.nodes]


@pytest.fixture(scope="session")
def clickhouse_cluster(tmp_path_factory: pytest.TempPathFactory):
    if not Path(SERVER).exists():
        pytest.skip("clickhouse-server is not installed (scripts/setup.sh test installs it)")
    cluster = ClickHouseCluster(tmp_path_factory.mktemp("clickhouse"))
    try:
        cluster.start(2)
        yield cluster
    finally:
        cluster.stop()


# ---------------------------------------------------------------- a current release, in process

# chdb (PyPI chdb-core) is ClickHouse 26.9 as a library: it opens no network port, so the native
# protocol is replaced below and nothing else. ClickHouseStore builds its clickhouse-driver Client
# as usual; ChdbClient takes that Client's own parameter substitution and settings and runs the
# resulting SQL text in a chdb session with a data directory. A one-shard cluster whose replica is
# this very engine (tcp_port set, never opened) makes the Distributed tables real: ClickHouse
# recognises the replica as local and reads and writes it without a connection.
CHDB_CONFIG = """<clickhouse>
  <tcp_port>{port}</tcp_port>
  <timezone>UTC</timezone>
  <remote_servers><{cluster}><shard><replica><host>127.0.0.1</host><port>{port}</port></replica></shard>
  </{cluster}></remote_servers>
</clickhouse>
"""
CHDB_PORT = 9000  # only compared with the cluster's replica port: nothing listens on it


class ChdbEngine:
    """One chdb engine per process (chdb's rule), on a data directory, with the cluster above."""

    def __init__(self, base: Path, cluster: str = CLUSTER) -> None:
        import chdb

        self.base = base
        self.cluster = cluster
        self.data = base / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        (base / "config.xml").write_text(CHDB_CONFIG.format(port=CHDB_PORT, cluster=cluster))
        self._chdb = chdb
        self._keep = self.connect({})  # the engine lives as long as one connection is open
        self.version = self.sql("SELECT version()").strip().strip('"')
        self.store_class = chdb_store_class(self)

    @property
    def hosts(self) -> list[str]:
        return [f"127.0.0.1:{CHDB_PORT}"]

    def connect(self, settings: dict[str, Any]) -> Any:
        options = {"config-file": str(self.base / "config.xml"), **settings}
        query = "&".join(f"{key}={value}" for key, value in options.items())
        return self._chdb.connect(f"file:{self.data}?{query}")

    @property
    def nodes(self) -> list[str]:
        return ["chdb"]  # one node: ClickHouseCluster's interface, so the cluster's tests run here too

    def sql(self, query: str, node: int = 0, fmt: str = "TabSeparated") -> str:
        return str(self._keep.query(query, fmt))

    def close(self) -> None:
        self._keep.close()


class ChdbClient:
    """What ClickHouseStore calls on a clickhouse-driver Client, answered by a chdb connection."""

    def __init__(self, engine: ChdbEngine, driver: Any) -> None:
        self.driver = driver
        self.connection = engine.connect({**driver.settings, "output_format_json_quote_64bit_integers": 0})

    def execute(
        self,
        query: str,
        params: Any = None,
        with_column_types: bool = False,
        columnar: bool = False,
        types_check: bool = False,
        settings: dict[str, Any] | None = None,
    ) -> Any:
        from clickhouse_driver.util.escape import escape_param

        context = self.driver.connection.context
        if isinstance(params, list | tuple):  # INSERT data: the driver would send native blocks
            rows = list(zip(*params, strict=True)) if columnar else list(params)
            values = ", ".join(
                "(" + ", ".join(str(escape_param(v, context)) for v in row) + ")" for row in rows
            )
            self.connection.query(f"{query} {values}", "CSV")
            return len(rows)
        if params is not None:
            query = self.driver.substitute_params(query, params, context)
        answer = json.loads(str(self.connection.query(query, "JSONCompact")) or '{"meta": [], "data": []}')
        types = [(column["name"], column["type"]) for column in answer["meta"]]
        rows = [tuple(_from_json(value, kind) for value, (_, kind) in zip(row, types, strict=True))
                for row in answer["data"]]  # fmt: skip
        data = [tuple(column) for column in zip(*rows, strict=True)] if columnar else rows
        return (data, types) if with_column_types else data

    def disconnect(self) -> None:
        self.connection.close()


def _from_json(value: Any, kind: str) -> Any:
    """A JSONCompact value as clickhouse-driver would give it (tuples for Tuple, lists for Array)."""
    for wrapper in ("LowCardinality(", "Nullable("):
        if kind.startswith(wrapper):
            kind = kind[len(wrapper) : -1]
    if value is None:
        return None
    if kind.startswith("Array("):
        return [_from_json(item, kind[len("Array(") : -1]) for item in value]
    if kind.startswith("Tuple("):
        return tuple(value)
    if kind.startswith(("Int", "UInt")):
        return int(value)
    if kind.startswith("Float"):
        return float(value)
    return value


def chdb_store_class(engine: ChdbEngine) -> type:
    """ClickHouseStore bound to ``engine``: the real class; only the transport under its Client is chdb."""
    from collector.clickhouse import ClickHouseStore

    class ChdbStore(ClickHouseStore):
        def _new_client(self, address: str | None = None) -> Any:
            return ChdbClient(engine, super()._new_client(address))

    return ChdbStore


@pytest.fixture(scope="session")
def chdb_engine(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("chdb", reason="chdb-core-lite is not installed (requirements-dev.txt)")
    engine = ChdbEngine(tmp_path_factory.mktemp("chdb"))
    try:
        yield engine
    finally:
        engine.close()
