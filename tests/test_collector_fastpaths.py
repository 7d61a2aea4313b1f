"""The collector's fast paths (issue 7 point 7) give exactly what the slow ones gave: batches land in
time order (the zone-map premise), addresses are canonicalised row by row, and a host with many
peers gets its names through the large-list lookup."""

from __future__ import annotations

import pyarrow as pa

from collector.columns import table_from_rows
from collector.store import Store
from hostflow.records import FLOW_FIELDS, Flow, Name

T0 = 1_582_448_041_000_000  # 2020-02-23T08:54:01Z
S = 1_000_000


def _flow(start: int, src: str, dst: str, version: int = 4) -> Flow:
    return Flow("p", start, start + S, version, 6, src, 50000, dst, 443, 1, 100, initiator="src")


def test_out_of_order_batch_is_stored_sorted_by_time(tmp_path):
    starts = [T0 + k * S for k in (5, 1, 4, 1, 3, 0, 2)]
    batch = [_flow(t, "10.0.0.1", f"192.0.2.{i + 1}") for i, t in enumerate(starts)]
    with Store(str(tmp_path / "s.duckdb")) as store:
        store.ingest("b1", "probe", batch, [])
        rows = store.sql("SELECT epoch_us(flow_start) AS t, dst_addr FROM flows").to_pylist()
    assert [r["t"] for r in rows] == sorted(starts)
    # stable: the two flows starting at T0+1s keep the batch's order
    assert [r["dst_addr"] for r in rows if r["t"] == T0 + S] == ["192.0.2.2", "192.0.2.4"]


def test_mixed_addresses_are_canonicalised_per_row():
    raw = ["10.0.0.1", "2001:DB8:0:0::1", "192.0.2.7", "2001:db8::1", "::FFFF:192.0.2.7", "10.0.0.1"]
    rows = [[getattr(_flow(T0, "10.0.0.9", "10.0.0.9"), f) for f in FLOW_FIELDS] for _ in raw]
    for row, addr in zip(rows, raw, strict=True):
        row[FLOW_FIELDS.index("dst_addr")] = addr
    table = table_from_rows("flow", FLOW_FIELDS, rows, "p")
    assert table.column("dst_addr").to_pylist() == [
        "10.0.0.1", "2001:db8::1", "192.0.2.7", "2001:db8::1", "::ffff:c000:207", "10.0.0.1"
    ]  # fmt: skip


def test_many_peers_are_named_like_few(tmp_path):
    peers = [f"198.51.{p // 250}.{p % 250 + 1}" for p in range(600)]
    flows = [_flow(T0 + 60 * S, "10.0.0.1", peer) for peer in peers]
    names = [
        Name("p", T0, peer, f"peer{i}.example", "dns", "10.0.0.1", 300, [], "A")
        for i, peer in enumerate(peers)
    ]
    with Store(str(tmp_path / "s.duckdb")) as store:
        store.ingest("b1", "probe", flows, names)
        params = {"host": "10.0.0.1", "start": T0, "end": T0 + 3600 * S, "aggregate": "fqdn", "top_n": 1000}
        got = store.query("host_peers", params).to_pylist()
        few = store.name_candidates(peers[:3], T0 - S, T0 + S).column("name").to_pylist()
        many = store.name_candidates(peers, T0 - S, T0 + S)
    assert sorted(r["peer"] for r in got) == sorted(f"peer{i}.example" for i in range(600))
    assert few == ["peer0.example", "peer1.example", "peer2.example"]
    assert many.num_rows == 600
    assert isinstance(many, pa.Table)
