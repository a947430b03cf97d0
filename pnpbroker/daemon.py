"""The broker core: wires reader -> journal -> sequencer -> publisher, and keeps the bus up.

One asyncio loop. The reader (pnpbroker.reader) drains the source in its ``add_reader``
callback and journals each batch before anything else happens to it. The sequencer and the
publisher run as tasks. The bus keeper reconnects when the bus goes away; meanwhile events
are still read, journalled and handled, and published once a link is back.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from dbus_fast.errors import DBusError

from pnpbroker import names
from pnpbroker.busconn import BusLink, NameTaken
from pnpbroker.config import Config
from pnpbroker.errors import RebroadcastError
from pnpbroker.hotplug import ProgramRunner
from pnpbroker.journal import Journal, Record
from pnpbroker.legacy import make_handler
from pnpbroker.notify import sd_notify
from pnpbroker.output import Output
from pnpbroker.polkit import Authority, NotAuthorized
from pnpbroker.publisher import Publisher
from pnpbroker.reader import Reader
from pnpbroker.rebroadcast import Rebroadcaster
from pnpbroker.resync import Resync, trigger_in_thread
from pnpbroker.sequencer import Sequencer
from pnpbroker.service import BrokerInterface
from pnpbroker.sources import Source

log = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 5.0
#: How often the service manager's status line (``systemctl status``) is brought up to date.
STATUS_SECONDS = 1.0
SHUTDOWN_PUBLISH_SECONDS = 10.0
#: Counters always present in the Statistics property, zero until something happens.
COUNTERS = ("received", "rejected_forged", "rejected_malformed", "overflows")
#: Present once re-broadcast is on: datagrams sent, and refused by the kernel.
REBROADCAST_COUNTERS = ("rebroadcast", "rebroadcast_failed")


class Broker:
    """The core behind the D-Bus object; owns the journal, the stages and the counters."""

    def __init__(self, config: Config, source: Source, journal: Journal) -> None:
        self.config = config
        self.source = source
        self.journal = journal
        self.stats: Counter[str] = Counter()
        self.runner = ProgramRunner(config.timeout, config.kill_grace)
        self.rebroadcaster = self._rebroadcaster(config)
        self.sequencer = Sequencer(journal, make_handler(config, self.runner), self._handled)
        self.publisher = Publisher(journal, on_published=self._published)
        self.interface = BrokerInterface(self)
        self.link: BusLink | None = None
        self.authority: Authority | None = None
        self.exit_code = 0
        self.reload_hook: Callable[[], Config] | None = None
        self.output: Output | None = None
        self.resync = Resync()
        self.reader = Reader(
            source,
            journal,
            self.stats,
            on_recorded=self.sequencer.notify,
            on_overflow=self._lost,
            on_end=self._reader_ended,
        )
        self._stop = asyncio.Event()
        self._progress = asyncio.Event()
        self._ready = False

    # The service's view (pnpbroker.service.Core).
    def events_after(self, after: int, limit: int) -> list[Record]:
        return self.journal.between(after, self.journal.handled, limit)

    @property
    def last_sequence(self) -> int:
        return self.journal.handled

    @property
    def oldest_sequence(self) -> int:
        return self.journal.oldest

    async def trigger(self, subsystems: Sequence[str], action: str) -> tuple[str, int]:
        """Coldplug (Trigger method): the SYNTH_UUID and how many events the kernel will send."""
        result = await trigger_in_thread(subsystems, action)
        return result.uuid, result.written

    async def authorize(self, sender: str, action_id: str) -> None:
        """polkit decides (CheckAuthorization on the sender's bus name)."""
        if self.authority is None:
            raise NotAuthorized(action_id, "not connected to the bus")
        await self.authority.check(sender, action_id)
        log.info("%s authorized for %s", sender, action_id)

    @property
    def paused(self) -> bool:
        return self.sequencer.paused

    def pause(self) -> None:
        self.sequencer.pause()

    def resume(self) -> None:
        self.sequencer.resume()

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
        return stats

    # What the reader hands up.
    def _reader_ended(self, eof: bool) -> None:
        if eof:
            asyncio.get_running_loop().create_task(self._finish_stream())
        else:
            self._fail()

    def _fail(self) -> None:
        """Stop with the system-error exit code."""
        self.exit_code = 111
        self.reader.stop()
        self.stop()

    def _stage_died(self, task: asyncio.Task[Any]) -> None:
        """A pipeline stage must never end on its own; if one does, fail loudly."""
        if task.cancelled() or self._stop.is_set():
            return
        exc = task.exception()
        log.error("%s stopped unexpectedly: %r; stopping", task.get_name(), exc)
        self._fail()

    def _lost(self) -> None:
        self.stats["overflows"] += 1
        after = self.journal.last
        uuid = self.resync.request()
        log.error(
            "KERNEL DROPPED UEVENTS: receive buffer overflow (ENOBUFS) after sequence %d; "
            "raise receive_buffer (now %d bytes); devices re-announced with SYNTH_UUID=%s",
            after,
            self.config.receive_buffer,
            uuid,
        )
        if self.link is not None:
            try:
                self.link.emit("EventsLost", "ts", [after, uuid])
            except Exception as exc:  # a dying link is the bus keeper's business
                log.warning("could not signal EventsLost: %s", exc)

    def _handled(self) -> None:
        self.publisher.notify()
        if self.rebroadcaster is not None:
            self.rebroadcaster.advance(self.journal.handled)

    def _rebroadcaster(self, config: Config) -> Rebroadcaster | None:
        if not config.rebroadcast:
            return None
        return Rebroadcaster(config.rebroadcast, self.journal, self.stats)

    def _published(self, through: int) -> None:
        if self.output is not None:
            self.output.catch_up()
        self._progress.set()

    async def _finish_stream(self) -> None:
        """A stream source ended: handle and publish what was read, then stop."""
        log.info(
            "source ended; finishing %d queued events", self.journal.last - self.journal.published
        )
        while self.journal.published < self.journal.last and not self._stop.is_set():
            self._progress.clear()
            await self._progress.wait()
        self.stop()

    # Lifecycle.
    def stop(self) -> None:
        self._stop.set()

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
        rebroadcaster = self.rebroadcaster
        if config.rebroadcast != self.config.rebroadcast:
            rebroadcaster = self._rebroadcaster(config)
            if self.rebroadcaster is not None:
                self.rebroadcaster.close()
        for key in ("state_dir", "receive_buffer", "bus_address"):
            if getattr(config, key) != getattr(self.config, key):
                log.warning("%s changed: takes effect at the next start", key)
        self.runner.timeout, self.runner.grace = config.timeout, config.kill_grace
        self.sequencer.handler = make_handler(config, self.runner)
        self.rebroadcaster = rebroadcaster
        self.journal.max_events = config.retention_events
        self.journal.max_age = config.retention_days * 86400
        logging.getLogger("pnpbroker").setLevel(config.log_level.upper())
        self.config = config
        log.info("configuration reloaded; program: %s", config.hotplug_program or "none")

    async def _keep_bus(self) -> None:
        delay, warned = 0.2, False
        while True:
            try:
                link = await BusLink.connect(self.config.bus_address or None, self.interface)
            except NameTaken as exc:
                log.error("%s; stopping", exc)
                self.exit_code = 111
                self.stop()
                return
            except (OSError, DBusError, EOFError) as exc:
                if not warned:
                    log.warning("system bus unreachable (%s); journalling until it is back", exc)
                    warned = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            log.info("on the bus as %s (%s)", names.BUS_NAME, link.bus.unique_name)
            delay, warned = 0.2, False
            self.link = link
            self.authority = Authority(link.bus)
            self.publisher.attach(link)
            self._became_ready()
            await link.wait_closed()
            self.link = None
            self.publisher.attach(None)

    def _became_ready(self) -> None:
        if not self._ready:
            self._ready = True
            sd_notify(f"READY=1\nSTATUS={self.status_line()}")

    def status_line(self) -> str:
        """What ``systemctl status`` shows: events handled, the queue, what was published."""
        stats = self.statistics()
        paused = ", paused" if self.paused else ""
        return (
            f"{stats['handled']} events handled, {stats['queued']} queued, "
            f"{stats['published']} published{paused}"
        )

    async def _report_status(self) -> None:
        """Send STATUS= to the service manager when it changed, at most once a second."""
        last = ""
        while True:
            if (line := self.status_line()) != last:
                sd_notify(f"STATUS={line}")
                last = line
            await asyncio.sleep(STATUS_SECONDS)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            self.journal.flush()
            if pruned := self.journal.prune():
                log.debug("retention removed %d journalled events", pruned)

    async def run(self) -> int:
        """Serve until stopped; return the exit code."""
        loop = asyncio.get_running_loop()
        for sig, action in (
            (signal.SIGTERM, self.stop),
            (signal.SIGINT, self.stop),
            (signal.SIGHUP, self.reload),
        ):
            loop.add_signal_handler(sig, action)
        backlog = self.journal.last - self.journal.published
        if backlog:
            log.info("resuming: %d journalled events not yet published", backlog)
        self.reader.start()
        tasks = [
            loop.create_task(self.sequencer.run(), name="sequencer"),
            loop.create_task(self.publisher.run(), name="publisher"),
            loop.create_task(self._keep_bus(), name="bus"),
            loop.create_task(self._housekeeping(), name="housekeeping"),
            loop.create_task(self._report_status(), name="status"),
        ]
        for task in tasks[:2]:
            task.add_done_callback(self._stage_died)
        await self._stop.wait()
        await self._shutdown(tasks)
        return self.exit_code

    async def _shutdown(self, tasks: list[asyncio.Task[Any]]) -> None:
        sd_notify("STOPPING=1")
        log.info("stopping: finishing the running program")
        self.reader.stop()
        sequencer, publisher, *others = tasks
        self.sequencer.stop()
        await sequencer
        self.publisher.stop()
        try:
            await asyncio.wait_for(publisher, SHUTDOWN_PUBLISH_SECONDS)
        except TimeoutError:
            log.warning("bus did not take the last signals; they are sent at the next start")
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self.link is not None:
            self.link.close()
        self.runner.close()
        if self.rebroadcaster is not None:
            self.rebroadcaster.close()
        self.journal.close()
        self.source.close()
