"""pnpclient: subscribe to pnpbroker's device events, gap-free, from any unprivileged program.

One self-contained module: the standard library and dbus-fast, nothing of the broker's own.
It ships in the package as ``pnpbroker.client`` (``pnpbroker monitor`` uses it) and beside the
example scripts as ``examples/pnpclient.py`` (a symlink to this file): copy it into a project.

    async with subscribe(subsystem="usb", action=("add", "remove")) as events:
        async for item in events:
            if isinstance(item, EventsLost):
                ...  # the kernel dropped events: rescan
            else:
                print(item.sequence, item.action, item.devpath)

Delivery: every event after the starting point exactly once, in sequence order, and every
loss (:class:`EventsLost`) in its place. The match rule is added first; then the journal is
replayed with ``GetEvents2`` (filtered by the broker) up to where the broker was when the rule
took effect (``LastSequence``); later events arrive as signals; repeats are dropped by sequence.
A restarted broker or a lost bus connection is followed by the same replay from the last
sequence accounted for.

Signals can be lost on the way: the bus daemon drops those meant for a client whose queue is
full (a loop that stalled during a burst), and with filters on the bus the sequence shows no
gap. A queue fills only with signals for us, so some do arrive around a loss: after signals
came, once none came for ``CHECK_SECONDS``, the subscription compares ``LastSequence`` with
what it accounted for and, if the broker is ahead, reads what it may have missed from the
journal (``GetEvents2``, filtered by the broker), as at the start; so it does without a filter
at once when a sequence jumps, and when more than ``INBOX_MAX`` signals wait unread (its inbox
is bounded). An idle subscription asks nothing.

``position`` (a :class:`Position`: the broker's ``JournalId`` and a sequence) says how far it
got; resuming from it against another journal raises :class:`JournalChanged`. What cannot be
delivered raises: :class:`JournalGap` (the broker no longer holds the events wanted) and
:class:`BrokerReset` (the broker's journal is not the one the position is in). Nothing is
skipped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import itertools
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Final

from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

# The contract (kept equal to pnpbroker/names.py by the tests; this file imports nothing of ours).
BUS_NAME: Final = "org.pnp.Broker"
OBJECT_PATH: Final = "/org/pnp/Broker"
INTERFACE: Final = "org.pnp.Broker1"
ERROR_JOURNAL_GAP: Final = "org.pnp.Broker1.Error.NoLongerJournalled"
_DBUS: Final = "org.freedesktop.DBus"

PAGE: Final = 1024
#: Signals kept unread at most; past it they are dropped and read again from the journal.
INBOX_MAX: Final = 1024
#: With no signal for this long, compare LastSequence with what was accounted for.
CHECK_SECONDS: Final = 1.0
#: A call not answered in this long is asked again: a daemon whose queue for us is full drops
#: replies too (dbus-fast's calls wait forever).
CALL_SECONDS: Final = 10.0
_POLL_MAX = 1.0
_RECONNECT_FIRST, _RECONNECT_MAX = 0.2, 5.0


class ClientError(Exception):
    """Base class of what a subscription raises."""


class JournalGap(ClientError):
    """The broker no longer journals the events wanted (retention removed them)."""

    def __init__(self, wanted: int, oldest: int) -> None:
        super().__init__(
            f"events from sequence {wanted} are no longer journalled (oldest held: {oldest})"
        )
        self.wanted, self.oldest = wanted, oldest


class BrokerReset(ClientError):
    """The broker's sequence does not continue ours: it runs on another journal."""

    def __init__(self, position: int, last: int, why: str) -> None:
        super().__init__(f"broker reset: at sequence {position} we expected more; {why}")
        self.position, self.last = position, last


class JournalChanged(BrokerReset):
    """The broker's ``JournalId`` is not the one of our position: a fresh state directory, a
    damaged journal moved aside, or a power loss under ``journal_sync = "normal"``."""

    def __init__(self, position: int, expected: str, found: str) -> None:
        super().__init__(position, 0, f"its journal is {found}, not {expected}")
        self.expected, self.found = expected, found


@dataclass(frozen=True, slots=True)
class Position:
    """How far a subscription got: a sequence in the journal ``journal_id`` names ("" when not
    known: then it is not checked). Its text form ``JOURNALID:SEQUENCE`` is what to save."""

    journal_id: str
    sequence: int

    def __str__(self) -> str:
        return f"{self.journal_id}:{self.sequence}" if self.journal_id else str(self.sequence)

    @classmethod
    def parse(cls, text: str) -> Position:
        """``JOURNALID:SEQUENCE`` or a bare ``SEQUENCE``; ValueError otherwise."""
        journal_id, _, number = text.strip().rpartition(":")
        if not number.isdigit():
            raise ValueError(f"not a position (JOURNALID:SEQUENCE): {text!r}")
        return cls(journal_id, int(number))


class ConnectionLost(ClientError):
    """The bus connection failed and the subscription was asked not to reconnect."""


def _plain(value: Any) -> Any:
    """A D-Bus value without Variant wrappers (``runs`` nests a list of dicts of them)."""
    value = getattr(value, "value", value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the legacy program did with an event (``Event.handler``); None if none ran.

    ``runs`` holds each program's own outcome when the broker ran several for the event
    (``hotplug.d`` mode); ``raw`` is the whole ``a{sv}`` with the Variants unwrapped.
    """

    program: str
    status: int
    signal: int
    timed_out: bool
    duration: float
    skipped: bool
    error: str
    raw: Mapping[str, Any]
    runs: tuple[Outcome, ...] = ()

    @property
    def ok(self) -> bool:
        failed = self.signal or self.timed_out or self.skipped or self.error
        return self.status == 0 and not failed

    @classmethod
    def from_variants(cls, values: Mapping[str, Any]) -> Outcome | None:
        if not values:
            return None
        return cls._from_plain(MappingProxyType({k: _plain(v) for k, v in values.items()}))

    @classmethod
    def _from_plain(cls, plain: Mapping[str, Any]) -> Outcome:
        return cls(
            program=str(plain.get("program", "")),
            status=int(plain.get("status", 0)),
            signal=int(plain.get("signal", 0)),
            timed_out=bool(plain.get("timed_out", False)),
            duration=float(plain.get("duration", 0.0)),
            skipped=bool(plain.get("skipped", False)),
            error=str(plain.get("error", "")),
            raw=plain,
            runs=tuple(cls._from_plain(MappingProxyType(run)) for run in plain.get("runs", ())),
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One published device event, read-only. ``properties`` holds every uevent key."""

    sequence: int
    action: str
    subsystem: str
    devpath: str
    properties: Mapping[str, str]
    handler: Outcome | None

    @property
    def seqnum(self) -> int | None:
        """The kernel's SEQNUM (global across namespaces, restarts at boot)."""
        value = self.properties.get("SEQNUM", "")
        return int(value) if value.isdigit() else None

    @classmethod
    def from_body(cls, body: list[Any]) -> Event:
        """From an Event signal body or a GetEvents row (the same six fields)."""
        sequence, action, subsystem, devpath, props, handler = body
        return cls(
            int(sequence),
            action,
            subsystem,
            devpath,
            MappingProxyType(dict(props)),
            Outcome.from_variants(handler),
        )

    def fingerprint(self) -> tuple[int, str, str, str]:
        """What identifies this event in one broker's journal (to notice a reset)."""
        return (self.sequence, self.action, self.devpath, self.properties.get("SEQNUM", ""))


@dataclass(frozen=True, slots=True)
class EventsLost:
    """Events were lost after ``after_sequence`` (the kernel's buffer overflowed, the journal
    was at its cap or was replaced); the coldplug ``resync_uuid`` re-announces the devices ("":
    none started). The loss has its own place in the sequence: ``sequence``."""

    after_sequence: int
    resync_uuid: str

    @property
    def sequence(self) -> int:
        return self.after_sequence + 1


Item = Event | EventsLost


def _names(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class Filter:
    """Which events to deliver: actions/subsystems exactly, devpath by prefix, properties by glob.

    The first three become bus match rules (``arg1``, ``arg2``, ``arg3path``), so the bus
    daemon sends only matching signals; all of it is checked again here for replayed events.
    """

    actions: tuple[str, ...] = ()
    subsystems: tuple[str, ...] = ()
    devpath: str | None = None
    properties: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def match_rules(self) -> list[str]:
        base = f"type='signal',sender='{BUS_NAME}',path='{OBJECT_PATH}',interface='{INTERFACE}'"
        rules = []
        for action, subsystem in itertools.product(
            self.actions or [None], self.subsystems or [None]
        ):
            rule = f"{base},member='Event'"
            rule += f",arg1='{action}'" if action is not None else ""
            rule += f",arg2='{subsystem}'" if subsystem is not None else ""
            rule += f",arg3path='{_prefix(self.devpath)}'" if self.devpath else ""
            rules.append(rule)
        return [*rules, f"{base},member='EventsLost'"]

    def options(self) -> dict[str, Variant]:
        """The same filter for the broker's GetEvents2 (``a{sv}``)."""
        found: dict[str, Variant] = {}
        if self.actions:
            found["actions"] = Variant("as", list(self.actions))
        if self.subsystems:
            found["subsystems"] = Variant("as", list(self.subsystems))
        if self.devpath:
            found["devpath"] = Variant("s", self.devpath)
        if self.properties:
            found["properties"] = Variant("a{ss}", dict(self.properties))
        return found

    @property
    def everything(self) -> bool:
        """No filter at all: every sequence arrives, so a jump is a loss on the way."""
        return not self.options()

    def __call__(self, event: Event) -> bool:
        if self.actions and event.action not in self.actions:
            return False
        if self.subsystems and event.subsystem not in self.subsystems:
            return False
        if self.devpath and not event.devpath.startswith(_prefix(self.devpath)):
            return False
        return all(
            fnmatch.fnmatchcase(event.properties.get(key, ""), pattern)
            for key, pattern in self.properties.items()
        )


def _prefix(devpath: str) -> str:
    """``arg3path`` matches below a path only if it ends with ``/``: devices under ``devpath``."""
    return devpath.rstrip("/") + "/"


# Errors that mean "the broker is not there right now": wait for it to come back.
_ABSENT = frozenset(
    f"{_DBUS}.Error.{name}"
    for name in ("ServiceUnknown", "NameHasNoOwner", "NoReply", "Disconnected", "TimedOut")
)


class _Link:
    """One bus connection: our match rules, the broker's current owner, its signals in order.

    The message handler runs in arrival order, so an owner change (NameOwnerChanged) empties the
    inbox of the old owner's signals: the new owner re-sends what it did not finish publishing.
    """

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.owner: str | None = None
        self.generation = 0
        self.inbox: deque[Message] = deque()
        self.overflowed = False  # signals were dropped from the inbox: read the journal
        self.closed = False
        self._wake = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, address: str | None, rules: list[str]) -> _Link:
        bus = MessageBus(bus_address=address, bus_type=BusType.SYSTEM)
        await bus.connect()
        link = cls(bus)
        bus.add_message_handler(link._on_message)
        link._watcher = asyncio.ensure_future(link._watch())
        try:
            await link._bus_call(
                "AddMatch",
                [f"type='signal',sender='{_DBUS}',member='NameOwnerChanged',arg0='{BUS_NAME}'"],
            )
            with contextlib.suppress(DBusError):
                link._set_owner((await link._bus_call("GetNameOwner", [BUS_NAME]))[0])
            for rule in rules:
                await link._bus_call("AddMatch", [rule])
        except BaseException:
            link.close()
            raise
        return link

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        if msg.sender == _DBUS and msg.member == "NameOwnerChanged" and msg.body[0] == BUS_NAME:
            self._set_owner(msg.body[2] or None)
        elif msg.sender == self.owner is not None and msg.interface == INTERFACE:
            if len(self.inbox) >= INBOX_MAX:
                self.inbox.clear()  # bounded: what was dropped is read again from the journal
                self.overflowed = True
            self.inbox.append(msg)
            self._wake.set()

    def _set_owner(self, owner: str | None) -> None:
        if owner != self.owner:
            self.owner = owner
            self.generation += 1
            self.inbox.clear()
            self._wake.set()

    async def _watch(self) -> None:
        with contextlib.suppress(Exception):
            await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        self.closed = True
        self._wake.set()

    async def wait(self, at_most: float | None = None) -> bool:
        """Until a signal, an owner change or disconnection (callers check before waiting);
        False if ``at_most`` seconds passed first."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), at_most)
        except TimeoutError:
            return False
        return True

    async def _call(self, msg: Message) -> list[Any]:
        try:
            reply = await asyncio.wait_for(self.bus.call(msg), CALL_SECONDS)
        except TimeoutError:
            raise DBusError(f"{_DBUS}.Error.NoReply", f"no reply to {msg.member}") from None
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise DBusError(reply.error_name or "", text)
        return list(reply.body)

    async def _bus_call(self, member: str, body: list[Any]) -> list[Any]:
        return await self._call(
            Message(
                destination=_DBUS,
                path="/org/freedesktop/DBus",
                interface=_DBUS,
                member=member,
                signature="s",
                body=body,
            )
        )

    async def broker_call(self, interface: str, member: str, sig: str, body: list[Any]) -> Any:
        msg = Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface=interface,
            member=member,
            signature=sig,
            body=body,
        )
        return await self._call(msg)

    async def state(self) -> tuple[int, int, str]:
        """(the last sequence when asked, the oldest held, the journal's id).

        ``LastSequence`` is at or past every signal the broker has sent, and ``GetEvents2``
        returns every entry up to it: what went out before our match rule took effect is there,
        what goes out after it arrives as a signal.
        """
        (props,) = await self.broker_call(
            "org.freedesktop.DBus.Properties", "GetAll", "s", [INTERFACE]
        )
        journal_id = props["JournalId"].value if "JournalId" in props else ""
        return int(props["LastSequence"].value), int(props["OldestSequence"].value), journal_id

    async def last_sequence(self) -> int:
        (value,) = await self.broker_call(
            "org.freedesktop.DBus.Properties", "Get", "ss", [INTERFACE, "LastSequence"]
        )
        return int(value.value)

    async def get_page(self, after: int, wanted: Filter) -> tuple[list[Item], int]:
        """GetEvents2: the matching events and every loss after ``after``, merged in sequence
        order, and how far the broker looked."""
        events, lost, through = await self.broker_call(
            INTERFACE, "GetEvents2", "tua{sv}", [after, PAGE, wanted.options()]
        )
        items: list[Item] = [Event.from_body(row) for row in events]
        items += [EventsLost(int(sequence) - 1, str(uuid)) for sequence, uuid in lost]
        items.sort(key=lambda item: item.sequence)
        return items, int(through)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        self.closed = True
        self.bus.disconnect()


class Subscription:
    """An async iterator of :data:`Item` (an :class:`Event` or :class:`EventsLost`).

    ``position`` is how far it got (every sequence up to it delivered, or filtered out), with
    the broker's ``JournalId``: save ``str(position)`` and pass it as ``after`` to resume
    later without a gap or a repeat, or be told (:class:`JournalChanged`) that the broker's
    journal is another one.
    """

    def __init__(
        self, wanted: Filter, after: Position | None, address: str | None, reconnect: bool
    ) -> None:
        self.filter = wanted
        self._at = after
        self.address = address
        self.reconnect = reconnect
        self._link: _Link | None = None
        self._started = False
        self._unchecked = False  # signals came since LastSequence was last compared with ours
        self._items = self._connected()

    @property
    def position(self) -> Position | None:
        """How far it got (None: "from now", and the broker has not appeared yet)."""
        return self._at

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Item:
        return await self._items.__anext__()

    async def aclose(self) -> None:
        await self._items.aclose()
        if self._link is not None:
            self._link.close()
            self._link = None

    async def __aenter__(self) -> Subscription:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect and fix the starting point now; ``async with`` calls it, iterating does too.

        With ``after=None`` this is the moment "from now" means (or, if the broker is not
        running yet, the moment it appears).
        """
        if self._link is not None or self._started:
            return
        self._started = True
        try:
            self._link = await _Link.open(self.address, self.filter.match_rules())
        except (OSError, EOFError, DBusError) as exc:
            raise ConnectionLost(f"cannot connect to the bus: {exc}") from exc
        if self._at is None and self._link.owner is not None:
            with contextlib.suppress(DBusError):
                last, _, journal_id = await self._link.state()
                self._at = Position(journal_id, last)

    async def _reopen(self) -> _Link:
        delay = _RECONNECT_FIRST
        while True:
            try:
                return await _Link.open(self.address, self.filter.match_rules())
            except (OSError, EOFError, DBusError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECONNECT_MAX)

    async def _connected(self) -> AsyncGenerator[Item, None]:
        await self.start()
        while True:
            link, self._link = self._link or await self._reopen(), None
            try:
                async for item in self._session(link):
                    yield item
            finally:
                link.close()
            if not self.reconnect:
                raise ConnectionLost("the bus connection closed")

    async def _session(self, link: _Link) -> AsyncIterator[Item]:
        """Replay, then live signals, again after every broker restart, until disconnected."""
        while not link.closed:
            if link.owner is None:
                await link.wait()
                continue
            generation = link.generation
            try:
                async for item in self._replay(link, generation):
                    yield item
                async for live in self._live(link, generation):
                    yield live
            except DBusError as exc:
                if exc.type not in _ABSENT:
                    raise ClientError(f"the broker refused: {exc.type}: {exc.text}") from exc
                if link.generation == generation and not link.closed:
                    await link.wait(_POLL_MAX)

    async def _replay(self, link: _Link, generation: int) -> AsyncIterator[Item]:
        """What the journal holds after our position, up to LastSequence as it was once our
        rules were in place (or the broker's journal changed: the position is checked first)."""
        target, oldest, journal_id = await link.state()
        self._unchecked = False
        if self._at is None:
            self._at = Position(journal_id, target)  # "from now": later events come as signals
            return
        self._check_journal(journal_id, target, oldest)
        while self._at.sequence < target and link.generation == generation and not link.closed:
            try:
                items, through = await link.get_page(self._at.sequence, self.filter)
            except DBusError as exc:
                if exc.type == ERROR_JOURNAL_GAP:
                    raise JournalGap(self._at.sequence + 1, oldest) from exc
                raise
            for item in items:
                if item.sequence > self._at.sequence:
                    self._account(item.sequence)
                    yield item
            if through <= self._at.sequence:
                break
            self._account(through)

    async def _live(self, link: _Link, generation: int) -> AsyncIterator[Item]:
        """Signals as they come; back to the journal when some may have been lost on the way."""
        while link.generation == generation and not link.closed:
            if link.overflowed:
                link.overflowed = False
                async for item in self._replay(link, generation):
                    yield item
                continue
            if not link.inbox:
                quiet = not await link.wait(CHECK_SECONDS if self._unchecked else None)
                if quiet and self._unchecked:
                    link.overflowed = await self._behind(link)
                continue
            self._unchecked = True
            found = _item(link.inbox.popleft())
            assert self._at is not None
            if found is None or found.sequence <= self._at.sequence:
                continue  # not ours, or a repeat after a broker restart or a replay
            if found.sequence > self._at.sequence + 1 and self.filter.everything:
                link.overflowed = True  # a jump where every sequence comes: read the journal
                continue
            self._account(found.sequence)
            if isinstance(found, EventsLost) or self.filter(found):
                yield found

    async def _behind(self, link: _Link) -> bool:
        """Has LastSequence passed our position (signals the daemon dropped, or only events
        our filter leaves out)?"""
        self._unchecked = False
        assert self._at is not None
        return await link.last_sequence() > self._at.sequence

    def _account(self, sequence: int) -> None:
        assert self._at is not None
        self._at = Position(self._at.journal_id, sequence)

    def _check_journal(self, journal_id: str, target: int, oldest: int) -> None:
        assert self._at is not None
        at = self._at
        if at.journal_id and journal_id and at.journal_id != journal_id:
            raise JournalChanged(at.sequence, at.journal_id, journal_id)
        if not at.journal_id:
            self._at = at = Position(journal_id, at.sequence)
        if target < at.sequence:
            raise BrokerReset(at.sequence, target, f"its journal ends at sequence {target}")
        if target > at.sequence and not 0 < oldest <= at.sequence + 1:
            raise JournalGap(at.sequence + 1, oldest)


def _item(msg: Message) -> Item | None:
    """The Event or EventsLost a signal carries (None for anything else)."""
    if msg.member == "EventsLost" and msg.signature == "ts":
        return EventsLost(int(msg.body[0]), str(msg.body[1]))
    if msg.member == "Event" and msg.signature == "tsssa{ss}a{sv}":
        return Event.from_body(msg.body)
    return None


def subscribe(
    *,
    action: str | Iterable[str] | None = None,
    subsystem: str | Iterable[str] | None = None,
    devpath: str | None = None,
    properties: Mapping[str, str] | None = None,
    after: Position | str | int | None = None,
    address: str | None = None,
    reconnect: bool = True,
) -> Subscription:
    """Events from the broker, exactly once, in order, and each loss in its place.

    ``after=None`` starts with events journalled from now on; ``after=`` a saved position
    (``str(events.position)``, or the :class:`Position`) replays every event after it first,
    and raises :class:`JournalChanged` if the broker's journal is another one; ``after=N``
    (a bare sequence) does the same without that check (0: the whole journal). ``properties``
    maps keys to glob patterns (``{"ID_VENDOR_ID": "046d"}``). ``address`` defaults to the
    system bus (``DBUS_SYSTEM_BUS_ADDRESS``). If the first connection fails,
    :class:`ConnectionLost` is raised; with ``reconnect`` a connection lost later is retried
    forever. A broker that is not running yet is waited for, and a broker restart is always
    followed. Use it as ``async with subscribe(...) as events``.
    """
    wanted = Filter(
        _names(action),
        _names(subsystem),
        devpath,
        MappingProxyType(dict(properties or {})),
    )
    if isinstance(after, int):
        after = Position("", after)
    elif isinstance(after, str):
        after = Position.parse(after)
    return Subscription(wanted, after, address, reconnect)
