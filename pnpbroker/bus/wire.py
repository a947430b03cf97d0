"""The wire: every D-Bus message body and signature the broker sends or reads, and nothing else.

Pure functions from the core's values (:class:`~pnpbroker.journal.Record`,
:class:`~pnpbroker.outcome.Outcome`) to message bodies and back: no connection, no I/O. The
contract they implement is ``dbus/org.pnp.Broker1.xml``; :mod:`pnpbroker.client` decodes the
same bodies on the other side (a test holds the two together). Strings are made valid UTF-8 here
(:func:`~pnpbroker.uevent.dbus_safe`): D-Bus carries nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from dbus_fast import Message, Variant

from pnpbroker.core.queries import EventFilter, Page
from pnpbroker.journal import Entry, Lost, Record
from pnpbroker.outcome import Json, Outcome
from pnpbroker.uevent import dbus_safe

#: The Event signal, and one row of GetEvents: sequence, action, subsystem, devpath,
#: properties, handler (the outcome).
EVENT_SIGNATURE: Final = "tsssa{ss}a{sv}"
#: The EventsLost signal: after_sequence, resync_uuid. The loss's own sequence is
#: after_sequence + 1.
LOST_SIGNATURE: Final = "ts"
#: GetEvents2's reply: the matching events, the losses (sequence, resync_uuid), and through.
PAGE_SIGNATURE: Final = f"a({EVENT_SIGNATURE})a(ts)t"
#: GetEvents2's filter keys and their types.
FILTER_SIGNATURES: Final[Mapping[str, str]] = {
    "actions": "as",
    "subsystems": "as",
    "devpath": "s",
    "properties": "a{ss}",
}
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
    props = dict(event.properties)
    if not ("".join(props.values()).isascii() and "".join(props).isascii()):
        props = {dbus_safe(key): dbus_safe(value) for key, value in props.items()}
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


def event_filter(options: Mapping[str, Variant]) -> EventFilter:
    """GetEvents2's filter from its ``a{sv}``; ValueError naming what is wrong."""
    unknown = set(options) - set(FILTER_SIGNATURES)
    if unknown:
        raise ValueError(f"unknown filter key(s): {', '.join(sorted(unknown))}")
    for key, variant in options.items():
        if variant.signature != FILTER_SIGNATURES[key]:
            raise ValueError(f"{key} must be {FILTER_SIGNATURES[key]}, not {variant.signature}")
    value = {key: variant.value for key, variant in options.items()}
    return EventFilter(
        tuple(value.get("actions", ())),
        tuple(value.get("subsystems", ())),
        str(value.get("devpath", "")),
        dict(value.get("properties", {})),
    )


def trigger_options(options: Mapping[str, Variant]) -> tuple[list[str], str]:
    """``subsystems`` (as) and ``action`` (s) from Trigger's options; ValueError otherwise."""
    unknown = set(options) - {"subsystems", "action"}
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    subsystems, action = options.get("subsystems"), options.get("action")
    if subsystems is not None and subsystems.signature != "as":
        raise ValueError(f"subsystems must be as, not {subsystems.signature}")
    if action is not None and action.signature != "s":
        raise ValueError(f"action must be s, not {action.signature}")
    return (list(subsystems.value) if subsystems else []), (action.value if action else "add")


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
