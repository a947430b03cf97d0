"""The device table's sink: a scan of sysfs at start, then every handled event, in order.

The scan runs in a thread while the reader goes on draining the kernel. Before it starts, the
sink notes the last journalled sequence, the *mark*: every event up to the mark happened before
the scan and is in what it reads; every event after the mark is folded into the scanned table
in sequence order, whether or not the scan already saw its effect (an event sets a device's
whole entry, so the last event of a device decides, as in the kernel). The scanned table takes
over once the handled cursor reaches the mark; from then on the table's ``sequence`` follows
the handled cursor, and :meth:`DeviceSink.snapshot` (GetDevices) answers. When events were
lost (a loss in the journal, in its place: the kernel dropped events, the journal was at its
cap or was replaced), the same is done again (a lost ``remove`` would otherwise leave a device
behind);
meanwhile GetDevices waits, so a client that re-reads the table after EventsLost gets the new
one. Long backlogs are folded in turns, so the reader is never kept from the kernel's socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pnpbroker.client.model import Filter
from pnpbroker.client.table import Device, DeviceTable
from pnpbroker.journal import Journal, Lost
from pnpbroker.uevent import valid_utf8

log = logging.getLogger(__name__)

#: Events folded before the loop gets a turn, read from the journal a page at a time.
PAGE = 512
TURN = 8 * PAGE

Scan = Callable[[], list[Device]]


class DeviceSink:
    """Keeps :attr:`table` current (a pipeline sink: ``advance``)."""

    def __init__(self, journal: Journal, scan: Scan) -> None:
        self.journal = journal
        self.scan = scan
        self.table = DeviceTable()
        self.scans = 0
        self._current = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._through = journal.handled
        self._scanning: asyncio.Task[None] | None = None
        self._again = False
        self._built: DeviceTable | None = None
        self._scanned = False
        self._folding: asyncio.Handle | None = None

    @property
    def current(self) -> bool:
        """The table is built and no rescan is pending."""
        return self._current.is_set()

    def start(self) -> None:
        """Scan sysfs (in a thread; the loop must be running)."""
        self._rescan()

    def advance(self, through: int) -> None:
        """Everything up to ``through`` is handled. (The sequencer calls this: a fault in the
        table is logged and made good by a rescan, it never stops the pipeline.)"""
        self._through = max(self._through, through)
        if self._built is not None:
            self._take_built()
        if self._scanned and self._folding is None:
            self._fold()

    def lost(self) -> None:
        """Events were lost: nothing but a new scan can say what changed."""
        self._current.clear()
        self._built = None
        self._rescan()

    async def snapshot(self, wanted: Filter) -> tuple[int, list[Device]]:
        """The table's sequence and its entries that match, once the table is current and has
        every handled event folded in: then no Event signal past that sequence has been sent
        yet, so a client whose match rule was in place before it asked sees all of them."""
        while not (self._current.is_set() and self.table.sequence >= self._through):
            await self._current.wait()
            self._caught_up.clear()
            if self.table.sequence < self._through:
                await self._caught_up.wait()
        table = self.table
        candidates = table.below(wanted.devpath) if wanted.devpath else table
        return table.sequence, [entry for entry in candidates if wanted.device(entry)]

    def close(self) -> None:
        if self._scanning is not None:
            self._scanning.cancel()
        if self._folding is not None:
            self._folding.cancel()

    def _rescan(self) -> None:
        if self._scanning is not None:  # it may have read past a device the loss touched
            self._again = True
            return
        mark = self.journal.last
        self._scanning = asyncio.get_running_loop().create_task(self._scan(mark), name="scan")

    async def _scan(self, mark: int) -> None:
        try:
            entries = await asyncio.to_thread(self.scan)
        except Exception:
            log.exception("reading the devices from sysfs failed; the table starts empty")
            entries = []
        self._scanning = None
        self.scans += 1
        if self._again:
            self._again = False
            self._rescan()
            return
        log.info("device table: %d devices in sysfs (events after %d follow)", len(entries), mark)
        self._built = DeviceTable(entries, mark)
        self._take_built()
        self.advance(self._through)

    def _take_built(self) -> None:
        """Put the scanned table in place once the events up to its mark are handled."""
        built = self._built
        if built is None or self._through < built.sequence:
            return
        self._built = None
        self._scanned = True
        self.table.replace(built)
        self._current.set()

    def _fold(self) -> None:
        """Fold handled events into the table, up to TURN now and the rest after a turn. (The
        sequencer is the caller: a fault is logged and made good by a rescan, it never stops
        the pipeline.)"""
        self._folding = None
        try:
            self._fold_turn()
        except Exception:
            log.exception("device table: folding failed at %d; rescanning", self.table.sequence)
            self.lost()

    def _fold_turn(self) -> None:
        table, left = self.table, TURN
        while table.sequence < self._through and left > 0:
            records = self.journal.between(table.sequence, self._through, min(PAGE, left))
            if not records or records[0].sequence != table.sequence + 1:
                log.error("device table: events after %d are gone; rescanning", table.sequence)
                table.sequence = self._through
                self.lost()
                return
            for record in records:
                if isinstance(record, Lost):
                    log.warning("device table: events lost at %d; rescanning", record.sequence)
                    table.sequence = record.sequence
                    self.lost()
                    return
                table.apply(record.sequence, valid_utf8(record.event.properties))
            left -= len(records)
        if table.sequence < self._through:
            self._folding = asyncio.get_running_loop().call_soon(self._fold)
        else:
            self._caught_up.set()
