"""The wire: every D-Bus message body and signature the broker sends or reads, and nothing else.

Pure functions from the core's values (:class:`~pnpbroker.journal.Record`,
:class:`~pnpbroker.outcome.Outcome`) to message bodies and back: no connection, no I/O. The
contract they implement is ``dbus/org.pnp.Broker1.xml``; :mod:`pnpbroker.client` decodes the
same bodies on the other side (a test holds the two together). Strings are made valid UTF-8 here
(:func:`~pnpbroker.uevent.dbus_safe`): D-Bus carries nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from dbus_fast import Message, Variant

from pnpbroker.client.model import Filter
from pnpbroker.client.table import Device
from pnpbroker.core.queries import Page
from pnpbroker.journal import Entry, Lost, Record
from pnpbroker.outcome import Json, Outcome
from pnpbroker.uevent import dbus_safe, valid_utf8

#: The Event signal, and one row of GetEvents: sequence, action, subsystem, devpath,
#: properties, handler (the outcome).
EVENT_SIGNATURE: Final = "tsssa{ss}a{sv}"
#: The EventsLost signal: after_sequence, resync_uuid. The loss's own sequence is
#: after_sequence + 1.
LOST_SIGNATURE: Final = "ts"
#: GetEvents2's reply: the matching events, the losses (sequence, resync_uuid), and through.
PAGE_SIGNATURE: Final = f"a({EVENT_SIGNATURE})a(ts)t"
#: One row of GetDevices: devpath, subsystem, properties.
DEVICE_SIGNATURE: Final = "ssa{ss}"
#: The type of each key of the Event's ``handler`` (an :class:`Outcome` in JSON form): written
#: out, never guessed from the Python value.
OUTCOME_SIGNATURES: Final[Mapping[str, str]] = {
    "program": "s",
    "status": "i",
    "signal": "i",
    "timed_out": "b",
    "duration": "d",
    "error": "s",
    "skipped": "b",
    "runs": "aa{sv}",
    "abandoned_pid": "u",
}


def outcome_variants(outcome: Outcome | None) -> dict[str, Variant]:
    """The ``handler`` argument (``a{sv}``): empty when nothing ran."""
    if outcome is None:
        return {}
    return _variants(outcome.to_json())


def _variants(data: Json) -> dict[str, Variant]:
    return {key: _variant(OUTCOME_SIGNATURES[key], value) for key, value in data.items()}


def _variant(signature: str, value: Any) -> Variant:
    if signature == "aa{sv}":
        return Variant(signature, [_variants(run) for run in value])
    if signature == "s":
        return Variant(signature, dbus_safe(value))
    return Variant(signature, value)


def event_body(record: Record) -> list[Any]:
    """The body of an Event signal, and one row of GetEvents."""
    event = record.event
    props = dict(valid_utf8(event.properties))
    return [
        record.sequence,
        dbus_safe(event.action),
        dbus_safe(event.subsystem),
        dbus_safe(event.devpath),
        props,
        outcome_variants(record.outcome),
    ]


def lost_body(lost: Lost) -> list[Any]:
    """The body of an EventsLost signal: the sequence before the loss, and its resync."""
    return [lost.sequence - 1, lost.resync_uuid]


def signal_of(entry: Entry) -> tuple[str, str, list[Any]]:
    """The signal that publishes a journal entry: (member, signature, body)."""
    if isinstance(entry, Lost):
        return "EventsLost", LOST_SIGNATURE, lost_body(entry)
    return "Event", EVENT_SIGNATURE, event_body(entry)


def page_body(page: Page) -> list[Any]:
    """GetEvents2's reply."""
    return [
        [event_body(record) for record in page.events],
        [[lost.sequence, lost.resync_uuid] for lost in page.lost],
        page.through,
    ]


def event_filter(options: Mapping[str, Variant]) -> Filter:
    """GetEvents2's ``a{sv}`` (GetDevices' keys and ``action``) as a filter; ValueError."""
    return _filter(options, EVENT_FILTER)


@dataclass(frozen=True)
class TriggerRequest:
    """Trigger's options: which devices (all, or those of ``subsystems``, or exactly
    ``devices``), the action, and the SYNTH_UUID (None: a fresh one)."""

    subsystems: tuple[str, ...] = ()
    action: str = "add"
    devices: tuple[str, ...] | None = None
    uuid: str | None = None


#: Trigger's options and their signatures.
TRIGGER_OPTIONS: Final[Mapping[str, str]] = {
    "subsystems": "as",
    "action": "s",
    "devices": "as",
    "uuid": "s",
}
#: GetDevices' filter keys and their signatures.
DEVICE_FILTER: Final[Mapping[str, str]] = {
    "subsystem": "as",
    "devtype": "as",
    "devpath": "s",
    "properties": "a{ss}",
}
#: GetEvents2's: the same, and the action.
EVENT_FILTER: Final[Mapping[str, str]] = {**DEVICE_FILTER, "action": "as"}


def _checked(options: Mapping[str, Variant], known: Mapping[str, str]) -> dict[str, Any]:
    """The options' values, each of its documented signature; ValueError names what is wrong."""
    unknown = set(options) - set(known)
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    for key, variant in options.items():
        if variant.signature != known[key]:
            raise ValueError(f"{key} must be {known[key]}, not {variant.signature}")
    return {key: variant.value for key, variant in options.items()}


def trigger_options(options: Mapping[str, Variant]) -> TriggerRequest:
    """Trigger's ``a{sv}`` as a request; ValueError (InvalidArgs) when it is not one."""
    values = _checked(options, TRIGGER_OPTIONS)
    devices = values.get("devices")
    for devpath in devices or ():
        if not devpath.startswith("/devices/") or "/../" in f"{devpath}/":
            raise ValueError(f"devices: not a devpath: {devpath!r}")
    return TriggerRequest(
        tuple(values.get("subsystems", ())),
        values.get("action", "add"),
        None if devices is None else tuple(devices),
        values.get("uuid"),
    )


def device_filter(options: Mapping[str, Variant]) -> Filter:
    """GetDevices' ``a{sv}`` as a filter; ValueError (InvalidArgs) when it is not one."""
    return _filter(options, DEVICE_FILTER)


def _filter(options: Mapping[str, Variant], known: Mapping[str, str]) -> Filter:
    values = _checked(options, known)
    devpath = values.get("devpath", "")
    if devpath and not devpath.startswith("/"):
        raise ValueError(f"devpath must start with /: {devpath!r}")
    properties = values.get("properties", {})
    if "" in properties:
        raise ValueError("properties: empty key")
    return Filter(
        tuple(values.get("action", ())),
        tuple(values.get("subsystem", ())),
        tuple(values.get("devtype", ())),
        devpath or None,
        MappingProxyType(dict(properties)),
    )


def device_row(entry: Device) -> tuple[str, str, Mapping[str, str]]:
    """One row of GetDevices: devpath, subsystem, properties (the table holds valid UTF-8
    already: :func:`pnpbroker.uevent.valid_utf8` at the fold and the scan)."""
    return entry.devpath, entry.subsystem, entry.properties


def to_bus_daemon(member: str, signature: str = "", body: list[Any] | None = None) -> Message:
    """A method call on the bus daemon's own interface (AddMatch, GetId, GetNameOwner, ...)."""
    return Message(
        destination="org.freedesktop.DBus",
        path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus",
        member=member,
        signature=signature,
        body=body or [],
    )
