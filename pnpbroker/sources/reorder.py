"""The kernel helper's datagrams back in SEQNUM order, within a bounded window.

The kernel starts one usermode helper per event without waiting for the previous one
(``call_usermodehelper_exec(UMH_NO_WAIT)``), so ``pnpbroker-helper`` processes race and their
datagrams can arrive out of order. A datagram is held until everything before it has come,
within a window: at most :data:`SECONDS` after it arrived and at most :data:`COUNT` held at once.

- The next SEQNUM after the last one handed on is handed on at once (and whatever follows it).
  At the start, "the last one" is the kernel's counter (``/sys/kernel/uevent_seqnum``): the
  first event after it needs no wait.
- A datagram held :data:`SECONDS` is handed on with every held one below it: the missing ones
  are taken to be gaps (events the kernel sent no helper for, such as those of devices in other
  network namespaces, or a helper that failed to start).
- Past :data:`COUNT` held, the lowest goes first.
- A datagram below the last SEQNUM handed on is past the window's edge: handed on at once, so it
  is journalled after its successors, and logged.

busybox mdev does the same with ``/dev/mdev.seq``: each mdev waits until the file holds its
predecessor, 2 s at most. Pure: the caller passes the time in.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque

from pnpbroker.sources import Datagram

log = logging.getLogger(__name__)

#: How long a datagram waits for the ones before it (config ``helper_window``).
SECONDS = 1.0
#: How many datagrams may wait at once.
COUNT = 1024


class Reorder:
    """Holds datagrams by SEQNUM; :meth:`push` and :meth:`expired` return those to hand on."""

    def __init__(
        self, seconds: float = SECONDS, count: int = COUNT, last: int | None = None
    ) -> None:
        self.seconds = seconds
        self.count = count
        self.last = last  # the highest SEQNUM handed on (None: not known yet)
        self.late = 0  # datagrams that came after a later one was handed on
        self._held: dict[int, Datagram] = {}
        self._order: list[int] = []  # a heap of the held SEQNUMs
        self._arrivals: deque[tuple[float, int]] = deque()  # (deadline, SEQNUM), oldest first

    def __len__(self) -> int:
        return len(self._held)

    def push(self, seqnum: int, item: Datagram, now: float) -> list[Datagram]:
        """Take one datagram; what can be handed on now, in order."""
        if seqnum in self._held:
            log.warning("helper datagram SEQNUM %d came twice; the copy is dropped", seqnum)
            return []
        if self.last is not None and seqnum <= self.last:
            self.late += 1
            log.warning(
                "helper datagram SEQNUM %d came after SEQNUM %d was journalled (past the "
                "reorder window of %g s and %d datagrams): journalled after it",
                seqnum,
                self.last,
                self.seconds,
                self.count,
            )
            return [item]
        self._held[seqnum] = item
        heapq.heappush(self._order, seqnum)
        self._arrivals.append((now + self.seconds, seqnum))
        out: list[Datagram] = []
        while len(self._held) > self.count:
            out.extend(self._release_through(self._order[0]))
        return out + self._contiguous()

    def expired(self, now: float) -> list[Datagram]:
        """Everything up to the highest SEQNUM that has waited its time, then what follows it."""
        highest = None
        while self._arrivals and self._arrivals[0][0] <= now:
            _, seqnum = self._arrivals.popleft()
            if seqnum in self._held:
                highest = seqnum if highest is None else max(highest, seqnum)
        if highest is None:
            return []
        return self._release_through(highest) + self._contiguous()

    def deadline(self) -> float | None:
        """When :meth:`expired` will next have something (None when nothing is held)."""
        while self._arrivals and self._arrivals[0][1] not in self._held:
            self._arrivals.popleft()
        return self._arrivals[0][0] if self._arrivals else None

    def flush(self) -> list[Datagram]:
        """Everything held, in order (the broker is stopping: journal them now)."""
        if not self._order:
            return []
        return self._release_through(max(self._order))

    def _release_through(self, highest: int) -> list[Datagram]:
        out = []
        while self._order and self._order[0] <= highest:
            seqnum = heapq.heappop(self._order)
            out.append(self._held.pop(seqnum))
            self.last = seqnum
        return out

    def _contiguous(self) -> list[Datagram]:
        out = []
        while self._order and self.last is not None and self._order[0] == self.last + 1:
            out.extend(self._release_through(self._order[0]))
        return out
