"""`python -m collector SUBCOMMAND`: `serve` here; other modules add theirs with register_subcommand.

To add a subcommand, a module defines ``register_cli(register_subcommand)`` and is named in
EXTENSION_MODULES (or is a ``collector/cli_*.py`` module, found automatically)::

    def register_cli(register_subcommand):
        register_subcommand("import", "import record files", add_arguments, run)  # run(args) -> int

Exit codes: 0 ok, 1 failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass

EXTENSION_MODULES = (
    "collector.fileimport",
    "collector.fileexport",
    "collector.export",
    "collector.ch_migrate",
)


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(
    name: str,
    help: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    SUBCOMMANDS[name] = Subcommand(name, help, add_arguments, run)


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    from collector import config

    config.add_arguments(parser)


def _serve(args: argparse.Namespace) -> int:
    from collector import config, server

    try:
        settings = config.load(args)
    except config.ConfigError as exc:
        print(f"collector serve: {exc}", file=sys.stderr)
        return 2
    return server.serve(settings)


register_subcommand(
    "serve", "run the collector daemon (HTTP API, NetFlow/IPFIX listeners)", _serve_arguments, _serve
)


def _load_extensions() -> None:
    import collector

    names = list(EXTENSION_MODULES)
    names += [
        f"collector.{m.name}" for m in pkgutil.iter_modules(collector.__path__) if m.name.startswith("cli_")
    ]
    for name in names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        hook = getattr(module, "register_cli", None)
        if hook is not None:
            hook(register_subcommand)


def build_parser() -> argparse.ArgumentParser:
    _load_extensions()
    parser = argparse.ArgumentParser(prog="python -m collector", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for sub in SUBCOMMANDS.values():
        sub_parser = subparsers.add_parser(sub.name, help=sub.help, description=sub.help)
        sub.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=sub.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
