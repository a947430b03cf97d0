"""The asyncio API: :func:`subscribe` and :func:`devices`, over dbus-fast.

This module drives :class:`~.protocol.Session` with dbus-fast's asyncio ``MessageBus``: it
opens connections, makes the calls and wakes the session when a signal arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator, Iterable, Mapping
from types import TracebackType
from typing import Any

from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from .model import DBUS, CallFailed, Filter, Item, Position, Var, make_filter
from .protocol import (
    Call,
    Conn,
    Connect,
    Request,
    Session,
    Signal,
    Sleep,
    Started,
    Wait,
    one_call,
)
from .table import Device, DeviceTable

#: A call not answered in this long is asked again (dbus-fast's calls would wait forever).
CALL_SECONDS = 10.0


def _variants(value: Any) -> Any:
    """A call's arguments with :class:`Var` as dbus-fast's Variant."""
    if isinstance(value, Var):
        return Variant(value.signature, _variants(value.value))
    if isinstance(value, dict):
        return {key: _variants(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_variants(item) for item in value]
    return value


class _Bus:
    """One dbus-fast connection feeding a :class:`Conn`."""

    def __init__(self, conn: Conn, address: str | None) -> None:
        self.conn = conn
        self.address = address
        self.bus: MessageBus | None = None
        self._changed = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    async def open(self) -> None:
        try:
            bus = MessageBus(bus_address=self.address, bus_type=BusType.SYSTEM)
            self.bus = await bus.connect()
        except (OSError, EOFError, DBusError, ValueError) as exc:
            raise ConnectionError(str(exc) or type(exc).__name__) from exc
        self.bus.add_message_handler(self._on_message)
        self._watcher = asyncio.ensure_future(self._watch(self.bus))

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL:
            signal = Signal(
                msg.sender or "",
                msg.interface or "",
                msg.member or "",
                msg.signature,
                tuple(msg.body),
            )
            self.conn.on_signal(signal)
            self._changed.set()

    async def _watch(self, bus: MessageBus) -> None:
        with contextlib.suppress(Exception):
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        self.conn.on_closed()
        self._changed.set()

    async def call(self, call: Call) -> list[Any]:
        assert self.bus is not None
        msg = Message(
            destination=call.destination,
            path=call.path,
            interface=call.interface,
            member=call.member,
            signature=call.signature,
            body=_variants(call.body),
        )
        try:
            async with asyncio.timeout(CALL_SECONDS):
                reply = await self.bus.call(msg)
        except TimeoutError:  # a daemon whose queue for us is full drops replies too
            raise CallFailed(f"{DBUS}.Error.NoReply", f"no reply to {call.member}") from None
        except (OSError, EOFError) as exc:
            raise ConnectionError(str(exc) or type(exc).__name__) from exc
        if reply is None:
            raise ConnectionError("no reply")
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise CallFailed(reply.error_name or "", text)
        return list(reply.body)

    async def wait(self, seconds: float | None) -> None:
        """Until the connection's state changes, or ``seconds``. (Not ``wait_for``: on 3.11 it
        can swallow a cancellation that comes as the event is set, and Ctrl-C would be lost.)"""
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._changed.wait()

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self.bus is not None:
            self.bus.disconnect()


class _Driver:
    """Runs a session's generator: does what it asks, returns what it hands out."""

    def __init__(self, steps: Generator[Any, Any, Any], address: str | None) -> None:
        self.steps = steps
        self.address = address
        self.bus: _Bus | None = None
        self.result: Any = None

    async def next(self) -> Item | Started | None:
        """The next item or STARTED; None when the generator returned (its value in result)."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = self.steps.throw(error) if error is not None else self.steps.send(value)
            except StopIteration as stop:
                self.result = stop.value
                return None
            value, error = None, None
            if not isinstance(step, Connect | Call | Wait | Sleep):
                handed: Item | Started = step
                return handed
            try:
                value = await self._do(step)
            except (CallFailed, ConnectionError) as exc:
                error = exc

    async def _do(self, step: Request) -> Any:
        if isinstance(step, Connect):
            self.close()
            self.bus = _Bus(step.conn, self.address)
            await self.bus.open()
        elif isinstance(step, Call):
            assert self.bus is not None
            return await self.bus.call(step)
        elif isinstance(step, Wait):
            assert self.bus is not None
            await self.bus.wait(step.seconds)
        elif isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
        return None

    def close(self) -> None:
        if self.bus is not None:
            self.bus.close()
            self.bus = None


class Subscription:
    """An async iterator of :data:`~.model.Item`: with ``enumerate``, each present
    :class:`~.table.Device` first; then :class:`~.model.Event` and :class:`~.model.EventsLost`.

    ``position`` is how far it got (every sequence up to it delivered, or filtered out), with
    the broker's ``JournalId``: save ``str(position)`` and pass it as ``after`` to resume later
    without a gap or a repeat, or be told (:class:`~.model.JournalChanged`) that the broker's
    journal is another one. With ``enumerate``, ``devices`` is the table of matching devices
    as of ``position``.
    """

    def __init__(self, session: Session, address: str | None) -> None:
        self.session = session
        self._driver = _Driver(session.run(), address)
        self._started = False

    @property
    def filter(self) -> Filter:
        return self.session.filter

    @property
    def position(self) -> Position | None:
        return self.session.at

    @property
    def devices(self) -> DeviceTable | None:
        return self.session.devices

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Item:
        while True:
            step = await self._driver.next()
            if step is None:
                raise StopAsyncIteration
            if isinstance(step, Started):
                self._started = True
                continue
            return step

    async def start(self) -> None:
        """Connect and fix the starting point now; ``async with`` calls it, iterating does too.

        With ``after=None`` this is the moment "from now" means (or, if the broker is not
        running yet, the moment it appears); with ``enumerate``, the devices are read now
        (``devices``), and iterating yields them first.
        """
        while not self._started:
            step = await self._driver.next()
            if step is None:
                return
            self._started = isinstance(step, Started)

    async def aclose(self) -> None:
        self._driver.steps.close()
        self._driver.close()

    async def __aenter__(self) -> Subscription:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def subscribe(
    *,
    action: str | Iterable[str] | None = None,
    subsystem: str | Iterable[str] | None = None,
    devtype: str | Iterable[str] | None = None,
    devpath: str | None = None,
    properties: Mapping[str, str] | None = None,
    after: Position | str | int | None = None,
    enumerate: bool = False,
    address: str | None = None,
    reconnect: bool = True,
) -> Subscription:
    """Events from the broker, exactly once, in order; with ``enumerate``, the present devices
    first.

    ``after=None`` starts with events journalled from now on; ``after=`` a saved position
    (``str(events.position)``, or the :class:`~.model.Position`) replays every event after it
    first, and raises :class:`~.model.JournalChanged` if the broker's journal is another one;
    ``after=N`` (a bare sequence) does the same without that check (0: the whole journal).
    ``enumerate=True`` (no ``after``, no ``action``) yields the devices that match first, then
    every event that changes them.
    ``devpath`` is the device at that path and those below it; ``properties`` maps keys to glob
    patterns (``{"PRODUCT": "46d/*"}``), a key that is absent never matches. ``address``
    defaults to the system bus (``DBUS_SYSTEM_BUS_ADDRESS``). If the first connection fails,
    :class:`~.model.ConnectionLost` is raised; with ``reconnect`` a connection lost later is
    retried forever. A broker that is not running yet is waited for, and a broker restart is
    always followed. Use it as ``async with subscribe(...) as events``.
    """
    wanted = make_filter(action, subsystem, devtype, devpath, properties)
    return Subscription(Session(wanted, after, enumerate, reconnect), address)


async def devices(
    *,
    subsystem: str | Iterable[str] | None = None,
    devtype: str | Iterable[str] | None = None,
    devpath: str | None = None,
    properties: Mapping[str, str] | None = None,
    address: str | None = None,
) -> tuple[int, list[Device]]:
    """The devices present that match (GetDevices), and the sequence the table is at: the
    events after it are the ones that changed the table since. :class:`~.model.CallFailed`
    (a :class:`~.model.ClientError`) when the broker cannot answer."""
    wanted = make_filter(None, subsystem, devtype, devpath, properties)
    driver = _Driver(one_call(wanted), address)
    try:
        await driver.next()
    except ConnectionError as exc:
        raise CallFailed("org.freedesktop.DBus.Error.Disconnected", str(exc)) from exc
    finally:
        driver.close()
    result: tuple[int, list[Device]] = driver.result
    return result
