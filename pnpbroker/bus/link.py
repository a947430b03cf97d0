"""The publish queue's link over dbus-fast: the one module that touches dbus-fast's internals.

The link owns the sending side of its connection (:class:`pnpbroker.bus.writer.Writer` in place
of dbus-fast's writer, which drops the connection on ``EAGAIN``: python-dbus-next issue 153).
Its flow control is the socket's own:

- :meth:`BusLink.send` turns a batch of entries into whole signal messages
  (:mod:`pnpbroker.bus.frames`: a header made once, the body marshalled per event) and hands
  them to the writer as one buffer: they go out in one write as far as the socket takes them;
- :meth:`BusLink.drained` returns once the socket has taken all but a little of it: the
  publish queue waits there, so what waits in the broker is bounded by the socket, not by
  round trips;
- :meth:`BusLink.barrier` makes a round trip to the bus daemon (``GetId``); its reply proves
  the daemon has read every message sent before it. The publish queue asks for one rarely
  (every few thousand events, or a quiet moment): it moves the ``published`` cursor.

Those internals (``MessageBus._writer``, ``_sock``, ``_fd``, ``_loop``, ``_finalize``, what
dbus-fast calls on its writer, ``Message._marshall`` and ``Marshaller``) are what
:func:`check_internals` verifies: the dbus-fast version range is pinned in pyproject.toml, and
tests/test_dbus_fast.py fails loudly when a release changes them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re

from dbus_fast import BusType, Message, NameFlag, RequestNameReply
from dbus_fast._private.marshaller import Marshaller
from dbus_fast.aio import MessageBus
from dbus_fast.aio.message_bus import _MessageWriter
from dbus_fast.service import ServiceInterface

from pnpbroker import names
from pnpbroker.bus import frames
from pnpbroker.bus.wire import signal_of, to_bus_daemon
from pnpbroker.bus.writer import Writer
from pnpbroker.errors import BrokerError
from pnpbroker.journal import Entry

log = logging.getLogger(__name__)


class NameTaken(RuntimeError, BrokerError):
    """Another connection owns the broker's bus name."""


class InternalsChanged(RuntimeError, BrokerError):
    """The installed dbus-fast no longer has the internals this module relies on."""


def check_internals() -> None:
    """Raise InternalsChanged unless dbus-fast's connection, writer and marshaller look as the
    link, the writer and the frames use them."""
    problems = []
    if not callable(getattr(Message, "_marshall", None)):
        problems.append("Message._marshall is gone")
    if not callable(getattr(Marshaller, "marshall", None)):
        problems.append("Marshaller.marshall is gone")
    parameters = list(inspect.signature(_MessageWriter.schedule_write).parameters)
    if parameters != ["self", "msg", "future"]:
        problems.append(f"_MessageWriter.schedule_write takes {parameters}")
    source = inspect.getsource(MessageBus)
    called = set(re.findall(r"self\._writer\.(\w+)", source))
    if called != {"schedule_write"}:
        problems.append(f"MessageBus uses its writer's {sorted(called)}, not only schedule_write")
    for attribute in ("self._writer =", "self._sock =", "self._fd =", "self._loop", "_finalize("):
        if attribute not in source:
            problems.append(f"MessageBus no longer has {attribute.strip(' =(')}")
    if problems:
        raise InternalsChanged("dbus-fast changed: " + "; ".join(problems))


class BusLink:
    """A connected bus (after :meth:`serve`, the owner of ``org.pnp.Broker``); implements the
    publisher's ``Link``."""

    def __init__(self, bus: MessageBus) -> None:
        assert bus._writer is not None, "connect() first"
        self.bus = bus
        self.writer = Writer(bus)
        bus._writer = self.writer  # type: ignore[assignment]

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
        """Queue an Event signal per event and an EventsLost per loss, in order, as one
        buffer; ConnectionError if the connection is gone."""
        serial, frame = self.bus.next_serial, frames.signal
        self.writer.write(b"".join(frame(*signal_of(entry), serial()) for entry in entries))

    async def drained(self) -> None:
        """Return once the socket took all but a little of what was sent (at once if it did);
        ConnectionError if the connection fails first."""
        await self.writer.drained()

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
