"""``--output fd:N``: every published event, in order, as a NUL-framed stream.

The format is the one :mod:`pnpbroker.sources.stream` reads (the kernel datagram plus one
terminating NUL, as ``mdevd -o`` writes), so a run recorded here replays with ``--source PATH``.
A loss in the journal is written in its place as the stream's loss record
(``!lost\0RESYNC_UUID=<uuid>\0\0``): a replay journals it again, and a reader of plain kernel
uevents sees a record without ``ACTION@DEVPATH`` and skips it as malformed.
It follows the publisher: events are written once the link acknowledged them, so the record
holds exactly what subscribers were sent. Writes block, in the broker's one loop: a reader that
stops reading stalls the whole broker (reading, programs, publishing) until it reads again, as a
full pipe stalls mdevd; meanwhile the kernel queues events in the socket's receive buffer, and a
stall long enough to fill it loses events (counted, and announced with EventsLost).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from pnpbroker.errors import ConfigError
from pnpbroker.journal import Entry, Journal, Lost
from pnpbroker.sources.stream import LOST_HEADER, lost_record
from pnpbroker.uevent import serialize

__all__ = ["LOST_HEADER", "Output", "parse_fd", "record_bytes"]

log = logging.getLogger(__name__)

PAGE = 512


def record_bytes(entries: Iterable[Entry]) -> bytes:
    """The stream form of ``entries``: events, and losses as loss records."""
    return b"".join(
        lost_record(e.resync_uuid) if isinstance(e, Lost) else serialize(e.event) + b"\0"
        for e in entries
    )


def parse_fd(spec: str) -> int:
    """``fd:N`` -> N, checked to be open; ConfigError (key ``output``) otherwise."""
    kind, _, number = spec.partition(":")
    if kind != "fd" or not number.isdigit():
        raise ConfigError("output", f"expected fd:N, got {spec!r}")
    fd = int(number)
    try:
        os.fstat(fd)
    except OSError as exc:
        raise ConfigError("output", f"fd {fd} is not open: {exc.strerror}") from None
    return fd


class Output:
    """Writes what the publisher acknowledged, from the moment it was opened (a follower)."""

    def __init__(self, fd: int, journal: Journal) -> None:
        self.fd = fd
        self.journal = journal
        self.written = journal.published
        os.set_blocking(fd, True)
        os.set_inheritable(fd, False)  # not for the legacy program

    def advance(self, through: int) -> None:
        """Write every event up to ``through``; stop writing for good if the reader left."""
        try:
            self._catch_up(through)
        except OSError as exc:
            log.error("output fd %d failed (%s); no longer writing events to it", self.fd, exc)
            self.written = 1 << 63  # never again

    def _catch_up(self, through: int) -> None:
        while self.written < through:
            records = self.journal.between(self.written, through, PAGE)
            if not records:
                break
            self._write_all(record_bytes(records))
            self.written = records[-1].sequence

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
