"""Several sources read as one, each kernel event taken once.

With the kernel-helper bridge beside netlink, the same uevent can arrive twice (same SEQNUM, one
copy from each path). :class:`Merged` is one pollable source over several (an epoll descriptor is
itself readable when any member is), and drops a datagram whose SEQNUM it saw recently. The
window only admits what :func:`pnpbroker.sources.check` would let through (kernel port, root),
so an unprivileged sender cannot make us skip a real event by sending its SEQNUM first.
"""

from __future__ import annotations

import logging
import select
from collections import deque

from pnpbroker.sources import Datagram, Item, Source, seqnum_of

log = logging.getLogger(__name__)

#: SEQNUMs remembered. The helper runs asynchronously, so it may lag netlink by a whole storm.
WINDOW = 65536


class RecentSeqnums:
    """A bounded set of the last ``size`` SEQNUMs seen, oldest forgotten first."""

    def __init__(self, size: int = WINDOW) -> None:
        self.size = size
        self._order: deque[int] = deque()
        self._seen: set[int] = set()

    def first_time(self, seqnum: int) -> bool:
        """True (and remember it) unless ``seqnum`` is in the window."""
        if seqnum in self._seen:
            return False
        self._seen.add(seqnum)
        self._order.append(seqnum)
        if len(self._order) > self.size:
            self._seen.discard(self._order.popleft())
        return True


class Merged:
    """One source over ``sources``; the first decides ``eof``. Duplicates counted in ``dropped``."""

    def __init__(self, *sources: Source) -> None:
        self.sources = sources
        self.recent = RecentSeqnums()
        self.dropped = 0
        self.eof = False
        self._epoll = select.epoll()
        for source in sources:
            self._epoll.register(source.fileno(), select.EPOLLIN)

    def fileno(self) -> int:
        return self._epoll.fileno()

    def read_batch(self) -> list[Item]:
        items: list[Item] = []
        for fd, _ in self._epoll.poll(0):
            source = next(s for s in self.sources if s.fileno() == fd)
            items.extend(self._fresh(source.read_batch()))
        self.eof = self.sources[0].eof
        return items

    def _fresh(self, items: list[Item]) -> list[Item]:
        fresh: list[Item] = []
        for item in items:
            seqnum = seqnum_of(item) if isinstance(item, Datagram) else None
            if seqnum is not None and not self.recent.first_time(seqnum):
                self.dropped += 1
                log.debug("SEQNUM %d already taken from another source; dropped", seqnum)
                continue
            fresh.append(item)
        return fresh

    def flush(self) -> list[Item]:
        return [item for source in self.sources for item in self._fresh(source.flush())]

    def close(self) -> None:
        self._epoll.close()
        for source in self.sources:
            source.close()
