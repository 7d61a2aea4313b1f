"""The probe's settings: defaults < config file (TOML) < environment (HOSTFLOW_*) < command line.

Every setting has one name, used as the TOML key, as the command-line option (``--idle-timeout``
for ``idle_timeout``) and, upper-cased with a ``HOSTFLOW_`` prefix, as the environment variable
(``token`` is the exception: ``HOSTFLOW_PROBE_TOKEN``, so it cannot be mistaken for a query token).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.options import MeterOptions

DEFAULT_CONFIG = Path("/etc/hostflow/probe.toml")
SYSTEM_SPOOL = Path("/var/lib/hostflow/spool")
CONFIG_ENV = "HOSTFLOW_PROBE_CONFIG"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names where it came from."""


def _default_probe_id() -> str:
    return socket.gethostname().split(".")[0] or "probe"


def default_spool_dir() -> str:
    """The system spool when this user may write there (the service), else the user's state dir."""
    if os.access(SYSTEM_SPOOL, os.W_OK) or (
        not SYSTEM_SPOOL.exists() and os.access(SYSTEM_SPOOL.parent, os.W_OK)
    ):
        return str(SYSTEM_SPOOL)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(state) / "hostflow" / "spool")


def _env(name: str) -> dict[str, str]:
    return {"env": name}


@dataclass
class ProbeConfig:
    collector_url: str = field(default="", metadata=_env("HOSTFLOW_COLLECTOR_URL"))
    token: str = field(default="", metadata=_env("HOSTFLOW_PROBE_TOKEN"))
    ca_file: str = ""  # CA bundle that verifies an https collector; "" = the system's
    probe_id: str = field(default_factory=_default_probe_id)
    output: str = ""  # a file (.jsonl, .csv, .parquet) or "-" instead of a collector
    iface: str = ""
    bpf: str = ""
    idle_timeout: float = 15.0
    active_timeout: float = 60.0
    max_flows: int = 262_144
    snaplen: int = 65_535
    names: bool = True
    promisc: bool = True  # capture: put the interface in promiscuous mode while capturing
    # capture: read a PACKET_MMAP ring (False: recv packet by packet, for kernels that refuse it)
    ring: bool = field(default=True, metadata=_env("HOSTFLOW_PROBE_RING"))
    spool_dir: str = field(default_factory=default_spool_dir)
    spool_max_bytes: int = 256 * 1024 * 1024
    batch_flows: int = 5_000
    batch_seconds: float = 5.0
    heartbeat_seconds: float = 30.0
    http_timeout: float = 10.0
    retry_max_seconds: float = 30.0
    close_timeout: float = 15.0  # at exit, how long to keep trying to deliver before leaving it spooled
    log_level: str = "info"

    def meter_options(self) -> MeterOptions:
        return MeterOptions(
            probe_id=self.probe_id,
            idle_timeout=self.idle_timeout,
            active_timeout=self.active_timeout,
            max_flows=self.max_flows,
            bpf=self.bpf or None,
            snaplen=self.snaplen,
            names=self.names,
        )

    def redacted(self) -> dict[str, Any]:
        """The settings for a log line: the token never appears, only whether one is set."""
        out = dataclasses.asdict(self)
        out["token"] = "(set)" if self.token else ""
        return out


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(ProbeConfig)}


def env_name(key: str) -> str:
    return FIELDS[key].metadata.get("env", f"HOSTFLOW_{key.upper()}")


def _field_type(key: str) -> type:
    default = FIELDS[key].default
    if default is dataclasses.MISSING:
        return str
    return type(default)


def _coerce(key: str, value: Any, origin: str) -> Any:
    kind = _field_type(key)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = int(value)
            if number < 0:
                raise ValueError
            return number
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if number <= 0:
                raise ValueError
            return number
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        expected = {bool: "true or false", int: "a whole number >= 0", float: "a number > 0"}.get(
            kind, "text"
        )
        raise ConfigError(f"{origin}: expected {expected}, got {value!r}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a TOML file: top-level keys, or the same keys under a ``[probe]`` table."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    if isinstance(data.get("probe"), dict):
        section = data.pop("probe")
        data.update(section)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in FIELDS:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        values[key] = _coerce(key, value, f"config file {path}: {key}")
    return values


def config_path(cli_path: str | None, environ: Mapping[str, str]) -> Path | None:
    """--config FILE, else $HOSTFLOW_PROBE_CONFIG, else /etc/hostflow/probe.toml when it exists."""
    chosen = cli_path if cli_path is not None else environ.get(CONFIG_ENV)
    if chosen is not None:
        if chosen in ("", "none"):
            return None
        path = Path(chosen)
        if not path.is_file():
            raise ConfigError(f"config file {path}: not found")
        return path
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def load_config(
    cli: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    cli_config_path: str | None = None,
) -> ProbeConfig:
    """Merge the sources; ``cli`` holds only the options given on the command line (None = not given)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_path(cli_config_path, environ)
    if path is not None:
        values.update(read_config_file(path))
    for key in FIELDS:
        name = env_name(key)
        if name in environ and environ[name] != "":
            values[key] = _coerce(key, environ[name], f"environment {name}")
    for key, value in cli.items():
        if value is None:
            continue
        if key not in FIELDS:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = _coerce(key, value, "--" + key.replace("_", "-"))
    config = ProbeConfig(**values)
    if config.active_timeout < config.idle_timeout:
        raise ConfigError(
            f"active_timeout ({config.active_timeout}) must not be shorter than idle_timeout "
            f"({config.idle_timeout})"
        )
    if config.collector_url and not config.collector_url.startswith(("http://", "https://")):
        raise ConfigError(f"collector_url: {config.collector_url!r} must start with http:// or https://")
    return config
