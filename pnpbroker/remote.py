"""Calls to the running broker over the bus, for the commands that ask it things.

``pnpbroker control``, ``info``, ``settle`` and ``trigger`` (as a user other than root) use it:
a dbus-fast connection, the broker's methods and properties by name, and errors as
:class:`RemoteError` carrying the D-Bus error name. A library: it prints nothing.

Signals are believed only from the broker: :meth:`Remote.follow_owner` learns which connection
owns ``org.pnp.Broker`` (GetNameOwner, then the bus daemon's NameOwnerChanged, applied in the
order they arrive), and :meth:`Remote.on_broker_signal` hears only that connection. A match
rule on ``sender='org.pnp.Broker'`` is not enough: any connection may send a signal straight
to ours, and the bus daemon delivers it whatever our rules say.
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
DBUS = "org.freedesktop.DBus"
#: The bus daemon's news of who owns org.pnp.Broker.
OWNER_RULE = (
    f"type='signal',sender='{DBUS}',interface='{DBUS}',member='NameOwnerChanged',"
    f"arg0='{names.BUS_NAME}'"
)
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
        self.owner: str | None = None  # the unique name owning org.pnp.Broker, once followed
        self._changes = 0  # NameOwnerChanged signals seen
        self._query: Message | None = None  # the GetNameOwner call in flight
        self._changes_at_reply = -1

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

    async def follow_owner(self) -> None:
        """Learn the broker's owner now and follow its changes (call before relying on it)."""
        self.bus.add_message_handler(self._owner_news)
        await self.add_match(OWNER_RULE)
        self._query = to_bus_daemon("GetNameOwner", "s", [names.BUS_NAME])
        reply = await self.bus.call(self._query)
        # The reply is older than a NameOwnerChanged that came after it, newer than one before.
        known = reply is not None and reply.message_type is MessageType.METHOD_RETURN
        if self._changes_at_reply == self._changes:
            self.owner = str(reply.body[0]) if known and reply is not None else None

    def _owner_news(self, msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL:
            ours = msg.member == "NameOwnerChanged" and msg.body and msg.body[0] == names.BUS_NAME
            if msg.sender == DBUS and ours:
                self.owner = msg.body[2] or None
                self._changes += 1
        elif self._query is not None and msg.reply_serial == self._query.serial:
            self._changes_at_reply = self._changes

    def on_broker_signal(self, handler: Callable[[Message], None]) -> None:
        """``handler(message)`` for every signal from the broker's current owner
        (:meth:`follow_owner` first); signals from anyone else are dropped."""

        def signals(msg: Message) -> None:
            if msg.message_type is MessageType.SIGNAL and msg.sender == self.owner is not None:
                handler(msg)

        self.bus.add_message_handler(signals)

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
