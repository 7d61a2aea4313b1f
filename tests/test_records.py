"""The contract: round trips and the errors bad records get."""

from __future__ import annotations

import pytest

from hostflow import records
from hostflow.records import ContractError, Flow, Name


def sample_flow() -> Flow:
    return Flow(
        probe_id="p1",
        flow_start=1_582_448_041_123_456,
        flow_end=1_582_448_042_000_000,
        ip_version=4,
        protocol=6,
        src_addr="192.168.1.71",
        src_port=50000,
        dst_addr="52.1.2.3",
        dst_port=443,
        packets=10,
        bytes=4242,
        tcp_flags=0x1B,
        end_reason="fin",
        initiator="src",
    )


def test_flow_round_trip_through_dict_with_iso_times():
    flow = sample_flow()
    data = records.flow_to_dict(flow)
    assert data["flow_start"] == "2020-02-23T08:54:01.123456Z"
    assert records.flow_from_dict(data) == flow


def test_name_round_trip_keeps_the_cname_chain():
    name = Name(
        probe_id="p1",
        ts=5,
        addr="1.2.3.4",
        name="www.example.com",
        source="dns",
        client_addr="192.168.1.71",
        ttl=300,
        cname_chain=["www.example.com", "cdn.example.net"],
        qtype="A",
    )
    assert records.name_from_dict(records.name_to_dict(name)) == name
    csv_style = records.name_to_dict(name) | {"cname_chain": "www.example.com > cdn.example.net"}
    assert records.name_from_dict(csv_style).cname_chain == name.cname_chain


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"protocol": 300}, "protocol"),
        ({"src_port": 70000}, "src_port"),
        ({"packets": -1}, "packets"),
        ({"flow_start": "yesterday"}, "timestamp"),
        ({"end_reason": "bored"}, "end_reason"),
        ({"flow_end": "2000-01-01T00:00:00Z"}, "before"),
    ],
)
def test_bad_flow_fields_are_named_in_the_error(change, message):
    data = records.flow_to_dict(sample_flow()) | change
    with pytest.raises(ContractError, match=message):
        records.flow_from_dict(data)


def test_timestamps_accept_every_spelling():
    expected = 1_582_448_041_000_000
    for value in (
        expected,
        str(expected),
        "2020-02-23T08:54:01Z",
        "2020-02-23 08:54:01",
        "2020-02-23T09:54:01+01:00",
    ):
        assert records.to_us(value) == expected


def test_batch_rows_follow_the_field_lists():
    batch = records.make_batch("p1", "p1:1", [sample_flow()], [], health={"packets_captured": 1})
    assert batch["schema_version"] == records.SCHEMA_VERSION
    row = dict(zip(batch["flow_fields"], batch["flows"][0], strict=True))
    assert row["bytes"] == 4242 and row["src_addr"] == "192.168.1.71"
