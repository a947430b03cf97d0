"""The pipeline: reader -> journal -> sequencer -> sinks, with its counters, config and lifecycle.

One asyncio loop. The reader (:mod:`.reader`) drains the source in its ``add_reader`` callback
and journals each batch before anything else happens to it; a loss (an overflow, the journal's
cap) is journalled in its place like an event. The sequencer runs the legacy program per event
and stores its outcome; each time it moves the ``handled`` cursor, every sink is advanced, in
the order added, and reads the entries (events and losses) from the journal. The first sink is
the publish queue (:mod:`.publisher`), whose link the D-Bus server attaches from outside
(:mod:`pnpbroker.bus.server`); ``--output`` follows the publish queue's acknowledgements.
Clients' reads go through :mod:`.queries`, in a thread. Every task is supervised
(:mod:`.supervisor`). No bus here: the pipeline runs, and is tested, without one.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from pnpbroker.client.model import Filter
from pnpbroker.client.table import Device
from pnpbroker.config import Config
from pnpbroker.contract import ExitCode
from pnpbroker.core.feed import Feed
from pnpbroker.core.losses import Losses
from pnpbroker.core.publisher import Publisher
from pnpbroker.core.queries import Page, Queries
from pnpbroker.core.reader import Reader
from pnpbroker.core.sequencer import Sequencer
from pnpbroker.core.supervisor import Supervisor
from pnpbroker.core.table import DeviceSink
from pnpbroker.errors import RebroadcastError
from pnpbroker.journal import Journal, Record
from pnpbroker.legacy import ProgramRunner, make_mode
from pnpbroker.notify import sd_notify
from pnpbroker.rebroadcast import Rebroadcaster
from pnpbroker.resync import Pace, trigger_in_thread
from pnpbroker.sources import Source
from pnpbroker.sources.netlink import burst_room
from pnpbroker.sysfs import scan
from pnpbroker.trouble import Trouble

log = logging.getLogger(__name__)

#: Housekeeping (cursors saved, retention) while events come and go; an idle broker does it
#: once more after the last of them, then only every IDLE_HOUSEKEEPING_SECONDS (retention by
#: age) or when something happens: an idle broker does not wake up for nothing.
HOUSEKEEPING_SECONDS, IDLE_HOUSEKEEPING_SECONDS = 5.0, 3600.0
#: How often the service manager's status line (``systemctl status``) is brought up to date.
STATUS_SECONDS = 1.0
SHUTDOWN_PUBLISH_SECONDS = 10.0
#: Counters always present in the Statistics property, zero until something happens.
COUNTERS = (
    "received",
    "rejected_forged",
    "rejected_malformed",
    "duplicate_keys",
    "overflows",
    "dropped",
)
#: Present once re-broadcast is on: datagrams sent, and refused by the kernel.
REBROADCAST_COUNTERS = ("rebroadcast", "rebroadcast_failed")
#: Keys a reload cannot change.
RESTART_KEYS = (
    "state_dir",
    "receive_buffer",
    "bus_address",
    "helper_window",
    "journal_sync",
    "forward_socket",
    "forward_group",
)


class Sink(Protocol):
    """Takes handled entries in sequence order: the publish queue, and later others."""

    def advance(self, through: int) -> None:
        """Every entry up to ``through`` is handled: read them (events and losses) from the
        journal."""


class Changes:
    """Wakes whoever waits for the journal's cursors to move (events journalled, handled,
    acknowledged) or for a pause or resume; a publisher follower too."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def advance(self, through: int = 0) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, seconds: float | None = None) -> None:
        """Return at the next change, or after ``seconds``."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(seconds):
                await waiter
        except TimeoutError:
            pass


class Pipeline:
    """Owns the journal, the stages, the sinks and the counters; serves the D-Bus object's needs
    (:class:`pnpbroker.bus.service.Core`) without knowing the bus."""

    def __init__(self, config: Config, source: Source, journal: Journal) -> None:
        self.config = config
        self.source = source
        self.journal = journal
        self.stats: Counter[str] = Counter()
        self.runner = ProgramRunner(config.timeout, config.kill_grace)
        self.sequencer = Sequencer(journal, make_mode(config, self.runner), self._handled)
        self.publisher = Publisher(journal)
        self.devices = DeviceSink(journal, scan)
        self.rebroadcaster = self._rebroadcaster(config)
        self.feed = (
            Feed(Path(config.forward_socket), config.forward_group, journal)
            if (config.forward_socket)
            else None
        )
        if self.feed is not None:
            self.feed.watch(self.devices.table)
        self.sinks: list[Sink] = self._sinks()
        self.losses = Losses(journal, self.stats, config.receive_buffer)
        self.losses.paused = lambda: self.paused
        self.reader = Reader(
            source,
            journal,
            self.stats,
            on_recorded=self._recorded,
            on_overflow=self.losses.overflow,
            on_end=self._reader_ended,
            on_capped=self.losses.capped,
            on_room=self.losses.room,
            resume_room=max(1, journal.max_entries // 10),
        )
        self.changes = Changes()
        # room again: resume, resync; and the status line
        self.publisher.followers += [self.reader, self.losses, self.changes]
        room = burst_room(source.fileno())  # triggers (resync, Trigger) never outrun the reader
        self.pace = Pace(room, self.reader.caught_up) if room else None
        self.losses.resync.pace = self.pace
        self.queries = Queries(journal.path)
        self.exit_code = ExitCode.OK
        self.reload_hook: Callable[[], Config] | None = None
        self._stop = asyncio.Event()
        self.supervisor = Supervisor(self.fail, self._stop.is_set)
        self._housekeeping_trouble = Trouble(log)

    # What the D-Bus object asks (pnpbroker.bus.service.Core).
    async def events_after(self, after: int, limit: int) -> list[Record]:
        return await self.queries.events(after, self.journal.synced, limit)

    async def page(self, after: int, limit: int, wanted: Filter) -> Page:
        return await self.queries.page(after, self.journal.synced, limit, wanted)

    @property
    def last_sequence(self) -> int:
        """The last entry handled and on disk: GetEvents returns up to it, signals stop at it."""
        return self.journal.synced

    @property
    def oldest_sequence(self) -> int:
        return self.journal.oldest

    @property
    def journal_id(self) -> str:
        return self.journal.journal_id

    async def device_snapshot(self, wanted: Filter) -> tuple[int, list[Device]]:
        """GetDevices: the table's sequence and the devices that match (once it is current)."""
        return await self.devices.snapshot(wanted)

    async def trigger(
        self,
        subsystems: Sequence[str],
        action: str,
        devices: Sequence[str] | None = None,
        uuid: str | None = None,
    ) -> tuple[str, int]:
        """Coldplug (Trigger method): the SYNTH_UUID and how many events the kernel will send."""
        result = await trigger_in_thread(subsystems, action, uuid, devices=devices, pace=self.pace)
        return result.uuid, result.written

    @property
    def paused(self) -> bool:
        return self.sequencer.paused

    def pause(self) -> None:
        self.sequencer.pause()
        self.changes.advance()

    def resume(self) -> None:
        self.sequencer.resume()
        self.changes.advance()

    def statistics(self) -> dict[str, int]:
        stats = dict.fromkeys(COUNTERS, 0)
        if self.config.rebroadcast:
            stats.update(dict.fromkeys(REBROADCAST_COUNTERS, 0))
        stats.update(self.stats)
        stats.update(
            published=self.publisher.count,
            journalled=self.journal.last,
            handled=self.journal.handled,
            queued=self.journal.last - self.journal.handled,
        )
        if self.feed is not None:
            stats["forwarded"] = self.journal.forwarded
        return stats

    def _rebroadcaster(self, config: Config) -> Rebroadcaster | None:
        if not config.rebroadcast:
            return None
        return Rebroadcaster(config.rebroadcast, self.journal, self.stats)

    def _sinks(self) -> list[Sink]:
        """The publish queue first, then the device table, the re-broadcast and the fleet feed
        if any."""
        extra: list[Sink | None] = [self.rebroadcaster, self.feed]
        return [self.publisher, self.devices, *(sink for sink in extra if sink is not None)]

    # What the stages hand up.
    def _recorded(self) -> None:
        self.sequencer.notify()
        self.changes.advance()

    def _handled(self) -> None:
        through = self.journal.handled
        for sink in self.sinks:
            sink.advance(through)
        self.changes.advance()

    def _reader_ended(self, eof: bool) -> None:
        if eof:
            asyncio.get_running_loop().create_task(self._finish_stream())
        else:
            self.fail()

    async def _finish_stream(self) -> None:
        """A stream source ended: handle and publish what was read, then stop."""
        log.info(
            "source ended; finishing %d queued events", self.journal.last - self.journal.published
        )
        while self.journal.published < self.journal.last and not self._stop.is_set():
            self.publisher.acked.clear()
            await self.publisher.acked.wait()
        self.stop()

    # Configuration.
    def reload(self) -> None:
        """Re-read the configuration (SIGHUP, Reload()); a bad file keeps the old one."""
        if self.reload_hook is None:
            return
        sd_notify("RELOADING=1")
        try:
            self.apply(self.reload_hook())
        except (ValueError, RebroadcastError) as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
        sd_notify("READY=1")

    def apply(self, config: Config) -> None:
        """Take ``config`` in; RebroadcastError (nothing changed) if its sockets cannot open."""
        if config.rebroadcast != self.config.rebroadcast:
            rebroadcaster = self._rebroadcaster(config)
            if self.rebroadcaster is not None:
                self.rebroadcaster.close()
            self.rebroadcaster = rebroadcaster
            self.sinks = self._sinks()
        for key in RESTART_KEYS:
            if getattr(config, key) != getattr(self.config, key):
                log.warning("%s changed: takes effect at the next start", key)
        self.runner.timeout, self.runner.grace = config.timeout, config.kill_grace
        self.sequencer.mode = make_mode(config, self.runner)
        self.journal.max_events = config.retention_events
        self.journal.max_age = config.retention_days * 86400
        self.journal.max_entries = config.journal_max_events
        self.reader.resume_room = max(1, config.journal_max_events // 10)
        logging.getLogger("pnpbroker").setLevel(config.log_level.upper())
        self.config = config
        log.info("configuration reloaded; program: %s", config.hotplug_program or "none")

    # Lifecycle.
    def stop(self) -> None:
        """Finish the running program, publish what is handled, and return from :meth:`run`."""
        self._stop.set()

    def fail(self, code: ExitCode = ExitCode.SYSTEM) -> None:
        """Stop with an error exit code."""
        self.exit_code = code
        self.reader.stop()
        self.stop()

    def status_line(self) -> str:
        """What ``systemctl status`` shows: events handled, the queue, what was published."""
        stats = self.statistics()
        paused = ", paused" if self.paused else ""
        forwarded = f", forwarded through {stats['forwarded']}" if "forwarded" in stats else ""
        return (
            f"{stats['handled']} events handled, {stats['queued']} queued, "
            f"{stats['published']} published{forwarded}{paused}"
        )

    async def _report_status(self) -> None:
        """Send STATUS= to the service manager when it changed, at most once a second."""
        last = ""
        while True:
            if (line := self.status_line()) != last:
                sd_notify(f"STATUS={line}")
                last = line
                await asyncio.sleep(STATUS_SECONDS)
            else:
                await self.changes.wait()

    async def _housekeeping(self) -> None:
        """Save the cursors and apply retention; a journal that cannot be written is retried."""
        done: tuple[int, int] | None = None  # the cursors at the last round that worked
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            if done == (self.journal.last, self.journal.published):
                await self.changes.wait(IDLE_HOUSEKEEPING_SECONDS)
            cursors = (self.journal.last, self.journal.published)
            try:
                self.journal.flush()
                pruned = self.journal.prune()
            except sqlite3.Error as exc:
                self._housekeeping_trouble.failed("journal housekeeping failed: %s", exc)
                continue
            self._housekeeping_trouble.over("journal housekeeping works again")
            done = cursors
            if pruned:
                log.debug("retention removed %d journalled events", pruned)

    async def run(self) -> ExitCode:
        """Run the stages until stopped, then drain them; return the exit code.

        Call :meth:`close` afterwards (after whatever serves the journal has stopped).
        """
        if self.feed is not None:
            await self.feed.start()
        backlog = self.journal.last - self.journal.published
        if backlog:
            log.info("resuming: %d journalled events not yet published", backlog)
        self.reader.start()
        self.devices.start()
        start = self.supervisor.start
        stages = [
            start(self.sequencer.run(), "sequencer"),
            start(self.publisher.run(), "publisher"),
        ]
        helpers = [
            start(self._housekeeping(), "housekeeping"),
            start(self._report_status(), "status"),
        ]
        await self._stop.wait()
        await self._drain(*stages)
        await self.supervisor.cancel(*helpers)
        return self.exit_code

    async def _drain(self, sequencer: asyncio.Task[None], publisher: asyncio.Task[None]) -> None:
        """Finish the running program, then publish what is handled (a stage that died has
        been reported by the supervisor already)."""
        sd_notify("STOPPING=1")
        log.info("stopping: finishing the running program")
        self.reader.stop()
        self.sequencer.stop()
        await asyncio.gather(sequencer, return_exceptions=True)
        self.publisher.stop()
        try:
            await asyncio.wait_for(asyncio.gather(publisher, return_exceptions=True),
                                   SHUTDOWN_PUBLISH_SECONDS)  # fmt: skip
        except TimeoutError:
            log.warning("the link did not take the last events; they are sent at the next start")

    def close(self) -> None:
        self.queries.close()
        self.devices.close()
        self.runner.close()
        if self.rebroadcaster is not None:
            self.rebroadcaster.close()
        if self.feed is not None:
            self.feed.close()
        self.journal.close()
        self.source.close()
