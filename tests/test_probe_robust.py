"""Bad input never crashes or hangs the engine: corrupt files end with one clear line naming the
packet, damaged packets are counted by reason and everything else is still metered."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe.capture import ProbeInputError, open_capture
from probe.decode import METERED_PROBLEMS, Decoded, decode
from probe.options import MeterOptions
from probe.pipeline import MeterStats, meter_files
from probe.sink import MemorySink
from tests.plugins.common import FIXTURES
from tests.test_probe_decode import ether, ipv4, ipv6, pcap_file, pcapng_file, tcp, udp

MALFORMED = FIXTURES / "malformed"
FILES = sorted(p.name for p in MALFORMED.iterdir())
# File-level damage: the error each file must end with (everything else must read to the end).
FILE_ERRORS = {
    "libpcap-pcap-invalid-version-1.pcap": r"header: unsupported pcap version 1\.4",
    "libpcap-pcapng-invalid-vers-1.pcapng": r"header: unsupported pcapng version 0\.1",
    "libpcap-pcapng-invalid-vers-2.pcapng": r"header: unsupported pcapng version 1\.1",
    "libpcap-shb-option-too-long.pcapng": r"packet 1: section header option \d+ of length 12336 runs past its block",
    "ndpi-fuzz-2021-10-13.pcap": r"packet 1: record length 524501 is larger than 262144",
    "suricata-bug-1450-04-tls_DER-incomplete-header.pcap": r"packet 7: record length 4325376 is larger than 262144",
}
LINKTYPES = [0, 1, 12, 101, 108, 113, 182, 228, 229, 276]


def _check_counts(stats: MeterStats) -> None:
    """Every frame is exactly one of: metered, non-IP, or dropped with a reason."""
    dropped = sum(n for reason, n in stats.parse_errors.items() if reason not in METERED_PROBLEMS)
    assert stats.packets == stats.ip_packets + stats.non_ip + dropped


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", FILES)
def test_malformed_capture(name: str) -> None:
    path = str(MALFORMED / name)
    sink = MemorySink()
    expected = FILE_ERRORS.get(name)
    if expected is None:
        stats = meter_files([path], MeterOptions(names=True), sink)
        _check_counts(stats)
        assert sum(f.packets for f in sink.flows) == stats.ip_packets
    else:
        with pytest.raises(ProbeInputError) as caught:
            meter_files([path], MeterOptions(names=True), sink)
        message = str(caught.value)
        assert message.startswith(path + ": ") and "\n" not in message
        assert re.search(expected, message), message
        assert sink.health["packets_captured"] == sum(1 for _ in _packets_before_error(path))


def _packets_before_error(path: str):
    try:
        yield from open_capture(path)
    except ProbeInputError:
        return


def test_packets_before_the_damage_are_delivered() -> None:
    sink = MemorySink()
    with pytest.raises(ProbeInputError, match="packet 7"):
        meter_files([str(MALFORMED / "suricata-bug-1450-04-tls_DER-incomplete-header.pcap")],
                    MeterOptions(names=False), sink)  # fmt: skip
    assert sum(f.packets for f in sink.flows) == 6


def test_expected_reasons_counted() -> None:
    """A few files whose damage is known: the reason and the count are exact."""
    cases = {
        "zeek-trunc-ip4-trunc.pcap": {"ipv4-truncated": 1},
        "tcpdump-ipv6_39_byte_header.pcap": {"ipv6-truncated": 1},
        "tcpdump-tcp_header_heapoverflow.pcap": {"tcp-truncated": 1},
        "tcpdump-ipv4_invalid_hdr_length.pcap": {"ipv4-bad-header-length": 1},
        "zeek-trunc-ip6-ext-trunc.pcap": {"ipv6-bad-ext": 1},
        "tcpdump-kday6.pcap": {"unsupported-linktype": 1},
        "tcpdump-ipv6-bad-version.pcap": {"ipv6-bad-version": 2},
    }
    for name, reasons in cases.items():
        stats = meter_files([str(MALFORMED / name)], MeterOptions(names=False), MemorySink())
        assert stats.parse_errors == reasons, name


def test_bad_paths_fail_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ProbeInputError, match=r"nope\.pcap: no such file"):
        meter_files([str(tmp_path / "nope.pcap")], MeterOptions(), MemorySink())
    with pytest.raises(ProbeInputError, match="BPF filter applies to live capture only"):
        meter_files([str(MALFORMED / "tcpdump-empty.pcapng")], MeterOptions(bpf="udp"), MemorySink())


# ---------------------------------------------------------------- property tests

REAL_FRAMES = [
    ether(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(40000, 443, 0x18, b"\x16\x03\x01\x00\x05hello"))),
    ether(ipv4("10.0.0.1", "10.0.0.2", 17, udp(5353, 53, b"\x12\x34\x01\x00\x00\x01" + b"\0" * 6))),
    ether(
        ipv6("2001:db8::1", "2001:db8::2", 0, bytes([17, 0]) + b"\x01\x04\0\0\0\0" + udp(1, 2, b"x")), 0x86DD
    ),
    ether(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2, b"y" * 8)), tags=((0x88A8, 5), (0x8100, 6))),
]


def _assert_decodes(linktype: int, frame: bytes) -> None:
    result = decode(linktype, frame)
    assert result is None or isinstance(result, str | Decoded)
    if isinstance(result, Decoded):
        assert 0 <= result.payload_start <= result.payload_end <= len(frame)
        assert result.problem == "" or result.problem in METERED_PROBLEMS


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(LINKTYPES), st.binary(max_size=200))
def test_decode_random_bytes(linktype: int, frame: bytes) -> None:
    _assert_decodes(linktype, frame)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(REAL_FRAMES), st.data())
def test_decode_truncated_and_bit_flipped_real_frames(frame: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(frame)))
    flips = data.draw(st.lists(st.integers(0, len(frame) * 8 - 1), max_size=6))
    mutated = bytearray(frame)
    for bit in flips:
        mutated[bit // 8] ^= 1 << (bit % 8)
    _assert_decodes(1, bytes(mutated))
    _assert_decodes(1, bytes(mutated[:cut]))


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    base = tmp_path_factory.mktemp("robust")
    frames = [(1_600_000_000_000_000 + i, frame) for i, frame in enumerate(REAL_FRAMES)]
    return [
        pcap_file(base / "a.pcap", frames).read_bytes(),
        pcap_file(base / "b.pcap", frames, big_endian=True, nanoseconds=True).read_bytes(),
        pcapng_file(
            base / "c.pcapng", [(1, None), (1, 9)], [(i % 2, ts, f) for i, (ts, f) in enumerate(frames)]
        ).read_bytes(),
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_damaged_files_raise_only_probe_input_error(sample_files: list[bytes], tmp_path: Path,
                                                    data: st.DataObject) -> None:  # fmt: skip
    content = bytearray(data.draw(st.sampled_from(sample_files)))
    for bit in data.draw(st.lists(st.integers(0, len(content) * 8 - 1), max_size=8)):
        content[bit // 8] ^= 1 << (bit % 8)
    cut = data.draw(st.integers(0, len(content)))
    path = tmp_path / "damaged.cap"
    path.write_bytes(bytes(content[:cut]) if data.draw(st.booleans()) else bytes(content))
    sink = MemorySink()
    try:
        stats = meter_files([str(path)], MeterOptions(names=True), sink)
    except ProbeInputError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)
        return
    _check_counts(stats)
