"""Operations: migrations, retention, metrics, config errors, SIGTERM and kill -9 with batches in flight."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import duckdb
import pytest

from collector.metrics import Metrics
from collector.server import NetflowSink, Writer
from collector.store import MIGRATIONS, Store, apply_migrations
from hostflow.records import FLOW_FIELDS, Flow, make_batch
from tests.plugins.common import ROOT, free_port

S = 1_000_000
T0 = 1_582_448_041 * S  # 2020-02-23T08:54:01Z
DAY = 86_400 * S


def flows(n: int, start: int = T0, probe: str = "test-probe") -> list[Flow]:
    return [
        Flow(probe, start + i, start + i + 1000, 4, 17, f"10.0.{i // 250 % 250}.{i % 250 + 1}", 1024 + i % 60000,
             "192.0.2.53", 53, 1, 80 + i % 100, initiator="src")
        for i in range(n)
    ]  # fmt: skip


def batch_of(n: int, batch_id: str, start: int = T0) -> dict:
    """A big batch built directly as rows (make_batch over dataclasses is slow for 100k rows)."""
    base = make_batch("test-probe", batch_id, flows(1, start), [])
    row = base["flows"][0]
    idx = {k: i for i, k in enumerate(FLOW_FIELDS)}
    rows = []
    for i in range(n):
        r = list(row)
        r[idx["flow_start"]] = start + i
        r[idx["flow_end"]] = start + i + 1000
        r[idx["src_port"]] = 1024 + i % 60000
        r[idx["bytes"]] = 80 + i % 100
        rows.append(r)
    base["flows"] = rows
    return base


# ---------------------------------------------------------------- schema migrations


def test_migration_from_an_older_schema_keeps_data_and_idempotency(tmp_path):
    path = str(tmp_path / "old.duckdb")
    con = duckdb.connect(path)
    assert apply_migrations(con, upto=1) == [1]
    con.execute(
        "INSERT INTO flows (probe_id, flow_start, flow_end, ip_version, protocol, src_addr, src_port, dst_addr,"
        " dst_port, packets, bytes, tcp_flags, tos, vlan, src_mac, dst_mac, end_reason, initiator, sampling)"
        " VALUES ('old-probe', make_timestamp(?), make_timestamp(?), 4, 6, '10.0.0.1', 4000, '192.0.2.1', 80,"
        " 3, 300, 0, 0, 0, '', '', 'fin', 'src', 1)",
        [T0, T0 + S],
    )
    con.execute("INSERT INTO batches VALUES ('old:1', 'old-probe', 'probe', 1, 0, make_timestamp(?))", [T0])
    con.close()

    store = Store(path)
    try:
        assert store.schema_versions() == [m.version for m in MIGRATIONS] == [1, 2]
        probes = store.query("probes", {}).to_pylist()
        assert [(p["probe_id"], p["batches"], p["flows_stored"], p["source"]) for p in probes] == [
            ("old-probe", 1, 1, "probe")
        ]
        assert store.ingest("old:1", "probe", flows(2, probe="old-probe"), []).duplicate is True
        assert store.ingest("old:2", "probe", flows(2, probe="old-probe"), []).flows == 2
        assert store.query("time_range", {"probe_id": "old-probe"}).to_pylist()[0]["flows"] == 3
    finally:
        store.close()
    # opening again applies nothing
    con = duckdb.connect(path)
    assert apply_migrations(con) == []
    con.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', now()::TIMESTAMP)")
    con.close()
    with pytest.raises(RuntimeError, match="schema version 99 is newer than this collector's 2"):
        Store(path)


def test_a_failed_migration_step_leaves_the_previous_version(tmp_path, monkeypatch):
    from collector import store as store_module
    from collector.store import Migration

    broken = (
        *MIGRATIONS,
        Migration(3, "broken", ("CREATE TABLE half_done (x INTEGER)", "SELECT nonsense()")),
    )
    monkeypatch.setattr(store_module, "MIGRATIONS", broken)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 3)
    con = duckdb.connect(str(tmp_path / "m.duckdb"))
    with pytest.raises(duckdb.Error):
        apply_migrations(con)
    assert [r[0] for r in con.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()] == [
        1,
        2,
    ]
    assert (
        con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'half_done'"
        ).fetchone()[0]
        == 0
    )
    con.close()


# ---------------------------------------------------------------- retention


def test_retention_deletes_by_age(tmp_path):
    store = Store(str(tmp_path / "r.duckdb"), retention_days=2)
    try:
        store.ingest("old", "probe", flows(5, T0 - 3 * DAY), [])
        store.ingest("new", "probe", flows(7, T0 - DAY), [])
        assert store.apply_retention(now_us=T0) == 5
        assert store.query("time_range", {}).to_pylist()[0]["flows"] == 7
        assert store.apply_retention(now_us=T0) == 0
        assert Store.apply_retention.__doc__
    finally:
        store.close()
    keep_all = Store(str(tmp_path / "k.duckdb"))
    try:
        keep_all.ingest("old", "probe", flows(5, T0 - 3 * DAY), [])
        assert keep_all.apply_retention(now_us=T0) == 0
    finally:
        keep_all.close()


def test_server_runs_retention_at_start_and_counts_it(collector_factory):
    server = collector_factory(extra_args=["--retention-days", "30"])
    assert server.post_batch(make_batch("test-probe", "ancient", flows(4), []))[0] == 200
    assert server.stop() == 0
    server.start()  # the flows are from 2020: older than 30 days whatever today is
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "retention_deleted_flows_total 4" not in server.metrics():
        time.sleep(0.1)
    assert "hostflow_collector_retention_deleted_flows_total 4" in server.metrics()
    assert server.client().query("time_range")["flows"][0] == 0


# ---------------------------------------------------------------- NetFlow hand-over


def test_netflow_flows_go_through_the_writer_into_the_store(tmp_path):
    store = Store(str(tmp_path / "nf.duckdb"))
    writer = Writer()
    writer.start()
    metrics = Metrics()
    sink = NetflowSink(store, writer, metrics)
    try:
        threads = [threading.Thread(target=sink.on_flows, args=(flows(50, T0 + k * S, probe=""), "192.0.2.9"))
                   for k in range(8)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        writer.submit(lambda: None).result()
        assert metrics.get("flows_stored_total", origin="netflow") == 400
        probes = store.query("probes", {}).to_pylist()
        assert [(p["probe_id"], p["source"], p["flows_stored"], p["batches"]) for p in probes] == [
            ("192.0.2.9", "192.0.2.9", 400, 0)
        ]
    finally:
        writer.stop()
        store.close()


# ---------------------------------------------------------------- metrics


def test_metrics_text(collector_server):
    collector_server.post_batch(make_batch("test-probe", "m:1", flows(3), []))
    collector_server.post_batch(make_batch("test-probe", "m:1", flows(3), []))
    collector_server.post_batch(b"nope")
    collector_server.client().query("time_range")
    text = collector_server.metrics()
    for line in (
        'hostflow_collector_batches_received_total{origin="batch"} 2',
        'hostflow_collector_batches_stored_total{origin="batch"} 1',
        'hostflow_collector_batches_duplicate_total{origin="batch"} 1',
        'hostflow_collector_batches_rejected_total{reason="bad_json"} 1',
        'hostflow_collector_flows_stored_total{origin="batch"} 3',
        'hostflow_collector_queries_total{query="time_range"} 1',
        "hostflow_collector_netflow_packets_total 0",
        "hostflow_collector_netflow_template_misses_total 0",
        "hostflow_collector_netflow_sequence_gaps_total 0",
        "# TYPE hostflow_collector_ingest_lag_seconds gauge",
    ):
        assert line in text.splitlines(), line
    lag = [line for line in text.splitlines() if line.startswith("hostflow_collector_ingest_lag_seconds ")]
    assert float(lag[0].split()[1]) > 86_400  # flows from 2020 arrive "late"


# ---------------------------------------------------------------- configuration


def run_serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "collector", "serve", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


BAD_CONFIGS = [
    ("db = ", "not valid TOML"),
    ("colour = 'blue'", "unknown setting(s) colour"),
    ("[http]\nport = 70000", "http_port: 70000 is not a port number"),
    ("[http]\nport = 'eighty'", "http.port: expected a int"),
    ("intranet = ['10.0.0.0/33']", "intranet: '10.0.0.0/33' is not a CIDR prefix"),
    ("retention_days = -1", "retention_days: -1.0 must be positive"),
    ("[http]\ntls_cert = '/nonexistent.pem'", "tls_cert and tls_key: set both"),
    ("[auth]\ntokens_file = '/nonexistent/tokens'", "tokens_file: cannot read /nonexistent/tokens"),
]


@pytest.mark.parametrize(("toml", "message"), BAD_CONFIGS)
def test_bad_config_names_the_setting(tmp_path, toml, message):
    from argparse import Namespace

    from collector.config import ConfigError, load

    config = tmp_path / "collector.toml"
    config.write_text(toml + "\n")
    with pytest.raises(ConfigError) as caught:
        load(Namespace(config=str(config)), environ={})
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("toml", "message"), [BAD_CONFIGS[1], BAD_CONFIGS[4]])
def test_bad_config_is_one_line_and_exit_2(tmp_path, toml, message):
    config = tmp_path / "collector.toml"
    config.write_text(toml + "\n")
    result = run_serve("--config", str(config), "--db", str(tmp_path / "x.duckdb"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "x.duckdb").exists()


def test_environment_overrides_file_and_flags_override_environment(tmp_path):
    from argparse import Namespace

    from collector.config import load

    config = tmp_path / "c.toml"
    config.write_text("db = 'file.duckdb'\n[http]\nport = 9000\n[auth]\ntokens = { t1 = 'p1' }\n")
    env = {"HOSTFLOW_HTTP_PORT": "9001", "HOSTFLOW_DB": "env.duckdb", "HOSTFLOW_TOKENS": "t2=p2"}
    settings = load(Namespace(config=str(config), http_port=9002, token=["t3=p3"]), environ=env)
    assert (settings.db, settings.http_port) == ("env.duckdb", 9002)
    assert settings.tokens == {"t1": "p1", "t2": "p2", "t3": "p3"}


def test_bad_flag_is_usage_error():
    result = run_serve("--token", "no-equals-sign", "--http-port", "1")
    assert result.returncode == 2 and "expected TOKEN=PROBE_ID" in result.stderr


def test_config_file_tokens_file_and_query_token(tmp_path, collector_factory):
    (tmp_path / "tokens").write_text("# probes\nfile-token pi-2\n")
    config = tmp_path / "collector.toml"
    config.write_text(
        f"[auth]\ntokens_file = '{tmp_path / 'tokens'}'\nquery_token = 'q-secret'\n"
        "[attribution]\ngrace_s = 10\n"
    )
    server = collector_factory(extra_args=["--config", str(config)])
    assert (
        server.post_batch(make_batch("pi-2", "f:1", flows(2, probe="pi-2"), []), token="file-token")[0] == 200
    )
    # the flag token still works beside the file's
    assert server.post_batch(make_batch("test-probe", "f:2", flows(1), []))[0] == 200
    status, answer = server.query_json("time_range")
    assert status == 401 and "query token" in answer["error"]
    assert server.client("q-secret").query("time_range")["flows"][0] == 3


def test_second_collector_on_the_same_database_refuses_clearly(collector_server):
    result = run_serve("--db", str(collector_server.db_path), "--http-port", str(free_port()), "--netflow-port", "0",
                       "--ipfix-port", "0")  # fmt: skip
    assert result.returncode == 1
    assert "is open in another process (a running collector?)" in result.stderr
    runtime = json.loads(
        collector_server.db_path.with_name(collector_server.db_path.name + ".collector.json").read_text()
    )
    assert runtime == {"url": collector_server.url, "pid": collector_server.pid}


# ---------------------------------------------------------------- stopping with batches in flight


def test_sigterm_with_batches_in_flight_loses_nothing_acknowledged(collector_factory):
    server = collector_factory(extra_args=["--max-body", str(256 * 1024 * 1024)])
    batches = [batch_of(30_000, f"term:{k}", T0 + k * DAY) for k in range(3)]
    bodies = [json.dumps(b).encode() for b in batches]
    answers: dict[int, tuple] = {}

    def send(k: int) -> None:
        try:
            answers[k] = server.post_batch(bodies[k])
        except OSError as exc:  # refused after the stop began: not acknowledged, fine
            answers[k] = (None, str(exc))

    threads = [threading.Thread(target=send, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.4)  # the bodies are uploaded and being decoded / written
    assert server.stop() == 0
    for thread in threads:
        thread.join()
    acknowledged = [k for k, (status, _) in answers.items() if status == 200]
    assert acknowledged, f"no batch finished during the graceful stop: {answers}"
    con = duckdb.connect(str(server.db_path), read_only=True)
    try:
        stored = dict(con.execute("SELECT batch_id, flows FROM batches").fetchall())
        for k in acknowledged:
            assert stored[f"term:{k}"] == 30_000
        per_day = dict(con.execute("SELECT (epoch_us(flow_start) - ?) // ?, count(*) FROM flows GROUP BY 1",
                                   [T0, DAY]).fetchall())  # fmt: skip
        assert {k: per_day.get(k) for k in acknowledged} == {k: 30_000 for k in acknowledged}
        assert set(per_day.values()) <= {30_000}
    finally:
        con.close()


def test_kill_9_mid_batch_leaves_no_partial_batch(collector_factory):
    server = collector_factory(extra_args=["--max-body", str(256 * 1024 * 1024)])
    body = json.dumps(batch_of(150_000, "kill:1")).encode()
    outcomes = []
    for delay in (0.3, 0.8):
        result: list = []
        sender = threading.Thread(target=lambda out=result: out.append(_post_quietly(server, body)))
        sender.start()
        time.sleep(delay)
        server.kill()
        sender.join()
        server.start()
        count = server.client().query("time_range")["flows"][0]
        assert count in (0, 150_000), f"partial batch after kill -9: {count} rows"
        outcomes.append((result[0], count))
        if count:
            break
    status, answer = server.post_batch(body)
    assert status == 200
    assert server.client().query("time_range")["flows"][0] == 150_000
    assert answer["duplicate"] == bool(outcomes[-1][1] == 150_000)


def _post_quietly(server, body: bytes):
    try:
        return server.post_batch(body)[0]
    except OSError as exc:
        return repr(exc)
