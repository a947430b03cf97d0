"""Command line: argument parsing, exit codes and wiring. No logic of its own.

Exit codes (as mdevd): 0 clean stop, 1 ``trigger --settle`` timed out, 2 bad configuration,
100 usage error, 111 a system call failed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pnpbroker import __version__, config, install
from pnpbroker.errors import ConfigError, SourceError

EXIT_OK, EXIT_TIMEOUT, EXIT_CONFIG, EXIT_USAGE, EXIT_SYSTEM = 0, 1, 2, 100, 111

log = logging.getLogger("pnpbroker")


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on usage errors; 2 means a bad configuration here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", type=Path, help=f"TOML file (default {config.DEFAULT_PATH})"
    )
    parser.add_argument(
        "--state-dir", type=Path, help="journal directory (default /var/lib/pnpbroker)"
    )
    program = parser.add_mutually_exclusive_group()
    program.add_argument(
        "-p",
        "--hotplug-program",
        metavar="PATH",
        help="legacy program run per event (default /sbin/hotplug if executable)",
    )
    program.add_argument("--no-program", action="store_true", help="run no legacy program")
    parser.add_argument(
        "-t", "--timeout", type=float, help="seconds a program may run (default 180)"
    )
    parser.add_argument(
        "--receive-buffer", help="netlink receive buffer, bytes or 64M (default 128M)"
    )
    parser.add_argument("--bus-address", help="D-Bus address (default: the system bus)")
    parser.add_argument(
        "--rebroadcast",
        action="append",
        metavar="kernel:GROUPS|libudev",
        help="after its program, send each event on to netlink: kernel:GROUPS (kernel format, "
        "GROUPS a bitmask as mdevd -O; kernel:4 for libudev-zero) or libudev (udevd's format, "
        "group 2; never where udevd runs); repeatable (default: off)",
    )
    parser.add_argument(
        "-n",
        "--dry-run",
        action="store_true",
        help="print what would run for each event; no journal, no bus",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    _source_arguments(parser)


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    from pnpbroker.sources.helper import DEFAULT_PATH

    parser.add_argument(
        "--source",
        default="",
        metavar="netlink|fd:N|stdin|PATH",
        help="where events come from (default: fd 3 if LISTEN_FDS says so, else netlink)",
    )
    parser.add_argument(
        "--output", metavar="fd:N", help="also write each published event there (NUL-framed)"
    )
    parser.add_argument(
        "--helper-socket",
        type=Path,
        nargs="?",
        const=DEFAULT_PATH,
        metavar="PATH",
        help=f"also take events from pnpbroker-helper on PATH (default {DEFAULT_PATH})",
    )


def _trigger_arguments(parser: argparse.ArgumentParser) -> None:
    from pnpbroker.coldplug import add_trigger_arguments
    from pnpbroker.settle import add_settle_arguments

    add_trigger_arguments(parser)
    add_settle_arguments(parser)


def _monitor_arguments(parser: argparse.ArgumentParser) -> None:
    from pnpbroker import monitor

    monitor.add_arguments(parser)


def _cmd_monitor(args: argparse.Namespace) -> int:
    from pnpbroker import monitor

    return monitor.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pnpbroker",
        description="Kernel device events in order: the legacy hotplug program for each, then "
        "a D-Bus signal (org.pnp.Broker) with a gap-free sequence.",
        epilog="Exit codes: 0 clean stop, 1 trigger --settle timed out, 2 bad configuration, "
        "100 usage error, 111 a system call failed.",
    )
    parser.add_argument("--version", action="version", version=f"pnpbroker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", help="read kernel uevents, run the legacy program, publish")
    _run_arguments(run)
    inst = commands.add_parser("install", help="put the bus, polkit and systemd files in place")
    install.add_arguments(inst)
    inst.set_defaults(handler=install.run)
    trigger = commands.add_parser("trigger", help="make the kernel re-send devices' add events")
    _trigger_arguments(trigger)
    monitor = commands.add_parser("monitor", help="print the broker's events (any user)")
    _monitor_arguments(monitor)
    monitor.set_defaults(handler=_cmd_monitor)
    return parser


#: Options that override the configuration key of the same name.
_OVERRIDES = (
    "state_dir",
    "hotplug_program",
    "timeout",
    "receive_buffer",
    "bus_address",
    "rebroadcast",
)


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    found: dict[str, object] = {}
    for key in _OVERRIDES:
        value = getattr(args, key)
        if value is not None:
            found[key] = str(value.absolute()) if isinstance(value, Path) else value
    if args.no_program:
        found["hotplug_program"] = ""
    if args.verbose:
        found["log_level"] = "debug"
    return found


def _setup_logging(level: str) -> None:
    from pnpbroker.journallog import JournalFormatter, stderr_is_journal

    if stderr_is_journal():  # the journal adds the program's name; the priority says the level
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter("%(message)s"))
        logging.basicConfig(handlers=[handler])
    else:
        logging.basicConfig(stream=sys.stderr, format="pnpbroker: %(levelname)s: %(message)s")
    log.setLevel(level.upper())


def _cmd_run(args: argparse.Namespace) -> int:
    from pnpbroker import runner  # the heavy imports only for the daemon

    overrides = _overrides(args)
    if args.config is not None:
        args.config = args.config.absolute()  # the daemon works in "/"; reload reads it again
    try:
        cfg = config.load(args.config, overrides)
    except ConfigError as exc:
        _setup_logging("info")
        log.error("bad configuration: %s", exc)
        return EXIT_CONFIG
    _setup_logging(cfg.log_level)
    try:
        return asyncio.run(_serve(runner, cfg, args, overrides))
    except ConfigError as exc:  # a --source/--output that is not what it claims to be
        log.error("bad configuration: %s", exc)
        return EXIT_CONFIG
    except SourceError as exc:
        log.error("%s", exc)
        return EXIT_SYSTEM
    except OSError as exc:
        log.error("system call failed: %s", exc)
        return EXIT_SYSTEM


async def _serve(
    runner: Any, cfg: config.Config, args: argparse.Namespace, overrides: dict[str, object]
) -> int:
    from pnpbroker.output import parse_fd
    from pnpbroker.sources.choose import SourceOptions

    output = parse_fd(args.output) if args.output else None
    sources = SourceOptions(args.source, args.helper_socket)
    return int(await runner.serve(cfg, args.config, overrides, args.dry_run, sources, output))


def _cmd_trigger(args: argparse.Namespace) -> int:
    from pnpbroker import coldplug, settle

    return settle.run_settle(args) if args.settle else coldplug.run_trigger(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "trigger":
        return _cmd_trigger(args)
    if hasattr(args, "handler"):
        code: int = args.handler(args)
        return code
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE
