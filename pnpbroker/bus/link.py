"""The publish queue's link over dbus-fast: the one module that touches dbus-fast's internals.

dbus-fast (like dbus-next, issue 153 there) treats ``EAGAIN`` from a full socket as a fatal error
and drops the connection. Two measures keep that from happening, both here:

- events are queued on dbus-fast's writer as whole windows (one buffer, one write: each message
  marshalled with ``Message._marshall``, the buffer appended to ``_writer.messages``, then
  ``_writer.schedule_write()``), and the writer's socket is wrapped so that ``EAGAIN`` means
  "0 bytes written, wait for writable", which the writer already handles for short writes;
- :meth:`BusLink.barrier` makes a round trip to the bus daemon (``GetId``); its reply proves
  the daemon has read every message sent before it. The publisher keeps at most
  ``MAX_BARRIERS`` (four) windows unacknowledged.

Those internals (``MessageBus._writer``, its ``sock``, ``messages``, ``negotiate_unix_fd`` and
``schedule_write``, and ``Message._marshall``) are what :func:`check_internals` verifies: the
dbus-fast version range is pinned in pyproject.toml, and tests/test_dbus_fast.py fails loudly
when a release changes them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from collections import deque
from typing import Any

from dbus_fast import BusType, Message, NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.aio.message_bus import _MessageWriter
from dbus_fast.service import ServiceInterface

from pnpbroker import names
from pnpbroker.bus.wire import signal_of, to_bus_daemon
from pnpbroker.errors import BrokerError
from pnpbroker.journal import Entry

log = logging.getLogger(__name__)


class NameTaken(RuntimeError, BrokerError):
    """Another connection owns the broker's bus name."""


class InternalsChanged(RuntimeError, BrokerError):
    """The installed dbus-fast no longer has the internals this module relies on."""


def check_internals() -> None:
    """Raise InternalsChanged unless dbus-fast's writer and marshaller look as we use them."""
    problems = []
    if not callable(getattr(Message, "_marshall", None)):
        problems.append("Message._marshall is gone")
    parameters = list(inspect.signature(_MessageWriter.schedule_write).parameters)
    if parameters != ["self", "msg", "future"]:
        problems.append(f"_MessageWriter.schedule_write takes {parameters}")
    source = inspect.getsource(_MessageWriter)
    for attribute in ("self.messages", "self.sock", "self.negotiate_unix_fd", "sock.send("):
        if attribute not in source:
            problems.append(f"_MessageWriter no longer uses {attribute}")
    if problems:
        raise InternalsChanged("dbus-fast changed: " + "; ".join(problems))


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
    """A connected bus (after :meth:`serve`, the owner of ``org.pnp.Broker``); implements the
    publisher's ``Link``."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        writer = bus._writer
        assert writer is not None, "connect() first"
        assert writer.sock is not None, "connect() first"
        writer.sock = _SendWaitsOnEAGAIN(writer.sock)  # type: ignore[assignment]
        self._writer = writer

    @classmethod
    async def connect(cls, address: str | None) -> BusLink:
        """Connect to the bus at ``address`` (None: the system bus)."""
        bus = MessageBus(bus_address=address, bus_type=BusType.SYSTEM)
        await bus.connect()
        return cls(bus)

    async def serve(self, service: ServiceInterface) -> None:
        """Export ``service`` and take the broker's name; NameTaken if someone has it."""
        self.bus.export(names.OBJECT_PATH, service)
        reply = await self.bus.request_name(names.BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            self.bus.disconnect()
            raise NameTaken(f"{names.BUS_NAME} is owned by another connection")

    def send(self, entries: list[Entry]) -> None:
        """Queue an Event signal per event and an EventsLost per loss, in order, as one buffer."""
        self._queue([signal_of(entry) for entry in entries])

    def emit_many(self, member: str, signature: str, bodies: list[list[Any]]) -> None:
        """Queue signals as one buffer, so a window of them costs one write, not one each.
        No future, no await: ordering and flow control are the caller's."""
        self._queue([(member, signature, body) for body in bodies])

    def _queue(self, signals: list[tuple[str, str, list[Any]]]) -> None:
        buf = bytearray()
        for member, signature, body in signals:
            msg = Message.new_signal(names.OBJECT_PATH, names.INTERFACE, member, signature, body)
            msg.serial = self.bus.next_serial()
            buf += msg._marshall(self._writer.negotiate_unix_fd)
        messages: deque[Any] = self._writer.messages
        messages.append((buf, None, None))
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
