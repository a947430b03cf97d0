"""What crosses the feed socket, and what goes to MQTT: topics, payloads, user properties; pure.

The broker (``pnpbroker run``) writes one line per journalled event::

    event SEQUENCE TOPIC JSON      JSON: the payload without "host" (the forwarder adds it)
    lost FIRST LAST KIND [UUID]    a loss: KIND "stream" (the journal's own loss entry at FIRST =
                                   LAST: the kernel dropped events, the journal's cap, or a
                                   journal made afresh; UUID re-announces the devices), or
                                   "retention" (FIRST..LAST left the journal unforwarded)
    device TOPIC JSON              a device's current entry (retained; not in the sequence)
    gone TOPIC                     the device is no longer there (an empty retained message)

after a first line ``hello VERSION JOURNAL_ID``. The forwarder answers ``ack SEQUENCE`` once its
MQTT broker acknowledged everything up to SEQUENCE. TOPIC is relative to ``<prefix>/<host>/``.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

from pnpbroker.client.table import Device
from pnpbroker.errors import BrokerError
from pnpbroker.journal import Record
from pnpbroker.uevent import dbus_safe

VERSION = 1
#: Where losses go, beside ``events/<subsystem>/<action>`` (one level less: no clash).
LOST_TOPIC = "events/lost"
STATUS_TOPIC = "status"
#: The kinds of loss: one in the host's own stream, or entries retention took unforwarded.
STREAM, RETENTION = "stream", "retention"
ONLINE, OFFLINE = b"online", b"offline"
#: A topic level keeps these; anything else (MQTT's "+", "#", "/", spaces, NUL) becomes "_".
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@=-]")


class FrameError(ValueError, BrokerError):
    """A feed line that is not one of the frames above."""


def level(text: str) -> str:
    """``text`` as one MQTT topic level (never empty, never a wildcard or a separator)."""
    return _UNSAFE.sub("_", text) or "_"


def hello(journal_id: str) -> bytes:
    return f"hello {VERSION} {journal_id}\n".encode()


def event(record: Record, journal_id: str) -> bytes:
    """The ``event`` line of one record (JSON as UTF-8; undecodable bytes become U+FFFD)."""
    ev = record.event
    payload = {
        "sequence": record.sequence,
        "journal_id": journal_id,
        "action": dbus_safe(ev.action),
        "subsystem": dbus_safe(ev.subsystem),
        "devpath": dbus_safe(ev.devpath),
        "properties": {dbus_safe(k): dbus_safe(v) for k, v in ev.properties.items()},
        "outcome": record.outcome.to_json() if record.outcome is not None else None,
        "time": round(record.received, 6),
    }
    topic = f"events/{level(ev.subsystem)}/{level(ev.action)}"
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event {record.sequence} {topic} {text}\n".encode()


def device_topic(devpath: str) -> str:
    """``devices/<devpath>``, each level of the devpath made a safe topic level."""
    return "devices/" + "/".join(level(part) for part in devpath.strip("/").split("/"))


def device(entry: Device, journal_id: str) -> bytes:
    """The ``device`` line of a device table entry (its last event's sequence, 0 if from sysfs)."""
    payload = {
        "sequence": entry.sequence,
        "journal_id": journal_id,
        "devpath": entry.devpath,
        "subsystem": entry.subsystem,
        "properties": dict(entry.properties),
    }
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"device {device_topic(entry.devpath)} {text}\n".encode()


def gone(devpath: str) -> bytes:
    return f"gone {device_topic(devpath)}\n".encode()


def lost(first: int, last: int, kind: str, resync_uuid: str = "") -> bytes:
    uuid = f" {resync_uuid}" if resync_uuid else ""
    return f"lost {first} {last} {kind}{uuid}\n".encode()


def ack(sequence: int) -> bytes:
    return f"ack {sequence}\n".encode()


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT PUBLISH for the forwarder: covers sequences ``first..last`` of the journal."""

    first: int
    last: int
    topic: str  # relative to <prefix>/<host>/
    payload: bytes
    retain: bool = False  # device state: retained, outside the sequence (first = last = 0)


def with_host(payload: bytes, host: str) -> bytes:
    """Put ``"host"`` first in a JSON object's text, without parsing it."""
    return _host_key(host) + payload[1:]


@functools.cache
def _host_key(host: str) -> bytes:
    return b'{"host":' + json.dumps(host).encode() + b","


def read_hello(line: bytes) -> str:
    """The journal id of a ``hello`` line; FrameError if it is not one we speak."""
    parts = line.split()
    if len(parts) != 3 or parts[0] != b"hello" or parts[1] != str(VERSION).encode():
        raise FrameError(f"not a version-{VERSION} hello from the broker: {line[:80]!r}")
    return parts[2].decode()


def read(line: bytes, host: str, journal_id: str) -> Message:
    """An ``event`` or ``lost`` line as the message to publish; FrameError if neither."""
    try:
        kind, rest = line.rstrip(b"\n").split(b" ", 1)
        if kind == b"event":
            sequence, topic, payload = rest.split(b" ", 2)
            seq = int(sequence)
            return Message(seq, seq, topic.decode(), with_host(payload, host))
        if kind == b"device":
            topic, payload = rest.split(b" ", 1)
            return Message(0, 0, topic.decode(), with_host(payload, host), retain=True)
        if kind == b"gone" and rest:
            return Message(0, 0, rest.decode(), b"", retain=True)
        if kind == b"lost":
            first, last, why, *uuid = rest.decode().split(" ")
            body = {
                "host": host,
                "journal_id": journal_id,
                "first": int(first),
                "last": int(last),
                "kind": why,
                "resync_uuid": uuid[0] if uuid else "",
            }
            return Message(int(first), int(last), LOST_TOPIC, json.dumps(body).encode())
    except ValueError:
        pass
    raise FrameError(f"not an event or lost frame: {line[:80]!r}")


def read_ack(line: bytes) -> int:
    """The sequence of an ``ack`` line; FrameError otherwise."""
    kind, _, number = line.strip().partition(b" ")
    if kind != b"ack" or not number.isdigit():
        raise FrameError(f"not an ack: {line[:80]!r}")
    return int(number)
