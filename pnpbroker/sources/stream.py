"""A NUL-framed stream of uevents: ``--source stdin`` or a file, as ``mdevd -o`` writes them.

Each record is a kernel datagram (``ACTION@DEVPATH\\0KEY=VALUE\\0...\\0``) followed by one more
NUL: the empty field ends the record. Records are cut here and handed on as datagrams whose
``where`` names their byte offset, so a malformed one is reported at its offset and skipped by
the reader like any bad datagram. At the end of the input ``eof`` turns true.

A loss is one record of its own (what ``--output`` writes for a loss in the journal):
``!lost\0RESYNC_UUID=<uuid>\0`` and the terminating NUL. Its header has no ``@``, so a reader
of kernel uevents rejects it as a malformed event; this one journals it as a loss again, in its
place, naming the same resync (whose events follow in the stream).

epoll cannot watch a regular file, so for one we watch a pipe that always holds a byte (the
file is always "readable") and read the file in bounded chunks, one chunk per loop turn.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import BinaryIO

from pnpbroker.sources import Datagram, Item, Overflow
from pnpbroker.uevent import MAX_UEVENT_SIZE

log = logging.getLogger(__name__)

TERMINATOR = b"\0\0"
CHUNK = 1 << 16
#: The start of a loss record, and its one key.
LOST_HEADER = b"!lost\0"
LOST_KEY = b"RESYNC_UUID="


def lost_record(resync_uuid: str) -> bytes:
    """A loss in the stream format (terminator included)."""
    return LOST_HEADER + LOST_KEY + resync_uuid.encode() + TERMINATOR


class StreamSource:
    """Cuts a byte stream into records; see the module docstring for the format."""

    def __init__(self, file: BinaryIO, name: str) -> None:
        self.file = file
        self.name = name
        self.eof = False
        self._fd = file.fileno()
        self._buffer = b""
        self._offset = 0  # of _buffer[0] in the stream
        self._skipping = False  # inside an oversized record: drop up to its terminator
        self._ready: tuple[int, int] | None = None
        if stat.S_ISREG(os.fstat(self._fd).st_mode):
            self._ready = os.pipe()
            os.write(self._ready[1], b"x")
        else:
            os.set_blocking(self._fd, False)

    @classmethod
    def open(cls, spec: str) -> StreamSource:
        """``stdin`` (or ``-``) or a path."""
        if spec in ("stdin", "-"):
            return cls(os.fdopen(os.dup(0), "rb", buffering=0), "stdin")
        return cls(open(spec, "rb", buffering=0), spec)

    def fileno(self) -> int:
        return self._ready[0] if self._ready is not None else self._fd

    def read_batch(self) -> list[Item]:
        try:
            chunk = os.read(self._fd, CHUNK)
        except BlockingIOError:
            return []
        if not chunk:
            return self._end()
        self._buffer += chunk
        return self._records()

    def _records(self) -> list[Item]:
        items: list[Item] = []
        buffer, start = self._buffer, 0
        while True:
            if not self._skipping and buffer[start : start + 1] == b"\0":
                items.append(self._datagram(b"", start))  # a stray NUL: an empty record
                start += 1
                continue
            end = buffer.find(TERMINATOR, start)
            if end < 0:
                break
            if not self._skipping:
                items.append(self._item(buffer[start : end + 1], start))
            self._skipping = False
            start = end + 2
        if len(buffer) - start > MAX_UEVENT_SIZE and not self._skipping:
            items.append(self._datagram(buffer[start : start + MAX_UEVENT_SIZE], start, True))
            self._skipping = True
        if self._skipping:  # keep one byte: it may be the first NUL of the terminator
            start = max(start, len(buffer) - 1)
        self._buffer, self._offset = buffer[start:], self._offset + start
        return items

    def _item(self, data: bytes, start: int) -> Item:
        if data.startswith(LOST_HEADER + LOST_KEY):
            return Overflow(
                recorded=data[len(LOST_HEADER + LOST_KEY) : -1].decode(errors="replace")
            )
        return self._datagram(data, start)

    def _datagram(self, data: bytes, start: int, truncated: bool = False) -> Datagram:
        return Datagram(data, where=f"{self.name} byte {self._offset + start}", truncated=truncated)

    def _end(self) -> list[Item]:
        self.eof = True
        rest = self._buffer.strip(b"\0")
        if rest and not self._skipping:
            log.warning(
                "%s byte %d: record not ended by an empty field at end of input; skipped",
                self.name,
                self._offset,
            )
        self._buffer = b""
        return []

    def flush(self) -> list[Item]:
        return []

    def close(self) -> None:
        self.file.close()
        if self._ready is not None:
            for fd in self._ready:
                os.close(fd)
            self._ready = None
