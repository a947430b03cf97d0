"""``pnpbroker trigger --settle``: coldplug, then wait until the broker published every event.

The kernel answers each accepted ``uevent`` write with one event carrying our SYNTH_UUID, so
"settled" means: as many Event signals with ``properties["SYNTH_UUID"] == uuid`` as writes were
accepted. We subscribe before writing (a signal sent before the match exists is never seen), and
write from a thread so the loop keeps reading signals meanwhile. A library: the command's
arguments and messages are in :mod:`pnpbroker.commands.trigger`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from pnpbroker import coldplug, names
from pnpbroker.bus.wire import EVENT_SIGNATURE, to_bus_daemon
from pnpbroker.errors import BrokerError

DEFAULT_TIMEOUT = 120.0
MATCH = (
    f"type='signal',sender='{names.BUS_NAME}',path='{names.OBJECT_PATH}',"
    f"interface='{names.INTERFACE}',member='Event'"
)


class NotSettled(TimeoutError, BrokerError):
    """Fewer events of the trigger were published than it caused, before the timeout."""

    def __init__(self, uuid: str, seen: int, wanted: int, timeout: float) -> None:
        super().__init__(
            f"timed out after {timeout:g} s: the broker published {seen} of {wanted} events "
            f"with SYNTH_UUID={uuid} (is it running, on this bus, and in this network namespace?)"
        )
        self.uuid, self.seen, self.wanted = uuid, seen, wanted


class Watcher:
    """Counts the broker's Event signals that carry one SYNTH_UUID."""

    def __init__(self, bus: MessageBus, uuid: str) -> None:
        self.bus = bus
        self.uuid = uuid
        self.seen = 0
        self.wanted: int | None = None
        self._done = asyncio.Event()
        bus.add_message_handler(self._on_message)

    @classmethod
    async def connect(cls, address: str | None, uuid: str) -> Watcher:
        """Connect and subscribe; once this returns, no matching signal can be missed."""
        bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
        watcher = cls(bus, uuid)
        reply = await bus.call(to_bus_daemon("AddMatch", "s", [MATCH]))
        if reply is None or reply.message_type == MessageType.ERROR:
            bus.disconnect()
            raise ConnectionError(f"AddMatch refused: {reply.body if reply else 'no reply'}")
        return watcher

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL or msg.member != "Event":
            return
        if msg.interface != names.INTERFACE or msg.signature != EVENT_SIGNATURE:
            return
        if msg.body[4].get("SYNTH_UUID") == self.uuid:
            self.seen += 1
            self._check()

    def _check(self) -> None:
        if self.wanted is not None and self.seen >= self.wanted:
            self._done.set()

    async def wait(self, wanted: int, seconds: float) -> None:
        """Return once ``wanted`` events were seen; NotSettled after ``seconds``."""
        self.wanted = wanted
        self._check()
        try:
            async with asyncio.timeout(seconds):
                await self._done.wait()
        except TimeoutError:
            raise NotSettled(self.uuid, self.seen, wanted, seconds) from None

    def close(self) -> None:
        self.bus.disconnect()


async def settle(
    trigger: Callable[[], coldplug.TriggerResult], uuid: str, address: str | None, seconds: float
) -> tuple[coldplug.TriggerResult, float]:
    """Subscribe to the Events carrying SYNTH_UUID=``uuid``, run ``trigger`` (which writes that
    uuid) in a thread, and wait up to ``seconds`` for as many as it wrote; the result and the
    seconds it took."""
    watcher = await Watcher.connect(address, uuid)
    try:
        start = time.monotonic()
        result = await asyncio.to_thread(trigger)
        await watcher.wait(result.written, seconds)
        return result, time.monotonic() - start
    finally:
        watcher.close()
