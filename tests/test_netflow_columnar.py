"""The columnar fast path (collector.netflow.columnar) gives exactly the per-record path's flows.

Every case of tests/test_netflow_decode.py (all captures and payloads in tests/fixtures/netflow) is
decoded twice, once per path, and the flows compared field by field (as multisets: the columnar
path groups records by template), with the decoder counters. Then random fixed-length templates
(every element the decoder reads, odd integer widths, unknown and repeated elements, both address
families, options-announced samplers and init times) and mutated real datagrams, the same way.
"""

from __future__ import annotations

import dataclasses
import random
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.columns import FLOW_SCHEMA
from collector.netflow import NetflowDecoder
from collector.netflow.columnar import flows_table, table_flows
from collector.netflow.fields import ELEMENTS, FLOAT, IPV4, IPV6, MAC, UINT
from tests.test_netflow_decode import ALL_CASES, REAL, case_datagrams, ipfix_message, template_record


def both_paths(datagrams: list[tuple[bytes, str, int]]) -> tuple[list[Any], list[Any], NetflowDecoder, Any]:
    """(per-record flows that fit the store, columnar flows, the columnar decoder, its batch)."""
    reference, fast = NetflowDecoder(), NetflowDecoder()
    expected = []
    for payload, exporter, stamp in datagrams:
        expected += reference.feed(payload, exporter, stamp)
    batch = fast.new_batch()
    for payload, exporter, stamp in datagrams:
        assert fast.feed(payload, exporter, stamp, batch) == []
    columnar = []
    for exporter, probe_id, table in batch.tables():
        assert table.schema == FLOW_SCHEMA
        flows = table_flows(table)
        assert {flow.probe_id for flow in flows} == {probe_id} and probe_id.startswith(f"nf:{exporter}:")
        columnar += flows
    # the per-record path returns flows no column can hold (a sampling rate of 2^32, a time past
    # year 9999); the batch path leaves them out and counts them
    storable = [flow for flow in expected if flows_table([flow])[1] == 0]
    snapshot = reference.metrics.snapshot()
    if len(storable) < len(expected):
        snapshot["drops"]["out_of_range"] = len(expected) - len(storable)
        snapshot["flows"] = len(storable)
    assert fast.metrics.snapshot() == snapshot
    return storable, columnar, fast, batch


def records(flows: list[Any]) -> list[tuple[Any, ...]]:
    return sorted(dataclasses.astuple(flow) for flow in flows)


COLUMNAR_ROWS: dict[str, int] = {}


@pytest.mark.parametrize(("kind", "case", "files"), ALL_CASES, ids=[c for _, c, _ in ALL_CASES])
def test_columnar_equals_per_record_on_fixtures(kind: str, case: str, files: list[str]) -> None:
    datagrams = [
        (payload, exporter, stamp) for exporter, _s, _d, payload, stamp in case_datagrams(kind, files)
    ]
    expected, columnar, _decoder, batch = both_paths(datagrams)
    assert records(columnar) == records(expected)
    COLUMNAR_ROWS[case] = batch.columnar_rows


def test_fixtures_mostly_take_the_columnar_path() -> None:
    """The comparison above is only worth something if the fast path did the work."""
    total = variable = 0
    for kind, _case, files in ALL_CASES:
        datagrams = [(p, e, s) for e, _s, _d, p, s in case_datagrams(kind, files)]
        expected, _columnar, _decoder, batch = both_paths(datagrams)
        total += len(expected)
        variable += len(expected) - batch.columnar_rows
    assert total == 1834
    assert variable == 19  # flows of templates with variable-length fields stay per record


TIMED = [(8, 4), (12, 4), (1, 8), (2, 8), (152, 8), (153, 8)]


def timed_record(last_octet: int, start_ms: int) -> bytes:
    return bytes([10, 0, 0, 1, 10, 0, 0, last_octet]) + struct.pack("!QQQQ", 10, 1, start_ms, start_ms + 5)


def test_batches_merged_by_absorb_decode_like_one_batch() -> None:
    """The collector merges the batches of one flush (``ColumnBatch.absorb``) before decoding: a
    batch per datagram, merged, gives exactly the per-record flows, in one table per exporter and
    domain, and the merged-away batches are left empty."""
    datagrams = [
        (payload, exporter, stamp)
        for kind, _case, files in ALL_CASES
        for exporter, _s, _d, payload, stamp in case_datagrams(kind, files)
    ]
    expected, _columnar, _decoder, _batch = both_paths(datagrams)
    fast = NetflowDecoder()
    batches = []
    for payload, exporter, stamp in datagrams:
        batches.append(fast.new_batch())
        fast.feed(payload, exporter, stamp, batches[-1])
    queued = sum(batch.records for batch in batches)
    merged = batches[0]
    for batch in batches[1:]:
        merged.absorb(batch)
        assert batch.records == 0 and batch.tables() == []
    assert merged.records == queued
    tables = merged.tables()
    keys = [(exporter, probe_id) for exporter, probe_id, _table in tables]
    assert len(keys) == len(set(keys))
    assert records([flow for _e, _p, table in tables for flow in table_flows(table)]) == records(expected)
    assert fast.metrics.flows == len(expected)


def test_values_beyond_64_bit_arithmetic_fall_back_to_per_record() -> None:
    data = timed_record(2, 1 << 45) + timed_record(3, 1_700_000_000_000)  # 2^45 ms: year 3084
    datagrams = [
        (ipfix_message([(2, template_record(400, TIMED))]), "192.0.2.5", 0),
        (ipfix_message([(400, data)]), "192.0.2.5", 0),
    ]
    expected, columnar, _decoder, batch = both_paths(datagrams)
    assert records(columnar) == records(expected)
    assert batch.columnar_rows == 0  # the whole group went through the per-record path
    assert sorted(flow.flow_start for flow in columnar) == [1_700_000_000_000_000, (1 << 45) * 1000]


def test_times_no_column_can_hold_are_dropped_and_counted() -> None:
    decoder = NetflowDecoder()
    batch = decoder.new_batch()
    decoder.feed(ipfix_message([(2, template_record(400, TIMED))]), "192.0.2.5", 0, batch)
    data = timed_record(2, 1 << 60) + timed_record(3, 1_700_000_000_000)  # 2^60 ms is past year 9999
    decoder.feed(ipfix_message([(400, data)]), "192.0.2.5", 0, batch)
    [(_exporter, _probe, table)] = batch.tables()
    assert [flow.dst_addr for flow in table_flows(table)] == ["10.0.0.3"]
    assert decoder.metrics.drops == {"out_of_range": 1} and decoder.metrics.flows == 1


# ---------------------------------------------------------------- random templates


def _lengths(kind: str) -> list[int]:
    return {
        UINT: [1, 2, 3, 4, 5, 6, 7, 8],
        IPV4: [4, 4, 4, 2],
        IPV6: [16, 16, 8],
        MAC: [6, 6, 4],
        FLOAT: [4, 8],
    }[kind]


KNOWN = sorted(ELEMENTS)
ADDRESSES = {
    "v4": [(8, 4), (12, 4)],
    "v6": [(27, 16), (28, 16)],
    "both": [(8, 4), (12, 4), (27, 16), (28, 16)],
}
# values that sit on the decoder's decision boundaries, drawn half of the time for these elements
SPECIAL: dict[int, list[int]] = {
    4: [1, 6, 17, 58, 47, 0],  # protocol
    7: [0, 53, 1023, 1024, 65535],  # ports: the initiator heuristic's edge
    11: [0, 443, 1023, 1024, 2048],
    32: [0x0800, 0x0000, 0x0303, 0x8000, 0x8100],  # ICMP type*256+code
    139: [0x8000, 0x8100, 0x0800, 0x0101],
    176: [8, 0, 3, 128, 129],
    178: [128, 129, 8, 1],
    136: [0, 1, 2, 3, 4, 5, 6],  # flowEndReason
    6: [0x04, 0x14, 0x02, 0x00],  # tcpControlBits: RST or not
    239: [0, 1, 2, 3],  # biflowDirection
    58: [0, 1, 4095, 4096],  # vlanId
    243: [0, 7],
    34: [0, 1, 100],  # samplingInterval
    50: [0, 10],
    48: [0, 1, 2],  # samplerId
    302: [0, 1, 2],
    305: [0, 1, 3],
    306: [0, 99, 10],
    309: [0, 2],
    310: [0, 7, 1000],
}
CORE = [4, 7, 11, 1, 2, 6, 136, 239, 32, 139, 176, 177, 58, 243, 22, 21]  # in most templates
PROBABILITIES = [0.01, 0.5, 1.0, 0.0, 2.0, -1.0, 1e-12, 0.6, 0.4, 0.3, float("nan")]


@st.composite
def export(draw: st.DrawFn) -> list[tuple[bytes, str, int]]:
    """Template, optional options records (sampler rates, init time) and data, as v9 or IPFIX."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    ipfix = draw(st.booleans())
    fields = list(ADDRESSES[draw(st.sampled_from(sorted(ADDRESSES)))])
    elements = [e for e in CORE if rng.random() < 0.7] + draw(st.lists(st.sampled_from(KNOWN), max_size=10))
    for element in elements:
        fields.append((element, rng.choice(_lengths(ELEMENTS[element][1]))))
    fields += [(210, rng.randint(1, 3))] * draw(st.integers(0, 2))  # padding: unknown element
    rng.shuffle(fields)
    count = draw(st.integers(1, 30))

    def value(element: int, length: int) -> bytes:
        kind = ELEMENTS.get(element, ("", ""))[1]
        roll = rng.random()
        if kind == FLOAT:
            return struct.pack(">f" if length == 4 else ">d", rng.choice(PROBABILITIES))
        if element in SPECIAL and rng.random() < 0.5:
            number = rng.choice(SPECIAL[element]) % 2 ** (8 * length)
        elif roll < 0.15:
            number = 0
        elif roll < 0.75:
            number = rng.randint(0, min(2000, 2 ** (8 * length) - 1))
        elif roll < 0.9 and length >= 4:
            number = (
                rng.randint(1_500_000_000, 1_800_000_000) * (1000 if length >= 6 else 1) % 2 ** (8 * length)
            )
        else:
            number = rng.getrandbits(8 * length)
        return number.to_bytes(length, "big")

    body = b"".join(value(e, n) for _ in range(count) for e, n in fields)
    body += b"\0" * draw(st.integers(0, 3))  # set padding shorter than a record
    exporter = "192.0.2.9"
    messages: list[bytes] = []
    options: list[tuple[int, int]] = []
    if draw(st.booleans()):
        options = [(48, 1), (34, 4)] if draw(st.booleans()) else [(160, 8)]
    if ipfix:
        messages.append(ipfix_message([(2, template_record(300, fields))], domain=3))
        if options:
            scoped = template_record(301, options)
            messages.append(ipfix_message([(3, scoped[:4] + b"\0\x01" + scoped[4:])], domain=3))
            data = b"".join(value(e, n) for e, n in options)
            messages.append(ipfix_message([(301, data)], domain=3, sequence=0))
        messages.append(ipfix_message([(300, body)], domain=3, sequence=1))
    else:
        header = struct.pack("!HHIIII", 9, 1, draw(st.integers(0, 2**32 - 1)), 1_700_000_000, 0, 3)
        template = struct.pack("!HH", 300, len(fields)) + b"".join(struct.pack("!HH", *f) for f in fields)
        messages.append(header + struct.pack("!HH", 0, 4 + len(template)) + template)
        if options:
            scope = struct.pack("!HH", 1, 4)  # system scope, 4 bytes
            option_fields = b"".join(struct.pack("!HH", *f) for f in options)
            opt = struct.pack("!HHH", 301, len(scope), len(option_fields)) + scope + option_fields
            messages.append(header + struct.pack("!HH", 1, 4 + len(opt)) + opt)
            data = b"\0\0\0\x01" + b"".join(value(e, n) for e, n in options)
            messages.append(header + struct.pack("!HH", 301, 4 + len(data)) + data)
        messages.append(header + struct.pack("!HH", 300, 4 + len(body)) + body)
    if draw(st.booleans()):  # data before its template: held, then released
        messages = messages[-1:] + messages[:-1]
    return [(message, exporter, 1_700_000_000_000_000 + i) for i, message in enumerate(messages)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datagrams=export())
def test_columnar_equals_per_record_on_random_templates(datagrams: list[tuple[bytes, str, int]]) -> None:
    expected, columnar, _decoder, _batch = both_paths(datagrams)
    assert records(columnar) == records(expected)


# ---------------------------------------------------------------- mutated real datagrams

TEMPLATES = [d for d in REAL if len(d) > 1 and d[1] in (9, 10)]


@pytest.fixture(scope="module")
def primed_pair() -> tuple[NetflowDecoder, NetflowDecoder]:
    """Two decoders that have seen every real template; every example feeds both the same datagram."""
    pair = NetflowDecoder(), NetflowDecoder()
    for decoder in pair:
        for datagram in TEMPLATES:
            decoder.feed(datagram, "192.0.2.1", 0)
    return pair


def without_out_of_range(snapshot: dict[str, Any]) -> dict[str, Any]:
    drops = {k: v for k, v in snapshot["drops"].items() if k != "out_of_range"}
    return {**snapshot, "drops": drops, "flows": None}


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    index=st.integers(0, len(REAL) - 1),
    flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 7)), min_size=1, max_size=8),
)
def test_columnar_equals_per_record_on_bit_flipped_datagrams(
    primed_pair: tuple[NetflowDecoder, NetflowDecoder], index: int, flips: list[tuple[int, int]]
) -> None:
    reference, fast = primed_pair
    data = bytearray(REAL[index])
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    expected = [
        flow for flow in reference.feed(bytes(data), "192.0.2.1", 1_000_000) if flows_table([flow])[1] == 0
    ]
    batch = fast.new_batch()
    assert fast.feed(bytes(data), "192.0.2.1", 1_000_000, batch) == []
    columnar = [flow for _e, _p, table in batch.tables() for flow in table_flows(table)]
    assert records(columnar) == records(expected)
    assert without_out_of_range(fast.metrics.snapshot()) == without_out_of_range(reference.metrics.snapshot())
    assert "columnar_error" not in fast.metrics.drops
