"""Whole signal messages as bytes, made fast: the publish queue's Event and EventsLost.

A signal from one connection differs from the next of its kind only in its serial, its body and
the body's length: the rest of the header (path, interface, member, signature) is made once
per member, from a message dbus-fast marshalled, and reused. Only the body is marshalled per
event (by dbus-fast's compiled marshaller), which halves the cost of a signal. The bytes are
exactly what ``Message.new_signal(...)._marshall()`` gives (tests/test_dbus_fast.py holds them
equal). The bus daemon adds the sender.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from dbus_fast import MessageType, Variant
from dbus_fast._private.marshaller import Marshaller

from pnpbroker import names

#: The D-Bus specification's: the protocol version, and the codes of the header fields used.
PROTOCOL_VERSION: Final = 1
PATH, INTERFACE, MEMBER, SIGNATURE = 1, 2, 3, 8
#: Body length, serial.
_LENGTHS: Final = struct.Struct("<II")


class Template:
    """One signal's header, without its body length and serial."""

    def __init__(self, member: str, signature: str) -> None:
        fields = [
            [PATH, Variant("o", names.OBJECT_PATH)],
            [INTERFACE, Variant("s", names.INTERFACE)],
            [MEMBER, Variant("s", member)],
            [SIGNATURE, Variant("g", signature)],
        ]
        header = [ord("l"), MessageType.SIGNAL.value, 0, PROTOCOL_VERSION, 0, 0, fields]
        raw = bytes(Marshaller("yyyyuua(yv)", header).marshall())
        self.signature = signature
        self.start = raw[:4]  # endianness, type, flags, version
        self.fields = raw[12:] + bytes(-len(raw) & 7)  # the body starts at a multiple of 8

    def frame(self, body: list[Any], serial: int) -> bytes:
        """The whole message with this body and serial."""
        data = Marshaller(self.signature, body).marshall()
        return b"".join((self.start, _LENGTHS.pack(len(data), serial), self.fields, data))


_TEMPLATES: dict[tuple[str, str], Template] = {}


def signal(member: str, signature: str, body: list[Any], serial: int) -> bytes:
    """The whole signal message ``member`` (of the broker's interface, at its path)."""
    template = _TEMPLATES.get((member, signature))
    if template is None:
        template = _TEMPLATES[member, signature] = Template(member, signature)
    return template.frame(body, serial)
