"""The columnar batch encoding (application/vnd.hostflow.columns+v1): written by the probe's encoder
(standard library only), POSTed to the real collector daemon, read back from its DuckDB file."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.columns import tables_from_columns
from collector.store import BatchItem, Store
from hostflow.records import (
    COLUMNS_MEDIA_TYPE,
    FLOW_FIELDS,
    NAME_FIELDS,
    ContractError,
    Flow,
    Name,
    decode_columns,
    encode_columns,
    make_batch,
    make_columns_batch,
    read_columns_layout,
)
from tests.plugins.collector import PROBE_ID, PROBE_TOKEN

T0 = 1_582_448_041_000_000  # 2020-02-23T08:54:01Z
HOSTILE = [
    "ünïcödé.example",
    "xn--bcher-kva.example",
    "名前.例え",
    "'; DROP TABLE flows; --",
    "<script>alert(1)</script>",
    "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61,
    "tab\there\nnewline",
    "emoji-😀.example",
    "",
]


def sample_flows(probe: str = PROBE_ID, n: int = 6, offset: int = 0) -> list[Flow]:
    out = []
    for i in range(n):
        v6 = i % 2 == 1
        out.append(
            Flow(
                probe, T0 + offset + i * 1_000_000, T0 + offset + i * 1_000_000 + 123_457, 6 if v6 else 4,
                (6, 17, 1, 58, 47, 132)[i % 6], "2001:db8::10" if v6 else "192.168.1.10", 40000 + i,
                f"2001:db8:ffff::{i + 1:x}" if v6 else f"93.184.216.{i + 1}", (443, 53, 0x0800, 0x8000, 0, 9)[i % 6],
                2**40 + i, 2**62 + i, tcp_flags=0xFF - i % 256, tos=i * 8 % 256, vlan=4094 - i, src_mac="aa:bb:cc:dd:ee:0" + str(i),
                dst_mac="ff:ff:ff:ff:ff:ff" if i == 3 else "", end_reason=("idle", "active", "fin", "rst", "", "evicted")[i % 6],
                initiator=("src", "dst", "")[i % 3], sampling=1 + i * 1000,
            )
        )  # fmt: skip
    return out


def sample_names(probe: str = PROBE_ID) -> list[Name]:
    return [
        Name(probe, T0 - 5_000 + i, "93.184.216.1" if i % 2 else "2001:db8:ffff::2", name, source,
             "192.168.1.10" if i % 3 else "", 2**32 - 1 - i, [name, "cdn.ünï.example"] if i % 2 else [],
             "AAAA" if i % 2 else "", i % 256)
        for i, (name, source) in enumerate(
            zip(HOSTILE, ["dns", "sni", "http", "mdns", "dhcp", "llmnr", "netbios", "ptr", "hosts"], strict=True)
        )
    ]  # fmt: skip


def post(server, body: bytes, token: str | None = PROBE_TOKEN, path: str = "/api/v1/batches", **headers: str):
    sent = {"Content-Type": COLUMNS_MEDIA_TYPE, **headers}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    status, payload, _ = server.request("POST", path, body, sent)
    return status, json.loads(payload)


def db_rows(server, table: str, fields: tuple[str, ...], order: str) -> list[list[Any]]:
    """Rows straight from the DuckDB file (the collector stopped): times as µs."""
    assert server.stop() == 0
    con = duckdb.connect(str(server.db_path), read_only=True)
    try:
        cols = ", ".join(f"epoch_us({f})" if f in ("flow_start", "flow_end", "ts") else f for f in fields)
        return [list(r) for r in con.execute(f"SELECT {cols} FROM {table} ORDER BY {order}").fetchall()]
    finally:
        con.close()


def flow_count(server) -> int:
    status, answer = server.query_json("time_range")
    assert status == 200
    return int(answer["rows"][0][answer["columns"].index("flows")] or 0)


def layout_patch(body: bytes, edit) -> bytes:
    """Rewrite the header with ``edit(header)``; the buffers stay where they were."""
    header, start = read_columns_layout(body)
    edit(header)
    head = json.dumps(header).encode()
    prefix = b"HFC1" + len(head).to_bytes(4, "little") + head
    prefix += bytes(-len(prefix) % 8)
    return prefix + body[start:]


def column(header: dict, kind: str, name: str) -> dict:
    return next(c for c in header[f"{kind}s"]["columns"] if c["name"] == name)


def buffer_patch(body: bytes, kind: str, name: str, index: int, at: int, data: bytes) -> bytes:
    """Overwrite bytes inside one buffer of one column."""
    header, start = read_columns_layout(body)
    offset = column(header, kind, name)["buffers"][index][0]
    position = start + offset + at
    return body[:position] + data + body[position + len(data) :]


# ---------------------------------------------------------------- round trip


def test_every_field_round_trips_through_the_daemon_into_duckdb(collector_server):
    flows, names = sample_flows(), sample_names()
    body = make_columns_batch(PROBE_ID, "c:rt", flows, names, {"hostname": "pi-ü", "packets_captured": 7}, T0)
    status, answer = post(collector_server, body)
    assert (status, answer) == (200, {"batch_id": "c:rt", "flows": 6, "names": 9, "duplicate": False})
    got_names = db_rows(collector_server, "names", NAME_FIELDS, "ts")
    assert [[getattr(f, k) for k in FLOW_FIELDS] for f in flows] == db_rows(
        collector_server, "flows", FLOW_FIELDS, "flow_start"
    )
    assert got_names == [[getattr(n, k) for k in NAME_FIELDS] for n in names]


def test_nulls_get_the_json_paths_defaults_and_addresses_their_canonical_form(collector_server):
    flow_columns = {
        k: [v]
        for k, v in zip(FLOW_FIELDS, make_batch("", "", sample_flows(n=1), [])["flows"][0], strict=True)
    }
    for key in (
        "tcp_flags",
        "tos",
        "vlan",
        "src_mac",
        "dst_mac",
        "end_reason",
        "initiator",
        "sampling",
        "probe_id",
    ):
        flow_columns[key] = [None]
    flow_columns["src_addr"] = ["2001:DB8:0:0::10"]
    flow_columns["ip_version"] = [6]
    name_columns = {
        k: [v]
        for k, v in zip(NAME_FIELDS, make_batch("", "", [], sample_names()[:1])["names"][0], strict=True)
    }
    for key in ("client_addr", "ttl", "cname_chain", "qtype", "rcode"):
        name_columns[key] = [None]
    envelope = {"schema_version": 1, "batch_id": "c:nulls", "probe_id": PROBE_ID}
    status, answer = post(collector_server, encode_columns(envelope, flow_columns, name_columns))
    assert status == 200, answer
    [flow] = db_rows(collector_server, "flows", FLOW_FIELDS, "flow_start")
    assert dict(zip(FLOW_FIELDS, flow, strict=True)) == {
        **dict(zip(FLOW_FIELDS, [v[0] for v in flow_columns.values()], strict=True)),
        "probe_id": PROBE_ID, "src_addr": "2001:db8::10", "tcp_flags": 0, "tos": 0, "vlan": 0, "src_mac": "",
        "dst_mac": "", "end_reason": "", "initiator": "", "sampling": 1,
    }  # fmt: skip
    con = duckdb.connect(str(collector_server.db_path), read_only=True)
    try:
        assert con.execute("SELECT client_addr, ttl, cname_chain, qtype, rcode FROM names").fetchall() == [
            ("", 0, [], "", 0)
        ]
    finally:
        con.close()


def test_the_stdlib_decoder_reads_what_the_encoder_wrote():
    flows, names = sample_flows(), sample_names()
    body = make_columns_batch(PROBE_ID, "c:dec", flows, names, {"x": 1}, 5)
    assert decode_columns(body) == make_batch(PROBE_ID, "c:dec", flows, names, {"x": 1}, 5)
    header, flow_table, name_table = tables_from_columns(body)
    assert flow_table.num_rows == 6 and name_table.column("name").to_pylist() == HOSTILE
    # zero copy: the text data of a column lies inside the body's memory
    data = flow_table.column("src_addr").chunk(0).buffers()[2]
    base = pa.py_buffer(body).address
    assert base <= data.address < base + len(body)


def test_a_value_its_type_cannot_hold_is_refused_by_the_encoder():
    flows = sample_flows(n=1)
    flows[0].dst_port = 70000
    with pytest.raises(ContractError, match="flow column dst_port: a value does not fit USMALLINT"):
        make_columns_batch(PROBE_ID, "c:big", flows, [])


# ---------------------------------------------------------------- refusals


def _valid() -> bytes:
    return make_columns_batch(PROBE_ID, "c:bad", sample_flows(offset=10**12), sample_names())


def _cut(body: bytes) -> bytes:
    return body[:-24]


CASES = [
    ("truncated", _cut, "bad_columns", "runs past the end of the"),
    ("magic", lambda b: b"JUNK" + b[4:], "bad_columns", "not a application/vnd.hostflow.columns+v1 body"),
    ("header length", lambda b: b[:4] + (10**9).to_bytes(4, "little") + b[8:], "bad_columns", "header length 1000000000 runs past"),
    ("header json", lambda b: b[:8] + b"?" + b[9:], "bad_header", "header is not valid JSON"),
    ("schema", lambda b: layout_patch(b, lambda h: h.update(schema_version=2)), "schema_version", "schema_version: got 2"),
    ("batch id", lambda b: layout_patch(b, lambda h: h.update(batch_id="")), "bad_envelope", "batch_id: expected text"),
    ("huge rows", lambda b: layout_patch(b, lambda h: h["flows"].update(rows=10**12)), "bad_columns", "flows.rows: expected an integer 0..50000000"),
    ("declared rows", lambda b: layout_patch(b, lambda h: h["flows"].update(rows=40_000_000)), "bad_columns", "flow column"),
    ("unknown column", lambda b: layout_patch(b, lambda h: column(h, "flow", "vlan").update(name="bogus")), "bad_columns", "flows.columns: does not match the contract (missing ['vlan'], unknown ['bogus'])"),
    ("wrong type", lambda b: layout_patch(b, lambda h: column(h, "flow", "src_port").update(type="UBIGINT")), "bad_columns", "flow column src_port: type 'UBIGINT', the contract says USMALLINT"),
    ("wrong length", lambda b: layout_patch(b, lambda h: column(h, "flow", "bytes")["buffers"][1].__setitem__(1, 40)), "bad_columns", "flow column bytes: buffer 1 of 40 bytes, expected 48"),
    ("unaligned", lambda b: layout_patch(b, lambda h: column(h, "flow", "bytes")["buffers"][1].__setitem__(0, 4)), "bad_columns", "flow column bytes: buffer 1 is not 8-byte aligned"),
    ("offset past end", lambda b: buffer_patch(b, "flow", "src_addr", 1, 24, (10**6).to_bytes(4, "little")), "bad_columns", "flow column src_addr: offsets: last offset 1000000 runs past"),
    ("non-monotonic", lambda b: buffer_patch(b, "flow", "dst_addr", 1, 8, (1).to_bytes(4, "little")), "bad_columns", "flow column dst_addr: offsets: offsets decrease at row 1"),
    ("utf-8", lambda b: buffer_patch(b, "name", "name", 2, 0, b"\xff\xfe"), "bad_utf8", "name column name: "),
    ("nulls lie", lambda b: layout_patch(b, lambda h: column(h, "flow", "tos").update(nulls=2)), "bad_columns", "flow column tos: 2 nulls but no validity bitmap"),
    ("list items", lambda b: buffer_patch(b, "name", "cname_chain", 1, 36, (999).to_bytes(4, "little")), "bad_columns", "name column cname_chain: item offsets of"),
    ("bad address", lambda b: buffer_patch(b, "flow", "src_addr", 2, 0, b"x"), "bad_record", "flow row 0: field src_addr: not an IP address: 'x92.168.1.10'"),
    ("ip version", lambda b: buffer_patch(b, "flow", "ip_version", 1, 2, b"\x05"), "bad_record", "flow row 2: field ip_version: 5 is not 4 or 6"),
    ("ubigint", lambda b: buffer_patch(b, "flow", "bytes", 1, 8, b"\xff" * 8), "bad_record", "flow row 1: field bytes: 18446744073709551615 is out of range"),
    ("enum", lambda b: buffer_patch(b, "flow", "end_reason", 2, 0, b"IDLE"), "bad_record", "flow row 0: field end_reason: unknown value 'IDLE'"),
    ("time order", lambda b: buffer_patch(b, "flow", "flow_end", 1, 0, bytes(8)), "bad_record", "flow row 0: field flow_end: is before flow_start"),
    ("row probe", lambda b: buffer_patch(b, "flow", "probe_id", 2, 0, b"X"), "bad_record", "flow row 0: field probe_id: 'Xest-probe' differs"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "mutate", "reason", "message"), CASES, ids=[c[0] for c in CASES])
def test_a_malformed_body_is_400_with_its_reason_and_changes_nothing(
    shared_collector, label, mutate, reason, message
):
    before = flow_count(shared_collector)
    metric = f'hostflow_collector_batches_rejected_total{{reason="{reason}"}}'

    def counted() -> int:
        return sum(
            int(line.split()[-1])
            for line in shared_collector.metrics().splitlines()
            if line.startswith(metric)
        )

    rejected = counted()
    status, answer = post(shared_collector, mutate(_valid()))
    assert status == 400, answer
    assert answer["error"].startswith(message) or message in answer["error"], answer["error"]
    assert "\n" not in answer["error"]
    assert counted() == rejected + 1
    assert flow_count(shared_collector) == before
    assert shared_collector.request("GET", "/health")[0] == 200


def test_token_of_another_probe_is_403_before_the_buffers_are_read(collector_server):
    foreign = make_columns_batch("other-probe", "o:1", sample_flows("other-probe"), [])
    status, answer = post(collector_server, foreign[:-40])  # broken buffers: the token is refused first
    assert status == 403 and "'other-probe'" in answer["error"]
    status, _ = post(collector_server, _valid(), token="nope")
    assert status == 401
    assert flow_count(collector_server) == 0


def test_oversize_body_is_413_and_gzip_is_accepted(collector_factory):
    import gzip

    server = collector_factory(extra_args=["--max-body", "20000"])
    big = make_columns_batch(PROBE_ID, "c:big", sample_flows(n=400), [])
    assert len(big) > 20000
    status, answer = post(server, big)
    assert status == 413 and "over the limit of 20000" in answer["error"]
    status, answer = post(server, gzip.compress(make_columns_batch(PROBE_ID, "c:gz", sample_flows(n=100), [])),
                          **{"Content-Encoding": "gzip"})  # fmt: skip
    assert (status, answer["flows"]) == (200, 100)
    assert 'batches_rejected_total{reason="too_large"} 1' in server.metrics()


def test_a_resent_batch_is_stored_once_and_a_bad_row_stores_nothing(collector_server):
    flows = sample_flows()
    body = make_columns_batch(PROBE_ID, "c:dup", flows, sample_names())
    assert post(collector_server, body)[1]["duplicate"] is False
    assert post(collector_server, body) == (
        200,
        {"batch_id": "c:dup", "flows": 0, "names": 0, "duplicate": True},
    )
    flows[4].dst_addr = "not-an-address"
    status, answer = post(collector_server, make_columns_batch(PROBE_ID, "c:atomic", flows, sample_names()))
    assert (status, answer["error"]) == (
        400,
        "flow row 4: field dst_addr: not an IP address: 'not-an-address'",
    )
    assert flow_count(collector_server) == 6
    rows = db_rows(collector_server, "batches", ("batch_id", "flows", "names"), "batch_id")
    assert rows == [["c:dup", 6, 9]]


def test_concurrent_batches_are_grouped_yet_each_stays_atomic_and_idempotent(collector_server):
    bodies = [
        make_columns_batch(PROBE_ID, f"c:g{k}", sample_flows(n=50, offset=k * 10**9), []) for k in range(12)
    ]
    bad = sample_flows(n=50, offset=99 * 10**9)
    bad[7].src_addr = "999.1.1.1"
    bodies.append(make_columns_batch(PROBE_ID, "c:gbad", bad, []))
    broken = make_batch(PROBE_ID, "c:gjson", bad, [])  # JSON too, in the same rush
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: post(collector_server, b), bodies + bodies[:3]))
        json_status = collector_server.post_batch(broken)
    assert json_status[0] == 400 and json_status[1]["error"].startswith("flow row 7: field src_addr")
    assert [a[0] for a in answers] == [200] * 12 + [400] + [200] * 3
    assert answers[12][1]["error"] == "flow row 7: field src_addr: not an IP address: '999.1.1.1'"
    good = [a[1] for a in answers if a[0] == 200]
    assert sorted(a["flows"] for a in good if not a["duplicate"]) == [50] * 12
    assert sum(a["duplicate"] for a in good) == 3
    assert flow_count(collector_server) == 600
    rows = db_rows(collector_server, "batches", ("batch_id", "flows"), "batch_id")
    assert rows == sorted([[f"c:g{k}", 50] for k in range(12)])


def test_store_groups_batches_and_isolates_a_bad_one(tmp_path: Path):
    from collector.columns import table_from_flows

    store = Store(str(tmp_path / "g.duckdb"))
    good = [table_from_flows(sample_flows(n=5, offset=k * 10**9)) for k in range(3)]
    broken = good[0].drop_columns(["vlan"])
    items = [
        BatchItem("g:0", "probe", good[0], None, None, PROBE_ID),
        BatchItem("g:0", "probe", good[1], None, None, PROBE_ID),  # the same id twice in one group
        BatchItem("g:1", "probe", broken, None, None, PROBE_ID),
        BatchItem("g:2", "probe", good[2], None, {"hostname": "h"}, PROBE_ID),
    ]
    answers = store.ingest_columns_many(items)
    assert [getattr(a, "flows", None) for a in answers] == [5, 0, None, 5]
    assert answers[1].duplicate and isinstance(answers[2], ContractError)
    assert store.counts()["flows"] == 10
    assert store.sql("SELECT batch_id FROM batches ORDER BY 1").column(0).to_pylist() == ["g:0", "g:2"]
    store.close()


# ---------------------------------------------------------------- fuzzing


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_bodies_raise_only_contract_errors_in_process(data):
    body = bytearray(_valid())
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(body) - 1))
        body[position] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        body = body[: data.draw(st.integers(0, len(body)))]
    try:
        _, flows, names = tables_from_columns(bytes(body))
    except ContractError:
        return
    flows.validate(full=True)
    names.validate(full=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    noise=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 3000),
)
def test_fuzzed_bodies_never_hurt_the_daemon(shared_collector, noise, cut):
    body = bytearray(
        make_columns_batch(PROBE_ID, f"fuzz:{noise}:{cut}", sample_flows(offset=5 * 10**12), sample_names())
    )
    for position, value in noise:
        body[position % len(body)] = value
    before = flow_count(shared_collector)
    status, answer = post(shared_collector, bytes(body[: len(body) - cut]))
    assert status in (200, 400, 403), answer  # 403: the noise hit the header's probe_id
    if status != 200:
        assert answer["error"] and "\n" not in answer["error"]
        assert flow_count(shared_collector) == before
    else:
        assert flow_count(shared_collector) == before + answer["flows"]
