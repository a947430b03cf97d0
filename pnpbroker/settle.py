"""``pnpbroker trigger --settle``: coldplug, then wait until the broker published every event.

The kernel answers each accepted ``uevent`` write with one event carrying our SYNTH_UUID, so
"settled" means: as many distinct events with ``properties["SYNTH_UUID"] == uuid`` as writes were
accepted. It believes only the broker: the events come through the client library
(:mod:`pnpbroker.client`), which takes signals only from the current owner of
``org.pnp.Broker`` (GetNameOwner, then NameOwnerChanged), so a signal another connection sends
(say a forged unicast ``Event`` to our unique name) is never counted; each sequence is delivered
once, so the repeats a restarted broker sends are not counted twice; and after a restart it
replays from the journal what it may have missed. We subscribe before writing (an event
journalled after that is ours to see), and write from a thread so the loop keeps reading
meanwhile. A library: the command's arguments and messages are in :mod:`pnpbroker.commands.trigger`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pnpbroker import coldplug
from pnpbroker.client import Event, Subscription, subscribe
from pnpbroker.errors import BrokerError

DEFAULT_TIMEOUT = 120.0


class NotSettled(TimeoutError, BrokerError):
    """Fewer events of the trigger were published than it caused, before the timeout."""

    def __init__(self, uuid: str, seen: int, wanted: int, timeout: float) -> None:
        super().__init__(
            f"timed out after {timeout:g} s: the broker published {seen} of {wanted} events "
            f"with SYNTH_UUID={uuid} (is it running, on this bus, and in this network namespace?)"
        )
        self.uuid, self.seen, self.wanted = uuid, seen, wanted


async def _count(events: Subscription, wanted: int, seen: list[int]) -> None:
    """Until ``wanted`` distinct events came; ``seen`` holds their sequences."""
    if len(seen) >= wanted:
        return
    async for item in events:
        if isinstance(item, Event):
            seen.append(item.sequence)
            if len(seen) >= wanted:
                return


async def settle(
    trigger: Callable[[], coldplug.TriggerResult], uuid: str, address: str | None, seconds: float
) -> tuple[coldplug.TriggerResult, float]:
    """Subscribe to the Events carrying SYNTH_UUID=``uuid``, run ``trigger`` (which writes that
    uuid) in a thread, and wait up to ``seconds`` for as many as it wrote; the result and the
    seconds it took. The client library's errors (:class:`pnpbroker.client.ClientError`) pass."""
    events = subscribe(properties={"SYNTH_UUID": uuid}, address=address)
    seen: list[int] = []
    async with events:
        start = time.monotonic()
        result = await asyncio.to_thread(trigger)
        try:
            async with asyncio.timeout(seconds):
                await _count(events, result.written, seen)
        except TimeoutError:
            raise NotSettled(uuid, len(seen), result.written, seconds) from None
        return result, time.monotonic() - start
