"""POST /api/v1/batches and /api/v1/import against the real collector daemon and its DuckDB file."""

from __future__ import annotations

import gzip
import json

import duckdb
import pytest

from hostflow.records import Flow, Name, make_batch

T0 = 1_582_448_041_000_000  # 2020-02-23T08:54:01Z
HOST = "192.168.1.10"
SERVER = "93.184.216.34"


def flows(probe: str = "test-probe", n: int = 3, offset: int = 0) -> list[Flow]:
    return [
        Flow(probe, T0 + offset + i * 1_000_000, T0 + offset + i * 1_000_000 + 500_000, 4, 6, HOST, 50000 + i,
             SERVER, 443, 10 + i, 1000 * (i + 1), tcp_flags=0x1B, end_reason="fin", initiator="src")
        for i in range(n)
    ]  # fmt: skip


def names(probe: str = "test-probe") -> list[Name]:
    return [Name(probe, T0 - 5_000, SERVER, "example.com", "dns", HOST, 300, ["example.com"], "A")]


def stored(server, probe: str = "test-probe") -> int:
    return int(server.client().query("time_range", probe_id=probe)["flows"][0])


def test_batch_is_stored_and_answers_counts(collector_server):
    status, answer = collector_server.post_batch(make_batch("test-probe", "p:1", flows(), names()))
    assert (status, answer) == (200, {"batch_id": "p:1", "flows": 3, "names": 1, "duplicate": False})
    got = collector_server.client().query("host_flows", host=HOST)
    assert got["bytes"].tolist() == [1000, 2000, 3000]
    assert got["peer_name"].tolist() == ["example.com"] * 3
    assert collector_server.client().query("names")["name"].tolist() == ["example.com"]


def test_auth_missing_unknown_and_foreign_token(collector_server):
    batch = make_batch("test-probe", "p:auth", flows(), names())
    assert collector_server.post_batch(batch, token=None)[0] == 401
    status, answer = collector_server.post_batch(batch, token="wrong")
    assert status == 401 and "token" in answer["error"]
    foreign = make_batch("other-probe", "o:1", flows("other-probe"), [])
    status, answer = collector_server.post_batch(foreign)
    assert status == 403 and "'test-probe'" in answer["error"] and "'other-probe'" in answer["error"]
    # a probe batch whose rows claim another probe is refused too, naming the row
    mixed = make_batch("test-probe", "p:mixed", flows("other-probe", 2), [])
    status, answer = collector_server.post_batch(mixed)
    assert status == 400 and answer["error"].startswith("flow row 0: field probe_id")
    # the admin token is not a probe token
    assert collector_server.post_batch(batch, token="admin-token")[0] == 401
    assert stored(collector_server) == 0 and stored(collector_server, "other-probe") == 0
    text = collector_server.metrics()
    assert 'hostflow_collector_batches_rejected_total{reason="unauthorized"} 3' in text
    assert 'hostflow_collector_batches_rejected_total{reason="forbidden"} 1' in text


def test_duplicate_batch_is_stored_once(collector_server):
    batch = make_batch("test-probe", "p:dup", flows(), names())
    assert collector_server.post_batch(batch)[1]["duplicate"] is False
    status, answer = collector_server.post_batch(batch)
    assert (status, answer) == (200, {"batch_id": "p:dup", "flows": 0, "names": 0, "duplicate": True})
    # the same id with different content is still the same batch (ids are stable across resends)
    status, answer = collector_server.post_batch(make_batch("test-probe", "p:dup", flows(n=1), []))
    assert answer["duplicate"] is True
    assert stored(collector_server) == 3
    assert len(collector_server.client().query("names")) == 1
    assert 'hostflow_collector_batches_duplicate_total{origin="batch"} 2' in collector_server.metrics()


def test_one_bad_row_stores_nothing(collector_server):
    rows = flows(n=4)
    rows[3].dst_port = 70000
    batch = make_batch("test-probe", "p:atomic", rows, names())
    status, answer = collector_server.post_batch(batch)
    assert status == 400
    assert answer["error"] == "flow row 3: field dst_port: 70000 is out of range 0..65535"
    assert stored(collector_server) == 0
    assert collector_server.client().query("names").empty
    # the refused batch id was not recorded: the corrected resend is stored
    rows[3].dst_port = 443
    status, answer = collector_server.post_batch(make_batch("test-probe", "p:atomic", rows, names()))
    assert (status, answer["flows"], answer["duplicate"]) == (200, 4, False)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (
            lambda b: b["flows"][1].__setitem__(5, "not-an-ip"),
            "flow row 1: field src_addr: not an IP address",
        ),
        (lambda b: b["flows"][0].__setitem__(4, "5"), "flow row 0: field protocol: expected an integer"),
        (lambda b: b["flows"][2].__setitem__(10, -1), "flow row 2: field bytes: -1 is out of range"),
        (
            lambda b: b["flows"][0].__setitem__(2, b["flows"][0][1] - 1),
            "flow row 0: field flow_end: is before",
        ),
        (lambda b: b["flows"][1].pop(), "flow row 1: expected a list of 19 values"),
        (lambda b: b["flows"][0].__setitem__(16, "timeout"), "flow row 0: field end_reason: unknown value"),
        (lambda b: b["names"][0].__setitem__(4, "carrier-pigeon"), "name row 0: field source: unknown value"),
        (
            lambda b: b["names"][0].__setitem__(7, "example.com"),
            "name row 0: field cname_chain: expected a list",
        ),
        (
            lambda b: b["flow_fields"].remove("vlan"),
            "flow_fields: does not match the contract (missing ['vlan']",
        ),
        (lambda b: b.__setitem__("schema_version", 2), "schema_version: got 2, this collector accepts 1"),
        (lambda b: b.__setitem__("batch_id", ""), "batch_id: expected text"),
        (lambda b: b.__setitem__("flows", {"a": 1}), "flows: expected a list"),
    ],
)
def test_malformed_batches_are_refused_naming_row_and_field(shared_collector, mutate, reason):
    batch = make_batch("test-probe", f"bad:{reason[:30]}", flows(offset=10**12), names())
    mutate(batch)
    status, answer = shared_collector.post_batch(batch)
    assert status == 400
    assert answer["error"].startswith(reason), answer["error"]
    assert int(shared_collector.client().query("time_range", probe_id="test-probe")["flows"][0]) >= 0
    assert shared_collector.request("GET", "/health")[0] == 200


def test_not_json_and_not_an_object(collector_server):
    status, answer = collector_server.post_batch(b"{not json")
    assert status == 400 and answer["error"].startswith("body is not valid JSON")
    status, answer = collector_server.post_batch(b"[1, 2]")
    assert status == 400 and "JSON object" in answer["error"]
    status, answer = collector_server.post_batch(b"\x1f\x8b broken", gzip_body=False)
    assert status == 400
    text = collector_server.metrics()
    assert 'batches_rejected_total{reason="bad_json"} 2' in text
    assert 'batches_rejected_total{reason="bad_envelope"} 1' in text


def test_body_limit_and_gzip_bomb_keep_the_server_alive(collector_factory):
    server = collector_factory(extra_args=["--max-body", "20000"])
    big = make_batch("test-probe", "p:big", flows(n=200), [])
    status, answer = server.post_batch(big)
    assert status == 413 and "over the limit of 20000" in answer["error"]
    bomb = json.dumps({"schema_version": 1, "pad": "x" * 5_000_000}).encode()
    status, answer = server.post_batch(bomb, gzip_body=True)
    assert len(gzip.compress(bomb)) < 20000
    assert status == 413 and "decompressed body" in answer["error"]
    # gzip within the limit is fine, and the daemon still works
    status, answer = server.post_batch(make_batch("test-probe", "p:gz", flows(), names()), gzip_body=True)
    assert (status, answer["flows"]) == (200, 3)
    assert 'batches_rejected_total{reason="too_large"} 2' in server.metrics()
    assert server.proc.poll() is None


def test_iso_timestamps_and_canonical_addresses(collector_server):
    batch = make_batch("test-probe", "p:iso", [], [])
    flow = flows(n=1)[0]
    flow.src_addr, flow.dst_addr, flow.ip_version = "2001:DB8:0:0::1", "2001:db8::0:2", 6
    row = [getattr(flow, f) for f in batch["flow_fields"]]
    row[1], row[2] = "2020-02-23T08:54:01Z", "2020-02-23T08:54:01.500000Z"
    batch["flows"] = [row]
    assert collector_server.post_batch(batch)[0] == 200
    got = collector_server.client().query("host_flows", host="2001:db8::1")
    assert got[["flow_start", "flow_end", "peer_addr"]].values.tolist() == [[T0, T0 + 500_000, "2001:db8::2"]]


def test_health_is_stored_and_shown_by_probes(collector_server):
    health = {"ts": T0, "hostname": "pi-lab", "version": "0.1", "iface": "eth0", "packets_captured": 1234,
              "kernel_drops": 5, "parse_errors": {"truncated": 2}, "flows_exported": 3, "spool_bytes": 0,
              "spool_batches": 0}  # fmt: skip
    assert collector_server.post_batch(make_batch("test-probe", "p:h", flows(), [], health))[0] == 200
    row = collector_server.client().query("probes").iloc[0]
    assert (row.probe_id, row.hostname, row.iface, row.packets_captured, row.kernel_drops) == (
        "test-probe", "pi-lab", "eth0", 1234, 5,
    )  # fmt: skip
    assert json.loads(row.parse_errors) == {"truncated": 2}
    assert (row.batches, row.flows_stored, row.source) == (1, 3, "probe")


def test_import_needs_admin_token_and_is_idempotent(collector_server):
    batch = make_batch(
        "", "import:abc", flows("probe-a", 2) + flows("probe-b", 1, offset=5), names("probe-a")
    )
    batch["source"] = "import:lab.jsonl"
    assert collector_server.post_import(batch, token="test-token")[0] == 401
    status, answer = collector_server.post_import(batch)
    assert (status, answer["flows"], answer["names"], answer["duplicate"]) == (200, 3, 1, False)
    assert collector_server.post_import(batch)[1]["duplicate"] is True
    assert stored(collector_server, "probe-a") == 2 and stored(collector_server, "probe-b") == 1


def test_database_file_holds_exactly_what_was_acknowledged(collector_server):
    for i in range(5):
        assert collector_server.post_batch(make_batch("test-probe", f"p:{i}", flows(n=i + 1), []))[0] == 200
    assert collector_server.stop() == 0
    assert not collector_server.db_path.with_name(collector_server.db_path.name + ".collector.json").exists()
    con = duckdb.connect(str(collector_server.db_path), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM flows").fetchone()[0] == 15
        assert con.execute("SELECT count(*), sum(flows) FROM batches").fetchone() == (5, 15)
        times = [r[0] for r in con.execute("SELECT epoch_us(flow_start) FROM flows").fetchall()]
        assert min(times) == T0
    finally:
        con.close()
