"""Collector configuration: TOML file, then HOSTFLOW_* environment variables, then command-line flags.

Example ``collector.toml``::

    db = "var/hostflow.duckdb"
    backend = "duckdb"             # or "clickhouse": then [clickhouse] below, and db names the runtime file
    retention_days = 30            # omit to keep everything
    intranet = ["10.0.0.0/8", "192.168.0.0/16"]

    [http]
    host = "127.0.0.1"
    port = 8470
    max_body = 16777216            # probe batches
    max_import_body = 1073741824   # admin imports
    tls_cert = ""                  # both set → HTTPS
    tls_key = ""

    [netflow]
    host = "0.0.0.0"
    port = 2055                    # NetFlow v5/v9; 0 disables
    ipfix_port = 4739              # IPFIX; 0 disables

    [auth]
    tokens = { "s3cret" = "pi-lab-1" }   # token → probe_id
    tokens_file = ""               # lines "token probe_id" (or token=probe_id)
    admin_token = ""
    admin_token_file = ""
    query_token = ""               # set → queries need it

    [attribution]
    grace_s = 3600
    validity_s = 3600              # names without a TTL (SNI, HTTP, DHCP, …)

    [clickhouse]                   # used when backend = "clickhouse" (docs/scale.md)
    url = "clickhouse://hostflow@ch1:9000,ch2:9000/hostflow?cluster=hostflow"   # every node
    password_file = ""
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_INTRANET = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
)
DEFAULT_HTTP_PORT = 8470
DEFAULT_MAX_BODY = 16 * 1024 * 1024
DEFAULT_MAX_IMPORT_BODY = 1024 * 1024 * 1024
BACKENDS = ("duckdb", "clickhouse")


class ConfigError(ValueError):
    """A bad setting; the message names it and says what is expected."""


@dataclass
class Config:
    db: str = "var/hostflow.duckdb"
    backend: str = "duckdb"
    clickhouse: str = ""  # clickhouse://user@host:port,host:port/database?cluster=NAME
    clickhouse_password_file: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    netflow_host: str = "127.0.0.1"
    netflow_port: int = 2055
    ipfix_port: int = 4739
    tokens: dict[str, str] = field(default_factory=dict)
    admin_token: str = ""
    admin_token_file: str = ""
    query_token: str = ""
    intranet: tuple[str, ...] = DEFAULT_INTRANET
    retention_days: float | None = None
    retention_interval_s: float = 3600.0
    max_body: int = DEFAULT_MAX_BODY
    max_import_body: int = DEFAULT_MAX_IMPORT_BODY
    tls_cert: str = ""
    tls_key: str = ""
    grace_s: float = 3600.0
    validity_s: float = 3600.0
    log_level: str = "info"

    def check(self) -> None:
        for key in ("http_port", "netflow_port", "ipfix_port"):
            value = getattr(self, key)
            if not 0 <= value <= 65535:
                raise ConfigError(f"{key}: {value} is not a port number (0-65535)")
        if self.http_port == 0:
            raise ConfigError("http_port: 0 is not allowed, the HTTP API is always on")
        for prefix in self.intranet:
            try:
                ipaddress.ip_network(prefix, strict=False)
            except ValueError:
                raise ConfigError(f"intranet: {prefix!r} is not a CIDR prefix") from None
        if self.retention_days is not None and self.retention_days <= 0:
            raise ConfigError(f"retention_days: {self.retention_days} must be positive (omit it to keep all)")
        if self.max_body <= 0 or self.max_import_body <= 0:
            raise ConfigError("max_body / max_import_body must be positive byte counts")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key: set both for HTTPS, or neither")
        for path in (self.tls_cert, self.tls_key):
            if path and not Path(path).is_file():
                raise ConfigError(f"TLS file not found: {path}")
        for token, probe_id in self.tokens.items():
            if not token or not probe_id:
                raise ConfigError("tokens: every entry needs a token and a probe id")
        if self.admin_token and self.admin_token in self.tokens:
            raise ConfigError("admin_token: must differ from every probe token")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.backend == "clickhouse":
            if not self.clickhouse:
                raise ConfigError("clickhouse: backend clickhouse needs the cluster's URL (--clickhouse URL)")
            from collector.clickhouse import ClickHouseConfigError, ClickHouseSettings

            try:
                ClickHouseSettings.from_url(self.clickhouse)
            except ClickHouseConfigError as exc:
                raise ConfigError(str(exc)) from None


def _read_tokens_file(path: str) -> dict[str, str]:
    tokens: dict[str, str] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"tokens_file: cannot read {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token, sep, probe_id = line.replace("=", " ", 1).partition(" ")
        if not sep or not probe_id.strip():
            raise ConfigError(f"tokens_file {path}:{number}: expected 'token probe_id'")
        tokens[token] = probe_id.strip()
    return tokens


def _read_secret(path: str, what: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None


def parse_token_pairs(pairs: list[str]) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for pair in pairs:
        token, sep, probe_id = pair.partition("=")
        if not sep or not token or not probe_id:
            raise ConfigError(f"--token {pair!r}: expected TOKEN=PROBE_ID")
        tokens[token] = probe_id
    return tokens


def _number(section: str, key: str, value: Any, kind: type) -> Any:
    try:
        if isinstance(value, bool):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{section}{key}: expected a {kind.__name__}, got {value!r}") from None


def _apply_toml(config: Config, data: dict[str, Any]) -> None:
    known_top = {
        "db", "backend", "retention_days", "intranet", "log_level", "http", "netflow", "auth", "attribution",
        "clickhouse",
    }  # fmt: skip
    unknown = set(data) - known_top
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known_top))}"
        )
    if "db" in data:
        config.db = str(data["db"])
    if "backend" in data:
        config.backend = str(data["backend"])
    if "retention_days" in data:
        config.retention_days = _number("", "retention_days", data["retention_days"], float)
    if "intranet" in data:
        if not isinstance(data["intranet"], list):
            raise ConfigError("intranet: expected a list of CIDR prefixes")
        config.intranet = tuple(str(p) for p in data["intranet"])
    if "log_level" in data:
        config.log_level = str(data["log_level"])
    sections: dict[str, dict[str, tuple[str, type]]] = {
        "http": {
            "host": ("http_host", str),
            "port": ("http_port", int),
            "max_body": ("max_body", int),
            "max_import_body": ("max_import_body", int),
            "tls_cert": ("tls_cert", str),
            "tls_key": ("tls_key", str),
        },
        "netflow": {
            "host": ("netflow_host", str),
            "port": ("netflow_port", int),
            "ipfix_port": ("ipfix_port", int),
        },
        "auth": {
            "admin_token": ("admin_token", str),
            "admin_token_file": ("admin_token_file", str),
            "query_token": ("query_token", str),
        },
        "attribution": {"grace_s": ("grace_s", float), "validity_s": ("validity_s", float)},
        "clickhouse": {"url": ("clickhouse", str), "password_file": ("clickhouse_password_file", str)},
    }
    for section, keys in sections.items():
        values = data.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}]: expected a table")
        extra = set(values) - set(keys) - ({"tokens", "tokens_file"} if section == "auth" else set())
        if extra:
            raise ConfigError(f"[{section}]: unknown setting(s) {', '.join(sorted(extra))}")
        for key, (attr, kind) in keys.items():
            if key in values:
                setattr(config, attr, _number(f"{section}.", key, values[key], kind))
    auth = data.get("auth", {})
    if "tokens" in auth:
        if not isinstance(auth["tokens"], dict):
            raise ConfigError("auth.tokens: expected a table of token = probe_id")
        config.tokens.update({str(k): str(v) for k, v in auth["tokens"].items()})
    if auth.get("tokens_file"):
        config.tokens.update(_read_tokens_file(str(auth["tokens_file"])))


ENV_SETTINGS: dict[str, tuple[str, type]] = {
    "HOSTFLOW_DB": ("db", str),
    "HOSTFLOW_BACKEND": ("backend", str),
    "HOSTFLOW_CLICKHOUSE": ("clickhouse", str),
    "HOSTFLOW_CLICKHOUSE_PASSWORD_FILE": ("clickhouse_password_file", str),
    "HOSTFLOW_HTTP_HOST": ("http_host", str),
    "HOSTFLOW_HTTP_PORT": ("http_port", int),
    "HOSTFLOW_NETFLOW_HOST": ("netflow_host", str),
    "HOSTFLOW_NETFLOW_PORT": ("netflow_port", int),
    "HOSTFLOW_IPFIX_PORT": ("ipfix_port", int),
    "HOSTFLOW_ADMIN_TOKEN": ("admin_token", str),
    "HOSTFLOW_QUERY_TOKEN": ("query_token", str),
    "HOSTFLOW_RETENTION_DAYS": ("retention_days", float),
    "HOSTFLOW_MAX_BODY": ("max_body", int),
    "HOSTFLOW_TLS_CERT": ("tls_cert", str),
    "HOSTFLOW_TLS_KEY": ("tls_key", str),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `serve` flags; every one overrides the file and the environment."""
    parser.add_argument("--config", help="TOML config file (see collector/config.py)")
    parser.add_argument("--db", help="DuckDB database file")
    parser.add_argument("--backend", choices=BACKENDS, help="storage backend (default duckdb)")
    parser.add_argument(
        "--clickhouse", metavar="URL", help="clickhouse://[user@]host:port[,host:port…]/database"
    )
    parser.add_argument(
        "--clickhouse-password-file", metavar="FILE", help="the ClickHouse password, read from FILE"
    )
    parser.add_argument("--http-host")
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--netflow-host")
    parser.add_argument("--netflow-port", type=int, help="NetFlow v5/v9 UDP port, 0 disables")
    parser.add_argument("--ipfix-port", type=int, help="IPFIX UDP port, 0 disables")
    parser.add_argument("--token", action="append", default=[], metavar="TOKEN=PROBE_ID")
    parser.add_argument("--tokens-file")
    parser.add_argument("--admin-token")
    parser.add_argument("--admin-token-file")
    parser.add_argument("--query-token")
    parser.add_argument("--intranet", action="append", metavar="CIDR", help="repeatable; replaces the list")
    parser.add_argument("--retention-days", type=float)
    parser.add_argument("--retention-interval", type=float, help="seconds between retention runs")
    parser.add_argument("--max-body", type=int)
    parser.add_argument("--max-import-body", type=int)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--grace", type=float, help="seconds a name stays valid past its TTL")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def load(args: argparse.Namespace | None = None, environ: dict[str, str] | None = None) -> Config:
    """Build the configuration: defaults < TOML file < environment < flags. Raises ConfigError."""
    env = os.environ if environ is None else environ
    config = Config()
    config_path = getattr(args, "config", None) or env.get("HOSTFLOW_CONFIG")
    if config_path:
        try:
            data = tomllib.loads(Path(config_path).read_text())
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {config_path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config {config_path}: not valid TOML: {exc}") from None
        _apply_toml(config, data)
    for var, (attr, kind) in ENV_SETTINGS.items():
        if env.get(var):
            setattr(config, attr, _number("", var, env[var], kind))
    if env.get("HOSTFLOW_INTRANET"):
        config.intranet = tuple(p.strip() for p in env["HOSTFLOW_INTRANET"].split(",") if p.strip())
    if env.get("HOSTFLOW_TOKENS"):
        config.tokens.update(parse_token_pairs([p for p in env["HOSTFLOW_TOKENS"].split(",") if p]))
    if args is not None:
        flag_map = {
            "db": "db",
            "backend": "backend",
            "clickhouse": "clickhouse",
            "clickhouse_password_file": "clickhouse_password_file",
            "http_host": "http_host",
            "http_port": "http_port",
            "netflow_host": "netflow_host",
            "netflow_port": "netflow_port",
            "ipfix_port": "ipfix_port",
            "admin_token": "admin_token",
            "admin_token_file": "admin_token_file",
            "query_token": "query_token",
            "retention_days": "retention_days",
            "retention_interval": "retention_interval_s",
            "max_body": "max_body",
            "max_import_body": "max_import_body",
            "tls_cert": "tls_cert",
            "tls_key": "tls_key",
            "grace": "grace_s",
            "log_level": "log_level",
        }
        for flag, attr in flag_map.items():
            value = getattr(args, flag, None)
            if value is not None:
                setattr(config, attr, value)
        if getattr(args, "intranet", None):
            config.intranet = tuple(args.intranet)
        if getattr(args, "tokens_file", None):
            config.tokens.update(_read_tokens_file(args.tokens_file))
        config.tokens.update(parse_token_pairs(getattr(args, "token", []) or []))
    if config.admin_token_file and not config.admin_token:
        config.admin_token = _read_secret(config.admin_token_file, "admin_token_file")
    config.check()
    return config
