"""``--output fd:N``: every published event, in order, as a NUL-framed stream.

The format is the one :mod:`pnpbroker.sources.stream` reads (the kernel datagram plus one
terminating NUL, as ``mdevd -o`` writes), so a run recorded here replays with ``--source PATH``.
A loss in the journal is written in its place as the stream's loss record
(``!lost\0RESYNC_UUID=<uuid>\0\0``): a replay journals it again, and a reader of plain kernel
uevents sees a record without ``ACTION@DEVPATH`` and skips it as malformed.
It follows the publisher: events are written once the link acknowledged them, so the record
holds exactly what subscribers were sent.

Writes never block the broker's one loop: the descriptor is made non-blocking, and when its
reader does not keep up the output keeps only its place (the sequence written last) and one
page being written, and waits for the descriptor to be writable; the events themselves wait in
the journal. So a stalled reader stalls nothing else (the kernel is drained, programs run,
subscribers are served), and memory stays bounded. The bound is the journal's retention
(``retention_events``, ``retention_days``): events pruned before the reader took them are not
written; that is logged loudly, with the sequences skipped, and the output goes on after them.
"""

from __future__ import annotations

import asyncio
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
        self.written = journal.published  # every event up to here is out
        self.target = self.written  # every event up to here was acknowledged
        self.closed = False
        self._page = memoryview(b"")  # the rest of the page being written
        self._page_through = 0
        self._waiting = False
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)  # not for the legacy program

    def advance(self, through: int) -> None:
        """Events up to ``through`` were acknowledged: write what the descriptor takes now."""
        self.target = max(self.target, through)
        if not self._waiting and not self.closed:
            self._write()

    def _write(self) -> None:
        try:
            while self._page or self._next_page():
                self._page = self._page[os.write(self.fd, self._page) :]
                if not self._page:
                    self.written = self._page_through
        except BlockingIOError:
            self._wait()
            return
        except OSError as exc:
            log.error("output fd %d failed (%s); no longer writing events to it", self.fd, exc)
            self.close()
            return
        if self._waiting:
            asyncio.get_running_loop().remove_writer(self.fd)
            self._waiting = False
            log.info("output fd %d: its reader caught up (sequence %d)", self.fd, self.written)

    def _next_page(self) -> bool:
        """Take the next page of events from the journal; False when there is none."""
        if self.written >= self.target:
            return False
        records = self.journal.between(self.written, self.target, PAGE)
        if not records:
            return False
        if records[0].sequence != self.written + 1:
            log.error(
                "OUTPUT FD %d LOST EVENTS: %d to %d were pruned from the journal (retention) "
                "before its reader took them; going on from %d",
                self.fd,
                self.written + 1,
                records[0].sequence - 1,
                records[0].sequence,
            )
        self._page = memoryview(record_bytes(records))
        self._page_through = records[-1].sequence
        return True

    def _wait(self) -> None:
        if self._waiting:
            return
        self._waiting = True
        asyncio.get_running_loop().add_writer(self.fd, self._write)
        log.warning(
            "output fd %d: its reader is not keeping up (written through %d of %d); events wait "
            "in the journal, which keeps them as long as its retention allows",
            self.fd,
            self.written,
            self.target,
        )

    def close(self) -> None:
        """Stop writing; say what the reader did not get."""
        if self.closed:
            return
        self.closed = True
        if self._waiting:
            asyncio.get_running_loop().remove_writer(self.fd)
            self._waiting = False
        if self.written < self.target:
            log.warning(
                "output fd %d: events %d to %d were not written (its reader stopped reading)",
                self.fd,
                self.written + 1,
                self.target,
            )
