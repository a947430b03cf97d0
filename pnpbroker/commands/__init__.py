"""The ``pnpbroker`` command line: one module per subcommand, each with its arguments and main.

This module only builds the parser and dispatches; usage errors exit with
:attr:`~pnpbroker.contract.ExitCode.USAGE` (argparse would use 2, which means a bad
configuration here). Subcommand modules import what they run inside their ``main``, so
``pnpbroker trigger`` does not pay for the daemon's imports.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

#: Subcommands that never speak TLS: run as ``pnpbroker CMD`` (or ``python -m pnpbroker CMD``),
#: they go without ``ssl``, which asyncio imports for its own sake: libssl and its state are
#: 4.7 MB of an idle broker's resident memory. (Only ``forward`` and ``fleet-monitor`` need it.)
WITHOUT_TLS = ("run", "trigger", "settle")
if os.path.basename(sys.argv[0]) in ("pnpbroker", "__main__.py") and sys.argv[1:2] in [
    [name] for name in WITHOUT_TLS
]:
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

from pnpbroker import __version__  # noqa: E402
from pnpbroker.commands import (  # noqa: E402
    control,
    fleet_monitor,
    forward,
    info,
    install,
    monitor,
    run,
    settle,
    trigger,
)
from pnpbroker.contract import ExitCode, exit_codes_text  # noqa: E402

#: Each subcommand's module: ``HELP``, ``add_arguments(parser)``, ``main(args) -> int``.
COMMANDS: dict[str, ModuleType] = {
    "run": run,
    "install": install,
    "trigger": trigger,
    "settle": settle,
    "monitor": monitor,
    "info": info,
    "control": control,
    "forward": forward,
    "fleet-monitor": fleet_monitor,
}


class Parser(argparse.ArgumentParser):
    """Exits with ExitCode.USAGE on a usage error."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pnpbroker",
        description="Kernel device events in order: the legacy hotplug program for each, then "
        "a D-Bus signal (org.pnp.Broker) with a gap-free sequence.",
        epilog=exit_codes_text(),
    )
    parser.add_argument("--version", action="version", version=f"pnpbroker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, module in COMMANDS.items():
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(main=module.main)
    return parser


def subcommand_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's own parser, by name (for the man pages and the shell completion)."""
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(found[0].choices)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.main(args)
    return code
