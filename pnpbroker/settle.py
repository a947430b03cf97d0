"""Waiting for the broker: until a trigger's events are published, or until it has caught up.

``pnpbroker trigger --settle``: the kernel answers each accepted ``uevent`` write with one event
carrying our SYNTH_UUID, so "settled" means: as many distinct events (by sequence) with
``properties["SYNTH_UUID"] == uuid`` as writes were accepted. We subscribe before writing (a
signal sent before the match exists is never seen) and write meanwhile (in a thread, or by the
broker's Trigger method), so the loop keeps reading signals.

Both believe only the broker: signals from the current owner of ``org.pnp.Broker``
(:meth:`pnpbroker.remote.Remote.on_broker_signal`), so another user's signal sent straight to
us counts for nothing; and each sequence counts once, so the repeats a restarted broker sends
(what it published before a crash, again) cannot end a settle early. A restart is followed:
the new owner's signals count from the moment it owns the name.

``pnpbroker settle``: the broker has handled every event it had journalled when asked (its
``LastSequence`` reached ``Statistics["journalled"]``), or a given sequence. A library: the
commands' arguments and messages are in :mod:`pnpbroker.commands`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from dbus_fast import Message

from pnpbroker import names
from pnpbroker.bus.wire import EVENT_SIGNATURE
from pnpbroker.errors import BrokerError
from pnpbroker.remote import Remote, event_rule

DEFAULT_TIMEOUT = 120.0
R = TypeVar("R")


class NotSettled(TimeoutError, BrokerError):
    """Fewer events of the trigger were published than it caused, before the timeout."""

    def __init__(self, uuid: str, seen: int, wanted: int, timeout: float) -> None:
        super().__init__(
            f"timed out after {timeout:g} s: the broker published {seen} of {wanted} events "
            f"with SYNTH_UUID={uuid} (is it running, on this bus, and in this network namespace?)"
        )
        self.uuid, self.seen, self.wanted = uuid, seen, wanted


class NotCaughtUp(TimeoutError, BrokerError):
    """The broker did not handle the events up to a sequence before the timeout."""

    def __init__(self, wanted: int, reached: int, timeout: float, paused: bool) -> None:
        why = " (it is paused)" if paused else ""
        super().__init__(
            f"timed out after {timeout:g} s: the broker handled up to sequence {reached}, "
            f"not {wanted}{why}"
        )
        self.wanted, self.reached = wanted, reached


class Watcher:
    """Counts the broker's Event signals that carry one SYNTH_UUID, each sequence once."""

    def __init__(self, remote: Remote, uuid: str) -> None:
        self.uuid = uuid
        self.sequences: set[int] = set()
        self.wanted: int | None = None
        self._done = asyncio.Event()
        remote.on_broker_signal(self._on_signal)

    @property
    def seen(self) -> int:
        return len(self.sequences)

    @classmethod
    async def connect(cls, remote: Remote, uuid: str) -> Watcher:
        """Subscribe; once this returns, no matching signal can be missed."""
        watcher = cls(remote, uuid)
        await remote.add_match(event_rule())
        await remote.follow_owner()
        return watcher

    def _on_signal(self, msg: Message) -> None:
        if msg.member != "Event" or msg.interface != names.INTERFACE:
            return
        if msg.signature == EVENT_SIGNATURE and msg.body[4].get("SYNTH_UUID") == self.uuid:
            self.sequences.add(int(msg.body[0]))
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


async def settle(
    run: Callable[[Remote], Awaitable[R]],
    written: Callable[[R], int],
    uuid: str,
    address: str | None,
    seconds: float,
) -> tuple[R, float]:
    """Subscribe to the Events carrying SYNTH_UUID=``uuid``, then ``run`` the trigger that
    writes that uuid, and wait up to ``seconds`` for as many events as it ``written``; the
    trigger's result and the seconds it took."""
    remote = await Remote.connect(address)
    try:
        watcher = await Watcher.connect(remote, uuid)
        start = time.monotonic()
        result = await run(remote)
        await watcher.wait(written(result), seconds)
        return result, time.monotonic() - start
    finally:
        remote.close()


async def caught_up(address: str | None, sequence: int | None, seconds: float) -> int:
    """Wait until the broker has handled every event up to ``sequence`` (None: every event it
    had journalled when asked); return that sequence. NotCaughtUp after ``seconds``;
    RemoteError if the broker does not answer."""
    remote = await Remote.connect(address)
    try:
        reached = asyncio.Event()
        last = 0

        def on_signal(msg: Message) -> None:
            nonlocal last
            if msg.member == "Event" and msg.signature == EVENT_SIGNATURE:
                last = max(last, int(msg.body[0]))
                if last >= wanted:
                    reached.set()

        wanted = 1 << 64  # not known before GetAll: no signal settles it before that
        remote.on_broker_signal(on_signal)
        await remote.add_match(event_rule())
        await remote.follow_owner()
        props = await remote.properties()
        wanted = props["Statistics"]["journalled"] if sequence is None else sequence
        last = max(last, props["LastSequence"])
        if last >= wanted:
            return wanted
        try:
            async with asyncio.timeout(seconds):
                await reached.wait()
        except TimeoutError:
            paused = bool((await remote.properties())["Paused"])
            raise NotCaughtUp(wanted, last, seconds, paused) from None
        return wanted
    finally:
        remote.close()
