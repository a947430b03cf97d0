"""Kernel uevents: a frozen value type, and parse/serialize for the kernel's wire format.

The kernel multicasts a uevent as one datagram: ``ACTION@DEVPATH\\0KEY=VALUE\\0...KEY=VALUE\\0``.
Pure functions, no I/O: sources hand bytes in, everything downstream gets a checked ``Uevent``.
A key the kernel sent twice (``add UUID K=V K=W`` written to a uevent file does that) keeps its
first value, the one ``getenv`` gives a kernel helper; the others are in ``duplicates`` for the
reader to count and report.
Values are decoded as UTF-8 with ``surrogateescape`` so no byte is lost on the way to the legacy
program; :func:`dbus_safe` makes a value fit for D-Bus, which only carries valid UTF-8.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from sys import intern
from types import MappingProxyType

from pnpbroker.errors import MalformedUevent

#: The kernel's own limit is UEVENT_BUFFER_SIZE (2048) for the environment plus the header;
#: anything much larger did not come from the kernel.
MAX_UEVENT_SIZE = 8192

REQUIRED_KEYS = ("ACTION", "DEVPATH", "SUBSYSTEM", "SEQNUM")
_LIBUDEV_MAGIC = b"libudev\0"


@dataclass(frozen=True, slots=True)
class Uevent(Mapping[str, str]):
    """One kernel uevent: a read-only mapping of its keys, with the common ones as attributes."""

    action: str
    devpath: str
    subsystem: str
    seqnum: int
    properties: Mapping[str, str]
    #: Keys given more than once, each with a value not kept: ``(key, value)``.
    duplicates: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def __getitem__(self, key: str) -> str:
        return self.properties[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.properties)

    def __len__(self) -> int:
        return len(self.properties)

    @property
    def synth_uuid(self) -> str | None:
        """The UUID a coldplug wrote into the device's uevent file, if this event answers one."""
        return self.properties.get("SYNTH_UUID")


def _check_frame(data: bytes) -> None:
    if len(data) > MAX_UEVENT_SIZE:
        raise MalformedUevent(f"oversized: {len(data)} bytes, limit {MAX_UEVENT_SIZE}", data)
    if data.startswith(_LIBUDEV_MAGIC):
        raise MalformedUevent("libudev-format message, not a kernel uevent", data)
    if not data.endswith(b"\0"):
        raise MalformedUevent("not NUL-terminated", data)


Duplicates = tuple[tuple[str, str], ...]


def _properties(fields: list[str], data: bytes) -> tuple[dict[str, str], Duplicates]:
    try:  # keys interned: thousands of events kept in memory share one copy of each name
        props = {intern(key): value for key, value in (item.split("=", 1) for item in fields)}
    except ValueError:
        bad = next(item for item in fields if "=" not in item)
        raise MalformedUevent(f"field is not KEY=VALUE: {bad[:64]!r}", data) from None
    if "" in props:
        raise MalformedUevent("empty key", data)
    if len(props) == len(fields):
        return props, ()
    first: dict[str, str] = {}
    dropped: list[tuple[str, str]] = []
    for key, value in (item.split("=", 1) for item in fields):
        if key in first:
            dropped.append((key, value))
        else:
            first[key] = value
    return first, tuple(dropped)


def parse(data: bytes) -> Uevent:
    """Parse one kernel-format uevent; raise :class:`MalformedUevent` saying what is wrong."""
    _check_frame(data)
    header, *fields = data[:-1].decode("utf-8", "surrogateescape").split("\0")
    action, sep, devpath = header.partition("@")
    if not sep or not action or not devpath:
        raise MalformedUevent("no ACTION@DEVPATH header", data)
    props, duplicates = _properties(fields, data)
    return _checked(props, action, devpath, data, duplicates)


def from_properties(props: Mapping[str, str]) -> Uevent:
    """Build a checked event from its keys alone (the kernel-helper and journal paths)."""
    own = dict(props)
    return _checked(own, own.get("ACTION", ""), own.get("DEVPATH", ""), b"")


def _checked(
    props: dict[str, str], action: str, devpath: str, data: bytes, duplicates: Duplicates = ()
) -> Uevent:
    try:
        ok_action, ok_devpath = props["ACTION"] == action, props["DEVPATH"] == devpath
        subsystem, seqnum = props["SUBSYSTEM"], props["SEQNUM"]
    except KeyError:
        missing = [key for key in REQUIRED_KEYS if key not in props]
        raise MalformedUevent(f"missing {', '.join(missing)}", data) from None
    if not (ok_action and ok_devpath and action and devpath and subsystem):
        raise MalformedUevent("empty or inconsistent ACTION/DEVPATH/SUBSYSTEM", data)
    if not (seqnum.isascii() and seqnum.isdigit()):
        raise MalformedUevent(f"SEQNUM is not a number: {seqnum[:32]!r}", data)
    action, devpath = props["ACTION"], props["DEVPATH"]  # one copy each (the header's goes)
    return Uevent(action, devpath, subsystem, int(seqnum), MappingProxyType(props), duplicates)


def serialize(event: Uevent) -> bytes:
    """The kernel's datagram format; ``parse(serialize(e)) == e``."""
    parts = [f"{event.action}@{event.devpath}"]
    parts.extend(f"{key}={value}" for key, value in event.properties.items())
    return "\0".join(parts).encode("utf-8", "surrogateescape") + b"\0"


def valid_utf8(properties: Mapping[str, str]) -> Mapping[str, str]:
    """``properties`` with every key and value made valid UTF-8 (most are ASCII: returned as
    they are after one check)."""
    if "".join(properties.values()).isascii() and "".join(properties).isascii():
        return properties
    return {dbus_safe(key): dbus_safe(value) for key, value in properties.items()}


def dbus_safe(value: str) -> str:
    """``value`` as valid UTF-8 for D-Bus: undecodable bytes become U+FFFD."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
