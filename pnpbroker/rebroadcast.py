"""``rebroadcast``: send each handled event on to netlink groups, for libudev and libudev-zero.

A :class:`Rebroadcaster` is a sink of the handler stage: each time the ``handled`` cursor moves
(an event's program finished and its outcome is stored), :meth:`Rebroadcaster.advance` reads
the events up to it from the journal and sends them, in sequence order, from where it stopped.
A loss in the journal sends nothing: netlink has no word for it, and the resync it names
re-announces the devices as events like any others (libudev's own listeners learn of a loss of
theirs by ENOBUFS, as from udevd).
Each target is a format and a set of netlink multicast groups of ``NETLINK_KOBJECT_UEVENT``:

- ``kernel:GROUPS``: the kernel's format to the groups in the bitmask GROUPS, as ``mdevd -O``
  (bit 0 is group 1, so ``kernel:4`` is group 3, where libudev-zero listens);
- ``libudev``: udevd's format to group 2, where libudev's "udev" monitors listen.

The wire formats are in :mod:`pnpbroker.libudev`. Sending never blocks (the kernel drops a
datagram for a listener whose buffer is full and tells that listener ENOBUFS); a refused send is
logged and counted, and the broker goes on. See docs/libudev.md.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pnpbroker.errors import ConfigError, RebroadcastError
from pnpbroker.journal import Journal, Record
from pnpbroker.libudev import ENCODERS
from pnpbroker.uevent import Uevent

log = logging.getLogger(__name__)

NETLINK_KOBJECT_UEVENT = 15
KERNEL_GROUP = 1
UDEV_GROUP = 2
MAX_GROUP = 32
KEY = "rebroadcast"
#: Events read from the journal at a time, and sent before the loop gets a turn.
PAGE = 512
TURN = 4 * PAGE
#: udevd's control socket (systemd-udevd-control.socket): where it is a socket, udevd runs or is
#: about to, and already sends every event on group 2.
UDEVD_CONTROL = Path("/run/udev/control")


@dataclass(frozen=True, slots=True)
class Target:
    """One format, sent to each of ``groups`` (netlink multicast group numbers, 1-based)."""

    format: str
    groups: tuple[int, ...]

    def __str__(self) -> str:
        if self.format == "libudev":
            return "libudev"
        return f"kernel:{sum(1 << (g - 1) for g in self.groups)}"


def _mask(spec: str, text: str) -> int:
    """GROUPS: a decimal bitmask as mdevd takes it, or the same in hex with ``0x``."""
    hexa = text[:2].lower() == "0x"
    digits = text[2:] if hexa else text
    ok = digits.isascii() and (digits.isdigit() or (hexa and digits.isalnum()))
    try:
        mask = int(digits, 16 if hexa else 10) if ok else -1
    except ValueError:
        mask = -1
    if mask < 0:
        raise ConfigError(KEY, f"{spec!r}: GROUPS is a bitmask (e.g. 4, or 0x4), got {text!r}")
    if not 0 < mask < 1 << MAX_GROUP:
        raise ConfigError(KEY, f"{spec!r}: GROUPS must set at least one of bits 0-31")
    return mask


def parse_target(spec: str) -> Target:
    """``kernel:GROUPS`` or ``libudev`` -> Target; ConfigError saying what is wrong."""
    if spec == "libudev":
        return Target("libudev", (UDEV_GROUP,))
    kind, sep, groups = spec.partition(":")
    if kind != "kernel" or not sep:
        raise ConfigError(KEY, f'expected "kernel:GROUPS" or "libudev", got {spec!r}')
    mask = _mask(spec, groups)
    if mask & 1 << (KERNEL_GROUP - 1):
        raise ConfigError(
            KEY, f"{spec!r}: bit 0 is group 1, the kernel's own: the broker reads it (a loop)"
        )
    return Target("kernel", tuple(g for g in range(1, MAX_GROUP + 1) if mask >> (g - 1) & 1))


def parse_targets(specs: Iterable[str]) -> tuple[Target, ...]:
    """Every spec checked; a group may carry one format only."""
    targets = tuple(dict.fromkeys(parse_target(spec) for spec in specs))
    owner: dict[int, Target] = {}
    for target in targets:
        for group in target.groups:
            if group in owner:
                raise ConfigError(
                    KEY, f"group {group} is in both {owner[group]} and {target}: one format a group"
                )
            owner[group] = target
    return targets


class Rebroadcaster:
    """One netlink socket per group, connected to it (as mdevd's). It starts after the events
    handled so far; :meth:`advance` sends the newly handled ones."""

    def __init__(self, targets: Sequence[Target], journal: Journal, stats: Counter[str]) -> None:
        if any(t.format == "libudev" for t in targets):
            refuse_beside_udevd()
        self.targets = tuple(targets)
        self.journal = journal
        self.stats = stats
        self.sent_through = self.through = journal.handled
        self._again: asyncio.Handle | None = None
        self._refused: set[int] = set()
        self._plan: list[tuple[Callable[[Uevent, int], bytes], list[socket.socket]]] = []
        try:
            for target in self.targets:
                self._plan.append((ENCODERS[target.format], [_connected(g) for g in target.groups]))
        except OSError:
            self.close()
            raise
        self._datagrams = sum(len(sockets) for _encode, sockets in self._plan)
        log.info("re-broadcasting handled events to %s", ", ".join(map(str, self.targets)))

    def advance(self, through: int) -> None:
        """Everything up to ``through`` is handled: send what is not sent yet, in order."""
        self.through = max(self.through, through)
        if self._again is None:
            self._send_some()

    def _send_some(self) -> None:
        """Up to TURN events now; the rest after the loop had a turn (a long backlog with no
        program must not keep the reader from the kernel's socket)."""
        self._again = None
        left = TURN
        while self.sent_through < self.through and left > 0:
            records = self.journal.between(self.sent_through, self.through, min(PAGE, left))
            for record in records:
                if isinstance(record, Record):  # a loss: netlink has no word for it
                    self.send(record)
            self.sent_through = records[-1].sequence if records else self.through
            left -= len(records)
        if self.sent_through < self.through:
            self._again = asyncio.get_running_loop().call_soon(self._send_some)

    def send(self, record: Record) -> None:
        """Multicast ``record`` to each target; a refusal is logged (once per errno), counted."""
        event, sequence = record.event, record.sequence
        refused = 0
        for encode, sockets in self._plan:
            data = encode(event, sequence)
            for sock in sockets:
                try:
                    sock.send(data)
                except OSError as exc:
                    refused += self._refused_send(exc, sequence, sock)
        self.stats["rebroadcast"] += self._datagrams - refused

    def _refused_send(self, exc: OSError, sequence: int, sock: socket.socket) -> int:
        """1 if the kernel refused the datagram; 0 for ECONNREFUSED, where the multicast was
        done and only the unicast copy to the kernel found no taker (udevd counts it sent)."""
        if exc.errno == errno.ECONNREFUSED:
            return 0
        self.stats["rebroadcast_failed"] += 1
        if exc.errno in self._refused:
            return 1
        self._refused.add(exc.errno or 0)
        hint = " (needs CAP_NET_ADMIN)" if exc.errno == errno.EPERM else ""
        log.error(
            "re-broadcast of event %d to netlink group mask %#x refused: %s%s; counting the rest",
            sequence,
            sock.getpeername()[1],
            exc.strerror or exc,
            hint,
        )
        return 1

    def close(self) -> None:
        if self._again is not None:
            self._again.cancel()
        for _encode, sockets in self._plan:
            for sock in sockets:
                sock.close()


def refuse_beside_udevd(control: Path = UDEVD_CONTROL) -> None:
    """ConfigError if udevd's control socket exists: every libudev client would get each event
    twice, once before our program ran."""
    try:
        mode = control.stat().st_mode
    except OSError:
        return
    if stat.S_ISSOCK(mode):
        raise ConfigError(
            KEY,
            f'"libudev": {control} is a socket, so udevd runs here and already sends each event '
            "to libudev clients; re-broadcasting too would duplicate them (see docs/libudev.md)",
        )


def _connected(group: int) -> socket.socket:
    """A non-blocking uevent netlink socket whose datagrams go to multicast ``group``."""
    sock: socket.socket | None = None
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
        sock.setblocking(False)
        sock.connect((0, 1 << (group - 1)))
    except OSError as exc:
        if sock is not None:
            sock.close()
        hint = (
            " (sending to a uevent group needs CAP_NET_ADMIN)" if exc.errno == errno.EPERM else ""
        )
        raise RebroadcastError(
            exc.errno,
            f"cannot open the re-broadcast socket for group {group}: {exc.strerror}{hint}",
        ) from exc
    return sock
