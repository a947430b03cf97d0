"""What the client library hands out and takes in: names, errors, events, filters. Pure.

The contract's names are repeated here (held equal to pnpbroker/names.py by the tests): the
package imports nothing of the broker's, so it can be copied into any project.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from .table import Device

BUS_NAME: Final = "org.pnp.Broker"
OBJECT_PATH: Final = "/org/pnp/Broker"
INTERFACE: Final = "org.pnp.Broker1"
ERROR_JOURNAL_GAP: Final = "org.pnp.Broker1.Error.NoLongerJournalled"
DBUS: Final = "org.freedesktop.DBus"


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

    @classmethod
    def of(cls, value: Position | str | int) -> Position:
        """A position from what ``after=`` takes: a Position, its text, or a bare sequence."""
        if isinstance(value, Position):
            return value
        if isinstance(value, int):
            return cls("", value)
        return cls.parse(value)


class ConnectionLost(ClientError):
    """The bus connection failed and the subscription was asked not to reconnect."""


class CallFailed(ClientError):
    """A method call was answered with a D-Bus error: ``name`` and ``text``."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}" if text else name)
        self.name, self.text = name, text


@dataclass(frozen=True, slots=True)
class Var:
    """A D-Bus variant (``v``) in a call's arguments, before a bus library wraps it."""

    signature: str
    value: Any


def _plain(value: Any) -> Any:
    """A D-Bus value without Variant wrappers (``runs`` nests a list of dicts of them)."""
    value = getattr(value, "value", value)
    if isinstance(value, list | tuple):
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
    def from_body(cls, body: Iterable[Any]) -> Event:
        """From an Event signal body or a GetEvents row (the same six fields)."""
        sequence, action, subsystem, devpath, props, handler = body
        return cls(
            int(sequence),
            str(action),
            str(subsystem),
            str(devpath),
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
    none started). The loss has its own place in the sequence: ``sequence``.

    With ``enumerate=True`` it also stands for events the subscription could not replay (a
    journal gap, a broker reset): either way, the devices that follow it replace your list.
    """

    after_sequence: int
    resync_uuid: str

    @property
    def sequence(self) -> int:
        return self.after_sequence + 1


#: What a subscription yields: the present devices first (with ``enumerate=True``), then events.
Item = Device | Event | EventsLost


def names(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """One name or several, as a tuple."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def under(devpath: str, top: str) -> bool:
    """``devpath`` is ``top`` or below it."""
    top = top.rstrip("/")
    return devpath == top or devpath.startswith(top + "/")


def properties_match(properties: Mapping[str, str], globs: Mapping[str, str]) -> bool:
    """Every key of ``globs`` is present and its value matches its glob (case-sensitive)."""
    for key, pattern in globs.items():
        value = properties.get(key)
        if value is None or not fnmatch.fnmatchcase(value, pattern):
            return False
    return True


@dataclass(frozen=True)
class Filter:
    """Which events and devices to deliver: actions, subsystems and devtypes exactly (any of
    each), the device at ``devpath`` and those below it, and each key of ``properties`` present
    with a value matching its glob. Empty means no condition.

    Actions, subsystems and devpath become bus match rules (``arg1``, ``arg2``, ``arg3``,
    ``arg3path``), so the bus daemon sends only matching signals; all of it is checked again
    here, for replayed events too. GetDevices takes the same filter (without actions).
    """

    actions: tuple[str, ...] = ()
    subsystems: tuple[str, ...] = ()
    devtypes: tuple[str, ...] = ()
    devpath: str | None = None
    properties: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def match_rules(self, enumerate: bool = False) -> list[str]:
        """The rules to add: Events (all actions and devpaths with ``enumerate``: a device
        that stops matching must be seen going), and EventsLost."""
        base = f"type='signal',sender='{BUS_NAME}',path='{OBJECT_PATH}',interface='{INTERFACE}'"
        actions = [None] if enumerate else list(self.actions or [None])
        paths = [None] if enumerate or not self.devpath else _path_keys(self.devpath)
        rules = []
        for action, subsystem, path in itertools.product(actions, self.subsystems or [None], paths):
            rule = f"{base},member='Event'"
            rule += f",arg1='{action}'" if action is not None else ""
            rule += f",arg2='{subsystem}'" if subsystem is not None else ""
            rules.append(rule + (path or ""))
        return [*rules, f"{base},member='EventsLost'"]

    def __call__(self, event: Event) -> bool:
        return self.matches(event.action, event.subsystem, event.devpath, event.properties)

    def matches(
        self, action: str, subsystem: str, devpath: str, properties: Mapping[str, str]
    ) -> bool:
        """Whether an event with these fields matches (the broker's GetEvents2 asks too)."""
        if self.actions and action not in self.actions:
            return False
        return self._matches(subsystem, devpath, properties)

    def device(self, device: Device) -> bool:
        """Whether a device (a GetDevices row, an entry of the table) matches."""
        return self._matches(device.subsystem, device.devpath, device.properties)

    def _matches(self, subsystem: str, devpath: str, props: Mapping[str, str]) -> bool:
        if self.subsystems and subsystem not in self.subsystems:
            return False
        if self.devtypes and props.get("DEVTYPE") not in self.devtypes:
            return False
        if self.devpath and not under(devpath, self.devpath):
            return False
        return properties_match(props, self.properties)

    def on_bus(self, enumerate: bool = False) -> bool:
        """Whether the bus daemon filters for us (then a gap in the sequence is not a loss)."""
        return bool(self.subsystems or (not enumerate and (self.actions or self.devpath)))

    def event_options(self) -> dict[str, Var]:
        """GetEvents2's filter argument: GetDevices' and the actions."""
        found = self.options()
        if self.actions:
            found["action"] = Var("as", list(self.actions))
        return found

    def options(self) -> dict[str, Var]:
        """GetDevices' filter argument (``a{sv}``)."""
        found: dict[str, Var] = {}
        if self.subsystems:
            found["subsystem"] = Var("as", list(self.subsystems))
        if self.devtypes:
            found["devtype"] = Var("as", list(self.devtypes))
        if self.devpath:
            found["devpath"] = Var("s", self.devpath)
        if self.properties:
            found["properties"] = Var("a{ss}", dict(self.properties))
        return found


def _path_keys(devpath: str) -> list[str]:
    """``arg3`` for the device itself, ``arg3path`` (ending in ``/``) for those below it."""
    top = devpath.rstrip("/")
    return [f",arg3='{top}'", f",arg3path='{top}/'"]


def make_filter(
    action: str | Iterable[str] | None = None,
    subsystem: str | Iterable[str] | None = None,
    devtype: str | Iterable[str] | None = None,
    devpath: str | None = None,
    properties: Mapping[str, str] | None = None,
) -> Filter:
    """A :class:`Filter` from the keyword arguments of ``subscribe`` and ``devices``."""
    return Filter(
        names(action),
        names(subsystem),
        names(devtype),
        devpath,
        MappingProxyType(dict(properties or {})),
    )
