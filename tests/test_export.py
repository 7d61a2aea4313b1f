"""Export: the CollectorSink against the real collector (spool, resend, quarantine, TLS) and FileSink."""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

import tests.plugins.collector as collector_plugin
from hostflow import fileio
from hostflow.records import (
    FLOW_FIELDS,
    NAME_FIELDS,
    SCHEMA_VERSION,
    Flow,
    Name,
    make_batch,
    make_columns_batch,
)
from probe.export import CollectorSink, ExportError, FileSink, decode_batch, encode_batch
from probe.health import HEALTH_FIELDS
from probe.options import MeterOptions
from probe.pipeline import meter_files
from probe.sink import MemorySink
from probe.spool import BATCH_SUFFIX, Spool
from tests.plugins.common import FIXTURES, ROOT, free_port

IPHONE = FIXTURES / "probe" / "ndpi-iphone.pcap"
FAST = {"batch_seconds": 0.2, "retry_max_seconds": 0.5, "http_timeout": 5.0, "close_timeout": 10.0}


@pytest.fixture(scope="module")
def metered() -> MemorySink:
    """The flows and names of a real capture, metered once, as probe "test-probe"."""
    sink = MemorySink()
    meter_files([str(IPHONE)], MeterOptions(probe_id=collector_plugin.PROBE_ID), sink)
    assert len(sink.flows) == 90 and len(sink.names) == 65
    return sink


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stored_flows(collector, probe_id: str = collector_plugin.PROBE_ID) -> int:
    status, answer = collector.query_json("time_range", probe_id=probe_id)
    assert status == 200, answer
    return answer["rows"][0][2] if answer["rows"] else 0


def stored_names(collector) -> int:
    status, answer = collector.query_json("names", limit=100_000)
    assert status == 200, answer
    return len(answer["rows"])


def probe_row(collector) -> dict:
    status, answer = collector.query_json("probes")
    assert status == 200, answer
    rows = [dict(zip(answer["columns"], row, strict=True)) for row in answer["rows"]]
    return next(row for row in rows if row["probe_id"] == collector_plugin.PROBE_ID)


def stored_batch_ids(collector) -> list[str]:
    """Batch ids in the order the collector stored them (its own log says so)."""
    return re.findall(r"event=batch_stored .*?batch_id='([^']+)'.*?duplicate=False", collector.log())


def sink_for(
    collector_url: str, spool_dir: Path, token: str = collector_plugin.PROBE_TOKEN, **kwargs
) -> CollectorSink:
    settings = {**FAST, **kwargs}
    spool = Spool(spool_dir, settings.pop("spool_max_bytes", 256 * 1024 * 1024))
    probe_id = settings.pop("probe_id", collector_plugin.PROBE_ID)
    return CollectorSink(collector_url, token, probe_id, spool, **settings)


def restart_on_same_port(collector, monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe keeps its URL: start the collector again where it was."""
    port = collector.http_port
    monkeypatch.setattr(collector_plugin, "free_port", lambda *args: port)
    collector.start()


# ---------------------------------------------------------------- delivery


def test_every_record_is_stored_once_and_the_spool_empties(collector_server, metered, tmp_path: Path) -> None:
    sink = sink_for(collector_server.url, tmp_path / "spool", batch_flows=40)
    sink.add_names(metered.names)
    for start in range(0, len(metered.flows), 25):
        sink.add_flows(metered.flows[start : start + 25])
    sink.set_health({"packets_captured": 500, "iface": "", "parse_errors": {"truncated": 2}})
    sink.close()
    assert sink.refusals == [] and sink.undelivered == 0
    assert list((tmp_path / "spool").glob("*.hfc1.gz")) == []
    assert stored_flows(collector_server) == 90
    assert stored_names(collector_server) == 65
    ids = stored_batch_ids(collector_server)
    assert ids == sorted(ids) and len(ids) == len(set(ids)) == sink.batches_delivered
    assert all(re.fullmatch(r"test-probe:\d{12}", batch_id) for batch_id in ids)
    health = probe_row(collector_server)
    assert health["packets_captured"] == 500 and health["flows_exported"] == 90
    assert health["parse_errors"] and '"truncated": 2' in health["parse_errors"].replace('":2', '": 2')


def test_a_spooled_batch_follows_the_contract(metered, tmp_path: Path) -> None:
    # nothing listens on this port: the batch stays in the spool, where we read it
    sink = sink_for(f"http://127.0.0.1:{free_port()}", tmp_path / "spool", close_timeout=0.5)
    sink.add_flows(metered.flows[:10])
    sink.add_names(metered.names[:3])
    sink.close()
    spool = Spool(tmp_path / "spool")
    [batch] = spool.pending()
    content = decode_batch(spool.read(batch))
    assert content["batch_id"] == f"test-probe:{batch.seq:012d}"
    assert content["schema_version"] == SCHEMA_VERSION and content["probe_id"] == "test-probe"
    assert content["flow_fields"] == list(FLOW_FIELDS) and content["name_fields"] == list(NAME_FIELDS)
    assert len(content["flows"]) == 10 and len(content["names"]) == 3
    assert content["flows"][0] == [getattr(metered.flows[0], f) for f in FLOW_FIELDS]
    assert tuple(content["health"]) == HEALTH_FIELDS
    assert content["health"]["flows_exported"] == 10
    spool.close()


def test_heartbeats_carry_health_when_there_is_no_traffic(collector_server, tmp_path: Path) -> None:
    sink = sink_for(collector_server.url, tmp_path / "spool", heartbeat_seconds=0.3)
    sink.set_health({"packets_captured": 7, "iface": "eth9", "kernel_drops": 1})
    wait_until(lambda: len(stored_batch_ids(collector_server)) >= 3, what="three heartbeat batches")
    sink.close()
    assert stored_flows(collector_server) == 0
    row = probe_row(collector_server)
    assert (row["packets_captured"], row["iface"], row["kernel_drops"]) == (7, "eth9", 1)


def test_collector_down_then_back_gets_every_batch_in_order_once(
    collector_server, metered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector_server.stop()
    sink = sink_for(collector_server.url, tmp_path / "spool", batch_flows=20)
    sink.add_flows(metered.flows)
    wait_until(lambda: sink.spool.batches == 5, what="five spooled batches")
    time.sleep(1.0)  # several failed attempts
    assert sink.spool.batches == 5 and sink.refusals == []
    restart_on_same_port(collector_server, monkeypatch)
    wait_until(lambda: sink.spool.batches == 0, what="the spool to drain")
    sink.close()
    assert stored_flows(collector_server) == 90
    ids = stored_batch_ids(collector_server)
    assert ids == sorted(ids) and len(ids) == len(set(ids))


def test_a_batch_resent_after_a_lost_answer_is_stored_once(collector_server, metered, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    # the batch is sealed while nothing answers, so a copy of its file can be taken
    sink = sink_for(f"http://127.0.0.1:{free_port()}", spool_dir, close_timeout=0.2)
    sink.add_flows(metered.flows)
    sink.close()
    [path] = spool_dir.glob("*.hfc1.gz")
    copy = path.read_bytes()
    sink = sink_for(collector_server.url, spool_dir)
    sink.close()
    assert stored_flows(collector_server) == 90
    # as if the probe died after the collector stored it but before the file was removed
    path.write_bytes(copy)
    sink = sink_for(collector_server.url, spool_dir)
    sink.close()
    assert sink.undelivered == 0 and sink.refusals == []
    assert stored_flows(collector_server) == 90
    assert "duplicate=True" in collector_server.log()


def test_over_its_bound_the_spool_drops_the_oldest_and_says_so(
    collector_server, metered, tmp_path: Path, monkeypatch
) -> None:
    collector_server.stop()
    sink = sink_for(collector_server.url, tmp_path / "spool", batch_flows=10, spool_max_bytes=3_000)
    for start in range(0, 90, 10):
        sink.add_flows(metered.flows[start : start + 10])
        wait_until(lambda start=start: sink.health.flows_exported == start + 10, what="the batch spooled")
    dropped = sink.spool.dropped_batches
    kept = sink.spool.batches
    assert dropped > 0 and kept + dropped == 9
    restart_on_same_port(collector_server, monkeypatch)
    wait_until(lambda: sink.spool.batches == 0, what="the spool to drain")
    assert stored_flows(collector_server) == 10 * kept  # exactly the newest batches
    sink.set_health({"packets_captured": 1})
    sink.close()  # the last (heartbeat) batch reports the loss
    status, answer = collector_server.query_json("names", limit=1)
    assert status == 200
    assert sink.health.snapshot(0, 0, sink.spool.dropped_batches)["spool_dropped_batches"] == dropped


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("token", "probe_id", "code"),
    [("wrong-token", "test-probe", "401"), (collector_plugin.PROBE_TOKEN, "other-probe", "403")],
)
def test_refused_batches_are_quarantined_not_retried(
    collector_server, metered, tmp_path: Path, caplog, token: str, probe_id: str, code: str
) -> None:
    caplog.set_level(logging.DEBUG)
    spool_dir = tmp_path / "spool"
    sink = sink_for(collector_server.url, spool_dir, token=token, probe_id=probe_id)
    sink.add_flows(metered.flows[:5])
    started = time.monotonic()
    sink.close()
    assert time.monotonic() - started < 5  # no retry loop
    assert len(sink.refusals) == 1 and f": {code} " in sink.refusals[0]
    [quarantined] = (spool_dir / "quarantine").glob("*.hfc1.gz")
    reason = quarantined.with_name(quarantined.name + ".reason").read_text()
    assert code in reason
    assert list(spool_dir.glob("*.hfc1.gz")) == []
    assert stored_flows(collector_server, probe_id) == 0
    assert token not in caplog.text and token not in reason
    assert (
        len(re.findall(r"POST /api/v1/batches", collector_server.log())) <= 1
        or code in collector_server.log()
    )


def test_a_batch_too_large_is_split_until_it_fits(collector_factory, metered, tmp_path: Path) -> None:
    whole = sum(len(repr(f)) for f in metered.flows)
    collector = collector_factory(extra_args=["--max-body", str(whole // 2)])
    sink = sink_for(collector.url, tmp_path / "spool", batch_flows=1000)
    sink.add_flows(metered.flows)
    sink.close()
    assert sink.refusals == [] and sink.undelivered == 0
    assert stored_flows(collector) == 90
    assert len(stored_batch_ids(collector)) >= 2


# ---------------------------------------------------------------- transport


def test_a_5xx_answer_keeps_the_batch_spooled(metered, tmp_path: Path) -> None:
    # Python's own http.server answers every POST with 501: a real server error
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/"), what="http.server")
        sink = sink_for(f"http://127.0.0.1:{port}", tmp_path / "spool", close_timeout=1.5)
        sink.add_flows(metered.flows[:5])
        sink.close()
        assert sink.undelivered == 1 and sink.refusals == []
        assert list((tmp_path / "spool" / "quarantine").iterdir()) == []
    finally:
        server.terminate()
        server.wait()


def _answers(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1, context=context):
            return True
    except OSError:
        return False


def test_https_collector_verified_against_the_ca_file(metered, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    log_path = tmp_path / "collector.log"
    with open(log_path, "wb") as log:
        collector = subprocess.Popen(
            [sys.executable, "-m", "collector", "serve", "--db", str(tmp_path / "tls.duckdb"),
             "--http-port", str(port), "--netflow-port", "0", "--ipfix-port", "0",
             "--token", f"{collector_plugin.PROBE_TOKEN}={collector_plugin.PROBE_ID}",
             "--tls-cert", str(cert), "--tls-key", str(key)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        wait_until(lambda: _answers(f"https://127.0.0.1:{port}/health", trusted), what="the TLS collector")
        url = f"https://127.0.0.1:{port}"
        untrusting = sink_for(url, tmp_path / "spool-a", close_timeout=1.0)
        untrusting.add_flows(metered.flows[:5])
        untrusting.close()
        assert untrusting.undelivered == 1  # the system CAs do not know this certificate
        sink = sink_for(url, tmp_path / "spool-b", ca_file=str(cert))
        sink.add_flows(metered.flows)
        sink.close()
        assert sink.undelivered == 0 and sink.refusals == []
        assert "flows=90" in log_path.read_text()
    finally:
        collector.terminate()
        collector.wait(timeout=30)


def test_a_bad_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="CA file"):
        sink_for("https://127.0.0.1:1", tmp_path / "spool", ca_file=str(tmp_path / "missing.pem"))


# ---------------------------------------------------------------- files


def _sample() -> tuple[list[Flow], list[Name]]:
    flows = [
        Flow("lab", 1582454552576659, 1582454560000001, 4, 6, "192.168.2.17", 49152, "17.57.146.20", 443,
             12, 3456, 0x1B, 0, 0, "aa:bb:cc:dd:ee:ff", "00:11:22:33:44:55", "fin", "src", 1),
        Flow("lab", 1582454552000000, 1582454552000000, 6, 58, "fe80::1", 0, "ff02::1", 34560, 1, 72,
             end_reason="end-of-capture"),
    ]  # fmt: skip
    names = [
        Name("lab", 1582454552500000, "17.57.146.20", "gateway.icloud.com", "dns", "192.168.2.17", 300,
             ["gateway.icloud.com", "gateway.fe.apple-dns.net"], "A", 0),
        Name("lab", 1582454552600000, "2a01::5", "bücher.example", "sni", "192.168.2.17"),
    ]  # fmt: skip
    return flows, names


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_file_sink_round_trips_every_field(tmp_path: Path, suffix: str) -> None:
    flows, names = _sample()
    path = tmp_path / f"out{suffix}"
    sink = FileSink(str(path))
    sink.add_flows(flows[:1])
    sink.add_names(names)
    sink.add_flows(flows[1:])
    sink.set_health({"packets_captured": 3})
    sink.close()
    back = list(fileio.read_records(path))
    assert [r for r in back if isinstance(r, Flow)] == flows
    assert [r for r in back if isinstance(r, Name)] == names
    assert (sink.flows_written, sink.names_written) == (2, 2)
    if suffix != ".jsonl":
        assert fileio.names_path(path).is_file()


def test_parquet_without_pyarrow_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ExportError, match="needs pyarrow.*write .jsonl or .csv"):
        FileSink(str(tmp_path / "out.parquet"))
    assert not (tmp_path / "out.parquet").exists()


def test_unwritable_output_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="No such file or directory"):
        FileSink(str(tmp_path / "missing" / "out.jsonl"))
    with pytest.raises(ExportError, match="unknown format"):
        FileSink(str(tmp_path / "out.txt"))


def test_openssl_is_there() -> None:
    assert shutil.which("openssl"), "openssl makes the TLS test's certificate"


def test_a_full_disk_keeps_records_in_memory_until_the_spool_has_room(
    collector_server, metered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool_dir = tmp_path / "small"
    spool_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "hostflow-test", str(spool_dir)], check=True)
    sink = None
    try:
        collector_server.stop()
        sink = sink_for(collector_server.url, spool_dir / "spool", batch_flows=10)
        # a real ENOSPC: fill the file system but for a few pages
        free = os.statvfs(spool_dir).f_bavail * os.statvfs(spool_dir).f_frsize
        (spool_dir / "filler").write_bytes(bytes(free - 3 * 4096))
        for start in range(0, 90, 10):
            sink.add_flows(metered.flows[start : start + 10])
            time.sleep(0.3)  # one batch each
        wait_until(lambda: sink.spool.batches > 0, what="a spooled batch")
        assert sink.health.flows_exported < 90  # the rest waits in memory
        assert sink.records_lost == 0
        (spool_dir / "filler").unlink()
        restart_on_same_port(collector_server, monkeypatch)
        sink.close()
        assert sink.undelivered == 0 and sink.records_lost == 0
        assert stored_flows(collector_server) == 90
        assert not list((spool_dir / "spool").glob(".*.tmp"))
    finally:
        if sink is not None:
            sink.spool.close()
        subprocess.run(["umount", "--lazy", str(spool_dir)], check=True)


# ---------------------------------------------------------------- the columnar encoding


def test_json_batches_left_by_an_older_probe_are_sent_as_json(
    collector_server, metered, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    seq = spool.next_seq()
    old = make_batch(collector_plugin.PROBE_ID, f"{collector_plugin.PROBE_ID}:{seq:012d}", metered.flows[:30],
                     metered.names[:5])  # fmt: skip
    spool.put(seq, encode_batch(old), BATCH_SUFFIX)
    spool.close()
    sink = sink_for(collector_server.url, spool_dir)
    sink.add_flows(metered.flows[30:])
    sink.close()
    assert sink.undelivered == 0 and sink.refusals == []
    assert stored_flows(collector_server) == 90 and stored_names(collector_server) == 5
    log = collector_server.log()
    assert f"encoding=json probe_id=test-probe batch_id='test-probe:{seq:012d}' flows=30 names=5" in log
    assert re.search(r"encoding=columns probe_id=test-probe batch_id='test-probe:\d{12}' flows=60 ", log)
    assert list(spool_dir.glob("*.gz")) == []


def test_a_columnar_batch_too_large_is_split_in_columnar_halves(
    collector_factory, metered, tmp_path: Path
) -> None:
    body = make_columns_batch(collector_plugin.PROBE_ID, "x", metered.flows, [])
    assert len(gzip.compress(body, compresslevel=1)) < len(body) * 6 // 10  # refused once inflated
    collector = collector_factory(extra_args=["--max-body", str(len(body) * 6 // 10)])
    sink = sink_for(collector.url, tmp_path / "spool", batch_flows=1000, heartbeat_seconds=3600)
    sink.add_flows(metered.flows)
    sink.close()
    assert sink.refusals == [] and sink.undelivered == 0
    assert stored_flows(collector) == 90
    log = collector.log()
    assert "reason=too_large" in log
    halves = re.findall(r"encoding=(\w+) probe_id=test-probe batch_id='[^']+' flows=(\d+)", log)
    assert len(halves) >= 2 and {e for e, _ in halves} == {"columns"}
    assert sum(int(n) for _, n in halves) == 90


def test_a_collector_without_the_columnar_encoding_gets_json(
    collector_server, metered, tmp_path: Path
) -> None:
    """An older collector parses every body as JSON: a proxy in front of the real one answers a
    non-JSON body exactly as the old parser did, and passes JSON through."""
    import http.server
    import threading

    seen: list[str] = []

    class OldCollector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            raw = gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body
            seen.append("json" if raw[:1] == b"{" else "other")
            if raw[:1] != b"{":
                status, answer = (
                    400,
                    b'{"error": "body is not valid JSON: unexpected character: line 1 column 1 (char 0)"}',
                )
            else:
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                }
                status, answer, _ = collector_server.request("POST", self.path, body, headers)
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OldCollector)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        sink = sink_for(f"http://127.0.0.1:{proxy.server_address[1]}", tmp_path / "spool", batch_flows=30)
        for start in range(0, 90, 30):
            sink.add_flows(metered.flows[start : start + 30])
            wait_until(lambda start=start: sink.health.flows_exported == start + 30, what="the batch spooled")
            wait_until(lambda: sink.spool.batches == 0, what="the batch delivered")
        sink.close()
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert sink.refusals == [] and sink.undelivered == 0 and not sink.columnar
    assert seen[0] == "other" and "other" not in seen[1:] and len(seen) >= 4
    assert stored_flows(collector_server) == 90
    assert list((tmp_path / "spool" / "quarantine").iterdir()) == []
