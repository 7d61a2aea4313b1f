"""The vectorised file path (probe.fastpath) gives exactly the per-packet path's results.

Both paths run on every capture fixture and on generated traffic (the benchmark's generator:
TCP handshakes, FIN and RST closes, UDP, ICMP, IPv6, VLAN tags), with several option sets that
drive each branch: idle and active timeouts, a flow table small enough to evict (the batch must
step aside), names on, tiny chunks (many lanes, chunks and batches), time going backwards, a
file cut short. Every flow record (all fields), every name, the health counters and the error
must be equal; only the order in which flows reach the sink may differ.
"""

from __future__ import annotations

import ipaddress
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.bench_probe import pcap_to_pcapng, write_pcap
from probe import cmeter, fastpath
from probe.capture import open_capture
from probe.names import HTTP_METHOD_PREFIXES, NameExtractor
from tests.plugins.common import FIXTURES
from tests.probe_runs import CAPTURES, metered, use_small_chunks, write_traffic

OPTION_SETS = {
    "default": {},
    "short-timeouts": {"idle_timeout": 0.4, "active_timeout": 2.0},
    "no-timeouts": {"idle_timeout": 1e9, "active_timeout": 1e9, "names": False},
    "small-table": {"max_flows": 40},
    "table-fills-up": {"max_flows": 1000},
}


def assert_same(paths: list[Path], **options) -> tuple:
    exact = metered(paths, False, **options)
    fast = metered(paths, True, **options)
    for label, one, other in zip(("flows", "names", "health", "error"), exact, fast, strict=True):
        if label == "flows" and one != other:
            only_exact, only_fast = sorted(set(one) - set(other)), sorted(set(other) - set(one))
            pytest.fail(f"flows differ: {len(one)} vs {len(other)}; only per-packet {only_exact[:3]}; "
                        f"only vectorised {only_fast[:3]}")  # fmt: skip
        assert one == other, f"{label} differ"
    return exact


@pytest.fixture
def batches(monkeypatch) -> list[bool]:
    """What every BatchMeter.apply answered (True: metered as a batch; False: it stepped aside).

    The numpy batch only meters when the C flow table is off (tests/test_cmeter.py tests that one)."""
    monkeypatch.setenv("HOSTFLOW_PROBE_CMETER", "0")
    answers: list[bool] = []
    original = fastpath.BatchMeter.apply

    def apply(self, cols, ip):
        answers.append(original(self, cols, ip))
        return answers[-1]

    monkeypatch.setattr(fastpath.BatchMeter, "apply", apply)
    return answers


@pytest.fixture(autouse=True, params=["numpy", "C"])
def compiled(request, monkeypatch) -> str:
    """Every test twice: the numpy walk, decoder and batches, and probe/_cmeter.c's walk, decoder
    and flow table (tests/test_cmeter.py compares the two directly)."""
    if request.param == "C" and cmeter.load() is None:
        pytest.skip(f"the C flow table is not built: run {sys.executable} -m probe.cmeter build")
    monkeypatch.setenv("HOSTFLOW_PROBE_CMETER", "1" if request.param == "C" else "0")
    return request.param


@pytest.fixture
def small_chunks(monkeypatch) -> None:
    use_small_chunks(monkeypatch)


@pytest.fixture(scope="module")
def traffic(tmp_path_factory) -> Path:
    return write_traffic(tmp_path_factory.mktemp("fastpath") / "traffic.pcap")


@pytest.fixture(scope="module")
def bench_like(tmp_path_factory) -> Path:
    """The benchmark's traffic (20,000 concurrent conversations), 150,000 packets of it."""
    path = tmp_path_factory.mktemp("fastpath") / "bench.pcap"
    write_pcap(path, 150_000)
    return path


@pytest.mark.parametrize("capture", CAPTURES, ids=[f"{p.parent.name}/{p.name}" for p in CAPTURES])
def test_every_fixture(capture: Path) -> None:
    for options in OPTION_SETS.values():
        assert_same([capture], **options)


@pytest.mark.parametrize("nanoseconds", [False, True], ids=["us", "ns"])
def test_pcapng_takes_the_fast_path(batches, traffic: Path, tmp_path: Path, nanoseconds: bool) -> None:
    """pcapng is metered in batches too (block headers walked, frames left in the map): the same
    flows, names and counters as its per-packet path, and as the same packets in a classic pcap."""
    pcapng = tmp_path / "traffic.pcapng"
    pcap_to_pcapng(traffic, pcapng, nanoseconds=nanoseconds)
    for options in ({}, OPTION_SETS["short-timeouts"]):
        flows, names, health, error = assert_same([pcapng], **options)
        assert (flows, names, health, error) == metered([traffic], True, **options)
        assert error is None and health["packets_captured"] >= 40_000 and len(flows) > 1000
    assert batches and all(batches)


@pytest.mark.parametrize(
    "damage", ["cut", "caplen", "interface", "block-length", "block-length-odd", "time-2106"]
)
def test_pcapng_damage_in_a_run(traffic: Path, tmp_path: Path, damage: str) -> None:
    """Damage in the middle of a run of packet blocks (walked with arrays) is reported exactly as
    the per-packet reader reports it, after the same packets; a time beyond 2106 is read exactly."""
    pcapng = tmp_path / "traffic.pcapng"
    pcap_to_pcapng(traffic, pcapng)
    data = bytearray(pcapng.read_bytes())
    at = 28 + 20  # SHB, IDB
    for _ in range(20_000):  # the 20,001st packet block
        at += struct.unpack_from("<I", data, at + 4)[0]
    if damage == "cut":
        data = data[: at + 40]
    elif damage == "caplen":
        struct.pack_into("<I", data, at + 20, 5000)
    elif damage == "interface":
        struct.pack_into("<I", data, at + 8, 3)
    elif damage == "block-length":
        struct.pack_into("<I", data, at + 4, 30)
    elif damage == "block-length-odd":  # the blocks after it would start off the 4-byte grid
        struct.pack_into("<I", data, at + 4, struct.unpack_from("<I", data, at + 4)[0] + 2)
    else:
        struct.pack_into("<I", data, at + 12, 0xFFFFFFFF)  # ts_high: beyond what int64 microseconds hold
    pcapng.write_bytes(bytes(data))
    flows, _names, health, error = assert_same([pcapng])
    if damage == "time-2106":
        assert error is None and health["packets_captured"] >= 40_000
    else:
        assert error is not None and "packet 20001:" in error and health["packets_captured"] == 20_000


def test_fixtures_take_the_fast_path(batches) -> None:
    """The comparison above is not vacuous: Ethernet pcaps are metered in batches."""
    flows, _names, health, error = assert_same([FIXTURES / "pcap" / "ndpi-iphone.pcap"])
    assert error is None and len(flows) == 90 and health["packets_captured"] == 500
    assert batches and all(batches)


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_generated_traffic(traffic: Path, options: dict, batches, small_chunks) -> None:
    flows, _names, health, error = assert_same([traffic], **options)
    assert error is None and health["packets_captured"] >= 40_000
    reasons = {flow[FLOW_END_REASON] for flow in flows}
    if options.get("max_flows") == 40:
        assert False in batches and "evicted" in reasons  # the batch stepped aside, as it must
    elif options.get("max_flows"):
        # batches and evicting chunks alternate: eviction follows the table order the batches left
        assert batches.count(True) >= 3 and batches.count(False) >= 3 and "evicted" in reasons
    else:
        assert batches.count(True) >= 10  # 40,000 packets in batches of 3,000 or more
        assert {"fin", "rst"} <= reasons
    if options.get("idle_timeout") == 0.4:
        assert {"idle", "active"} <= reasons


def test_bench_traffic(bench_like: Path, batches) -> None:
    flows, _names, health, _error = assert_same([bench_like], names=False)
    assert health["packets_captured"] >= 150_000 and len(flows) > 20_000
    assert batches and all(batches)


def test_time_going_backwards(traffic: Path, tmp_path: Path, small_chunks) -> None:
    """Records out of time order: the rest of the stream goes packet by packet, still equal."""
    data = bytearray(traffic.read_bytes())
    records = [offset for _linktype, offset in _record_offsets(traffic)]
    for index in (5_000, 5_001, 22_222):  # move three packets one second into the past
        sec = struct.unpack_from("<I", data, records[index])[0]
        struct.pack_into("<I", data, records[index], sec - 1)
    disordered = tmp_path / "disordered.pcap"
    disordered.write_bytes(bytes(data))
    assert_same([disordered])
    assert_same([disordered], idle_timeout=0.4, active_timeout=2.0)


def test_several_files_as_one_stream(traffic: Path, tmp_path: Path, small_chunks) -> None:
    later = tmp_path / "copy.pcap"
    shutil.copy(traffic, later)
    assert_same([traffic, FIXTURES / "pcap" / "ndpi-sites.pcapng", later], idle_timeout=0.4)


def test_file_cut_short(traffic: Path, tmp_path: Path, small_chunks) -> None:
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(traffic.read_bytes()[:1_234_567])
    _flows, _names, health, error = assert_same([cut])
    assert error is not None and "file cut short" in error and health["packets_captured"] > 1000


def test_damaged_record_length(traffic: Path, tmp_path: Path, small_chunks) -> None:
    data = bytearray(traffic.read_bytes())
    offset = [offset for _linktype, offset in _record_offsets(traffic)][9_999]
    struct.pack_into("<I", data, offset + 8, 300_000)
    damaged = tmp_path / "damaged.pcap"
    damaged.write_bytes(bytes(data))
    _flows, _names, health, error = assert_same([damaged])
    assert error == f"{damaged}: packet 10000: record length 300000 is larger than 262144 (damaged file)"
    assert health["packets_captured"] == 9_999


@pytest.mark.parametrize("lane_bytes", [1024, 4096, 16_384])
def test_record_walk(traffic: Path, monkeypatch, lane_bytes: int) -> None:
    """The lanes find every record, exactly as the plain reader does, and do join up."""
    monkeypatch.setenv("HOSTFLOW_PROBE_CMETER", "0")  # the numpy walk (the C walk: tests/test_cmeter.py)
    monkeypatch.setattr(fastpath, "FIRST_CHUNK_BYTES", 256 << 10)
    monkeypatch.setattr(fastpath, "CHUNK_PACKETS", 2000)
    monkeypatch.setattr(fastpath, "LANE_BYTES", lane_bytes)
    expected = [(ts, frame) for _linktype, ts, _wire, frame in open_capture(str(traffic))]
    reader = fastpath.PcapChunks(str(traffic), *fastpath.pcap_header(str(traffic)))
    seen = []
    for chunk in reader:
        for start, caplen, ts in zip(
            chunk.starts.tolist(), chunk.caplen.tolist(), chunk.ts.tolist(), strict=True
        ):
            seen.append((ts, bytes(chunk.buf[start : start + caplen])))
    assert seen == expected
    assert reader.lanes_failed == 0


FLOW_END_REASON = 16  # index of end_reason in a flow row


def _record_offsets(path: Path):
    data = path.read_bytes()
    offset = 24
    while offset < len(data):
        yield 1, offset
        offset += 16 + struct.unpack_from("<I", data, offset + 8)[0]


def _udp(sport: int) -> bytes:
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    )
    return b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00" + ip + struct.pack("!HHHH", sport, 6000, 8, 0)


def test_idle_and_active_boundaries(tmp_path: Path, batches) -> None:
    """A gap of exactly the idle timeout keeps a flow, one microsecond more splits it; the same
    for the active timeout (checked on both paths: the first conversation stays in the batch, the
    second reaches the active timeout and goes packet by packet)."""
    start = 1_600_000_000_000_000
    packets = [(start, 5000), (start + 1_000_000, 5000), (start + 2_000_001, 5000),
               (start + 100, 5001), (start + 1_000_100, 5001), (start + 1_000_101, 5001)]  # fmt: skip
    path = tmp_path / "boundaries.pcap"
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ts, sport in sorted(packets):
            frame = _udp(sport)
            out.write(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(frame), len(frame)) + frame)
    flows, _names, _health, _error = assert_same([path], idle_timeout=1.0, active_timeout=1.0)
    assert sorted((f[6], f[1], f[2], f[9], f[FLOW_END_REASON]) for f in flows) == [
        (5000, start, start + 1_000_000, 2, "idle"),
        (5000, start + 2_000_001, start + 2_000_001, 1, "end-of-capture"),
        (5001, start + 100, start + 1_000_100, 2, "active"),
        (5001, start + 1_000_101, start + 1_000_101, 1, "end-of-capture"),
    ]
    assert batches == [True]


# ---------------------------------------------------------------- which packets go to the name learner

PCAPS = [path for path in CAPTURES if fastpath.pcap_header(str(path)) is not None]


def _packet(chunk, decoded, i: int) -> tuple:
    """(ts, src, dst, proto, sport, dport, payload) of packet ``i``, as NameExtractor.feed takes them."""
    cols = decoded.cols
    version = int(cols.version[i])
    src = fastpath.addr_bytes(version, int(cols.src_hi[i]), int(cols.src_lo[i]))
    dst = fastpath.addr_bytes(version, int(cols.dst_hi[i]), int(cols.dst_lo[i]))
    payload = bytes(chunk.buf[int(decoded.pay_start[i]) : int(decoded.pay_end[i])])
    return (int(cols.ts[i]), str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)),
            int(cols.proto[i]), int(cols.sport[i]), int(cols.dport[i]), payload)  # fmt: skip


def _selections(
    path: Path,
) -> tuple[list[int], list[int], list[bool], list[bool], NameExtractor, NameExtractor]:
    """Chunk by chunk through ``name_packets`` and, beside it, ``interesting()`` on every packet.

    Returns the packets each way accepted (numbered across the file), the array rule alone and a
    fresh extractor's ``interesting()`` for every packet with a payload, and both extractors (whose
    names must be equal).
    """
    selected, reference, alone_rule, fresh_rule, skips = [], [], [], [], []
    ours, theirs, fresh = NameExtractor("t"), NameExtractor("t"), NameExtractor("t")
    ours_names, theirs_names = [], []
    base = 0
    for chunk in fastpath.PcapChunks(str(path), *fastpath.pcap_header(str(path))):
        decoded = fastpath.decode_chunk(chunk, {}, cmeter.library())
        cols = decoded.cols
        with_payload = np.flatnonzero((cols.kind == fastpath.KIND_IP) & (decoded.pay_end > decoded.pay_start))

        for i in with_payload.tolist():  # the per-packet rule: interesting() asked about every packet
            ts, src, dst, proto, sport, dport, payload = _packet(chunk, decoded, i)
            fresh_rule.append(fresh.interesting(proto, sport, dport, payload))
            if theirs.interesting(proto, sport, dport, payload):
                reference.append(base + i)
                theirs_names += theirs.feed(ts, src, dst, proto, sport, dport, payload)
        cols_p = cols.proto[with_payload], cols.sport[with_payload]
        alone_rule += fastpath.interesting_alone(
            chunk.u8, *cols_p, decoded.pay_start[with_payload], decoded.pay_end[with_payload]
        ).tolist()
        chosen, alone, skipped, ignored = fastpath.name_packets(
            chunk.u8, decoded, with_payload, ours.buffered_port_pairs()
        )
        for reason, count in ignored.items():  # as probe.pipeline does
            ours._count(reason, count)
        for i, accepted in zip(chosen.tolist(), alone.tolist(), strict=True):
            ts, src, dst, proto, sport, dport, payload = _packet(chunk, decoded, i)
            if accepted or ours.interesting(proto, sport, dport, payload):
                selected.append(base + i)
                ours_names += ours.feed(ts, src, dst, proto, sport, dport, payload)
        selected = sorted(selected + (base + skipped).tolist())
        skips.append(sum(ignored.values()) == len(skipped) and len(skipped))
        base += cols.n
    assert ours_names == theirs_names
    assert all(skip is not False for skip in skips)  # every skipped packet counted once
    _selections.skipped = sum(skips)
    return selected, reference, alone_rule, fresh_rule, ours, theirs


@pytest.mark.parametrize("capture", PCAPS, ids=[f"{p.parent.name}/{p.name}" for p in PCAPS])
def test_name_selection_is_interesting(capture: Path, small_chunks) -> None:
    """The arrays pick exactly the packets ``interesting()`` accepts, in order (buffers carried
    across many small chunks), so the extractor ends with the same names and counters."""
    selected, reference, alone_rule, fresh_rule, ours, theirs = _selections(capture)
    assert alone_rule == fresh_rule  # no buffers: interesting() is the stateless rule
    assert selected == reference
    assert ours.counters == theirs.counters


def test_name_selection_skips_what_the_first_bytes_tell(bench_like: Path, small_chunks) -> None:
    """The benchmark's traffic has DNS-port packets of zeros: UDP from 53 that reads as a query and
    TCP from 53 whose length prefix is 0. They are counted, not fed, and the extractor ends the same."""
    selected, reference, _alone, _fresh, ours, theirs = _selections(bench_like)
    assert selected == reference
    assert ours.counters == theirs.counters
    assert theirs.counters["ignored-dns-query"] > 1000 and theirs.counters["dns-tcp-malformed"] > 1000
    assert _selections.skipped == theirs.counters["ignored-dns-query"] + theirs.counters["dns-tcp-malformed"]


def test_name_selection_follows_buffers(small_chunks) -> None:
    """Not vacuous: on the name captures, continuation segments are accepted only because their
    ports have a partial message buffered (the part the arrays leave to ``interesting()``)."""
    continued = 0
    for capture in PCAPS:
        if capture.parent.name != "names":
            continue
        selected, reference, alone_rule, _fresh, ours, _theirs = _selections(capture)
        assert selected == reference
        continued += len(selected) - sum(alone_rule)
    assert continued > 0


_BYTES = st.one_of(st.sampled_from([0x16, 3, 1, 0, 0xFF, *b"GETPOSHADLUCNRIOTZ "]), st.integers(0, 255))
_PAYLOAD = st.one_of(
    st.lists(_BYTES, min_size=1, max_size=9).map(bytes),
    st.sampled_from(sorted(HTTP_METHOD_PREFIXES)).flatmap(
        lambda p: st.binary(max_size=3).map(lambda t: p + t)
    ),
)


@given(
    packets=st.lists(
        st.tuples(
            st.sampled_from([6, 17, 1, 58, 132]),
            st.sampled_from([53, 67, 68, 137, 443, 5353, 5355, 80, 9]),
            _PAYLOAD,
        ),  # fmt: skip
        min_size=1,
        max_size=40,
    )
)
@settings(max_examples=300, deadline=None)
def test_interesting_alone_arrays(packets: list[tuple[int, int, bytes]]) -> None:
    """Short payloads, payloads at the buffer's very end, every first byte the rule looks at."""
    data = b"".join(payload for _proto, _sport, payload in packets)
    ends = np.cumsum([len(payload) for _proto, _sport, payload in packets])
    starts = ends - [len(payload) for _proto, _sport, payload in packets]
    proto = np.array([p for p, _s, _b in packets], dtype=np.int64)
    sport = np.array([s for _p, s, _b in packets], dtype=np.int64)
    got = fastpath.interesting_alone(np.frombuffer(data, np.uint8), proto, sport, starts, ends).tolist()
    extractor = NameExtractor("t")
    assert got == [extractor.interesting(p, s, 40000, b) for p, s, b in packets]


# ---------------------------------------------------------------- SYN in the batch; key identities


def _tcp4(src: str, dst: str, sport: int, dport: int, flags: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 0x50, flags, 1000, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, ipaddress.ip_address(src).packed,
                     ipaddress.ip_address(dst).packed)  # fmt: skip
    return b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00" + ip + tcp + bytes(6)


def _udp4(src: str, dst: str, sport: int, dport: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, ipaddress.ip_address(src).packed,
                     ipaddress.ip_address(dst).packed)  # fmt: skip
    return (
        b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00"
        + ip
        + struct.pack("!HHHH", sport, dport, 8, 0)
        + bytes(18)
    )


SYN, SYN_ACK, ACK = 0x02, 0x12, 0x10


def _opening_traffic(path: Path) -> int:
    """TCP conversations opened (never closed) across two batches (with ``small_chunks``), and UDP
    ones whose keys are mostly zero bytes; returns the first packet's time."""
    start = 1_650_000_000_000_000
    frames = [
        _tcp4("10.0.0.1", "10.0.0.2", 40000, 443, SYN),  # A: handshake seen whole
        _tcp4("10.0.0.2", "10.0.0.1", 443, 40000, SYN_ACK),
        _tcp4("10.0.0.9", "10.0.0.3", 80, 50000, SYN_ACK),  # B: only the SYN+ACK: the other side opened
        _tcp4("10.0.0.4", "10.0.0.5", 6000, 7000, ACK),  # C: data first (no port hint), its SYN later
        _tcp4("10.0.0.6", "10.0.0.7", 5000, 5001, SYN),  # D: opened, idle, then opened the other way
    ]
    frames += [
        _tcp4("10.0.0.1", "10.0.0.2", 40000, 443, ACK),
        _tcp4("10.0.0.2", "10.0.0.1", 443, 40000, ACK),
    ] * 8000
    frames += [
        _tcp4("10.0.0.5", "10.0.0.4", 7000, 6000, SYN),
        _tcp4("10.0.0.4", "10.0.0.5", 6000, 7000, SYN_ACK),
    ]
    frames += [_udp4(a, b, sport, dport) for a, b in (("0.0.0.0", "0.0.0.0"), ("0.0.0.1", "1.0.0.0"),
                                                      ("1.0.0.0", "0.0.0.1"), ("0.1.0.0", "0.0.1.0"))
               for sport, dport in ((0, 0), (0, 1), (1, 0), (256, 0), (0, 256))]  # fmt: skip
    frames += [_tcp4("10.0.0.2", "10.0.0.1", 443, 40000, ACK)] * 2000
    times = [start + 20 * i for i in range(len(frames))]
    frames.append(_tcp4("10.0.0.7", "10.0.0.6", 5001, 5000, SYN))  # D again, after more than the idle timeout
    times.append(times[-1] + 2_000_000)
    frames.append(_tcp4("10.0.0.6", "10.0.0.7", 5000, 5001, ACK))
    times.append(times[-1] + 1)
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ts, frame in zip(times, frames, strict=True):
            out.write(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(frame), len(frame)) + frame)
    return start


def test_syn_opened_conversations_stay_in_the_batch(
    tmp_path: Path, batches, small_chunks, monkeypatch
) -> None:
    """A SYN without FIN/RST only names the opener: such conversations are metered in the batch (none
    goes through FlowMeter.add), with the initiator the per-packet path gives, also when the SYN comes
    in a later batch or after an idle split; conversations whose keys are mostly zero bytes (their
    identities end in NULs) stay apart."""
    path = tmp_path / "opening.pcap"
    start = _opening_traffic(path)
    flows, _names, _health, error = assert_same([path], idle_timeout=1.0)
    assert error is None and len(batches) >= 2 and all(batches)
    by_ports = {(f[6], f[8]): (f[5], f[7], f[9], f[17]) for f in flows if f[4] == 6}
    assert by_ports[(40000, 443)] == ("10.0.0.1", "10.0.0.2", 8001, "src")
    assert by_ports[(443, 40000)] == ("10.0.0.2", "10.0.0.1", 10001, "dst")
    assert by_ports[(80, 50000)] == ("10.0.0.9", "10.0.0.3", 1, "dst")
    assert by_ports[(6000, 7000)] == ("10.0.0.4", "10.0.0.5", 2, "dst")  # its SYN came in the second batch
    assert by_ports[(7000, 6000)] == ("10.0.0.5", "10.0.0.4", 1, "src")
    d_flows = sorted((f[1], f[6], f[FLOW_END_REASON], f[17]) for f in flows if f[6] in (5000, 5001))
    assert d_flows[0] == (start + 80, 5000, "idle", "src")
    assert [row[1:] for row in d_flows[1:]] == [
        (5001, "end-of-capture", "src"),
        (5000, "end-of-capture", "dst"),
    ]
    assert len([f for f in flows if f[4] == 17]) == 20  # 4 address pairs x 5 port pairs: 20 one-way flows

    calls = []
    original = fastpath.BatchMeter._apply_complex
    monkeypatch.setattr(
        fastpath.BatchMeter, "_apply_complex", lambda self, *a: calls.append(1) or original(self, *a)
    )
    assert metered([path], True, idle_timeout=1.0)[0] == flows
    assert calls == []


@pytest.mark.parametrize("rows_kind", ["contiguous", "every-other-row", "column-slice", "empty"])
def test_big_endian_fields(rows_kind: str) -> None:
    """Header fields read with one strided view equal the bytes put together one by one."""
    rows = np.random.default_rng(5).integers(0, 256, (301, fastpath.HEAD), dtype=np.uint8)
    rows = {"contiguous": rows, "every-other-row": rows[::2], "column-slice": rows[:, 3:], "empty": rows[:0]}[
        rows_kind
    ]
    for column in range(rows.shape[1] - 8):
        for width in (2, 4, 8):
            expected = [int.from_bytes(bytes(row[column : column + width]), "big") for row in rows]
            got = fastpath._be64(rows, column) if width == 8 else fastpath._be(rows, column, width)
            assert got.dtype == (np.uint64 if width == 8 else np.int64)
            assert got.tolist() == expected
