"""The C flow table (probe/_cmeter.c through probe.cmeter) gives exactly FlowMeter's flows.

Every comparison runs the same packets through the Python table (``HOSTFLOW_PROBE_CMETER=0``:
FlowMeter, with probe.fastpath's numpy batches for files) and through the C table, and asserts
the same flow records (all fields, as a sorted list), names, health counters (flows exported and
evicted among them) and error: on every capture fixture and on generated traffic, with tables
small enough to evict, short timeouts, tiny chunks and output drains, times going backwards and a
time the C table cannot hold; and on random packet sequences (hypothesis) chosen to collide, fed
packet by packet and as columns. The build: a clean copy builds, a changed source is not loaded.

The C library must be built (``python -m probe.cmeter build``; scripts/setup.sh does it): without
it these tests skip, and in CI (CI=true) tests/conftest.py turns that skip into a failure.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.bench_probe import pcap_to_pcapng
from hostflow.records import END_EOF, flow_row
from probe import cmeter, fastpath, pipeline
from probe.meter import MOVE_GRANULARITY_US, FlowMeter
from probe.options import MeterOptions
from probe.pipeline import ProbeInputError
from tests.plugins.common import FIXTURES, ROOT
from tests.probe_runs import CAPTURES, metered, use_small_chunks, write_traffic

OPTION_SETS = {
    "default": {},
    "short-timeouts": {"idle_timeout": 0.5, "active_timeout": 2.0},
    "no-timeouts": {"idle_timeout": 1e9, "active_timeout": 1e9, "names": False},
    "table-16": {"max_flows": 16},
    "table-100": {"max_flows": 100, "idle_timeout": 0.5, "active_timeout": 2.0},
}
END_REASON = 16  # index of end_reason in a flow row


@pytest.fixture(scope="module")
def lib():
    found = cmeter.load()
    if found is None:
        pytest.skip(f"the C flow table is not built: run {sys.executable} -m probe.cmeter build")
    return found


@pytest.fixture
def meters(monkeypatch, lib) -> list:
    """Every flow meter the pipeline makes (to check which table metered)."""
    made: list = []
    original = pipeline._flow_meter

    def record(*args):
        made.append(original(*args))
        return made[-1]

    monkeypatch.setattr(pipeline, "_flow_meter", record)
    return made


def _run(paths: list[Path], c_table: bool, monkeypatch, vectorised: bool = True, **options) -> tuple:
    monkeypatch.setenv("HOSTFLOW_PROBE_CMETER", "1" if c_table else "0")
    return metered(paths, vectorised, **options)


def assert_same(paths: list[Path], monkeypatch, meters: list, **options) -> tuple:
    """Python table vs C table (vectorised file path, and the C table packet by packet): all equal."""
    meters.clear()
    python = _run(paths, False, monkeypatch, **options)
    assert [type(meter) for meter in meters] == [FlowMeter]
    for vectorised in (True, False):
        meters.clear()
        c_table = _run(paths, True, monkeypatch, vectorised, **options)
        assert [type(meter) for meter in meters] == [cmeter.CMeter]
        for label, one, other in zip(("flows", "names", "health", "error"), python, c_table, strict=True):
            if label == "flows" and one != other:
                only_python, only_c = sorted(set(one) - set(other)), sorted(set(other) - set(one))
                pytest.fail(f"flows differ ({'vectorised' if vectorised else 'per packet'}): {len(one)} vs "
                            f"{len(other)}; only Python {only_python[:3]}; only C {only_c[:3]}")  # fmt: skip
            assert one == other, f"{label} differ"
    return python


@pytest.mark.parametrize("capture", CAPTURES, ids=[f"{p.parent.name}/{p.name}" for p in CAPTURES])
def test_every_fixture(capture: Path, monkeypatch, meters) -> None:
    for options in OPTION_SETS.values():
        assert_same([capture], monkeypatch, meters, **options)


def test_fixture_comparison_is_not_vacuous(monkeypatch, meters) -> None:
    """The fixtures do reach the branches: evictions, idle and active splits, TCP closes."""
    reasons: dict[str, set] = {}
    evicted = 0
    for name, options in OPTION_SETS.items():
        for capture in CAPTURES:
            flows, _names, health, _error = _run([capture], True, monkeypatch, **options)
            reasons.setdefault(name, set()).update(flow[END_REASON] for flow in flows)
            evicted += health.get("flows_evicted", 0)
    assert "evicted" in reasons["table-16"] and evicted > 100
    assert {"idle", "active", "fin", "rst", "end-of-capture"} <= reasons["short-timeouts"]


@pytest.fixture(scope="module")
def traffic(tmp_path_factory) -> Path:
    return write_traffic(tmp_path_factory.mktemp("cmeter") / "traffic.pcap")


@pytest.fixture
def small_chunks(monkeypatch) -> None:
    """Many chunks, and the C output drained every few ended pairs (the calls pause and go on)."""
    use_small_chunks(monkeypatch)
    monkeypatch.setattr(cmeter, "OUT_LIMIT", 3)


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_generated_traffic(traffic: Path, options: dict, monkeypatch, meters, small_chunks) -> None:
    flows, _names, health, error = assert_same([traffic], monkeypatch, meters, **options)
    assert error is None and health["packets_captured"] >= 40_000
    reasons = {flow[END_REASON] for flow in flows}
    if options.get("max_flows"):
        assert "evicted" in reasons and health["flows_evicted"] > 100
    else:
        assert {"fin", "rst"} <= reasons
    if options.get("idle_timeout") == 0.5 and not options.get("max_flows"):
        assert {"idle", "active"} <= reasons


def test_time_going_backwards(traffic: Path, tmp_path: Path, monkeypatch, meters, small_chunks) -> None:
    """Records out of time order (the rest of the file goes packet by packet, through CMeter.add)."""
    data = bytearray(traffic.read_bytes())
    offsets = []
    offset = 24
    while offset < len(data):
        offsets.append(offset)
        offset += 16 + struct.unpack_from("<I", data, offset + 8)[0]
    for index in (5_000, 5_001, 22_222):  # three packets one second into the past
        sec = struct.unpack_from("<I", data, offsets[index])[0]
        struct.pack_into("<I", data, offsets[index], sec - 1)
    disordered = tmp_path / "disordered.pcap"
    disordered.write_bytes(bytes(data))
    for options in ({}, {"idle_timeout": 0.5, "active_timeout": 2.0}, {"max_flows": 100}):
        assert_same([disordered], monkeypatch, meters, **options)


def test_several_files_and_pcapng(traffic: Path, tmp_path: Path, monkeypatch, meters, small_chunks) -> None:
    pcapng = tmp_path / "traffic.pcapng"
    pcap_to_pcapng(traffic, pcapng, nanoseconds=True)
    assert_same([traffic, FIXTURES / "pcap" / "ndpi-sites.pcapng", pcapng], monkeypatch, meters,
                idle_timeout=0.5)  # fmt: skip


def test_time_beyond_the_c_table_moves_it_to_python(
    traffic: Path, tmp_path: Path, monkeypatch, meters
) -> None:
    """A pcapng time past 2**62 µs (year 146,000): the pairs move to Python in table order, exactly."""
    pcapng = tmp_path / "traffic.pcapng"
    pcap_to_pcapng(traffic, pcapng)
    data = bytearray(pcapng.read_bytes())
    at = 28 + 20  # SHB, IDB
    for _ in range(20_000):
        at += struct.unpack_from("<I", data, at + 4)[0]
    struct.pack_into("<I", data, at + 12, 0xFFFFFFFF)
    pcapng.write_bytes(bytes(data))
    for options in ({}, {"max_flows": 100}):
        flows, _names, health, error = assert_same([pcapng], monkeypatch, meters, **options)
        assert error is None and health["packets_captured"] >= 40_000
        assert not meters[-1].in_c
        assert max(flow[2] for flow in flows) > 1 << 62


# ---------------------------------------------------------------- random packets (hypothesis)

IDLE, ACTIVE, GRACE = 2_000_000, 5_000_000, 500_000
OPTIONS = {"probe_id": "t", "idle_timeout": IDLE / 1e6, "active_timeout": ACTIVE / 1e6}
T0 = 1_700_000_000_000_000
STEPS = [0, 1, GRACE - 1, GRACE, GRACE + 1, MOVE_GRANULARITY_US, MOVE_GRANULARITY_US + 1, IDLE, IDLE + 1,
         ACTIVE, ACTIVE + 1, 3 * IDLE, -1, -GRACE, -IDLE - 1]  # fmt: skip
ADDRS = {
    4: [ipaddress.ip_address(a).packed for a in ("10.0.0.1", "10.0.0.2", "0.0.0.0", "255.255.255.255")],
    6: [ipaddress.ip_address(a).packed for a in ("::a00:1", "::a00:2", "2001:db8::1", "ff02::1")],
}
SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08
FLAGS = [0, SYN, SYN | ACK, ACK, FIN | ACK, FIN, RST, RST | ACK, PSH | ACK, SYN | FIN]
MACS = [b"", b"\x02\x00\x00\x00\x00\x01", b"\x00\x00\x00\x00\x00\x00", b"\xff" * 6]
# (version, protocol, source, destination, ports): few, so that packets meet in conversations; the
# IPv6 ones share their low bits with the IPv4 ones (the families must stay apart)
CONVERSATIONS = [
    (4, 6, 0, 1, 40000, 80),
    (6, 6, 0, 1, 40000, 80),
    (4, 6, 1, 0, 1023, 1024),
    (4, 6, 2, 2, 80, 53),  # one address: the ports decide the order
    (6, 6, 2, 3, 1024, 1023),
    (4, 17, 0, 3, 53, 53),
    (6, 58, 2, 3, 0, 128 * 256),
    (4, 1, 0, 1, 0, 0),
    (6, 132, 0, 0, 9, 9),
]

PACKET = st.tuples(
    st.sampled_from(STEPS),
    st.one_of(st.integers(0, 2), st.integers(0, len(CONVERSATIONS) - 1)),
    st.booleans(),  # the answer direction
    st.sampled_from(FLAGS),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 9).map(bool),  # an IP packet (False: a frame that is counted, not metered)
)


def _packets(drawn: list[tuple]) -> list[tuple]:
    """FlowMeter.add's arguments (plus the IP flag) of drawn packets."""
    ts = T0
    packets = []
    for step, conversation, answer, flags, smac, dmac, is_ip in drawn:
        ts += step
        version, proto, src, dst, sport, dport = CONVERSATIONS[conversation]
        if answer:
            src, dst, sport, dport = dst, src, dport, sport
        size = 40 + (ts % 1400)
        packets.append((ts, ts % 3, version, proto, ADDRS[version][src], ADDRS[version][dst], sport, dport, flags,
                        ts % 5, size, MACS[smac], MACS[dmac], is_ip))  # fmt: skip
    return packets


def _rows(flows: list) -> list[tuple]:
    return sorted(tuple(flow_row(flow)) for flow in flows)


def _pair(max_flows: int, lib) -> tuple[FlowMeter, cmeter.CMeter, list, list]:
    python_flows: list = []
    c_flows: list = []
    options = MeterOptions(max_flows=max_flows, **OPTIONS)
    python = FlowMeter(options, python_flows.extend, tcp_end_grace=GRACE / 1e6, batch=7)
    c_table = cmeter.CMeter(options, c_flows.extend, tcp_end_grace=GRACE / 1e6, batch=7, lib=lib)
    return python, c_table, python_flows, c_flows


@given(drawn=st.lists(PACKET, min_size=1, max_size=80), max_flows=st.sampled_from([1, 2, 3, 5, 1000]),
       expire_every=st.sampled_from([0, 3, 7]), packed=st.sampled_from([1, 2, 256]))  # fmt: skip
@settings(max_examples=400, deadline=None)
def test_random_packets_one_by_one(
    lib, drawn: list[tuple], max_flows: int, expire_every: int, packed: int
) -> None:
    """CMeter.add (packets packed and handed over ``packed`` at a time) against FlowMeter.add, with
    idle scans now and then."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cmeter, "PACKED", packed)
        python, c_table, python_flows, c_flows = _pair(max_flows, lib)
    for number, (*args, _is_ip) in enumerate(_packets(drawn), 1):
        python.add(*args)
        c_table.add(*args)
        if expire_every and number % expire_every == 0:
            python.expire(args[0])
            c_table.expire(args[0])
            assert c_table.pair_count == len(python.pairs)
    python.flush(END_EOF)
    c_table.flush(END_EOF)
    assert _rows(c_flows) == _rows(python_flows)
    assert (c_table.flows_exported, c_table.flows_evicted) == (python.flows_exported, python.flows_evicted)
    assert c_table.in_c


def _columns(packets: list[tuple]) -> tuple[fastpath.Columns, np.ndarray]:
    cols = fastpath.Columns.empty(len(packets))
    for i, (ts, vlan, version, proto, src, dst, sport, dport, flags, tos, size, smac, dmac, is_ip) in enumerate(
        packets
    ):  # fmt: skip
        cols.kind[i] = fastpath.KIND_IP if is_ip else fastpath.KIND_NON_IP
        cols.ts[i] = ts
        if not is_ip:
            continue
        cols.vlan[i], cols.version[i], cols.proto[i], cols.sport[i], cols.dport[i] = (
            vlan,
            version,
            proto,
            sport,
            dport,
        )
        cols.flags[i], cols.tos[i], cols.nbytes[i] = flags, tos, size
        (cols.src_hi[i], cols.src_lo[i]), (cols.dst_hi[i], cols.dst_lo[i]) = (
            fastpath._words(src),
            fastpath._words(dst),
        )
        cols.smac[i], cols.dmac[i] = int.from_bytes(smac, "big"), int.from_bytes(dmac, "big")
        cols.macs[i] = (fastpath.MAC_SRC if smac else 0) | (fastpath.MAC_DST if dmac else 0)
    return cols, np.flatnonzero(cols.kind == fastpath.KIND_IP)


def _slice(cols: fastpath.Columns, start: int, stop: int) -> fastpath.Columns:
    part = fastpath.Columns()
    part.n = stop - start
    for name in fastpath.Columns.__slots__[1:]:
        setattr(part, name, getattr(cols, name)[start:stop].copy())
    return part


@given(drawn=st.lists(PACKET, min_size=1, max_size=80), max_flows=st.sampled_from([1, 2, 3, 5, 1000]),
       cuts=st.lists(st.integers(0, 80), max_size=4), out_limit=st.sampled_from([1, 2, 4096]))  # fmt: skip
@settings(max_examples=400, deadline=None)
def test_random_packets_as_columns(
    lib, drawn: list[tuple], max_flows: int, cuts: list[int], out_limit: int
) -> None:
    """add_columns in chunks against probe.pipeline's per-packet loop (add, and an idle scan when a
    packet's time reaches the next scan time): the same flows and the same scan clock."""
    python, c_table, python_flows, c_flows = _pair(max_flows, lib)
    c_table.out_limit = out_limit
    packets = _packets(drawn)
    scan_us = 1_500_000
    next_scan = None
    scans = 0
    for ts, *args, is_ip in packets:
        if is_ip:
            python.add(ts, *args)
        if next_scan is None:
            next_scan = ts + scan_us
        elif ts >= next_scan:
            python.expire(ts)
            scans += 1
            next_scan = ts + scan_us
    cols, _ip = _columns(packets)
    bounds = sorted({0, len(packets), *(min(cut, len(packets)) for cut in cuts)})
    c_next, c_scans = None, 0
    for start, stop in zip(bounds, bounds[1:], strict=False):
        part = _slice(cols, start, stop)
        c_next, done = c_table.add_columns(
            part, np.flatnonzero(part.kind == fastpath.KIND_IP), c_next, scan_us
        )
        c_scans += done
    assert (c_next, c_scans) == (next_scan, scans)
    assert c_table.pair_count == len(python.pairs)
    python.flush(END_EOF)
    c_table.flush(END_EOF)
    assert _rows(c_flows) == _rows(python_flows)
    assert (c_table.flows_exported, c_table.flows_evicted) == (python.flows_exported, python.flows_evicted)


@given(drawn=st.lists(PACKET, min_size=1, max_size=60), at=st.integers(0, 60),
       max_flows=st.sampled_from([2, 1000]))  # fmt: skip
@settings(max_examples=100, deadline=None)
def test_random_packets_with_a_time_beyond_the_c_table(
    lib, drawn: list[tuple], at: int, max_flows: int
) -> None:
    """The move to Python carries every pair (fields, closes, table order, last room scan) over."""
    python, c_table, python_flows, c_flows = _pair(max_flows, lib)
    packets = _packets(drawn)
    far = packets[min(at, len(packets) - 1)]
    packets.insert(min(at, len(packets)), ((1 << 62) + 5, *far[1:]))
    for *args, _is_ip in packets:
        python.add(*args)
        c_table.add(*args)
    python.flush(END_EOF)
    c_table.flush(END_EOF)
    assert not c_table.in_c
    assert _rows(c_flows) == _rows(python_flows)
    assert (c_table.flows_exported, c_table.flows_evicted) == (python.flows_exported, python.flows_evicted)


def test_mac_bits_match_fastpath() -> None:
    assert (cmeter.MAC_SRC, cmeter.MAC_DST) == (fastpath.MAC_SRC, fastpath.MAC_DST)
    assert cmeter.COLUMNS == tuple(name for name in cmeter.COLUMNS if name in fastpath.Columns.__slots__)


# ---------------------------------------------------------------- the build and the loader


def test_build_from_a_clean_copy_and_a_changed_source_is_not_loaded(tmp_path: Path, caplog) -> None:
    source = tmp_path / "_cmeter.c"
    shutil.copy(cmeter.SOURCE, source)
    built = cmeter.build(source)
    assert built == cmeter.library_path(source) and built.exists()
    assert built.name.startswith("_cmeter-") and built.name.endswith(".so")
    lib = cmeter.load(source)
    assert lib is not None and lib.cm_abi() == cmeter.ABI
    flows: list = []
    meter = cmeter.CMeter(MeterOptions(), flows.extend, lib=lib)
    meter.add(T0, 0, 4, 17, ADDRS[4][0], ADDRS[4][1], 5000, 53, 0, 0, 60, b"", b"")
    meter.flush(END_EOF)
    assert [(f.src_addr, f.dst_addr, f.packets, f.end_reason) for f in flows] == [
        ("10.0.0.1", "10.0.0.2", 1, END_EOF)
    ]

    source.write_text(source.read_text() + "\n/* changed */\n")
    assert cmeter.library_path(source) != built and built.exists()
    with caplog.at_level(logging.INFO, logger="probe.cmeter"):
        assert cmeter.load(source) is None  # the old build is there, but not of this source
    assert "is not built" in caplog.text
    rebuilt = cmeter.build(source)
    assert cmeter.load(source) is not None and not built.exists() and rebuilt.exists()


def test_source_compiles_without_warnings(tmp_path: Path) -> None:
    done = subprocess.run(
        ["cc", "-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror", "-shared", "-fPIC", "-o",
         str(tmp_path / "x.so"), str(cmeter.SOURCE)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_build_without_a_compiler_says_so(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "probe.cmeter", "build"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "CC": str(tmp_path / "no-such-cc")},
    )  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no C compiler" in lines[0] and "gcc" in lines[0], done.stderr
    broken = tmp_path / "_cmeter.c"
    broken.write_text("this is not C\n")
    with pytest.raises(cmeter.BuildError, match="failed"):
        cmeter.build(broken)
    assert not list(tmp_path.glob("*.so")) and not list(tmp_path.glob(".*tmp"))


def test_pipeline_uses_the_c_table_unless_told_not_to(monkeypatch, meters, traffic: Path) -> None:
    _run([traffic], True, monkeypatch, names=False)
    _run([traffic], False, monkeypatch, names=False)
    assert [type(meter) for meter in meters] == [cmeter.CMeter, FlowMeter]


# ---------------------------------------------------------------- the pcap record walk in C


def _walked(path: Path, c_walk: bool, monkeypatch) -> tuple:
    """Every record PcapChunks yields (offset in the file, time, captured length, frame), and the error."""
    monkeypatch.setenv("HOSTFLOW_PROBE_CMETER", "1" if c_walk else "0")
    header = fastpath.pcap_header(str(path))
    assert header is not None
    chunks = fastpath.PcapChunks(str(path), *header)
    assert (chunks._lib is not None) == c_walk
    records, error = [], None
    try:
        for chunk in chunks:
            for start, ts, caplen in zip(
                chunk.starts.tolist(), chunk.ts.tolist(), chunk.caplen.tolist(), strict=True
            ):
                records.append((ts, caplen, bytes(chunk.buf[start : start + caplen])))
            if chunk.error is not None:
                raise chunk.error
    except ProbeInputError as exc:
        error = str(exc)
    return records, error


PCAPS = [path for path in CAPTURES if fastpath.pcap_header(str(path)) is not None]


@pytest.mark.parametrize("chunking", ["default", "small"])
def test_c_walk_gives_numpy_walks_records(chunking: str, monkeypatch, lib, request) -> None:
    if chunking == "small":
        request.getfixturevalue("small_chunks")
    compared = 0
    for path in PCAPS:
        assert _walked(path, True, monkeypatch) == _walked(path, False, monkeypatch), path.name
        compared += 1
    assert compared >= 20


@pytest.mark.parametrize("cut", ["header", "record", "too-long"])
def test_c_walk_leaves_damage_to_the_exact_walk(cut: str, traffic: Path, tmp_path: Path, monkeypatch, lib,
                                                small_chunks) -> None:  # fmt: skip
    """A file cut in a record header or in a record, or with a record length past MAX_RECORD:
    the same records before it and the same error message as the numpy walk."""
    data = bytearray(traffic.read_bytes()[:300_000])
    offset, records = 24, 0
    while offset + 16 + struct.unpack_from("<I", data, offset + 8)[0] <= len(data) - 2000:
        offset += 16 + struct.unpack_from("<I", data, offset + 8)[0]
        records += 1
    if cut == "header":
        data = data[: offset + 9]
    elif cut == "record":
        data = data[: offset + 20]
    else:
        struct.pack_into("<I", data, offset + 8, fastpath.MAX_RECORD + 1)
    damaged = tmp_path / f"{cut}.pcap"
    damaged.write_bytes(bytes(data))
    c_records, c_error = _walked(damaged, True, monkeypatch)
    assert (c_records, c_error) == _walked(damaged, False, monkeypatch)
    assert len(c_records) == records and f"packet {records + 1}:" in c_error


# ---------------------------------------------------------------- the Ethernet decoder in C


def _decoded(path: Path, c_decoder: bool) -> list:
    """Every chunk's decoded columns, payload bounds, exact-decoded packets and error counts."""
    chunks = fastpath.PcapChunks(str(path), *fastpath.pcap_header(str(path)))
    out = []
    for chunk in chunks:
        errors: dict[str, int] = {}
        decoded = fastpath.decode_chunk(chunk, errors, cmeter.load() if c_decoder else None)
        cols = decoded.cols
        columns = {
            name: getattr(cols, name).tolist()
            for name in ("kind", *fastpath._INT_FIELDS, *fastpath._WORD_FIELDS)
        }
        out.append(
            (columns, decoded.pay_start.tolist(), decoded.pay_end.tolist(), sorted(decoded.exact), errors)
        )
        if chunk.error is not None:
            break
    return out


ETHERNET = [path for path in PCAPS if fastpath.pcap_header(str(path))[2] == 1]


def test_c_decoder_gives_numpy_decoders_columns(traffic: Path, monkeypatch, lib, small_chunks) -> None:
    monkeypatch.setenv("HOSTFLOW_PROBE_CMETER", "1")
    fast = 0
    for path in [*ETHERNET, traffic]:
        c_decoded = _decoded(path, True)
        assert c_decoded == _decoded(path, False), path.name
        fast += sum(kind == fastpath.KIND_IP for chunk in c_decoded for kind in chunk[0]["kind"])
    assert len(ETHERNET) >= 15 and fast > 40_000


def _frame(data) -> bytes:
    """A random Ethernet frame near the shapes the decoder tells apart (tags, versions, lengths, cuts)."""
    etype = data.draw(
        st.sampled_from([0x0800, 0x86DD, 0x8100, 0x88A8, 0x0806, 0x8847, 0x8864, 0x9100, 0x1234])
    )
    head = data.draw(st.binary(min_size=12, max_size=12)) + etype.to_bytes(2, "big")
    if etype in (0x8100, 0x88A8, 0x9100):
        inner = data.draw(st.sampled_from([0x0800, 0x86DD, 0x8100, 0x0806, 0x4321]))
        head += data.draw(st.binary(min_size=2, max_size=2)) + inner.to_bytes(2, "big")
    else:
        inner = etype
    proto = data.draw(st.sampled_from([6, 17, 1, 58, 47, 0, 43, 44, 60, 132]))
    if inner == 0x0800:
        first = data.draw(st.sampled_from([0x45, 0x45, 0x46, 0x44, 0x65]))
        total = data.draw(st.sampled_from([20, 28, 40, 60, 100, 0, 19, 1500]))
        fragment = data.draw(st.sampled_from([0, 0, 0x4000, 0x2000, 0x0001]))
        ip = struct.pack("!BBHHHBBH", first, data.draw(st.integers(0, 255)), total, 0, fragment, 64, proto, 0)
        ip += data.draw(st.binary(min_size=8, max_size=8))
    elif inner == 0x86DD:
        first = data.draw(st.sampled_from([0x60, 0x6F, 0x50]))
        plen = data.draw(st.sampled_from([0, 8, 20, 40, 100, 7]))
        ip = bytes([first, data.draw(st.integers(0, 255))]) + bytes(2) + struct.pack("!HBB", plen, proto, 64)
        ip += data.draw(st.binary(min_size=32, max_size=32))
    else:
        ip = b""
    offset_byte = data.draw(st.sampled_from([0x50, 0x80, 0x40, 0xF0, 0x00]))
    transport = data.draw(st.binary(min_size=12, max_size=12)) + bytes(
        [offset_byte, data.draw(st.integers(0, 255))]
    )
    frame = head + ip + transport + data.draw(st.binary(max_size=40))
    return frame[: data.draw(st.integers(0, len(frame)))] if data.draw(st.booleans()) else frame


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_c_decoder_on_random_frames(lib, tmp_path_factory, data) -> None:
    # the last frame (ARP-typed padding) puts every drawn frame's first HEAD bytes inside the buffer
    frames = [_frame(data) for _ in range(data.draw(st.integers(1, 12)))] + [
        bytes(12) + b"\x08\x06" + bytes(200)
    ]
    path = tmp_path_factory.mktemp("frames") / "frames.pcap"
    body = b"".join(struct.pack("<IIII", 1_700_000_000, k, len(f), len(f)) + f for k, f in enumerate(frames))
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + body)
    assert _decoded(path, True) == _decoded(path, False)
