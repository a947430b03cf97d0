"""``pnpbroker run``: open the source and the journal, then serve on the bus (or dry-run).

The options here and the configuration keys in :class:`pnpbroker.config.Config` are what
docs/reference.md's option table lists (tests/test_docs.py holds them equal).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pnpbroker import config
from pnpbroker.contract import RELOAD_SIGNALS, STOP_SIGNALS, ExitCode
from pnpbroker.errors import ConfigError, SourceError
from pnpbroker.notify import sd_notify
from pnpbroker.sources.helper import DEFAULT_PATH as HELPER_SOCKET

if TYPE_CHECKING:
    from pnpbroker.journal import Journal, Lost
    from pnpbroker.sources import Overflow, Source
    from pnpbroker.sources.choose import SourceOptions
    from pnpbroker.uevent import Uevent

HELP = "read kernel uevents, run the legacy program, publish"
JOURNAL_NAME = "journal.sqlite"
#: Options that override a configuration key of the same name.
OVERRIDES = (
    "state_dir",
    "hotplug_program",
    "timeout",
    "receive_buffer",
    "bus_address",
    "rebroadcast",
)

log = logging.getLogger("pnpbroker")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", type=Path, help=f"TOML file (default {config.DEFAULT_PATH})"
    )
    parser.add_argument(
        "--state-dir", type=Path, help="journal directory (default /var/lib/pnpbroker)"
    )
    _program_arguments(parser)
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


def _program_arguments(parser: argparse.ArgumentParser) -> None:
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


def _source_arguments(parser: argparse.ArgumentParser) -> None:
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
        const=HELPER_SOCKET,
        metavar="PATH",
        help=f"also take events from pnpbroker-helper on PATH (default {HELPER_SOCKET})",
    )


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """The configuration keys the command line sets."""
    found: dict[str, object] = {}
    for key in OVERRIDES:
        value = getattr(args, key)
        if value is not None:
            found[key] = str(value.absolute()) if isinstance(value, Path) else value
    if args.no_program:
        found["hotplug_program"] = ""
    if args.verbose:
        found["log_level"] = "debug"
    return found


def setup_logging(level: str) -> None:
    from pnpbroker.journallog import JournalFormatter, stderr_is_journal

    if stderr_is_journal():  # the journal adds the program's name; the priority says the level
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter("%(message)s"))
        logging.basicConfig(handlers=[handler])
    else:
        logging.basicConfig(stream=sys.stderr, format="pnpbroker: %(levelname)s: %(message)s")
    log.setLevel(level.upper())


def main(args: argparse.Namespace) -> int:
    keys = overrides(args)
    if args.config is not None:
        args.config = args.config.absolute()  # the daemon works in "/"; reload reads it again
    try:
        cfg = config.load(args.config, keys)
    except ConfigError as exc:
        setup_logging("info")
        log.error("bad configuration: %s", exc)
        return ExitCode.CONFIG
    setup_logging(cfg.log_level)
    try:
        return asyncio.run(_start(cfg, args, keys))
    except ConfigError as exc:  # a --source/--output that is not what it claims to be
        log.error("bad configuration: %s", exc)
        return ExitCode.CONFIG
    except SourceError as exc:
        log.error("%s", exc)
        return ExitCode.SYSTEM
    except OSError as exc:
        log.error("system call failed: %s", exc)
        return ExitCode.SYSTEM


async def _start(cfg: config.Config, args: argparse.Namespace, keys: Mapping[str, object]) -> int:
    from pnpbroker.core.output import parse_fd
    from pnpbroker.sources.choose import SourceOptions

    output = parse_fd(args.output) if args.output else None
    options = SourceOptions(args.source, args.helper_socket, cfg.helper_window)
    if args.dry_run:
        return await dry_run(cfg, open_source(cfg, options))
    journal = open_journal(cfg)  # first: a journal it cannot use stops it before anything runs
    try:
        source = open_source(cfg, options)
    except BaseException:
        journal.close()
        raise
    return await serve(cfg, source, journal, output, args.config, keys)


def open_source(cfg: config.Config, options: SourceOptions) -> Source:
    """The event source: see :mod:`pnpbroker.sources.choose` (default: the kernel's netlink)."""
    from pnpbroker.sources.choose import open_sources

    return open_sources(options, cfg.receive_buffer)


def open_journal(cfg: config.Config) -> Journal:
    from pnpbroker.journal import Journal

    try:
        cfg.state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        return Journal(
            cfg.state_dir / JOURNAL_NAME,
            cfg.retention_events,
            cfg.retention_days * 86400,
            max_entries=cfg.journal_max_events,
            sync=cfg.journal_sync,
        )
    except OSError as exc:  # JournalUnusable too: one line, exit 111, before anything runs
        raise SourceError(exc.errno, f"cannot open the journal in {cfg.state_dir}: {exc}") from exc


async def serve(
    cfg: config.Config,
    source: Source,
    journal: Journal,
    output: int | None,
    path: Path | None,
    keys: Mapping[str, object],
) -> int:
    """The pipeline on this source and journal, served on the bus until a stop signal."""
    from pnpbroker import __version__
    from pnpbroker.bus.server import BusServer
    from pnpbroker.core.output import Output
    from pnpbroker.core.pipeline import Pipeline

    pipeline = Pipeline(cfg, source, journal)
    follower = Output(output, journal) if output is not None else None
    if follower is not None:
        pipeline.publisher.followers.append(follower)
    os.chdir("/")  # as daemon(3): keep no directory busy; legacy programs start in "/"
    pipeline.reload_hook = lambda: config.load(path, keys)
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, pipeline.stop)
    for sig in RELOAD_SIGNALS:
        loop.add_signal_handler(sig, pipeline.reload)
    program = cfg.hotplug_program or "none"
    log.info("pnpbroker %s: program %s, journal %s", __version__, program, journal.path)
    try:
        return await BusServer(pipeline, cfg.bus_address).run()
    finally:
        if follower is not None:
            follower.close()


class Planner:
    """The dry run's store: for each event, print the command and environment the program
    would get, instead of journalling it."""

    def __init__(self, cfg: config.Config) -> None:
        self.cfg = cfg

    def append(self, items: Sequence[Uevent | Lost], raw: Sequence[bytes] | None = None) -> int:
        from pnpbroker.journal import Lost
        from pnpbroker.legacy import planned
        from pnpbroker.legacy.runner import event_environment

        for event in items:
            if isinstance(event, Lost):
                print("# events lost here (receive buffer overflow)", flush=True)
                continue
            env = " ".join(f"{k}={shlex.quote(v)}" for k, v in event_environment(event).items())
            for argv in planned(self.cfg, event) or [["(no program)", event.subsystem]]:
                print(f"{event.seqnum}: env -i {env} {shlex.join(argv)}", flush=True)
        return 0

    def room(self, wanted: int) -> int:
        return wanted


async def dry_run(cfg: config.Config, source: Source) -> int:
    """The real reader (checks, rejections logged) feeding a :class:`Planner`; until a stop
    signal or the end of a stream source (111 if the source fails)."""
    from pnpbroker.core.reader import Reader

    stop, ended = asyncio.Event(), []

    def end(eof: bool) -> None:
        ended.append(eof)
        stop.set()

    reader = Reader(
        source, Planner(cfg), Counter(), on_recorded=_nothing, on_overflow=_overflow, on_end=end
    )
    for sig in STOP_SIGNALS:
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    reader.start()
    sd_notify("READY=1\nSTATUS=dry run: printing what would run")
    await stop.wait()
    reader.stop()
    source.close()
    sys.stdout.flush()
    return ExitCode.SYSTEM if ended == [False] else ExitCode.OK


def _nothing() -> None:
    pass


def _overflow(overflow: Overflow) -> str:
    return overflow.recorded or ""
