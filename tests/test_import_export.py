"""Files in and out, run the way a user runs them (the real CLIs as subprocesses), each checked
against an independent reference computed here from the same file: tshark's IP header decode for
`probe read`, tshark's cflow decode for NetFlow/IPFIX capture import, nfdump's own totals for
nfdump CSV import, DuckDB's hive Parquet reader for the Parquet export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest

from hostflow import fileio
from hostflow.records import Flow, Name
from tests.plugins.common import FIXTURES, ROOT
from tests.test_fileio import nfcapd_capture, nfdump

NETFLOW = FIXTURES / "netflow"
PCAPS = sorted(p for p in (FIXTURES / "pcap").iterdir() if p.suffix in (".pcap", ".pcapng"))


def run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def collector(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run("-m", "collector", *args, env=env)


def assert_one_line_error(done: subprocess.CompletedProcess[str], *parts: str) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, done.stderr
    for part in parts:
        assert part in errors[0], errors[0]
    return errors[0]


# ---------------------------------------------------------------- references


def tshark_ip_pairs(path: Path, count: int | None = None) -> tuple[Counter, Counter]:
    """Packets and IP bytes per (source, destination) over the outermost IP header, as tshark decodes it."""
    args = ["tshark", "-r", str(path), "-T", "fields", "-E", "occurrence=f", "-E", "separator=\t"]
    args += ["-c", str(count)] if count else []
    for field in ("frame.protocols", "ip.src", "ip.dst", "ip.len", "ipv6.src", "ipv6.dst", "ipv6.plen"):
        args += ["-e", field]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    packets: Counter = Counter()
    octets: Counter = Counter()
    for line in out.splitlines():
        layers, src4, dst4, len4, src6, dst6, len6 = line.split("\t")
        outer = next((layer for layer in layers.split(":") if layer in ("ip", "ipv6")), None)
        if outer == "ip":
            key, size = (src4, dst4), int(len4)
        elif outer == "ipv6":
            key, size = (src6, dst6), int(len6) + 40
        else:
            continue
        packets[key] += 1
        octets[key] += size
    return packets, octets


def flow_pairs(records: list[dict[str, Any]]) -> tuple[Counter, Counter]:
    packets: Counter = Counter()
    octets: Counter = Counter()
    for record in records:
        if record.get("kind", "flow") == "flow":
            packets[(record["src_addr"], record["dst_addr"])] += record["packets"]
            octets[(record["src_addr"], record["dst_addr"])] += record["bytes"]
    return packets, octets


def _keep_duplicates(items: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in items:
        if key in out:
            out.setdefault("__more__", []).append((key, value))
        else:
            out[key] = value
    return out


def _flow_dicts(node: Any, header: dict | None, found: list[tuple[dict, dict]]) -> None:
    if isinstance(node, dict):
        header = node if "cflow.version" in node else header
        for key, value in [*node.items(), *node.get("__more__", [])]:
            if isinstance(value, dict) and (key.startswith("pdu ") or key.startswith("Flow ")):
                found.append((header or {}, value))
            elif key != "__more__":
                _flow_dicts(value, header, found)
    elif isinstance(node, list):
        for item in node:
            _flow_dicts(item, header, found)


def _address(record: dict[str, Any], v4: str, v6: str) -> str | None:
    values = [record[key] for key in (v4, v6) if record.get(key) is not None]
    real = [value for value in values if value not in ("0.0.0.0", "::")]
    return (real or values or [None])[0]


def tshark_cflow(path: Path) -> Counter:
    """(src, dst, packets, bytes, rate) of every flow record in tshark's cflow decode, counts × rate."""
    args = ["tshark", "-r", str(path), "-T", "json", "-J", "cflow"]
    for port in (2055, 2057, 2100, 4739, 8096, 9990, 9991):  # ports the fixtures' exporters use
        args += ["-d", f"udp.port=={port},cflow"]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    found: list[tuple[dict, dict]] = []
    _flow_dicts(json.loads(out, object_pairs_hook=_keep_duplicates), None, found)
    records: Counter = Counter()
    for header, record in found:
        src = _address(record, "cflow.srcaddr", "cflow.srcaddrv6")
        if src is None:  # an options record (sampler table, interface names), not a flow
            continue
        rate = (
            int(record.get("cflow.sampling_interval") or 0) or int(header.get("cflow.samplerate") or 0) or 1
        )
        packets = int(record.get("cflow.packets") or record.get("cflow.packets64") or 0)
        octets = int(record.get("cflow.octets") or record.get("cflow.octets64") or 0)
        dst = _address(record, "cflow.dstaddr", "cflow.dstaddrv6")
        records[(src, dst, packets * rate, octets * rate, rate)] += 1
    return records


def export_jsonl(db: Path, *extra: str) -> list[dict[str, Any]]:
    done = collector("export", "--db", str(db), "--format", "jsonl", "--output", "-", *extra)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


# ---------------------------------------------------------------- probe read → file, against tshark


@pytest.mark.parametrize("capture", PCAPS, ids=[p.name for p in PCAPS])
def test_probe_read_counts_match_tshark(tmp_path: Path, capture: Path) -> None:
    output = tmp_path / "flows.jsonl"
    done = run("-m", "probe", "read", str(capture), "--output", str(output), "--probe-id", "t")
    assert done.returncode == 0, done.stderr
    records = [record for record in fileio.read_records(output) if isinstance(record, Flow)]
    ours = flow_pairs([{"src_addr": f.src_addr, "dst_addr": f.dst_addr, "packets": f.packets, "bytes": f.bytes}
                       for f in records])  # fmt: skip
    assert ours == tshark_ip_pairs(capture)


def test_probe_read_of_a_cut_capture_keeps_what_came_before(tmp_path: Path) -> None:
    source = FIXTURES / "pcap" / "zeek-wikipedia.pcap"
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(source.read_bytes()[:20_000])
    output = tmp_path / "flows.jsonl"
    done = run("-m", "probe", "read", str(cut), "--output", str(output), "--probe-id", "t")
    line = assert_one_line_error(done, str(cut), "packet ")
    bad_packet = int(line.split("packet ", 1)[1].split(":", 1)[0])
    records = [r for r in fileio.read_records(output) if isinstance(r, Flow)]
    ours = flow_pairs([{"src_addr": f.src_addr, "dst_addr": f.dst_addr, "packets": f.packets, "bytes": f.bytes}
                       for f in records])  # fmt: skip
    assert sum(ours[0].values()) > 0
    assert ours == tshark_ip_pairs(source, count=bad_packet - 1)


# ---------------------------------------------------------------- NetFlow/IPFIX captures: import → export


NETFLOW_SETS = {
    "v5-netgraph": ["graylog-netgraph-netflow5.pcap"],
    "v9-cisco": ["pmacct-101-traffic-00.pcap"],
    "ipfix-cisco": ["pmacct-100-traffic-00.pcap"],
    "v5-and-v9-mixed": ["graylog-nprobe-netflow9.pcap"],
    "v9-sampled-template-then-data": [
        "akvorado-samplingrate-template.pcap",
        "akvorado-samplingrate-data.pcap",
    ],
    "ipfix-two-routers-with-bmp": ["pmacct-400-traffic-00.pcap"],
}


@pytest.mark.parametrize("files", list(NETFLOW_SETS.values()), ids=list(NETFLOW_SETS))
def test_netflow_capture_import_export_matches_tshark(tmp_path: Path, files: list[str]) -> None:
    paths = [NETFLOW / name for name in files]
    whole = tmp_path / "whole.pcap"  # tshark needs the template in the same file as the data
    subprocess.run(["mergecap", "-F", "pcap", "-a", "-w", str(whole), *map(str, paths)], check=True)
    expected = tshark_cflow(whole)
    assert sum(expected.values()) > 0
    db = tmp_path / "h.duckdb"
    done = collector("import", "--db", str(db), *map(str, paths))
    assert done.returncode == 0 and done.stdout == "", done.stderr
    rows = export_jsonl(db)
    got = Counter((r["src_addr"], r["dst_addr"], r["packets"], r["bytes"], r["sampling"]) for r in rows)
    assert got == expected
    # Parquet export: DuckDB's hive reader gives the same records and totals
    done = collector("export", "--db", str(db), "--format", "parquet", "--output", str(tmp_path / "pq"))
    assert done.returncode == 0 and done.stdout == "", done.stderr
    totals = (
        duckdb.connect()
        .execute(
            f"SELECT count(*), sum(packets)::BIGINT, sum(bytes)::BIGINT, count(DISTINCT date) FROM "
            f"read_parquet('{tmp_path / 'pq'}/**/*.parquet', hive_partitioning=true)"
        )
        .fetchone()
    )
    assert totals[:3] == (sum(expected.values()), sum(k[2] * n for k, n in expected.items()),
                          sum(k[3] * n for k, n in expected.items()))  # fmt: skip
    # the exporter is named: probe_id nf:<source address of the datagrams>:<domain>
    exporters = {r["probe_id"].split(":")[1] for r in rows}
    shown = subprocess.run(["tshark", "-r", str(whole), "-Y", "udp", "-T", "fields", "-e", "ip.src"],
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert exporters <= set(shown)


def test_corrupt_capture_stops_with_the_packet_number(tmp_path: Path) -> None:
    good = NETFLOW / "graylog-netgraph-netflow5.pcap"
    data = good.read_bytes()
    offset = 24
    for _ in range(2):  # skip two records: cut inside the third
        offset += 16 + int.from_bytes(data[offset + 8 : offset + 12], "little")
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: offset + 16 + 100])
    db = tmp_path / "h.duckdb"
    done = collector("import", "--db", str(db), str(good), str(cut))
    assert_one_line_error(done, str(cut), "packet 3", "file ends inside the packet")
    assert (
        len(export_jsonl(db)) == sum(tshark_cflow(good).values()) == 120
    )  # the good file, nothing of the cut one
    done = collector("import", "--db", str(db), str(FIXTURES / "malformed" / "ndpi-fuzz-2021-10-13.pcap"))
    assert_one_line_error(done, "ndpi-fuzz-2021-10-13.pcap: packet 1: record length 524501")


def test_not_netflow_is_counted_not_fatal(tmp_path: Path) -> None:
    db = tmp_path / "h.duckdb"
    done = collector("import", "--db", str(db), str(NETFLOW / "akvorado-sflow-data-1140.pcap"))
    assert done.returncode == 0, done.stderr
    assert "no records found, nothing stored" in done.stderr and "sflow: 1" in done.stderr


# ---------------------------------------------------------------- our files, idempotence, names


def sample_records() -> tuple[list[Flow], list[Name]]:
    base = 1_700_000_000_000_000
    names = [
        Name("pi", base, "93.184.216.34", "www.example.com", "dns", "192.168.1.20", 300,
             ["www.example.com", "edge.example.net"], "A"),
        Name("pi", base - 1, "192.168.1.20", "laptop", "dhcp", "192.168.1.20"),
    ]  # fmt: skip
    flows = [
        Flow("pi", base + 1_000_000 * i, base + 1_000_000 * i + 500, 4, 6, "192.168.1.20", 50_000 + i,
             "93.184.216.34", 443, 10 + i, 1000 + i, 0x1B, 0, 0, "aa:bb:cc:dd:ee:ff", "", "fin", "src", 1)
        for i in range(5)
    ]  # fmt: skip
    return flows, names


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_our_files_import_once_and_export_exactly(tmp_path: Path, suffix: str) -> None:
    flows, names = sample_records()
    path = tmp_path / f"records{suffix}"
    writer = fileio.open_writer(path)
    writer.write_flows(flows)
    writer.write_names(names)
    writer.close()
    db = tmp_path / "h.duckdb"
    first = collector("import", "--db", str(db), str(path))
    assert first.returncode == 0 and first.stdout == "", first.stderr
    assert "stored 5 flows and 2 names" in first.stderr
    second = collector("import", "--db", str(db), str(path))
    assert (
        second.returncode == 0 and "already imported" in second.stderr and "nothing stored" in second.stderr
    )
    rows = export_jsonl(db)
    assert len(rows) == 5
    exported = tmp_path / "export.jsonl"
    exported.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert list(fileio.read_records(exported)) == flows  # every contract field, µs exact
    assert {(r["dst_name"], r["dst_name_source"], r["src_name"]) for r in rows} == {
        ("www.example.com", "dns", "laptop")
    }
    host_only = export_jsonl(db, "--host", "192.168.1.20", "--from", "2023-11-14T22:13:21Z")
    assert [r["src_port"] for r in host_only] == [50_001, 50_002, 50_003, 50_004]


def test_bad_record_stores_nothing_of_its_file(tmp_path: Path) -> None:
    flows, _ = sample_records()
    path = tmp_path / "bad.jsonl"
    writer = fileio.open_writer(path)
    writer.write_flows(flows)
    writer.close()
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"protocol":6', '"protocol":600')
    path.write_text("\n".join(lines) + "\n")
    db = tmp_path / "h.duckdb"
    done = collector("import", "--db", str(db), str(path))
    assert_one_line_error(done, f"{path}: line 3: flow.protocol: 600 is over 255")
    fixed = tmp_path / "fixed.jsonl"
    fixed.write_text(path.read_text().replace('"protocol":600', '"protocol":6'))
    assert collector("import", "--db", str(db), str(fixed)).returncode == 0
    assert len(export_jsonl(db)) == 5  # the bad file left nothing behind


def test_nfdump_csv_import_gives_nfdump_totals(tmp_path: Path) -> None:
    flow_file = nfcapd_capture(
        tmp_path, [NETFLOW / "graylog-netgraph-netflow5.pcap", NETFLOW / "graylog-netflow9.pcap"]
    )
    text = nfdump(flow_file, "-o", "csv")
    (tmp_path / "nf.csv").write_text(text)
    summary = text.split("Summary\n", 1)[1].splitlines()
    totals = dict(zip(summary[0].split(","), summary[1].split(","), strict=True))
    db = tmp_path / "h.duckdb"
    done = collector("import", "--db", str(db), str(tmp_path / "nf.csv"))
    assert done.returncode == 0, done.stderr
    rows = export_jsonl(db)
    assert len(rows) == int(totals["flows"])
    assert sum(r["packets"] for r in rows) == int(totals["packets"])
    assert sum(r["bytes"] for r in rows) == int(totals["bytes"])
    assert {r["probe_id"] for r in rows} == {"127.0.0.1"}  # nfdump's exporter column (ra)


# ---------------------------------------------------------------- with a running collector


def test_import_and_export_go_through_a_running_collector(tmp_path: Path, collector_server: Any) -> None:
    flows, names = sample_records()
    path = tmp_path / "records.jsonl"
    writer = fileio.open_writer(path)
    writer.write_flows(flows)
    writer.write_names(names)
    writer.close()
    db = collector_server.db_path
    env = dict(os.environ, HOSTFLOW_ADMIN_TOKEN=collector_server.admin_token)
    without_token = collector("import", "--db", str(db), str(path), env={**env, "HOSTFLOW_ADMIN_TOKEN": ""})
    assert_one_line_error(without_token, "admin token")
    done = collector("import", "--db", str(db), str(path), env=env)
    assert done.returncode == 0, done.stderr
    assert (
        f"sending the records to {collector_server.url}" in done.stderr
        and "stored 5 flows and 2 names" in done.stderr
    )
    again = collector("import", "--db", str(db), str(path), env=env)
    assert again.returncode == 0 and "already imported" in again.stderr
    done = collector("export", "--db", str(db), "--format", "jsonl")
    assert done.returncode == 0 and "exporting through" in done.stderr, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    got = [(r["src_addr"], r["src_port"], r["dst_addr"], r["dst_port"], r["packets"], r["bytes"], r["dst_name"])
           for r in rows]  # fmt: skip
    assert got == [(f.src_addr, f.src_port, f.dst_addr, f.dst_port, f.packets, f.bytes, "www.example.com")
                   for f in flows]  # fmt: skip
    # a capture from several exporters goes in as one batch too, and comes back as tshark decodes it
    capture = NETFLOW / "graylog-nprobe-netflow9.pcap"
    done = collector("import", "--db", str(db), str(capture), env=env)
    assert done.returncode == 0 and "stored 152 flows" in done.stderr, done.stderr
    done = collector("export", "--db", str(db), "--format", "csv", "--output", str(tmp_path / "out.csv"))
    assert done.returncode == 0 and done.stdout == "", done.stderr
    exported = [f for f in fileio.read_records(tmp_path / "out.csv") if f.probe_id.startswith("nf:")]
    assert len({f.probe_id for f in exported}) == 3
    assert Counter(
        (f.src_addr, f.dst_addr, f.packets, f.bytes, f.sampling) for f in exported
    ) == tshark_cflow(capture)


# ---------------------------------------------------------------- the command line itself


@pytest.mark.parametrize("command", ["import", "export"])
def test_help_shows_examples(command: str) -> None:
    done = collector(command, "--help")
    assert (
        done.returncode == 0
        and "examples:" in done.stdout
        and f"python -m collector {command}" in done.stdout
    )


def test_usage_errors_exit_2_and_missing_files_exit_1(tmp_path: Path) -> None:
    assert collector("import").returncode == 2
    assert collector("export", "--format", "xml").returncode == 2
    done = collector("import", "--db", str(tmp_path / "h.duckdb"), str(tmp_path / "nope.jsonl"))
    assert_one_line_error(done, "nope.jsonl: no such file")
    done = collector("export", "--db", str(tmp_path / "h.duckdb"), "--from", "yesterday-ish")
    assert done.returncode == 1
