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

from pnpbroker.journal import Record
from pnpbroker.outcome import Json, Outcome
from pnpbroker.uevent import dbus_safe

#: The Event signal, and one row of GetEvents: sequence, action, subsystem, devpath,
#: properties, handler (the outcome).
EVENT_SIGNATURE: Final = "tsssa{ss}a{sv}"
#: The EventsLost signal: after_sequence, resync_uuid.
LOST_SIGNATURE: Final = "ts"
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


def lost_body(after: int, resync_uuid: str) -> list[Any]:
    """The body of an EventsLost signal."""
    return [after, resync_uuid]


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
