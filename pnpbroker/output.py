"""``--output fd:N``: every published event, in order, as a NUL-framed stream.

The format is the one :mod:`pnpbroker.sources.stream` reads (the kernel datagram plus one
terminating NUL, as ``mdevd -o`` writes), so a run recorded here replays with ``--source PATH``.
Events are written once the bus acknowledged them, so the record holds exactly what subscribers
were sent. Writes block: a reader that stops reading stalls publishing (events still queue in the
journal and the kernel socket), as a full pipe would stall mdevd.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from pnpbroker.errors import ConfigError
from pnpbroker.journal import Journal, Record
from pnpbroker.uevent import serialize

log = logging.getLogger(__name__)

PAGE = 512


def record_bytes(records: Iterable[Record]) -> bytes:
    """The stream form of ``records``."""
    return b"".join(serialize(record.event) + b"\0" for record in records)


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
    """Writes what the journal marks published, from the moment it was opened."""

    def __init__(self, fd: int, journal: Journal) -> None:
        self.fd = fd
        self.journal = journal
        self.written = journal.published
        os.set_blocking(fd, True)
        os.set_inheritable(fd, False)  # not for the legacy program

    def catch_up(self) -> None:
        """Write every event published since the last call; stop writing if the reader left."""
        try:
            self._catch_up()
        except OSError as exc:
            log.error("output fd %d failed (%s); no longer writing events to it", self.fd, exc)
            self.written = 1 << 63  # never again

    def _catch_up(self) -> None:
        while self.written < self.journal.published:
            records = self.journal.between(self.written, self.journal.published, PAGE)
            if not records:
                break
            self._write_all(record_bytes(records))
            self.written = records[-1].sequence

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
