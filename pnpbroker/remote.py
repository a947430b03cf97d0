"""Calls to the running broker over the bus, for the commands that ask it things.

``pnpbroker control``, ``info``, ``settle`` and ``trigger`` (as a user other than root) use it:
a dbus-fast connection, the broker's methods and properties by name, and errors as
:class:`RemoteError` carrying the D-Bus error name. A library: it prints nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dbus_fast import BusType, DBusError, Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

from pnpbroker import names
from pnpbroker.bus.wire import to_bus_daemon
from pnpbroker.errors import BrokerError

PROPERTIES = "org.freedesktop.DBus.Properties"
#: The broker is not on the bus (not running, or on another bus).
NOT_RUNNING = frozenset(
    {"org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"}
)


class RemoteError(RuntimeError, BrokerError):
    """The broker (or the bus) answered a call with an error."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{text} ({name})" if text else name)
        self.name, self.text = name, text

    @property
    def not_running(self) -> bool:
        return self.name in NOT_RUNNING


class Remote:
    """One connection to the bus, for calls to the broker."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    @classmethod
    async def connect(cls, address: str | None) -> Remote:
        """Connect to the bus at ``address`` (None: the system bus); OSError if it cannot."""
        try:
            bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
        except (EOFError, DBusError) as exc:
            raise ConnectionError(f"cannot connect to the bus: {exc}") from exc
        return cls(bus)

    async def _send(self, msg: Message) -> list[Any]:
        reply = await self.bus.call(msg)
        if reply is None:
            raise ConnectionError("the bus connection closed")
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise RemoteError(reply.error_name or "", text)
        return list(reply.body)

    async def call(
        self, member: str, signature: str = "", body: Sequence[Any] = (), interface: str = ""
    ) -> list[Any]:
        """Call the broker's ``member``; polkit may ask the user (interactive authorization)."""
        msg = Message(
            destination=names.BUS_NAME,
            path=names.OBJECT_PATH,
            interface=interface or names.INTERFACE,
            member=member,
            signature=signature,
            body=list(body),
            flags=MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION,
        )
        return await self._send(msg)

    async def properties(self) -> dict[str, Any]:
        """Every property of the broker's interface, unwrapped."""
        (found,) = await self.call("GetAll", "s", [names.INTERFACE], interface=PROPERTIES)
        return {key: variant.value for key, variant in found.items()}

    async def add_match(self, rule: str) -> None:
        await self._send(to_bus_daemon("AddMatch", "s", [rule]))

    def on_signal(self, handler: Callable[[Message], None]) -> None:
        """``handler(message)`` for every signal this connection receives."""

        def signals(msg: Message) -> None:
            if msg.message_type is MessageType.SIGNAL:
                handler(msg)

        self.bus.add_message_handler(signals)

    def close(self) -> None:
        self.bus.disconnect()


def event_rule() -> str:
    """The match rule for the broker's Event signals."""
    return (
        f"type='signal',sender='{names.BUS_NAME}',path='{names.OBJECT_PATH}',"
        f"interface='{names.INTERFACE}',member='Event'"
    )
