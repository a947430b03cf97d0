"""``pnpbroker run``: open the source and the journal, then serve (or dry-run) until stopped."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from pnpbroker import __version__
from pnpbroker import config as configuration
from pnpbroker.bus.server import BusServer
from pnpbroker.config import Config
from pnpbroker.contract import RELOAD_SIGNALS, STOP_SIGNALS
from pnpbroker.core.output import Output
from pnpbroker.core.pipeline import Pipeline
from pnpbroker.errors import BrokerError, SourceError
from pnpbroker.journal import Journal
from pnpbroker.legacy import planned
from pnpbroker.legacy.runner import event_environment
from pnpbroker.notify import sd_notify
from pnpbroker.sources import Overflow, Source, check
from pnpbroker.sources.choose import SourceOptions, open_sources

log = logging.getLogger(__name__)

JOURNAL_NAME = "journal.sqlite"


def open_source(cfg: Config, options: SourceOptions | None = None) -> Source:
    """The event source: see :mod:`pnpbroker.sources.choose` (default: the kernel's netlink)."""
    return open_sources(options or SourceOptions(), cfg.receive_buffer)


def open_journal(cfg: Config) -> Journal:
    try:
        cfg.state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        return Journal(
            cfg.state_dir / JOURNAL_NAME, cfg.retention_events, cfg.retention_days * 86400
        )
    except OSError as exc:
        raise SourceError(exc.errno, f"cannot open the journal in {cfg.state_dir}: {exc}") from exc


async def serve(
    cfg: Config,
    path: Path | None,
    overrides: Mapping[str, object],
    dry_run: bool = False,
    sources: SourceOptions | None = None,
    output: int | None = None,
) -> int:
    source = open_source(cfg, sources)
    if dry_run:
        return await _dry_run(cfg, source)
    pipeline = Pipeline(cfg, source, open_journal(cfg))
    if output is not None:
        pipeline.publisher.followers.append(Output(output, pipeline.journal))
    os.chdir("/")  # as daemon(3): keep no directory busy; legacy programs start in "/"
    pipeline.reload_hook = lambda: configuration.load(path, overrides)
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, pipeline.stop)
    for sig in RELOAD_SIGNALS:
        loop.add_signal_handler(sig, pipeline.reload)
    log.info(
        "pnpbroker %s: program %s, journal %s",
        __version__,
        cfg.hotplug_program or "none",
        cfg.state_dir / JOURNAL_NAME,
    )
    return await BusServer(pipeline, cfg.bus_address).run()


async def _dry_run(cfg: Config, source: Source) -> int:
    """Print, for each event, the command and environment the program would get."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def readable() -> None:
        for item in source.read_batch():
            if isinstance(item, Overflow):
                print("# receive buffer overflow: events lost", flush=True)
                continue
            try:
                event = check(item)
            except BrokerError as exc:
                at = f" at {item.where}" if item.where else ""
                print(f"# rejected{at}: {exc}", flush=True)
                continue
            env = " ".join(f"{k}={shlex.quote(v)}" for k, v in event_environment(event).items())
            for argv in planned(cfg, event) or [["(no program)", event.subsystem]]:
                print(f"{event.seqnum}: env -i {env} {shlex.join(argv)}", flush=True)
        if source.eof:
            stop.set()

    loop.add_reader(source.fileno(), readable)
    sd_notify("READY=1\nSTATUS=dry run: printing what would run")
    await stop.wait()
    loop.remove_reader(source.fileno())
    source.close()
    sys.stdout.flush()
    return 0


__all__ = ["open_journal", "open_source", "serve"]
