"""Fakes for the fast stage tests (tests/test_stages.py), each a stand-in for what a unit test
cannot have: a bus connection (FakeLink) and a kernel socket (FakeSource). The journal, the
reader, the sequencer and the publisher driven with them are the real ones."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from pnpbroker.journal import Entry, Lost, Record
from pnpbroker.outcome import Outcome
from pnpbroker.sources import Datagram, Item
from pnpbroker.uevent import Uevent, from_properties, serialize


def uevent(n: int, subsystem: str = "net") -> Uevent:
    return from_properties(
        {
            "ACTION": "add",
            "DEVPATH": f"/devices/virtual/net/s{n}",
            "SUBSYSTEM": subsystem,
            "SEQNUM": str(n),
        }
    )


def datagram(n: int, sender: int = 0, uid: int | None = 0) -> Datagram:
    return Datagram(serialize(uevent(n)), sender, uid)


class FakeLink:
    """Stands in for the D-Bus connection: records what it is sent; barriers resolve only when
    the test says (``ack``), or all fail at once (``die``), as a dropped connection's would.
    While ``full`` (a socket that takes nothing), ``drained`` waits until the test ``drain``s."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.batches: list[int] = []
        self.barriers: list[asyncio.Future[Any]] = []
        self.broken = False
        self.full = False
        self._room = asyncio.Event()
        #: How many times the queue waited for room.
        self.waits = 0

    @property
    def sent(self) -> list[Record]:
        """The events sent (as Event signals)."""
        return [entry for entry in self.entries if isinstance(entry, Record)]

    @property
    def lost(self) -> list[tuple[int, str]]:
        """The losses sent (as EventsLost: the sequence before, the resync)."""
        return [(e.sequence - 1, e.resync_uuid) for e in self.entries if isinstance(e, Lost)]

    @property
    def sequences(self) -> list[int]:
        """Every sequence sent, events and losses, in order."""
        return [entry.sequence for entry in self.entries]

    def send(self, entries: list[Entry]) -> None:
        if self.broken:
            raise ConnectionResetError("fake link is broken")
        self.entries.extend(entries)
        self.batches.append(len(entries))

    async def drained(self) -> None:
        if self.full:
            self.waits += 1
            self._room.clear()
            await self._room.wait()
        if self.broken:
            raise ConnectionResetError("fake link is broken")

    def drain(self) -> None:
        """The socket takes everything again."""
        self.full = False
        self._room.set()

    def barrier(self) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.barriers.append(future)
        return future

    @property
    def outstanding(self) -> int:
        return sum(not b.done() for b in self.barriers)

    def ack(self) -> None:
        """The oldest outstanding barrier's reply arrives."""
        next(b for b in self.barriers if not b.done()).set_result(None)

    def die(self) -> None:
        """The connection drops: every outstanding barrier fails, sending fails."""
        self.broken = True
        self._room.set()
        for future in self.barriers:
            if not future.done():
                future.set_exception(EOFError("fake link closed"))


class FakeSource:
    """Stands in for a uevent socket: the test hands in items; readiness goes through a real
    pipe, so the loop's ``add_reader`` sees it as it would see the kernel's socket."""

    def __init__(self) -> None:
        self.eof = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        self._items: list[Item] = []
        self._ending = False
        self.fail_with: OSError | None = None

    def feed(self, *items: Item, end: bool = False) -> None:
        self._items.extend(items)
        self._ending = end
        os.write(self._write, b"x")

    def fileno(self) -> int:
        return self._read

    def read_batch(self) -> list[Item]:
        os.read(self._read, 4096)
        if self.fail_with is not None:
            raise self.fail_with
        items, self._items = self._items, []
        self.eof = self._ending
        return items

    def flush(self) -> list[Item]:
        return []

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


class FakeMode:
    """A legacy mode that runs nothing: it notes each event and checks two never overlap."""

    def __init__(self, fail_on: int = 0) -> None:
        self.seen: list[int] = []
        self.running = 0
        self.overlapped = False
        self.fail_on = fail_on
        self.release: asyncio.Event | None = None

    async def run(self, event: Uevent, sequence: int) -> Outcome:
        self.overlapped |= self.running > 0
        self.running += 1
        try:
            self.seen.append(sequence)
            if self.release is not None:
                await self.release.wait()
            await asyncio.sleep(0)
            if sequence == self.fail_on:
                raise RuntimeError("the mode broke")
            return Outcome("fake", sequence % 3, 0, False, 0.001)
        finally:
            self.running -= 1


async def until(check: Callable[[], bool], within: float = 10.0) -> None:
    """Let the loop run until ``check()`` holds; the limit only stops a hung test."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - the stages have no event to offer a test
            await asyncio.sleep(0.001)


def records(entries: list[Entry]) -> list[Record]:
    """``entries`` as events, failing if one is a loss (for tests that journal no loss)."""
    found = [entry for entry in entries if isinstance(entry, Record)]
    assert len(found) == len(entries), f"a loss among {entries}"
    return found
