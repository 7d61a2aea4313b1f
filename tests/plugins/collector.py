"""Fixtures for every part's tests that need a running collector: the REAL daemon as a subprocess.

    def test_x(collector_server):
        status, answer = collector_server.post_batch(make_batch("test-probe", "b1", flows, names))
        frame = collector_server.client().query("host_peers", host="192.168.1.10")

``collector_server`` (per test) and ``shared_collector`` (per session, on one database: use
unique batch ids / probe ids / time windows in each test) yield a CollectorProcess.
``collector_factory(**kwargs)`` starts more, e.g. with NetFlow ports:
``collector_factory(netflow_port=free_port(socket.SOCK_DGRAM))``.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.common import ROOT, free_port, wait_healthy

PROBE_TOKEN = "test-token"
PROBE_ID = "test-probe"
ADMIN_TOKEN = "admin-token"


class CollectorProcess:
    def __init__(
        self,
        db_path: Path,
        *,
        netflow_port: int = 0,
        ipfix_port: int = 0,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.netflow_port = netflow_port
        self.ipfix_port = ipfix_port
        self.extra_args = list(extra_args or [])
        self.env = env
        self.probe_token = PROBE_TOKEN
        self.probe_id = PROBE_ID
        self.admin_token = ADMIN_TOKEN
        self.log_path = log_path or self.db_path.with_suffix(".log")
        self.http_port = 0
        self.url = ""
        self.proc: subprocess.Popen | None = None

    # ------------------------------------------------------------ life cycle

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "collector",
            "serve",
            "--db",
            str(self.db_path),
            "--http-port",
            str(self.http_port),
            "--netflow-port",
            str(self.netflow_port),
            "--ipfix-port",
            str(self.ipfix_port),
            "--token",
            f"{PROBE_TOKEN}={PROBE_ID}",
            "--admin-token",
            ADMIN_TOKEN,
            *self.extra_args,
        ]

    def start(self, timeout: float = 30.0) -> CollectorProcess:
        """Start (or restart, on the same database) and wait until /health answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        env = dict(os.environ, PYTHONPATH=str(ROOT), **(self.env or {}))
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_healthy(self.url + "/health", self.proc, Path(self.log_path), timeout)
        except RuntimeError:
            self.kill()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"collector ignored SIGTERM for {timeout} s:\n{self.log()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # ------------------------------------------------------------ talking to it

    def client(self, token: str | None = None):
        from hostflow.client import QueryClient

        return QueryClient(self.url, token or "")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> tuple[int, bytes, dict[str, str]]:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status, answer.read(), dict(answer.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def post_batch(
        self,
        batch: dict[str, Any] | bytes,
        token: str | None = PROBE_TOKEN,
        *,
        path: str = "/api/v1/batches",
        gzip_body: bool = False,
    ) -> tuple[int, Any]:
        """POST a batch (dict → JSON, or raw bytes); returns (status, decoded JSON answer)."""
        body = batch if isinstance(batch, bytes) else json.dumps(batch).encode()
        headers = {"Content-Type": "application/json"}
        if gzip_body:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        status, payload, _ = self.request("POST", path, body, headers)
        try:
            return status, json.loads(payload)
        except ValueError:
            return status, payload.decode(errors="replace")

    def post_import(self, batch: dict[str, Any], token: str | None = ADMIN_TOKEN) -> tuple[int, Any]:
        return self.post_batch(batch, token, path="/api/v1/import")

    def query_json(self, name: str, **params: Any) -> tuple[int, Any]:
        status, payload, _ = self.request(
            "POST", f"/api/v1/query/{name}", json.dumps(params).encode(), {"Content-Type": "application/json"}
        )
        return status, json.loads(payload)

    def metrics(self) -> str:
        status, payload, _ = self.request("GET", "/metrics")
        assert status == 200
        return payload.decode()


@pytest.fixture
def collector_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[CollectorProcess] = []

    def make(db_path: Path | None = None, **kwargs: Any) -> CollectorProcess:
        process = CollectorProcess(db_path or tmp_path / f"collector{len(started)}.duckdb", **kwargs)
        started.append(process)
        return process.start()

    try:
        yield make
    finally:
        for process in started:
            try:
                process.stop()
            finally:
                process.kill()


@pytest.fixture
def collector_server(collector_factory) -> CollectorProcess:
    return collector_factory()


@pytest.fixture(scope="session")
def shared_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    process = CollectorProcess(tmp_path_factory.mktemp("shared_collector") / "shared.duckdb")
    process.start()
    try:
        yield process
    finally:
        try:
            process.stop()
        finally:
            process.kill()
