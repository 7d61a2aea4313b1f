"""The app's way to the data: named queries against the collector's query API (docs/CONTRACT.md)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

import pandas as pd
import pyarrow as pa

ARROW_STREAM = "application/vnd.apache.arrow.stream"
DEFAULT_URL = "http://127.0.0.1:8470"


class QueryError(RuntimeError):
    """The collector refused a query or could not be reached; the message is for the user."""


class QueryClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = (url or os.environ.get("HOSTFLOW_COLLECTOR_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("HOSTFLOW_QUERY_TOKEN", "")
        self.timeout = timeout

    def _request(self, path: str, body: dict[str, Any] | None, accept: str) -> bytes:
        data = None if body is None else json.dumps(body, default=str).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST" if data else "GET")
        request.add_header("Accept", accept)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except (ValueError, AttributeError):
                pass
            raise QueryError(f"collector answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise QueryError(f"cannot reach the collector at {self.url}: {exc}") from None

    def query(self, name: str, /, **params: Any) -> pd.DataFrame:
        """Run a named query; timestamps come back as µs integers, as the contract says."""
        payload = self._request(f"/api/v1/query/{name}", params, ARROW_STREAM)
        with pa.ipc.open_stream(payload) as reader:
            table = reader.read_all()
        return table.to_pandas()

    def queries(self) -> dict[str, Any]:
        return json.loads(self._request("/api/v1/queries", None, "application/json"))

    def health(self) -> dict[str, Any]:
        return json.loads(self._request("/health", None, "application/json"))
