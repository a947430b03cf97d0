"""The subscription as a sans-I/O state machine: one logic for the asyncio, thread and GLib APIs.

:meth:`Session.run` is a generator. It yields what the subscription hands out (a
:class:`~.table.Device`, an :class:`~.model.Event`, an :class:`~.model.EventsLost`) and what it
needs done: :class:`Connect` (open a connection that feeds this :class:`Conn`), :class:`Call`
(a method call; resume with the reply's arguments, or throw :class:`~.model.CallFailed` or
``ConnectionError`` in), :class:`Wait` (until the connection's state changes: a signal, an owner
change, the end; or a timeout), :class:`Sleep`, and :data:`STARTED` (the starting point is
fixed). A driver (:mod:`.aio`, :mod:`.glib`) does these with its own bus library and loop.

Delivery: every event after the starting point exactly once, in sequence order, and every
loss (:class:`~.model.EventsLost`) in its place. The match rule is added first; then the journal
is replayed with ``GetEvents2`` (filtered by the broker) up to where the broker was when the
rule took effect (``LastSequence``); later events arrive as signals; repeats are dropped by
sequence. With ``enumerate``, ``GetDevices`` (after the rule) gives the present devices and the
sequence to continue from, and the subscription keeps them current (``Session.devices``). A
restarted broker or a lost connection is followed by the same replay from the last sequence
accounted for. The position carries the broker's ``JournalId``: a broker on another journal is
:class:`~.model.JournalChanged`. What cannot be delivered raises :class:`~.model.JournalGap` or
:class:`~.model.BrokerReset` (with ``enumerate``: an EventsLost, then the devices again).

Signals can be lost on the way: the bus daemon drops those meant for a client whose queue is
full (a loop that stalled during a burst), and with filters on the bus the sequence shows no
gap. A queue fills only with signals for us, so some do arrive around a loss: after signals
came, once none came for ``CHECK_SECONDS``, the session compares ``LastSequence`` with its
position and, if the broker is ahead, replays from the journal as at the start; without a filter
on the bus it does so at once when a sequence jumps, and when more than ``INBOX_MAX`` signals
wait unread (the inbox is bounded). An idle subscription asks nothing.
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
    JournalChanged,
    JournalGap,
    Position,
    _plain,
)
from .table import Device, DeviceTable

PAGE: Final = 1024
EVENT_SIGNATURE: Final = "tsssa{ss}a{sv}"
POLL_MAX: Final = 1.0
#: Signals kept unread at most; past it they are dropped and read again from the journal.
INBOX_MAX: Final = 1024
#: After signals came, once none came for this long, compare LastSequence with our position.
CHECK_SECONDS: Final = 1.0
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
    #: Signals were dropped from the full inbox: what they carried is read from the journal.
    overflowed: bool = False

    def on_signal(self, signal: Signal) -> None:
        if signal.sender == DBUS and signal.member == "NameOwnerChanged":
            if signal.body and signal.body[0] == BUS_NAME:
                self.set_owner(str(signal.body[2]) or None)
        elif signal.sender == self.owner is not None and signal.interface == INTERFACE:
            if len(self.inbox) >= INBOX_MAX:
                self.inbox.clear()
                self.overflowed = True
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

    def __init__(
        self,
        wanted: Filter,
        after: Position | str | int | None,
        enumerate: bool,
        reconnect: bool,
    ) -> None:
        if enumerate and (wanted.actions or after is not None):
            raise ValueError("enumerate=True follows every action from the present devices on")
        start = None if after is None else Position.of(after)
        self.filter = wanted
        #: The highest sequence accounted for (delivered, or filtered out).
        self.position = None if start is None else start.sequence
        #: The broker's JournalId that ``position`` is in ("": not known yet, not checked).
        self.journal_id = "" if start is None else start.journal_id
        self.enumerate = enumerate
        self.reconnect = reconnect
        #: With ``enumerate``: the devices that match, as of ``position``.
        self.devices: DeviceTable | None = None
        self.conn = Conn()
        self._resync = enumerate
        self._unchecked = False  # signals came since LastSequence was last compared

    @property
    def at(self) -> Position | None:
        """``position`` with its journal: what to save, and pass as ``after`` to resume."""
        return None if self.position is None else Position(self.journal_id, self.position)

    def run(self) -> Steps:
        yield from self._connect(first=True)
        if self.conn.owner is not None:
            # If it is gone again, "from now" becomes the moment it is back.
            with contextlib.suppress(CallFailed, ConnectionError):
                if self.enumerate:
                    yield from self._read_table()
                elif self.position is None:
                    self.position, _, self.journal_id = yield from self._sequences()
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
                yield from self._live(conn, generation)
            except CallFailed as exc:
                if exc.name not in ABSENT:
                    raise ClientError(f"the broker refused: {exc}") from exc
                if conn.generation == generation and not conn.closed:
                    yield Wait(POLL_MAX)

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
                if not self._resync:  # a loss in the replay: the devices again
                    return
                continue
            yield EventsLost(self.position or 0, "")
            self._resync = True

    def _enumerate(self) -> Steps:
        yield from self._read_table()
        assert self.devices is not None
        yield from self.devices

    def _read_table(self) -> Generator[Request, Any, None]:
        sequence, found = yield from get_devices(self.filter)
        self.devices = DeviceTable(found, sequence, keep=self.filter.device)
        self.position, self._resync = sequence, False
        self.journal_id = (yield from self._sequences())[2] or self.journal_id

    def _replay(self, conn: Conn, generation: int) -> Steps:
        """GetEvents2 from ``position`` up to LastSequence as it was once our rules were in
        place (the broker's journal checked first)."""
        target, oldest, journal_id = yield from self._sequences()
        self._unchecked = False
        if self.position is None:
            self.position, self.journal_id = target, journal_id  # "from now": signals follow
            return
        self._check_journal(journal_id, target, oldest)
        while self.position < target and conn.generation == generation and not conn.closed:
            before = self.position
            try:
                items, through = yield from self._get_page(before)
            except CallFailed as exc:
                if exc.name == ERROR_JOURNAL_GAP:
                    raise JournalGap(before + 1, oldest) from exc
                raise
            if through <= before:
                raise JournalGap(before + 1, oldest)  # below LastSequence, yet not returned
            for item in items:
                if item.sequence > self.position:
                    yield from self._deliver(item)
                    if self._resync:
                        return
            self.position = max(self.position, through)

    def _live(self, conn: Conn, generation: int) -> Steps:
        """Signals as they come; back to the journal (a return: ``_session`` replays) when some
        may have been lost on the way."""
        while conn.generation == generation and not conn.closed:
            if conn.overflowed:
                conn.overflowed = False
                return
            if not conn.inbox:
                if not self._unchecked:
                    yield Wait()
                    continue
                yield Wait(CHECK_SECONDS)
                if conn.inbox or conn.generation != generation or conn.closed:
                    continue
                self._unchecked = False
                assert self.position is not None
                if (yield from self._last_sequence()) > self.position:
                    return  # signals were dropped, or only events we filter out came
                continue
            self._unchecked = True
            item = _item(conn.inbox.popleft())
            assert self.position is not None
            if item is None or item.sequence <= self.position:
                continue  # not ours, or a repeat after a broker restart or a replay
            if item.sequence > self.position + 1 and not self.filter.on_bus(self.enumerate):
                return  # a jump where every sequence comes: read the journal
            yield from self._deliver(item)
            if self._resync:
                return

    def _deliver(self, item: Event | EventsLost) -> Steps:
        self.position = item.sequence
        if isinstance(item, EventsLost):
            yield item
            if self.enumerate:  # the broker reads sysfs again: so do we
                self._resync = True
        elif self.devices is not None:
            if self.devices.apply(item.sequence, item.properties):
                yield item
        elif self.filter(item):
            yield item

    def _sequences(self) -> Generator[Request, Any, tuple[int, int, str]]:
        """(LastSequence, OldestSequence, JournalId): no signal sent so far is past the first,
        and GetEvents2 returns every entry up to it."""
        call = to_broker("GetAll", "s", INTERFACE, interface="org.freedesktop.DBus.Properties")
        (props,) = yield call
        journal_id = str(_plain(props["JournalId"])) if "JournalId" in props else ""
        last, oldest = int(_plain(props["LastSequence"])), int(_plain(props["OldestSequence"]))
        return last, oldest, journal_id

    def _last_sequence(self) -> Generator[Request, Any, int]:
        props = "org.freedesktop.DBus.Properties"
        (value,) = yield to_broker("Get", "ss", INTERFACE, "LastSequence", interface=props)
        return int(_plain(value))

    def _get_page(
        self, after: int
    ) -> Generator[Request, Any, tuple[list[Event | EventsLost], int]]:
        """GetEvents2: the matching events and every loss after ``after``, in order, and how
        far the broker looked."""
        options = self.filter.event_options()
        events, lost, through = yield to_broker("GetEvents2", "tua{sv}", after, PAGE, options)
        items: list[Event | EventsLost] = [Event.from_body(row) for row in events]
        items += [EventsLost(int(sequence) - 1, str(uuid)) for sequence, uuid in lost]
        items.sort(key=lambda item: item.sequence)
        return items, int(through)

    def _check_journal(self, journal_id: str, target: int, oldest: int) -> None:
        assert self.position is not None
        if self.journal_id and journal_id and self.journal_id != journal_id:
            raise JournalChanged(self.position, self.journal_id, journal_id)
        self.journal_id = self.journal_id or journal_id
        if target < self.position:
            raise BrokerReset(self.position, target, f"its journal ends at sequence {target}")
        if target > self.position and not 0 < oldest <= self.position + 1:
            raise JournalGap(self.position + 1, oldest)


def _item(signal: Signal) -> Event | EventsLost | None:
    """The Event or EventsLost a signal carries (None for anything else)."""
    if signal.member == "EventsLost" and signal.signature == "ts":
        return EventsLost(int(signal.body[0]), str(signal.body[1]))
    if signal.member == "Event" and signal.signature == EVENT_SIGNATURE:
        return Event.from_body(signal.body)
    return None
