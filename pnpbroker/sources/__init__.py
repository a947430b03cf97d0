"""Where uevents come from. Every source yields the same items; :func:`check` admits them.

A source has ``fileno()`` (so any loop can watch it), ``read_batch()`` (drain what is ready
without blocking), ``flush()`` (what it still holds back, handed over when reading stops: the
helper socket's reorder window) and ``close()``; ``eof`` turns true when a stream source has
ended.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Protocol

from pnpbroker.errors import ForgedSender, MalformedUevent
from pnpbroker.uevent import Uevent, parse

KERNEL_PORT = 0
_UCRED = struct.Struct("iII")  # pid, uid, gid
_SEQNUM = re.compile(rb"\0SEQNUM=([0-9]{1,20})\0")


@dataclass(frozen=True, slots=True)
class Datagram:
    """One raw uevent as received, with who sent it (netlink port and credentials)."""

    data: bytes
    sender: int = KERNEL_PORT
    uid: int | None = 0
    where: str = ""
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class Overflow:
    """Events were lost here: the kernel dropped events for us (ENOBUFS: the socket's receive
    buffer overflowed), or a recorded stream says a loss was journalled here, with the resync
    that followed it (``recorded``: its UUID)."""

    recorded: str | None = None


Item = Datagram | Overflow


class Source(Protocol):
    """What the reader needs of any event source."""

    eof: bool

    def fileno(self) -> int: ...

    def read_batch(self) -> list[Item]: ...

    def flush(self) -> list[Item]: ...

    def close(self) -> None: ...


def check(item: Datagram) -> Uevent:
    """Admit a datagram only if the kernel sent it and it parses; raise saying why not."""
    if item.sender != KERNEL_PORT:
        raise ForgedSender(f"sender port {item.sender} is not the kernel", item.sender, item.uid)
    if item.uid != 0:
        raise ForgedSender(f"sender uid {item.uid} is not root", item.sender, item.uid)
    if item.truncated:
        raise MalformedUevent(f"oversized: more than {len(item.data)} bytes", item.data[:256])
    return parse(item.data)


def seqnum_of(item: Datagram) -> int | None:
    """The SEQNUM of an admissible datagram, cheaply (no full parse); None otherwise."""
    if item.sender != KERNEL_PORT or item.uid != 0 or item.truncated:
        return None
    match = _SEQNUM.search(item.data)
    return int(match.group(1)) if match else None


def ucred_uid(payload: bytes) -> int | None:
    """The uid in an SCM_CREDENTIALS payload."""
    if len(payload) < _UCRED.size:
        return None
    return int(_UCRED.unpack_from(payload)[1])
