"""A thread that records the broker's signals on a test bus, for synchronous tests to wait on."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from pnpbroker.bus.wire import to_bus_daemon

MATCH = "type='signal',sender='org.pnp.Broker',interface='org.pnp.Broker1'"

Signal = tuple[str, list[Any]]  # member, body


class Signals:
    """Subscribed from construction on; ``wait`` blocks until enough matching signals came."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.seen: list[Signal] = []
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._bus: MessageBus | None = None
        self._thread = threading.Thread(target=self._run, name="signals", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._connect())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _connect(self) -> None:
        bus = await MessageBus(bus_address=self.address, bus_type=BusType.SYSTEM).connect()
        bus.add_message_handler(self._on_message)
        await bus.call(to_bus_daemon("AddMatch", "s", [MATCH]))
        self._bus = bus

    def _on_message(self, msg: Message) -> None:
        if msg.message_type == MessageType.SIGNAL and msg.member is not None:
            with self._cond:
                self.seen.append((msg.member, list(msg.body)))
                self._cond.notify_all()

    def events(self) -> list[list[Any]]:
        with self._cond:
            return [body for member, body in self.seen if member == "Event"]

    def wait(
        self, wanted: Callable[[Signal], bool], count: int, timeout: float = 60.0
    ) -> list[Signal]:
        """The first ``count`` signals satisfying ``wanted``; TimeoutError with what was seen."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [s for s in self.seen if wanted(s)]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(found)} of {count} signals: {self.seen[-5:]}")
                self._cond.wait(left)

    def wait_until(
        self, done: Callable[[list[Signal]], bool], timeout: float = 60.0
    ) -> list[Signal]:
        """Every signal seen, once ``done(seen)`` holds (checked on each signal, and each second
        for what ``done`` reads besides); TimeoutError with what was seen."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done(self.seen):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.seen)} signals: {self.seen[-5:]}")
                self._cond.wait(min(left, 1.0))
            return list(self.seen)

    def close(self) -> None:
        async def disconnect() -> None:
            if self._bus is not None:
                self._bus.disconnect()

        asyncio.run_coroutine_threadsafe(disconnect(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def net_event(action: str, names: set[str], uuid: str | None = None) -> Callable[[Signal], bool]:
    """Event signals for net devices ``names`` with ``action`` (and SYNTH_UUID ``uuid``)."""

    def check(signal: Signal) -> bool:
        member, body = signal
        if member != "Event" or body[1] != action or body[2] != "net":
            return False
        props = body[4]
        return props.get("INTERFACE") in names and (uuid is None or props.get("SYNTH_UUID") == uuid)

    return check
