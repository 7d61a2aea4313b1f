"""hostflow.fileio: writers and readers round-trip every contract field; nfdump CSV is read as nfdump
itself decodes it (its JSON output, from the real nfcapd/nfdump); the hive export reads back in DuckDB."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.fileimport import UdpExtractor, iter_capture
from hostflow import fileio
from hostflow.records import (
    END_REASONS,
    FLOW_FIELDS,
    INITIATORS,
    NAME_FIELDS,
    NAME_SOURCES,
    ContractError,
    Flow,
    Name,
    to_us,
    us_to_iso,
)
from tests.plugins.common import FIXTURES, ROOT, free_port

NETFLOW = FIXTURES / "netflow"
US_2015, US_2030 = 1_420_070_400_000_000, 1_893_456_000_000_000

# ---------------------------------------------------------------- strategies: any valid record

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
hostname = st.lists(label, min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
mac = st.one_of(st.just(""), st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b)))
u8, u16, u32, u64 = (st.integers(0, 2**n - 1) for n in (8, 16, 32, 63))


@st.composite
def flows(draw: st.DrawFn) -> Flow:
    version = draw(st.sampled_from((4, 6)))
    addr = ipv4 if version == 4 else ipv6
    start = draw(st.integers(US_2015, US_2030))
    return Flow(
        probe_id=draw(text),
        flow_start=start,
        flow_end=start + draw(st.integers(0, 10**9)),
        ip_version=version,
        protocol=draw(u8),
        src_addr=draw(addr),
        src_port=draw(u16),
        dst_addr=draw(addr),
        dst_port=draw(u16),
        packets=draw(u64),
        bytes=draw(u64),
        tcp_flags=draw(u8),
        tos=draw(u8),
        vlan=draw(st.integers(0, 4095)),
        src_mac=draw(mac),
        dst_mac=draw(mac),
        end_reason=draw(st.sampled_from(("",) + END_REASONS)),
        initiator=draw(st.sampled_from(INITIATORS)),
        sampling=draw(st.integers(1, 2**32 - 1)),
    )


@st.composite
def names(draw: st.DrawFn) -> Name:
    return Name(
        probe_id=draw(text),
        ts=draw(st.integers(US_2015, US_2030)),
        addr=draw(st.one_of(ipv4, ipv6)),
        name=draw(st.one_of(hostname, text.filter(lambda s: s.strip() == s))),
        source=draw(st.sampled_from(NAME_SOURCES)),
        client_addr=draw(st.one_of(st.just(""), ipv4, ipv6)),
        ttl=draw(u32),
        cname_chain=draw(st.lists(hostname, max_size=4)),
        qtype=draw(st.sampled_from(("", "A", "AAAA", "PTR", "HTTPS"))),
        rcode=draw(u8),
    )


def write_all(path: Path, flow_list: list[Flow], name_list: list[Name]) -> None:
    writer = fileio.open_writer(path)
    # in two calls each, as the probe's sink writes them
    writer.write_flows(flow_list[: len(flow_list) // 2])
    writer.write_names(name_list[: len(name_list) // 2])
    writer.write_flows(flow_list[len(flow_list) // 2 :])
    writer.write_names(name_list[len(name_list) // 2 :])
    writer.close()
    assert (writer.flows_written, writer.names_written) == (len(flow_list), len(name_list))


def split(records: list) -> tuple[list[Flow], list[Name]]:
    return [r for r in records if isinstance(r, Flow)], [r for r in records if isinstance(r, Name)]


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flow_list=st.lists(flows(), max_size=30), name_list=st.lists(names(), max_size=30))
def test_round_trip_is_exact(
    tmp_path: Path, suffix: str, flow_list: list[Flow], name_list: list[Name]
) -> None:
    path = tmp_path / f"records{suffix}"
    write_all(path, flow_list, name_list)
    got_flows, got_names = split(list(fileio.read_records(path)))
    assert got_flows == flow_list
    assert got_names == name_list
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_file_layout_follows_the_contract(tmp_path: Path) -> None:
    flow = Flow("pi", 1582448041123456, 1582448042000001, 4, 6, "10.0.0.1", 1234, "1.2.3.4", 443, 3, 180)
    name = Name("pi", 1582448041000000, "1.2.3.4", "www.example.com", "dns", "10.0.0.1", 300,
                ["www.example.com", "cdn.example.net"], "A")  # fmt: skip
    for suffix in (".jsonl", ".csv", ".parquet"):
        write_all(tmp_path / f"x{suffix}", [flow], [name])
    lines = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert lines[0] == {"kind": "flow", **dataclasses.asdict(flow), "flow_start": "2020-02-23T08:54:01.123456Z",
                        "flow_end": "2020-02-23T08:54:02.000001Z"}  # fmt: skip
    assert lines[1]["kind"] == "name" and lines[1]["ts"] == "2020-02-23T08:54:01.000000Z"
    assert lines[1]["cname_chain"] == ["www.example.com", "cdn.example.net"]
    with open(tmp_path / "x.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == list(FLOW_FIELDS) and rows[1][1] == "2020-02-23T08:54:01.123456Z"
    with open(tmp_path / "x.names.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert (
        list(rows[0]) == list(NAME_FIELDS) and rows[0]["cname_chain"] == "www.example.com > cdn.example.net"
    )
    # an independent reader (DuckDB) sees UTC timestamps and the list column
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    got = con.execute(
        f"SELECT epoch_us(flow_start), bytes, typeof(flow_start) FROM '{tmp_path / 'x.parquet'}'"
    ).fetchall()
    assert got == [(1582448041123456, 180, "TIMESTAMP WITH TIME ZONE")]
    got = con.execute(f"SELECT cname_chain, ttl FROM '{tmp_path / 'x.names.parquet'}'").fetchall()
    assert got == [(["www.example.com", "cdn.example.net"], 300)]


def test_stdout_is_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    writer = fileio.open_writer("-")
    writer.write_flows([Flow("p", 0, 1, 4, 17, "10.0.0.1", 53, "10.0.0.2", 5353, 1, 60)])
    writer.close()
    out = capsys.readouterr().out
    assert json.loads(out)["kind"] == "flow" and out.count("\n") == 1


def test_probe_side_needs_no_pyarrow(tmp_path: Path) -> None:
    """The Pi has no pyarrow: JSON lines and CSV must work without importing it."""
    code = (
        "import sys; sys.modules['pyarrow'] = None\n"
        "from hostflow import fileio\n"
        "from hostflow.records import Flow\n"
        f"for p in ({str(tmp_path / 'a.jsonl')!r}, {str(tmp_path / 'a.csv')!r}):\n"
        "    w = fileio.open_writer(p); w.write_flows([Flow('p', 0, 1, 4, 6, '1.1.1.1', 1, '2.2.2.2', 2, 1, 40)]); w.close()\n"
        "    assert len(list(fileio.read_records(p))) == 1\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        (
            '{"kind":"flow","flow_start":"2020-01-01T00:00:00Z","flow_end":1,"protocol":6,'
            '"src_addr":"1.1.1.1","dst_addr":"2.2.2.2"}',
            2,
            "flow_end is before",
        ),  # fmt: skip
        ("not json", 2, "not JSON"),
        ('{"kind":"other"}', 2, '"kind" must be'),
        (
            '{"kind":"flow","flow_start":0,"flow_end":0,"protocol":6,"src_addr":"1.1.1.1","dst_addr":"2.2.2.2",'
            '"src_port":70000}',
            2,
            "src_port",
        ),  # fmt: skip
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, content: str, line: int, reason: str) -> None:
    good = '{"kind":"name","ts":0,"addr":"1.1.1.1","name":"a","source":"dns"}'
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n{content}\n{good}\n")
    with pytest.raises(ContractError) as failure:
        list(fileio.read_records(path))
    message = str(failure.value)
    assert message.startswith(f"{path}: line {line}: ") and reason in message and "\n" not in message


def test_csv_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    writer = fileio.open_writer(path)
    writer.write_flows([Flow("p", 0, 1, 4, 6, "1.1.1.1", 1, "2.2.2.2", 2, 1, 40)] * 2)
    writer.close()
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",6,", ",x,", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ContractError, match=rf"^{path}: line 3: flow\.protocol: expected an integer"):
        list(fileio.read_records(path))


def test_sniff_kind_reads_content_not_names(tmp_path: Path) -> None:
    write_all(tmp_path / "a.csv", [], [])
    write_all(tmp_path / "a.parquet", [], [])
    (tmp_path / "a.csv").rename(tmp_path / "csv.dat")
    (tmp_path / "a.parquet").rename(tmp_path / "pq.dat")
    assert fileio.sniff_kind(tmp_path / "csv.dat") == fileio.CSV
    assert fileio.sniff_kind(tmp_path / "pq.dat") == fileio.PARQUET
    assert fileio.sniff_kind(NETFLOW / "graylog-netflow5.pcap") == fileio.PCAP
    assert fileio.sniff_kind(FIXTURES / "pcap" / "ndpi-sites.pcapng") == fileio.PCAPNG


# ---------------------------------------------------------------- nfdump CSV against nfdump itself


def _wait_for_udp_socket(port: int, timeout: float = 10.0) -> None:
    wanted = f":{port:04X} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(wanted in line for line in Path("/proc/net/udp").read_text().splitlines()[1:]):
            return
        time.sleep(0.05)
    raise AssertionError(f"nfcapd did not bind UDP port {port}")


def nfcapd_capture(tmp_path: Path, captures: list[Path]) -> Path:
    """Replay the export datagrams of real captures into the real nfcapd; returns its flow file."""
    port = free_port(socket.SOCK_DGRAM)
    out = tmp_path / "nfcapd"
    out.mkdir()
    daemon = subprocess.Popen(
        ["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", str(out), "-t", "3600"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_udp_socket(port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for capture in captures:
                extractor = UdpExtractor()
                for packet in iter_capture(capture):
                    datagram = extractor.datagram(packet.linktype, packet.data)
                    if datagram is not None:
                        sender.sendto(datagram.payload, ("127.0.0.1", port))
                        time.sleep(0.002)
        time.sleep(0.3)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=20)
    files = sorted(out.glob("nfcapd.2*"))
    assert len(files) == 1, list(out.iterdir())
    return files[0]


def nfdump(flow_file: Path, *args: str) -> str:
    env = dict(os.environ, TZ="UTC")  # nfdump prints local time
    done = subprocess.run(
        ["nfdump", "-r", str(flow_file), *args], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


NFDUMP_CAPTURES = [
    "graylog-netgraph-netflow5.pcap",
    "pmacct-101-traffic-00.pcap",
    "graylog-nprobe-netflow9.pcap",
]


def test_nfdump_csv_reads_what_nfdump_decoded(tmp_path: Path) -> None:
    flow_file = nfcapd_capture(tmp_path, [NETFLOW / name for name in NFDUMP_CAPTURES])
    (tmp_path / "nf.csv").write_text(nfdump(flow_file, "-o", "csv"))
    (tmp_path / "nf-q.csv").write_text(nfdump(flow_file, "-q", "-o", "csv"))  # no header, no summary
    reference = json.loads(nfdump(flow_file, "-o", "json"))
    assert fileio.sniff_kind(tmp_path / "nf.csv") == fileio.NFDUMP_CSV
    assert fileio.sniff_kind(tmp_path / "nf-q.csv") == fileio.NFDUMP_CSV
    got = list(fileio.read_nfdump_csv(tmp_path / "nf.csv"))
    assert got == list(fileio.read_nfdump_csv(tmp_path / "nf-q.csv"))
    assert len(got) == len(reference) > 150

    def key(record: dict) -> tuple:
        src = record.get("src4_addr") or record.get("src6_addr")
        dst = record.get("dst4_addr") or record.get("dst6_addr")
        flags = record.get("tcp_flags", "........")
        bits = sum(0x80 >> i for i, c in enumerate(flags) if c != ".") if record["proto"] == 6 else 0
        return (src, dst, record.get("src_port", 0), record.get("dst_port", 0), record["proto"],
                record["in_packets"], record["in_bytes"], bits, to_us(record["first"] + "Z") // 1_000_000 * 1_000_000,
                to_us(record["last"] + "Z") // 1_000_000 * 1_000_000, record["ip4_router"])  # fmt: skip

    def ours(flow: Flow) -> tuple:
        return (flow.src_addr, flow.dst_addr, flow.src_port, flow.dst_port, flow.protocol, flow.packets,
                flow.bytes, flow.tcp_flags, flow.flow_start, flow.flow_end, flow.probe_id)  # fmt: skip

    # nfdump's CSV prints IPv4 records of a template that also has (empty) IPv6 fields as ::a.b.c.d;
    # its JSON says the same; both are the IPv4 address
    expected = Counter(tuple(_v4(v) if i < 2 else v for i, v in enumerate(key(r))) for r in reference)
    assert Counter(ours(f) for f in got) == expected
    summary = nfdump(flow_file, "-o", "csv").split("Summary\n", 1)[1].splitlines()
    totals = dict(zip(summary[0].split(","), summary[1].split(","), strict=True))
    assert sum(f.bytes for f in got) == int(totals["bytes"]) and sum(f.packets for f in got) == int(
        totals["packets"]
    )


def _v4(addr: str) -> str:
    return addr.removeprefix("::") if addr.startswith("::") and addr.count(".") == 3 else addr


def test_nfdump_csv_errors_name_the_line(tmp_path: Path) -> None:
    header = ",".join(fileio.NFDUMP_17_COLUMNS)
    row = ["0"] * len(fileio.NFDUMP_17_COLUMNS)
    row[0:9] = [
        "2024-01-01 00:00:00",
        "2024-01-01 00:00:01",
        "1.000",
        "10.0.0.1",
        "10.0.0.2",
        "1",
        "2",
        "TCP",
        "...A....",
    ]
    good = ",".join(row)
    bad = good.replace("10.0.0.2", "10.0.0.999")
    path = tmp_path / "nf.csv"
    path.write_text(f"{header}\n{good}\n{bad}\n")
    with pytest.raises(ContractError, match=rf"^{path}: line 3: .*10\.0\.0\.999"):
        list(fileio.read_nfdump_csv(path))
    path.write_text(f"{header}\n{good}\n")
    (flow,) = fileio.read_nfdump_csv(path)
    assert (flow.protocol, flow.tcp_flags, flow.flow_start, flow.flow_end) == (
        6,
        0x10,
        1704067200000000,
        1704067201000000,
    )


# ---------------------------------------------------------------- hive-partitioned Parquet


def test_hive_partitions_read_back_in_duckdb(tmp_path: Path) -> None:
    base = to_us("2024-03-01T22:30:00Z")
    rows = []
    for i in range(500):
        start = base + i * 37 * 60 * 1_000_000 // 10  # 3.7 min apart: spans two dates, many hours
        flow = Flow(
            "p", start, start + 5, 4, 6, f"10.0.{i % 7}.1", 1000 + i, "1.2.3.4", 443, i + 1, 60 * (i + 1)
        )
        rows.append(dataclasses.asdict(flow) | {"dst_name": f"n{i % 3}.example"})
    types = {**fileio.FLOW_TYPES, "dst_name": "VARCHAR"}
    writer = fileio.HivePartitionWriter(tmp_path / "out", types, rows_per_part=40)
    writer.add([dict(r) for r in rows])
    parts = writer.close()
    writer = fileio.HivePartitionWriter(tmp_path / "out", types)
    writer.add([dict(r) for r in rows[:10]])  # a second export into the same directory adds parts
    parts += writer.close()
    assert all(p.name.startswith("part-") for p in parts) and len(set(parts)) == len(parts)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".")]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    glob = f"{tmp_path / 'out'}/**/*.parquet"
    got = con.execute(
        f"SELECT date::VARCHAR, hour::INTEGER, count(*), sum(bytes)::BIGINT, min(epoch_us(flow_start)) FROM "
        f"read_parquet('{glob}', hive_partitioning=true) GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    rows_all = rows + rows[:10]
    expected: dict[tuple[str, int], list[int]] = {}
    for r in rows_all:
        stamp = us_to_iso(r["flow_start"])
        key = (stamp[:10], int(stamp[11:13]))
        bucket = expected.setdefault(key, [0, 0, r["flow_start"]])
        bucket[0] += 1
        bucket[1] += r["bytes"]
        bucket[2] = min(bucket[2], r["flow_start"])
    assert got == [(k[0], k[1], *v) for k, v in sorted(expected.items())]
    assert {k[0] for k in expected} == {"2024-03-01", "2024-03-02", "2024-03-03"}
