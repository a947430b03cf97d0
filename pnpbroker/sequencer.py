"""The serial handler stage: one event at a time, in sequence order, through the legacy handler.

It takes unhandled records from the journal, awaits the handler (the program runs, the loop keeps
reading the kernel), stores the outcome durably, and tells the publisher. With no handler
configured it only moves the handled cursor. While paused it runs nothing (events still queue).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pnpbroker.hotplug import Handler
from pnpbroker.journal import Journal
from pnpbroker.uevent import Uevent

log = logging.getLogger(__name__)

PAGE = 512


class Sequencer:
    """Drives the journal's ``handled`` cursor forward, strictly one event at a time."""

    def __init__(
        self, journal: Journal, handler: Handler | None, on_handled: Callable[[], None]
    ) -> None:
        self.journal = journal
        self.handler = handler
        self.on_handled = on_handled
        self._wake = asyncio.Event()
        self._running = asyncio.Event()
        self._running.set()
        self._stopping = False

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        if not self.paused:
            log.info("paused: events are journalled, no program runs, nothing is published")
        self._running.clear()

    def resume(self) -> None:
        if self.paused:
            log.info("resumed")
        self._running.set()

    def notify(self) -> None:
        """New events were journalled."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the event in hand, then return from :meth:`run`."""
        self._stopping = True
        self._wake.set()
        self._running.set()

    @staticmethod
    async def _handle(handler: Handler, event: Uevent, sequence: int) -> dict[str, Any]:
        """The handler's outcome; a handler that fails is reported, never stops the stage."""
        try:
            return await handler.handle(event, sequence)
        except Exception as exc:
            log.exception("event %d: the handler failed", sequence)
            return {
                "status": -1,
                "signal": 0,
                "timed_out": False,
                "error": f"handler failed: {exc}",
            }

    async def run(self) -> None:
        while not self._stopping:
            await self._running.wait()
            if self._stopping:
                break
            if self.handler is None:  # nothing to run: all that is journalled is handled
                if self.journal.handled < self.journal.last:
                    self.journal.skip_handling(self.journal.last)
                    self.on_handled()
                self._wake.clear()
                await self._wake.wait()
                continue
            records = self.journal.unhandled(PAGE)
            if not records:
                self._wake.clear()
                await self._wake.wait()
                continue
            for record in records:
                if self._stopping or self.paused:
                    break
                outcome = await self._handle(self.handler, record.event, record.sequence)
                self.journal.record_outcome(record.sequence, outcome)
                self.on_handled()
