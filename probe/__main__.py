"""The probe's command line: ``python -m probe read FILE...`` and ``python -m probe capture --iface IF``.

Exit status: 0 done, 1 bad input (unreadable or corrupt file, bad filter, bad interface, the
collector refused or could not be reached for a file), 2 usage (options, config file). Standard
output carries data only (``--output -``); messages, progress and logs go to standard error.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from probe import __version__
from probe.config import ConfigError, ProbeConfig, load_config
from probe.export import CollectorSink, ExportError, FileSink, safe_url
from probe.health import Health
from probe.spool import Spool, SpoolError

log = logging.getLogger("hostflow.probe")
PROG = "python -m probe"

EXIT_OK = 0
EXIT_INPUT = 1
EXIT_USAGE = 2

EPILOG = """\
examples:
  %(prog)s read capture.pcapng --output flows.jsonl
  %(prog)s read a.pcap b.pcap --output - | jq 'select(.kind == "name")'
  %(prog)s read day.pcap --output day.csv            (also writes day.names.csv)
  %(prog)s read day.pcap --collector http://collector:8470 --token "$T" --probe-id lab-1
  %(prog)s capture --iface eth1 --collector https://collector:8470 --ca-file /etc/hostflow/ca.pem

settings come from the command line, then HOSTFLOW_* environment variables (HOSTFLOW_COLLECTOR_URL,
HOSTFLOW_PROBE_TOKEN, HOSTFLOW_PROBE_ID, HOSTFLOW_IFACE, HOSTFLOW_SPOOL_DIR, ...), then the config
file (--config, $HOSTFLOW_PROBE_CONFIG, else /etc/hostflow/probe.toml), then the defaults.
exit status: 0 done, 1 bad input or delivery refused, 2 usage.
"""


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, as every other usage error
        raise UsageError(message)


def _common_options(parser: argparse.ArgumentParser) -> None:
    dest = parser.add_argument_group("destination (one of)")
    dest.add_argument("--collector", dest="collector_url", metavar="URL", help="collector base URL")
    dest.add_argument("--output", metavar="PATH", help="a .jsonl, .csv or .parquet file, or - for stdout")
    dest.add_argument("--token", metavar="T", help="probe token (better: HOSTFLOW_PROBE_TOKEN or the config)")
    dest.add_argument("--ca-file", metavar="FILE", help="CA bundle to verify an https collector")
    meter = parser.add_argument_group("metering")
    meter.add_argument("--probe-id", metavar="ID", help="name of this probe (default: host name)")
    meter.add_argument("--idle-timeout", type=float, metavar="S", help="end a flow after S s idle (15)")
    meter.add_argument("--active-timeout", type=float, metavar="S", help="cut flows longer than S s (60)")
    meter.add_argument("--max-flows", type=int, metavar="N", help="flow table size (262144)")
    meter.add_argument("--bpf", metavar="FILTER", help="BPF filter, e.g. 'not port 22'")
    meter.add_argument(
        "--no-names", dest="names", action="store_const", const=False, help="skip name learning"
    )
    spool = parser.add_argument_group("delivery")
    spool.add_argument("--spool-dir", metavar="DIR", help="batches wait here until stored")
    spool.add_argument("--spool-max-bytes", type=int, metavar="N", help="spool bound; oldest dropped beyond")
    spool.add_argument("--batch-flows", type=int, metavar="N", help="records per batch (5000)")
    spool.add_argument("--batch-seconds", type=float, metavar="S", help="seal a batch after S s (5)")
    spool.add_argument("--heartbeat-seconds", type=float, metavar="S", help="health batch every S s (30)")
    spool.add_argument("--retry-max-seconds", type=float, metavar="S", help="longest wait between resends")
    spool.add_argument("--close-timeout", type=float, metavar="S", help="at exit, keep trying S s (15)")
    other = parser.add_argument_group("other")
    other.add_argument("--config", metavar="FILE", help="TOML config file")
    other.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    other.add_argument("--quiet", action="store_true", help="no progress on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="hostflow probe: meter packets into flows, learn names, send them to a collector.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hostflow probe {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{read,capture}", parser_class=_Parser)
    read = commands.add_parser(
        "read",
        help="meter pcap/pcapng files",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    read.add_argument("files", nargs="+", metavar="FILE", help="pcap or pcapng files, in time order")
    _common_options(read)
    capture = commands.add_parser(
        "capture",
        help="capture live from an interface (a mirror port) until SIGTERM",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    capture.add_argument("--iface", metavar="IFACE", help="capture interface (promiscuous, no address)")
    capture.add_argument(
        "--no-ring", dest="ring", action="store_const", const=False,
        help="read packets one by one instead of through a PACKET_MMAP ring (slower)",
    )  # fmt: skip
    _common_options(capture)
    return parser


SETTING_OPTIONS = (
    "collector_url",
    "output",
    "token",
    "ca_file",
    "probe_id",
    "idle_timeout",
    "active_timeout",
    "max_flows",
    "bpf",
    "names",
    "promisc",
    "ring",
    "spool_dir",
    "spool_max_bytes",
    "batch_flows",
    "batch_seconds",
    "heartbeat_seconds",
    "retry_max_seconds",
    "close_timeout",
    "log_level",
    "iface",
)


def settings(args: argparse.Namespace) -> ProbeConfig:
    given = {key: getattr(args, key, None) for key in SETTING_OPTIONS}
    config = load_config(given, cli_config_path=args.config)
    if config.collector_url and config.output:
        given_both = args.collector_url is not None and args.output is not None
        if given_both:
            raise ConfigError("give --collector or --output, not both")
        # one given on the command line wins over the other from the environment or the file
        if args.output is not None:
            config.collector_url = ""
        else:
            config.output = ""
    if not config.collector_url and not config.output:
        raise ConfigError(
            "no destination: give --collector URL (with a token) or --output PATH (- for stdout)"
        )
    return config


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _spool_for(config: ProbeConfig) -> Spool:
    # One spool (and one batch sequence) per probe id, so a `read` beside the capture service
    # never sends the service's batches under another token, nor reuses its batch ids.
    folder = Path(config.spool_dir) / re.sub(r"[^A-Za-z0-9._-]", "_", config.probe_id)
    return Spool(folder, config.spool_max_bytes)


def make_sink(config: ProbeConfig, iface: str = "") -> CollectorSink | FileSink:
    if config.output:
        return FileSink(config.output)
    spool = _spool_for(config)
    try:
        return CollectorSink(
            config.collector_url,
            config.token,
            config.probe_id,
            spool,
            Health(iface=iface),
            batch_flows=config.batch_flows,
            batch_seconds=config.batch_seconds,
            heartbeat_seconds=config.heartbeat_seconds,
            ca_file=config.ca_file,
            http_timeout=config.http_timeout,
            retry_max_seconds=config.retry_max_seconds,
            close_timeout=config.close_timeout,
            health_file=spool.directory / "health.json",
        )
    except Exception:
        spool.close()
        raise


class Progress:
    """Progress on stderr: a line that rewrites itself on a terminal, a log line every 10 s otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, path: str, packets_done: int, file_bytes: int) -> None:
        now = time.monotonic()
        interval = 0.5 if self.tty else 10.0
        if not self.enabled or now - self.started < 2.0 or now - self.last < interval:
            return
        self.last = now
        text = f"{path}: {packets_done:,} packets ({file_bytes / 1e6:.1f} MB file)"
        if self.tty:
            sys.stderr.write(f"\r{text[:120]:<120}")
            sys.stderr.flush()
            self.shown = True
        else:
            log.info("progress: %s", text)

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _summary(stats: Any) -> str:
    errors = sum(stats.parse_errors.values())
    return (
        f"{stats.packets} packets, {stats.flows_exported} flows, {stats.names} names, {errors} parse errors"
    )


def _finish(sink: CollectorSink | FileSink, mode: str) -> int:
    """Close the sink; the exit status from what the collector did with the batches."""
    sink.close()
    if isinstance(sink, FileSink):
        return EXIT_OK
    if sink.refusals:
        fail(f"{sink.refusals[0]} ({len(sink.refusals)} batch(es) refused, see {sink.spool.quarantine_dir})")
        return EXIT_INPUT
    if sink.undelivered and mode == "read":
        fail(
            f"collector {safe_url(sink.url)} unreachable: {sink.undelivered} batch(es) kept in "
            f"{sink.spool.directory}; they are sent by the next run with the same --probe-id"
        )
        return EXIT_INPUT
    return EXIT_OK


def fail(message: str) -> None:
    sys.stderr.write(f"hostflow-probe: error: {message}\n")
    sys.stderr.flush()


def run_read(args: argparse.Namespace, config: ProbeConfig) -> int:
    from probe.pipeline import meter_files

    missing = [name for name in args.files if not os.path.isfile(name)]
    if missing:
        fail(f"{missing[0]}: no such file")
        return EXIT_INPUT
    sink = make_sink(config)
    progress = Progress(enabled=not args.quiet)
    try:
        stats = meter_files(
            [Path(name) for name in args.files], config.meter_options(), sink, progress=progress
        )
    finally:
        progress.done()
        status = _finish(sink, "read")
    log.info("read %d file(s): %s", len(args.files), _summary(stats))
    return status


SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1


def promiscuous(iface: str) -> socket.socket | None:
    """Put the interface in promiscuous mode for as long as the returned socket stays open.

    A mirror port delivers frames addressed to other hosts, which the NIC drops otherwise. The
    kernel counts promiscuity per membership and undoes it when the socket closes (or the probe
    dies), so the interface never stays promiscuous behind our back. The socket (protocol 0)
    receives nothing itself.
    """
    try:
        index = socket.if_nametoindex(iface)
    except OSError:
        return None  # capture reports the bad interface in its own words
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(
            SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
        )
    except OSError as exc:
        sock.close()
        log.warning("cannot make %s promiscuous (%s): run `ip link set %s promisc on`", iface, exc, iface)
        return None
    return sock


def run_capture(args: argparse.Namespace, config: ProbeConfig) -> int:
    from probe.pipeline import capture_live

    if not config.iface:
        raise ConfigError("capture needs --iface (or iface in the config, or HOSTFLOW_IFACE)")
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping, flushing flows in flight", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    promisc = promiscuous(config.iface) if config.promisc else None
    sink = make_sink(config, iface=config.iface)
    destination = config.output or safe_url(config.collector_url)
    log.info("capturing on %s as probe %r, sending to %s", config.iface, config.probe_id, destination)
    try:
        stats = capture_live(
            config.iface,
            config.meter_options(),
            sink,
            stop,
            health_interval=min(10.0, config.heartbeat_seconds),
            ring=config.ring,
        )
    finally:
        status = _finish(sink, "capture")
        if promisc is not None:
            promisc.close()
    log.info("capture on %s ended: %s", config.iface, _summary(stats))
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args: argparse.Namespace | None = None
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        config = settings(args)
    except (UsageError, ConfigError) as exc:
        fail(str(exc))
        command = getattr(args, "command", None)
        sys.stderr.write(f"(see {PROG} {command} --help)\n" if command else f"(see {PROG} --help)\n")
        return EXIT_USAGE
    _setup_logging(config.log_level)
    log.debug("settings: %s", config.redacted())
    from probe.pipeline import ProbeInputError

    try:
        if args.command == "read":
            return run_read(args, config)
        return run_capture(args, config)
    except ConfigError as exc:
        fail(str(exc))
        return EXIT_USAGE
    except (ProbeInputError, ExportError, SpoolError) as exc:
        fail(str(exc))
        return EXIT_INPUT
    except BrokenPipeError:
        # the reader of --output - went away (e.g. `| head`): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        fail("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
