"""The netlink wire formats libudev clients read, for re-broadcasting handled events. Pure, no I/O.

Two formats, both carrying the event's keys (``SEQNUM`` kept) plus :data:`SEQUENCE_PROPERTY`:

- the kernel's own (``ACTION@DEVPATH\\0KEY=VALUE\\0...``), as mdevd ``-O`` re-sends it; what
  libudev-zero parses;
- udevd's (group 2, "udev" monitors): a 40-byte header, then the properties as ``KEY=VALUE\\0``.
  The header is systemd's ``monitor_netlink_header`` (src/libsystemd/sd-device/device-monitor.c):
  the prefix ``"libudev\\0"``, the magic 0xfeedcafe in network order, the header size, the
  properties' offset and length (host order), then in network order the MurmurHash2 of the
  subsystem and of the devtype and the 64-bit tag bloom filter (high word, low word). libudev's
  socket filter (BPF) reads the magic, the hashes and the bloom words at those offsets; its
  userspace code checks the prefix, the magic and the offset.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Mapping
from functools import lru_cache

from pnpbroker.uevent import Uevent

#: The broker's gap-free sequence, added to every re-broadcast event.
SEQUENCE_PROPERTY = "PNP_SEQUENCE"
PREFIX = b"libudev\0"
MAGIC = 0xFEEDCAFE
#: prefix, magic, header_size, properties_off, properties_len, subsystem hash, devtype hash,
#: bloom high, bloom low: 40 bytes. Magic, hashes and bloom go in network order, the rest in
#: host order (see libudev_datagram).
HEADER = struct.Struct("=8sIIIIIIII")
_BE32 = struct.Struct(">I")
_M = 0x5BD1E995
_MASK32 = 0xFFFFFFFF
# systemd reads each 4-byte block as a native uint32: match it on this machine.
_BLOCK = "<" if sys.byteorder == "little" else ">"


def murmurhash2(data: bytes, seed: int = 0) -> int:
    """Austin Appleby's 32-bit MurmurHash2, as systemd's src/basic/MurmurHash2.c computes it."""
    length = len(data)
    h = (seed ^ length) & _MASK32
    whole = length - length % 4
    for (k,) in struct.iter_unpack(f"{_BLOCK}I", data[:whole]):
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    tail = data[whole:]
    if tail:
        for shift, byte in enumerate(tail):
            h ^= byte << (8 * shift)
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    return h ^ (h >> 15)


@lru_cache(maxsize=1024)
def string_hash(value: str) -> int:
    """The hash libudev puts in (and filters on) the subsystem and devtype fields."""
    return murmurhash2(value.encode("utf-8", "surrogateescape"))


def tag_bloom(tags: Iterable[str]) -> int:
    """The 64-bit bloom filter of ``tags``: four 6-bit slices of each tag's hash set a bit."""
    bits = 0
    for tag in tags:
        h = string_hash(tag)
        for shift in (0, 6, 12, 18):
            bits |= 1 << ((h >> shift) & 63)
    return bits


def tags_of(properties: Mapping[str, str]) -> list[str]:
    """Tags as sd-device reads them from ``TAGS`` and ``CURRENT_TAGS`` (``:a:b:``)."""
    found: list[str] = []
    for key in ("TAGS", "CURRENT_TAGS"):
        found += [t for t in properties.get(key, "").split(":") if t and t not in found]
    return found


def _nulstr(event: Uevent, sequence: int, devname: str | None = None) -> bytes:
    """``KEY=VALUE\0`` for each key in kernel order (DEVNAME as ``devname`` if given), then the
    broker's sequence (replacing a key of that name the event may carry)."""
    props = event.properties
    if devname is not None or SEQUENCE_PROPERTY in props:
        props = {k: v for k, v in props.items() if k != SEQUENCE_PROPERTY}
        if devname is not None:
            props["DEVNAME"] = devname
    text = "\0".join(map("=".join, props.items()))
    return f"{text}\0{SEQUENCE_PROPERTY}={sequence}\0".encode("utf-8", "surrogateescape")


def kernel_datagram(event: Uevent, sequence: int) -> bytes:
    """The kernel's format, with the broker's sequence as the last key."""
    header = f"{event.action}@{event.devpath}\0".encode("utf-8", "surrogateescape")
    return header + _nulstr(event, sequence)


def _node(props: Mapping[str, str]) -> str | None:
    """udevd sends DEVNAME as the node's path (sd-device prefixes the kernel's name with /dev)."""
    name = props.get("DEVNAME")
    return f"/dev/{name}" if name is not None and not name.startswith("/") else None


#: The prefix, the magic, the header size and the properties' offset: alike in every datagram.
_FIXED = PREFIX + _BE32.pack(MAGIC) + struct.pack("=II", HEADER.size, HEADER.size)
_LENGTH = struct.Struct("=I")
_FILTERS = struct.Struct(">IIII")


def libudev_datagram(event: Uevent, sequence: int) -> bytes:
    """udevd's group-2 format: the ``libudev`` header, then the properties."""
    props = event.properties
    body = _nulstr(event, sequence, _node(props))
    devtype = props.get("DEVTYPE")
    bloom = tag_bloom(tags_of(props)) if "TAGS" in props or "CURRENT_TAGS" in props else 0
    filters = _FILTERS.pack(
        string_hash(event.subsystem),
        string_hash(devtype) if devtype is not None else 0,
        bloom >> 32,
        bloom & _MASK32,
    )
    return _FIXED + _LENGTH.pack(len(body)) + filters + body


ENCODERS = {"kernel": kernel_datagram, "libudev": libudev_datagram}
