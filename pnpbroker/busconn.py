"""One connection to the system bus that a burst of signals can never break.

dbus-fast (like dbus-next, issue 153 there) treats ``EAGAIN`` from a full socket as a fatal error
and drops the connection. Two measures keep that from happening, both confined to this module:

- signals are queued on the writer as whole windows (one buffer, one write), and its socket
  is wrapped so that ``EAGAIN`` means "0 bytes written, wait for writable",
  which the writer already handles for short writes;
- :meth:`BusLink.barrier` makes a round trip to the bus daemon (``GetId``); its reply proves
  the daemon has read every message sent before it. The publisher keeps at most two windows
  unacknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from dbus_fast import BusType, Message, NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

from pnpbroker import names
from pnpbroker.bus.wire import to_bus_daemon
from pnpbroker.errors import BrokerError
from pnpbroker.service import track_callers

log = logging.getLogger(__name__)


class NameTaken(RuntimeError, BrokerError):
    """Another connection owns the broker's bus name."""


class _SendWaitsOnEAGAIN:
    """A socket whose ``send`` reports a full buffer as a zero-length write."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: Any) -> int:
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0

    def sendmsg(self, *args: Any) -> int:
        try:
            return self._sock.sendmsg(*args)
        except BlockingIOError:
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class BusLink:
    """A connected bus that owns ``org.pnp.Broker`` and exports the service object."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        writer = bus._writer
        assert writer is not None, "connect() first"
        assert writer.sock is not None, "connect() first"
        writer.sock = _SendWaitsOnEAGAIN(writer.sock)  # type: ignore[assignment]
        self._writer = writer

    @classmethod
    async def connect(cls, address: str | None, service: ServiceInterface) -> BusLink:
        """Connect, export ``service`` and take the name; raise NameTaken if someone has it."""
        bus = MessageBus(bus_address=address, bus_type=BusType.SYSTEM)
        await bus.connect()
        link = cls(bus)
        track_callers(bus)
        bus.export(names.OBJECT_PATH, service)
        reply = await bus.request_name(names.BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            bus.disconnect()
            raise NameTaken(f"{names.BUS_NAME} is owned by another connection")
        return link

    def emit(self, member: str, signature: str, body: list[Any]) -> None:
        """Queue one signal; no future, no await: ordering and flow control are the caller's."""
        self.emit_many(member, signature, [body])

    def emit_many(self, member: str, signature: str, bodies: list[list[Any]]) -> None:
        """Queue signals as one buffer, so a window of them costs one write, not one each."""
        buf = bytearray()
        for body in bodies:
            msg = Message.new_signal(names.OBJECT_PATH, names.INTERFACE, member, signature, body)
            msg.serial = self.bus.next_serial()
            buf += msg._marshall(self._writer.negotiate_unix_fd)
        self._writer.messages.append((buf, None, None))
        self._writer.schedule_write(None, None)

    def barrier(self) -> asyncio.Future[Message]:
        """A future that resolves once the bus daemon has read everything sent so far."""
        # GetId, not Peer.Ping: a Debian system bus lets anyone call the daemon's own
        # interface, but refuses Peer calls to the daemon, root's included.
        return asyncio.ensure_future(self.bus.call(to_bus_daemon("GetId")))

    @property
    def connected(self) -> bool:
        return bool(self.bus.connected)

    async def wait_closed(self) -> None:
        """Return when the connection is gone, for whatever reason."""
        try:
            await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        except Exception as exc:
            log.warning("bus connection lost: %s", exc)

    def close(self) -> None:
        self.bus.disconnect()
