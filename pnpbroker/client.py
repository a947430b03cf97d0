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

Delivery: every event after the starting point exactly once, in sequence order. The match rule
is added first; then the journal is replayed with ``GetEvents`` up to where the broker was
when the rule took effect (``LastSequence``); later events arrive as signals; repeats are
dropped by sequence. A restarted broker or a lost bus connection is followed by the same
replay from the last sequence accounted for. What cannot be delivered raises:
:class:`JournalGap` (the broker no longer holds the events wanted) and :class:`BrokerReset`
(the broker's sequence went backwards or no longer matches: a fresh state directory).
Nothing is skipped silently.
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

from dbus_fast import BusType, DBusError, Message, MessageType
from dbus_fast.aio import MessageBus

# The contract (kept equal to pnpbroker/names.py by the tests; this file imports nothing of ours).
BUS_NAME: Final = "org.pnp.Broker"
OBJECT_PATH: Final = "/org/pnp/Broker"
INTERFACE: Final = "org.pnp.Broker1"
ERROR_JOURNAL_GAP: Final = "org.pnp.Broker1.Error.NoLongerJournalled"
_DBUS: Final = "org.freedesktop.DBus"

PAGE: Final = 1024
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
    """The broker's sequence does not continue ours: it runs on a fresh state directory."""

    def __init__(self, position: int, last: int, why: str) -> None:
        super().__init__(f"broker reset: at sequence {position} we expected more; {why}")
        self.position, self.last = position, last


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
    (``hotplug.d`` mode); ``abandoned_pid`` is a program that could not be killed after its
    timeout and was left running (0: none); ``raw`` is the whole ``a{sv}`` with the Variants
    unwrapped.
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
    abandoned_pid: int = 0

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
            abandoned_pid=int(plain.get("abandoned_pid", 0)),
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
    """The kernel dropped events after ``after_sequence`` (ENOBUFS); a coldplug may resync."""

    after_sequence: int
    resync_uuid: str


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

    async def wait(self, at_most: float | None = None) -> None:
        """Until a signal, an owner change or disconnection (callers check before waiting)."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), at_most)

    async def _call(self, msg: Message) -> list[Any]:
        reply = await self.bus.call(msg)
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

    async def sequences(self) -> tuple[int, int]:
        """(the last sequence when asked, the oldest held).

        ``LastSequence`` is at or past every Event signal the broker has sent, and
        ``GetEvents`` returns every event up to it: what went out before our match rule took
        effect is there, what goes out after it arrives as a signal.
        """
        (props,) = await self.broker_call(
            "org.freedesktop.DBus.Properties", "GetAll", "s", [INTERFACE]
        )
        return int(props["LastSequence"].value), int(props["OldestSequence"].value)

    async def get_events(self, after: int, limit: int) -> list[Event]:
        (rows,) = await self.broker_call(INTERFACE, "GetEvents", "tu", [after, limit])
        return [Event.from_body(row) for row in rows]

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        self.closed = True
        self.bus.disconnect()


class Subscription:
    """An async iterator of :data:`Item` (an :class:`Event` or :class:`EventsLost`).

    ``position`` is the highest sequence accounted for (delivered, or filtered out): save it
    and pass it as ``after`` to resume later without a gap or a repeat.
    """

    def __init__(
        self, wanted: Filter, after: int | None, address: str | None, reconnect: bool
    ) -> None:
        self.filter = wanted
        self.position = after
        self.address = address
        self.reconnect = reconnect
        self._last: tuple[int, str, str, str] | None = None
        self._link: _Link | None = None
        self._started = False
        self._items = self._connected()

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
        if self.position is None and self._link.owner is not None:
            with contextlib.suppress(DBusError):
                self.position = (await self._link.sequences())[0]

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
            except DBusError as exc:
                if exc.type not in _ABSENT:
                    raise ClientError(f"the broker refused: {exc.type}: {exc.text}") from exc
                if link.generation == generation and not link.closed:
                    await link.wait(_POLL_MAX)
                continue
            async for live in self._live(link, generation):
                yield live

    async def _replay(self, link: _Link, generation: int) -> AsyncIterator[Event]:
        """GetEvents from ``position`` up to LastSequence as it was once our rules were in place."""
        target, oldest = await link.sequences()
        if self.position is None:
            self.position = target  # "from now": every later event comes as a signal
            return
        self._check_continuity(target, oldest)
        await self._check_same_journal(link, oldest)
        while self.position < target and link.generation == generation and not link.closed:
            try:
                events = await link.get_events(self.position, PAGE)
            except DBusError as exc:
                if exc.type == ERROR_JOURNAL_GAP:
                    raise JournalGap(self.position + 1, oldest) from exc
                raise
            if not events:  # below LastSequence but not returned: the journal lost them
                raise JournalGap(self.position + 1, oldest)
            for event in events:
                if event.sequence != self.position + 1:
                    raise JournalGap(self.position + 1, event.sequence)
                self._account(event)
                if self.filter(event):
                    yield event

    async def _live(self, link: _Link, generation: int) -> AsyncIterator[Item]:
        assert self.position is not None
        while link.generation == generation and not link.closed:
            if not link.inbox:
                await link.wait()
                continue
            msg = link.inbox.popleft()
            if msg.member == "EventsLost" and msg.signature == "ts":
                yield EventsLost(int(msg.body[0]), str(msg.body[1]))
            elif msg.member == "Event" and msg.signature == "tsssa{ss}a{sv}":
                event = Event.from_body(msg.body)
                if event.sequence > self.position:  # else a repeat after a broker restart
                    self._account(event)
                    if self.filter(event):
                        yield event

    def _account(self, event: Event) -> None:
        self.position = event.sequence
        self._last = event.fingerprint()

    def _check_continuity(self, target: int, oldest: int) -> None:
        assert self.position is not None
        if target < self.position:
            raise BrokerReset(self.position, target, f"its journal ends at sequence {target}")
        if target > self.position and not 0 < oldest <= self.position + 1:
            raise JournalGap(self.position + 1, oldest)

    async def _check_same_journal(self, link: _Link, oldest: int) -> None:
        """The event we delivered last must still be the one at its sequence."""
        last = self._last
        if last is None or self.position != last[0] or not 0 < oldest <= last[0]:
            return
        found = await link.get_events(last[0] - 1, 1)
        if found and found[0].sequence == last[0] and found[0].fingerprint() != last:
            raise BrokerReset(last[0], last[0], f"its event {last[0]} is not the one delivered")


def subscribe(
    *,
    action: str | Iterable[str] | None = None,
    subsystem: str | Iterable[str] | None = None,
    devpath: str | None = None,
    properties: Mapping[str, str] | None = None,
    after: int | None = None,
    address: str | None = None,
    reconnect: bool = True,
) -> Subscription:
    """Events from the broker, exactly once, in order.

    ``after=None`` starts with events journalled from now on; ``after=N`` replays every event
    with a sequence above N first (0: the whole journal). ``properties`` maps keys to glob
    patterns (``{"ID_VENDOR_ID": "046d"}``). ``address`` defaults to the system bus
    (``DBUS_SYSTEM_BUS_ADDRESS``). If the first connection fails, :class:`ConnectionLost` is
    raised; with ``reconnect`` a connection lost later is retried forever. A broker that is not
    running yet is waited for, and a broker restart is always followed.
    Use it as ``async with subscribe(...) as events``.
    """
    wanted = Filter(
        _names(action),
        _names(subsystem),
        devpath,
        MappingProxyType(dict(properties or {})),
    )
    return Subscription(wanted, after, address, reconnect)
