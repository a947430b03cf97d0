"""Collect the broker's signals from a separate bus connection, as a real client would.

The collector subscribes with an ordinary match rule, so what it receives is what the bus policy
lets any client receive. Tests then wait for a condition on what arrived, with a timeout that
only stops a hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from pnpbroker.bus.wire import to_bus_daemon

BROKER_SIGNALS = "type='signal',sender='org.pnp.Broker',interface='org.pnp.Broker1'"


async def connect(address: str) -> MessageBus:
    """A dbus-fast connection to the (private) system bus at `address`."""
    return await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()


async def disconnect(bus: MessageBus) -> None:
    """Disconnect `bus` and wait until it is closed, so no reader outlives the test."""
    bus.disconnect()
    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


class SignalCollector:
    """Connects to `address`, adds `match` and appends every matching signal to `messages`."""

    def __init__(self, address: str, match: str = BROKER_SIGNALS) -> None:
        self.address = address
        self.match = match
        self.messages: list[Message] = []
        self._bus: MessageBus | None = None
        self._arrived = asyncio.Event()

    async def start(self) -> SignalCollector:
        """Connect and subscribe; signals sent after this returns are all collected."""
        self._bus = await connect(self.address)
        self._bus.add_message_handler(self._on_message)
        reply = await self._bus.call(to_bus_daemon("AddMatch", "s", [self.match]))
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            raise RuntimeError(f"AddMatch {self.match!r} failed: {reply and reply.body}")
        return self

    @property
    def bus(self) -> MessageBus:
        """The collector's connection (e.g. to call methods on the broker as the same client)."""
        if self._bus is None:
            raise RuntimeError("SignalCollector.start() was not awaited")
        return self._bus

    def _on_message(self, message: Message) -> None:
        if message.message_type == MessageType.SIGNAL:
            self.messages.append(message)
            self._arrived.set()

    def members(self, member: str) -> list[Message]:
        """The collected signals named `member` (e.g. "Event"), in arrival order."""
        return [m for m in self.messages if m.member == member]

    async def wait_for(
        self,
        predicate: Callable[[list[Message]], bool],
        timeout: float = 30.0,  # noqa: ASYNC109 - a hang guard every caller wants
    ) -> list[Message]:
        """Wait until `predicate(messages)` is true; returns `messages`.

        Raises TimeoutError naming how many signals had arrived, so a hang fails clearly.
        """
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self.messages):
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise TimeoutError(
                f"condition not met within {timeout} s; {len(self.messages)} signals collected"
            ) from None
        return self.messages

    async def wait_for_count(
        self,
        count: int,
        member: str = "Event",
        timeout: float = 30.0,  # noqa: ASYNC109 - a hang guard every caller wants
    ) -> list[Message]:
        """Wait until at least `count` signals named `member` arrived; returns those."""
        await self.wait_for(lambda _: len(self.members(member)) >= count, timeout)
        return self.members(member)

    async def close(self) -> None:
        """Disconnect and wait until the connection is closed. Safe to call twice."""
        if self._bus is not None:
            bus, self._bus = self._bus, None
            await disconnect(bus)

    async def __aenter__(self) -> SignalCollector:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
