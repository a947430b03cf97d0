"""The subscription as a sans-I/O state machine: one logic for the asyncio, thread and GLib APIs.

:meth:`Session.run` is a generator. It yields what the subscription hands out (a
:class:`~.table.Device`, an :class:`~.model.Event`, an :class:`~.model.EventsLost`) and what it
needs done: :class:`Connect` (open a connection that feeds this :class:`Conn`), :class:`Call`
(a method call; resume with the reply's arguments, or throw :class:`~.model.CallFailed` or
``ConnectionError`` in), :class:`Wait` (until the connection's state changes: a signal, an owner
change, the end; or a timeout), :class:`Sleep`, and :data:`STARTED` (the starting point is
fixed). A driver (:mod:`.aio`, :mod:`.glib`) does these with its own bus library and loop.

Delivery: every event after the starting point exactly once, in sequence order. The match rule
is added first; then the journal is replayed with ``GetEvents`` up to where the broker was when
the rule took effect (``LastSequence``); later events arrive as signals; repeats are dropped by
sequence. With ``enumerate``, ``GetDevices`` (after the rule) gives the present devices and the
sequence to continue from, and the subscription keeps them current (``Session.devices``). A
restarted broker or a lost connection is followed by the same replay from the last sequence
accounted for. What cannot be delivered raises :class:`~.model.JournalGap` or
:class:`~.model.BrokerReset` (with ``enumerate``: an EventsLost, then the devices again).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Final

from .model import (
    BUS_NAME,
    DBUS,
    ERROR_JOURNAL_GAP,
    INTERFACE,
    OBJECT_PATH,
    BrokerReset,
    CallFailed,
    ClientError,
    ConnectionLost,
    Event,
    EventsLost,
    Filter,
    Item,
    JournalGap,
    _plain,
)
from .table import Device, DeviceTable

PAGE: Final = 1024
EVENT_SIGNATURE: Final = "tsssa{ss}a{sv}"
POLL_MAX: Final = 1.0
RECONNECT_FIRST, RECONNECT_MAX = 0.2, 5.0
#: Errors that mean "the broker is not there right now": wait for it to come back.
ABSENT: Final = frozenset(
    f"{DBUS}.Error.{name}"
    for name in ("ServiceUnknown", "NameHasNoOwner", "NoReply", "Disconnected", "TimedOut")
)


@dataclass(frozen=True, slots=True)
class Signal:
    """A signal as the driver received it (``body``: its arguments)."""

    sender: str
    interface: str
    member: str
    signature: str
    body: tuple[Any, ...]


@dataclass(eq=False)
class Conn:
    """One connection's state: the broker's owner, the broker's signals in order, the end.

    The driver's message handler feeds it in arrival order, so an owner change
    (NameOwnerChanged) empties the inbox of the old owner's signals: the new owner re-sends what
    it did not finish publishing.
    """

    owner: str | None = None
    generation: int = 0
    closed: bool = False
    inbox: deque[Signal] = field(default_factory=deque)

    def on_signal(self, signal: Signal) -> None:
        if signal.sender == DBUS and signal.member == "NameOwnerChanged":
            if signal.body and signal.body[0] == BUS_NAME:
                self.set_owner(str(signal.body[2]) or None)
        elif signal.sender == self.owner is not None and signal.interface == INTERFACE:
            self.inbox.append(signal)

    def set_owner(self, owner: str | None) -> None:
        if owner != self.owner:
            self.owner = owner
            self.generation += 1
            self.inbox.clear()

    def on_closed(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class Connect:
    """Open a connection to the bus whose messages feed ``conn`` (closing the previous one)."""

    conn: Conn


@dataclass(frozen=True)
class Call:
    """A method call; ``body`` may hold :class:`~.model.Var` for variants."""

    destination: str
    path: str
    interface: str
    member: str
    signature: str
    body: tuple[Any, ...]


@dataclass(frozen=True)
class Wait:
    """Until the connection's state changed (or ``seconds`` passed)."""

    seconds: float | None = None


@dataclass(frozen=True)
class Sleep:
    seconds: float


class Started:
    """The starting point is fixed: from here on nothing is missed."""


STARTED: Final = Started()
Request = Connect | Call | Wait | Sleep | Started
Steps = Generator[Request | Item, Any, None]


def to_bus(member: str, *args: str) -> Call:
    return Call(DBUS, "/org/freedesktop/DBus", DBUS, member, "s" * len(args), args)


def to_broker(member: str, signature: str = "", *args: Any, interface: str = INTERFACE) -> Call:
    return Call(BUS_NAME, OBJECT_PATH, interface, member, signature, args)


def get_devices(wanted: Filter) -> Generator[Request, Any, tuple[int, list[Device]]]:
    """GetDevices with ``wanted``: the table's sequence and its matching devices."""
    sequence, rows = yield to_broker("GetDevices", "a{sv}", wanted.options())
    return int(sequence), [Device.from_row(row) for row in rows]


def one_call(wanted: Filter) -> Generator[Request, Any, tuple[int, list[Device]]]:
    """Connect, then :func:`get_devices` (``pnpclient.devices``)."""
    yield Connect(Conn())
    return (yield from get_devices(wanted))


class Session:
    """One subscription's state and logic: see the module docstring."""

    def __init__(self, wanted: Filter, after: int | None, enumerate: bool, reconnect: bool) -> None:
        if enumerate and (wanted.actions or after is not None):
            raise ValueError("enumerate=True follows every action from the present devices on")
        self.filter = wanted
        self.position = after
        self.enumerate = enumerate
        self.reconnect = reconnect
        #: With ``enumerate``: the devices that match, as of ``position``.
        self.devices: DeviceTable | None = None
        self.conn = Conn()
        self._last: tuple[int, str, str, str] | None = None
        self._resync = enumerate

    def run(self) -> Steps:
        yield from self._connect(first=True)
        if self.conn.owner is not None:
            # If it is gone again, "from now" becomes the moment it is back.
            with contextlib.suppress(CallFailed, ConnectionError):
                if self.enumerate:
                    yield from self._read_table()
                elif self.position is None:
                    self.position = (yield from self._sequences())[0]
        yield STARTED
        if self.devices is not None:
            yield from self.devices
        while True:
            with contextlib.suppress(ConnectionError):  # it broke during a call
                yield from self._session(self.conn)
            if not self.reconnect:
                raise ConnectionLost("the bus connection closed")
            yield from self._connect(first=False)

    def _connect(self, first: bool) -> Generator[Request, Any, None]:
        delay = RECONNECT_FIRST
        while True:
            self.conn = conn = Conn()
            try:
                yield Connect(conn)
                yield from self._subscribe(conn)
            except (ConnectionError, CallFailed) as exc:
                if first:
                    raise ConnectionLost(f"cannot connect to the bus: {exc}") from exc
            else:
                return
            yield Sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    def _subscribe(self, conn: Conn) -> Generator[Request, Any, None]:
        owner_rule = f"type='signal',sender='{DBUS}',member='NameOwnerChanged',arg0='{BUS_NAME}'"
        yield to_bus("AddMatch", owner_rule)
        try:
            (owner,) = yield to_bus("GetNameOwner", BUS_NAME)
            conn.set_owner(str(owner))
        except CallFailed:
            pass  # not running yet: NameOwnerChanged will say when it is
        for rule in self.filter.match_rules(self.enumerate):
            yield to_bus("AddMatch", rule)

    def _session(self, conn: Conn) -> Steps:
        """Catch up, then live signals, again after every broker restart, until disconnected."""
        while not conn.closed:
            if conn.owner is None:
                yield Wait()
                continue
            generation = conn.generation
            try:
                yield from self._catch_up(conn, generation)
            except CallFailed as exc:
                if exc.name not in ABSENT:
                    raise ClientError(f"the broker refused: {exc}") from exc
                if conn.generation == generation and not conn.closed:
                    yield Wait(POLL_MAX)
                continue
            yield from self._live(conn, generation)

    def _catch_up(self, conn: Conn, generation: int) -> Steps:
        """The devices (when asked for), then the journal up to where the broker is."""
        while True:
            if self._resync:
                yield from self._enumerate()
            try:
                yield from self._replay(conn, generation)
            except (JournalGap, BrokerReset):
                if not self.enumerate:
                    raise
            else:
                return
            yield EventsLost(self.position or 0, "")
            self._resync = True

    def _enumerate(self) -> Steps:
        yield from self._read_table()
        assert self.devices is not None
        yield from self.devices

    def _read_table(self) -> Generator[Request, Any, None]:
        sequence, found = yield from get_devices(self.filter)
        self.devices = DeviceTable(found, sequence, keep=self.filter.device)
        self.position, self._last, self._resync = sequence, None, False

    def _replay(self, conn: Conn, generation: int) -> Steps:
        """GetEvents from ``position`` up to LastSequence as it was once our rules were in place."""
        target, oldest = yield from self._sequences()
        if self.position is None:
            self.position = target  # "from now": every later event comes as a signal
            return
        self._check_continuity(target, oldest)
        yield from self._check_same_journal(oldest)
        while self.position < target and conn.generation == generation and not conn.closed:
            try:
                events = yield from self._get_events(self.position, PAGE)
            except CallFailed as exc:
                if exc.name == ERROR_JOURNAL_GAP:
                    raise JournalGap(self.position + 1, oldest) from exc
                raise
            if not events:  # below LastSequence but not returned: the journal lost them
                raise JournalGap(self.position + 1, oldest)
            for event in events:
                if event.sequence != self.position + 1:
                    raise JournalGap(self.position + 1, event.sequence)
                yield from self._deliver(event)

    def _live(self, conn: Conn, generation: int) -> Steps:
        while conn.generation == generation and not conn.closed:
            if not conn.inbox:
                yield Wait()
                continue
            signal = conn.inbox.popleft()
            if signal.member == "EventsLost" and signal.signature == "ts":
                yield EventsLost(int(signal.body[0]), str(signal.body[1]))
                if self.enumerate:  # the broker reads sysfs again: so do we
                    self._resync = True
                    return
            elif signal.member == "Event" and signal.signature == EVENT_SIGNATURE:
                event = Event.from_body(signal.body)
                assert self.position is not None
                if event.sequence > self.position:  # else a repeat after a broker restart
                    yield from self._deliver(event)

    def _deliver(self, event: Event) -> Steps:
        self.position = event.sequence
        self._last = event.fingerprint()
        if self.devices is not None:
            if self.devices.apply(event.sequence, event.properties):
                yield event
        elif self.filter(event):
            yield event

    def _sequences(self) -> Generator[Request, Any, tuple[int, int]]:
        """(LastSequence, OldestSequence): no Event signal sent so far is past the first, and
        GetEvents returns every event up to it."""
        call = to_broker("GetAll", "s", INTERFACE, interface="org.freedesktop.DBus.Properties")
        (props,) = yield call
        return int(_plain(props["LastSequence"])), int(_plain(props["OldestSequence"]))

    def _get_events(self, after: int, limit: int) -> Generator[Request, Any, list[Event]]:
        (rows,) = yield to_broker("GetEvents", "tu", after, limit)
        return [Event.from_body(row) for row in rows]

    def _check_continuity(self, target: int, oldest: int) -> None:
        assert self.position is not None
        if target < self.position:
            raise BrokerReset(self.position, target, f"its journal ends at sequence {target}")
        if target > self.position and not 0 < oldest <= self.position + 1:
            raise JournalGap(self.position + 1, oldest)

    def _check_same_journal(self, oldest: int) -> Generator[Request, Any, None]:
        """The event we delivered last must still be the one at its sequence."""
        last = self._last
        if last is None or self.position != last[0] or not 0 < oldest <= last[0]:
            return
        found = yield from self._get_events(last[0] - 1, 1)
        if found and found[0].sequence == last[0] and found[0].fingerprint() != last:
            raise BrokerReset(last[0], last[0], f"its event {last[0]} is not the one delivered")
