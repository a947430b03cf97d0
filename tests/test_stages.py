"""The pipeline's stages, fast and without root: the real reader, sequencer, publish queue and
journal, driven through a fake source and a fake link (tests/support/fakes.py).

The same behaviour is tested end to end with real uevents and a real bus elsewhere
(test_broker_e2e, test_bus_restart, test_broker_crash); these say which stage does what, in
seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from support.fakes import FakeLink, FakeMode, FakeSource, datagram, records, uevent, until

from pnpbroker.config import Config
from pnpbroker.contract import ExitCode
from pnpbroker.core import publisher as publisher_module
from pnpbroker.core import reader as reading
from pnpbroker.core.pipeline import Pipeline
from pnpbroker.core.publisher import CHUNK, MAX_BARRIERS, Publisher
from pnpbroker.core.reader import Reader
from pnpbroker.core.sequencer import Sequencer
from pnpbroker.journal import Journal, Lost
from pnpbroker.outcome import Outcome
from pnpbroker.resync import Resync
from pnpbroker.sources import Datagram, Overflow
from pnpbroker.uevent import Uevent

# ---------------------------------------------------------------------------------------------
# The reader: source -> checks -> journal.


class Calls:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.recorded = 0
        self.overflows: list[int] = []  # the journal's last sequence when each was reported
        self.ended: list[bool] = []
        self.capped = 0
        self.rooms = 0

    def reader(self, source: FakeSource, store: reading.Store | None = None) -> Reader:
        return Reader(
            source,
            store or self.journal,
            Counter(),
            on_recorded=self.record,
            on_overflow=self.overflow,
            on_end=self.ended.append,
            on_capped=self.cap,
            on_room=self.room,
            resume_room=2,
        )

    def overflow(self, item: Overflow) -> str:
        self.overflows.append(self.journal.last)
        return item.recorded if item.recorded is not None else f"resync-{len(self.overflows)}"

    def cap(self) -> str:
        self.capped += 1
        return "cap-resync"

    def room(self) -> None:
        self.rooms += 1

    def record(self) -> None:
        self.recorded += 1


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.sqlite")


async def test_reader_journals_what_it_admits_and_counts_what_it_rejects(
    journal: Journal,
) -> None:
    source, calls = FakeSource(), Calls(journal)
    reader = calls.reader(source)
    reader.start()
    source.feed(datagram(1), datagram(2, sender=4242), datagram(3, uid=1000), datagram(4))
    source.feed(Datagram(b"add@/devices/x\0ACTION=add\0"))  # no SUBSYSTEM, no SEQNUM
    await until(lambda: reader.stats["rejected_malformed"] == 1)
    reader.stop()
    assert [r.event.seqnum for r in records(journal.unhandled(10))] == [1, 4]
    assert (reader.stats["received"], reader.stats["rejected_forged"]) == (2, 2)
    assert calls.recorded == 1  # one batch, one transaction, one wake-up
    source.close()


async def test_reader_records_what_came_before_an_overflow_then_reports_it(
    journal: Journal,
) -> None:
    source, calls = FakeSource(), Calls(journal)
    reader = calls.reader(source)
    reader.start()
    source.feed(datagram(1), datagram(2), Overflow(), datagram(9))
    await until(lambda: journal.last == 4)
    reader.stop()
    entries = journal.unhandled(10)
    assert [type(e).__name__ for e in entries] == ["Record", "Record", "Lost", "Record"]
    assert entries[2] == Lost("resync-1", 3)  # in its place, with the resync it names
    assert calls.recorded == 1  # one batch, one transaction
    source.close()


async def test_reader_keeps_the_journal_under_its_cap_with_one_loss(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite", max_entries=5)
    source, calls = FakeSource(), Calls(journal)
    reader = calls.reader(source)
    reader.start()
    source.feed(*(datagram(n) for n in range(1, 9)))
    await until(lambda: journal.last == 5)
    source.feed(datagram(9))  # still capped: dropped
    await until(lambda: reader.stats["dropped"] == 5)
    assert [e.sequence for e in journal.unhandled(10)] == [1, 2, 3, 4, 5]
    assert journal.unhandled(10)[-1] == Lost("cap-resync", 5)
    assert (calls.capped, calls.rooms) == (1, 0)
    for entry in journal.unhandled(10):  # the broker catches up: room again
        journal.record_outcome(entry.sequence, None)
    journal.mark_published(5)
    source.feed(datagram(10))
    await until(lambda: journal.last == 6)
    reader.stop()
    assert calls.rooms == 1
    assert journal.count <= 5
    source.close()


async def test_reader_ends_with_the_stream_and_fails_with_the_source(journal: Journal) -> None:
    source, calls = FakeSource(), Calls(journal)
    calls.reader(source).start()
    source.feed(datagram(1), end=True)
    await until(lambda: calls.ended == [True])
    assert journal.last == 1
    broken, calls = FakeSource(), Calls(journal)
    calls.reader(broken).start()
    broken.fail_with = OSError(5, "Input/output error")
    broken.feed()
    await until(lambda: calls.ended == [False])
    source.close()
    broken.close()


class FullDisk:
    """A journal that cannot take the next ``failures`` batches (as on a full disk)."""

    def __init__(self, journal: Journal, failures: int) -> None:
        self.journal, self.failures = journal, failures

    def append(self, items: Sequence[Uevent | Lost], raw: Sequence[bytes] | None = None) -> int:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return self.journal.append(items, raw)

    def room(self, wanted: int) -> int:
        return wanted


async def test_reader_stops_reading_while_the_journal_fails_and_loses_nothing(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reading, "JOURNAL_RETRY_SECONDS", 0.01)
    source, calls = FakeSource(), Calls(journal)
    reader = calls.reader(source, FullDisk(journal, failures=3))
    reader.start()
    source.feed(datagram(1), datagram(2))
    source.feed(datagram(3))  # arrives while the journal is failing: waits in the source
    await until(lambda: journal.last == 3)
    reader.stop()
    assert [r.event.seqnum for r in records(journal.unhandled(10))] == [1, 2, 3]
    source.close()


# ---------------------------------------------------------------------------------------------
# The sequencer: one event at a time, in order, outcome stored before the sinks hear of it.


@pytest.fixture
async def running(journal: Journal) -> AsyncIterator[tuple[Sequencer, FakeMode, list[int]]]:
    mode, handled = FakeMode(fail_on=3), []
    sequencer = Sequencer(journal, mode, lambda: handled.append(journal.handled))
    task = asyncio.get_running_loop().create_task(sequencer.run())
    yield sequencer, mode, handled
    sequencer.stop()
    await task


async def test_sequencer_runs_each_event_once_in_order_and_stores_the_outcome(
    journal: Journal, running: tuple[Sequencer, FakeMode, list[int]]
) -> None:
    sequencer, mode, handled = running
    journal.append([uevent(n) for n in range(1, 6)])
    sequencer.notify()
    await until(lambda: journal.handled == 5)
    assert mode.seen == [1, 2, 3, 4, 5]
    assert not mode.overlapped
    assert handled == [1, 2, 3, 4, 5]  # told after each, with the outcome already stored
    outcomes = {r.sequence: r.outcome for r in records(journal.between(0, 5, 10))}
    assert outcomes[2] == Outcome("fake", 2, 0, False, 0.001)
    failed = outcomes[3]  # the mode raised: reported as the event's outcome, the stage goes on
    assert failed is not None
    assert (failed.status, failed.error) == (-1, "handler failed: the mode broke")


async def test_sequencer_runs_nothing_while_paused(
    journal: Journal, running: tuple[Sequencer, FakeMode, list[int]]
) -> None:
    sequencer, mode, _ = running
    sequencer.pause()
    journal.append([uevent(1), uevent(2)])
    sequencer.notify()
    for _ in range(100):
        await asyncio.sleep(0)
    assert (mode.seen, journal.handled) == ([], 0)
    sequencer.resume()
    await until(lambda: journal.handled == 2)
    assert mode.seen == [1, 2]


async def test_sequencer_finishes_the_event_in_hand_when_stopped(journal: Journal) -> None:
    mode = FakeMode()
    mode.release = asyncio.Event()
    sequencer = Sequencer(journal, mode, lambda: None)
    task = asyncio.get_running_loop().create_task(sequencer.run())
    journal.append([uevent(1), uevent(2)])
    sequencer.notify()
    await until(lambda: mode.running == 1)
    sequencer.stop()
    mode.release.set()
    await task
    assert (mode.seen, journal.handled) == ([1], 1)


async def test_sequencer_without_a_program_moves_the_cursor_over_everything(
    journal: Journal,
) -> None:
    handled: list[int] = []
    sequencer = Sequencer(journal, None, lambda: handled.append(journal.handled))
    task = asyncio.get_running_loop().create_task(sequencer.run())
    journal.append([uevent(n) for n in range(1, 1001)])
    sequencer.notify()
    await until(lambda: journal.handled == 1000)
    assert handled == [1000]
    assert records(journal.between(0, 1000, 1))[0].outcome is None
    sequencer.stop()
    await task


# ---------------------------------------------------------------------------------------------
# The publish queue: windows, back-pressure, resend, reconnect, over a fake link.


class Followed:
    def __init__(self) -> None:
        self.through: list[int] = []

    def advance(self, through: int) -> None:
        self.through.append(through)


def handled(journal: Journal, count: int) -> None:
    first = journal.last + 1
    journal.append([uevent(n) for n in range(first, first + count)])
    for record in journal.unhandled(count):
        journal.record_outcome(record.sequence, None)


def publishing(publisher: Publisher, journal: Journal, count: int) -> FakeLink:
    """A fresh link attached, then ``count`` more events handled."""
    link = FakeLink()
    publisher.attach(link)
    handled(journal, count)
    publisher.advance(journal.handled)
    return link


@pytest.fixture
async def queue(journal: Journal) -> AsyncIterator[tuple[Publisher, Followed]]:
    publisher, followed = Publisher(journal), Followed()
    publisher.followers.append(followed)
    task = asyncio.get_running_loop().create_task(publisher.run())
    yield publisher, followed
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
def slow_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """No barrier for the time that passes: these tests count events, not milliseconds."""
    monkeypatch.setattr(publisher_module, "ACK_SECONDS", 3600.0)


@pytest.mark.usefixtures("slow_clock")
async def test_publisher_sends_at_once_and_acknowledges_in_a_quiet_moment(
    journal: Journal, queue: tuple[Publisher, Followed]
) -> None:
    publisher, followed = queue
    count = 2 * CHUNK + 5
    link = publishing(publisher, journal, count)
    await until(lambda: link.outstanding == 1)  # everything sent, then one barrier
    assert link.sequences == list(range(1, count + 1))
    assert max(link.batches) <= CHUNK
    assert journal.published == 0  # nothing counts as published before the link says so
    link.ack()
    await until(lambda: journal.published == count)
    assert followed.through == [count]
    assert publisher.count == count


@pytest.mark.usefixtures("slow_clock")
async def test_publisher_holds_at_most_max_barriers_unacknowledged(
    journal: Journal, queue: tuple[Publisher, Followed], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publisher_module, "ACK_EVERY", CHUNK)
    publisher, followed = queue
    link = publishing(publisher, journal, 10 * CHUNK)
    await until(lambda: link.outstanding == MAX_BARRIERS)
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(link.sent) == MAX_BARRIERS * CHUNK  # back-pressure: no more before a reply
    link.ack()
    await until(lambda: len(link.sent) == (MAX_BARRIERS + 1) * CHUNK)
    assert link.outstanding == MAX_BARRIERS
    assert followed.through == [CHUNK]


@pytest.mark.usefixtures("slow_clock")
async def test_publisher_waits_while_the_link_is_full(
    journal: Journal, queue: tuple[Publisher, Followed]
) -> None:
    """The socket's flow control: nothing more is sent until the link has room again."""
    publisher, _ = queue
    link = FakeLink()
    link.full = True
    publisher.attach(link)
    handled(journal, 3 * CHUNK)
    publisher.advance(journal.handled)
    await until(lambda: link.waits == 1)
    for _ in range(50):
        await asyncio.sleep(0)
    assert link.batches == [CHUNK]
    link.drain()
    await until(lambda: len(link.sent) == 3 * CHUNK)
    assert link.sequences == list(range(1, 3 * CHUNK + 1))


@pytest.mark.usefixtures("slow_clock")
async def test_publisher_resends_what_was_not_acknowledged_on_the_next_link(
    journal: Journal, queue: tuple[Publisher, Followed], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publisher_module, "ACK_EVERY", CHUNK)
    publisher, followed = queue
    first = publishing(publisher, journal, 3 * CHUNK)
    await until(lambda: first.outstanding == MAX_BARRIERS)
    first.ack()  # the first chunk got through
    await until(lambda: journal.published == CHUNK)
    await until(lambda: first.outstanding == MAX_BARRIERS)
    first.die()  # the rest were in flight when the connection dropped
    await until(lambda: publisher.link is None)
    handled(journal, 2)  # handled while there is no link: queued in the journal
    publisher.advance(journal.handled)
    second = FakeLink()
    publisher.attach(second)
    await until(lambda: second.outstanding == MAX_BARRIERS)
    assert second.sequences[0] == CHUNK + 1  # from the cursor
    while journal.published < 3 * CHUNK + 2:
        await until(lambda: second.outstanding > 0)
        second.ack()
        await asyncio.sleep(0.001)
    assert second.sequences == list(range(CHUNK + 1, 3 * CHUNK + 3))  # no gap, no repeat
    assert followed.through[-1] == 3 * CHUNK + 2
    assert sorted(set(followed.through)) == followed.through  # never backwards


async def test_publisher_caught_up_sends_a_handled_event_at_once(tmp_path: Path) -> None:
    """No task switch between the handler stage and the link when nothing waits (with
    ``journal_sync = "normal"``: nothing to wait for on disk)."""
    journal = Journal(tmp_path / "journal.sqlite", sync="normal")
    publisher, followed = Publisher(journal), Followed()
    publisher.followers.append(followed)
    task = asyncio.get_running_loop().create_task(publisher.run())
    link = publishing(publisher, journal, 3)
    await until(lambda: link.outstanding == 1)
    link.ack()
    await until(lambda: followed.through == [3])
    for _ in range(10):  # the queue settles down to wait
        await asyncio.sleep(0)
    handled(journal, 1)
    publisher.advance(journal.handled)
    assert link.sequences == [1, 2, 3, 4]  # sent inside advance, before any await
    handled(journal, 1)
    journal.append([uevent(6)])  # queued behind it (a program runs): the queue gathers instead
    publisher.advance(5)
    assert link.sequences == [1, 2, 3, 4]
    await until(lambda: link.sequences == [1, 2, 3, 4, 5])
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    journal.close()


async def test_publisher_sends_nothing_at_once_that_is_not_on_disk(tmp_path: Path) -> None:
    """``journal_sync = "full"``: an event handled goes out only after the fsync that covers it."""
    journal = Journal(tmp_path / "journal.sqlite", sync="full")
    publisher, link = Publisher(journal), FakeLink()
    publisher.attach(link)
    task = asyncio.get_running_loop().create_task(publisher.run())
    for _ in range(10):
        await asyncio.sleep(0)
    handled(journal, 1)
    publisher.advance(journal.handled)
    assert link.sequences == []
    await until(lambda: link.sequences == [1])
    assert journal.synced == 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    journal.close()


async def test_publisher_acknowledges_a_steady_flow_in_time(
    journal: Journal, queue: tuple[Publisher, Followed], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events that never pause for a quiet moment are still acknowledged, every ACK_SECONDS."""
    monkeypatch.setattr(publisher_module, "ACK_SECONDS", 0.02)
    monkeypatch.setattr(publisher_module, "QUIET_SECONDS", 3600.0)
    publisher, _ = queue
    link = FakeLink()
    publisher.attach(link)
    for _ in range(10):
        handled(journal, 1)
        publisher.advance(journal.handled)
        await asyncio.sleep(0.01)
        while link.outstanding:  # the bus daemon answers
            link.ack()
    await until(lambda: len(link.sent) == 10)
    assert 1 <= len(link.barriers) < 10  # not one per event
    await until(lambda: journal.published > 1)


async def test_publisher_waits_for_a_link_and_sends_losses_in_their_place(
    journal: Journal, queue: tuple[Publisher, Followed]
) -> None:
    """A loss journalled while there is no link is not lost: it goes out in its place."""
    publisher, _ = queue
    handled(journal, 2)
    journal.append([Lost("u-1")])
    journal.record_outcome(3, None)
    handled(journal, 1)
    publisher.advance(journal.handled)
    await asyncio.sleep(0.01)
    link = FakeLink()
    publisher.attach(link)
    await until(lambda: link.sequences == [1, 2, 3, 4])
    assert link.lost == [(2, "u-1")]
    assert [e.sequence for e in link.sent] == [1, 2, 4]


async def test_publisher_stop_publishes_what_is_handled_first(journal: Journal) -> None:
    publisher, link = Publisher(journal), FakeLink()
    publisher.attach(link)
    task = asyncio.get_running_loop().create_task(publisher.run())
    handled(journal, 5)
    publisher.advance(journal.handled)
    publisher.stop()
    await until(lambda: link.outstanding == 1)
    assert not task.done()
    link.ack()
    await task
    assert journal.published == 5


# ---------------------------------------------------------------------------------------------
# The whole pipeline, with no bus at all.


async def test_the_pipeline_runs_without_a_bus(tmp_path: Path) -> None:
    source = FakeSource()
    config = Config(hotplug_program="/bin/true", state_dir=tmp_path)
    pipeline = Pipeline(config, source, Journal(tmp_path / "journal.sqlite"))
    pipeline.losses.resync = Resync(tmp_path / "sys")  # the resync must not touch this /sys
    pipeline.devices.scan = list  # nor its rescan (test_devices has the table)
    link = FakeLink()
    pipeline.publisher.attach(link)
    run = asyncio.get_running_loop().create_task(pipeline.run())
    source.feed(datagram(1), datagram(2), datagram(3, sender=77), Overflow(), datagram(4), end=True)
    await until(lambda: link.outstanding == 1 or run.done())
    link.ack()
    assert await run == ExitCode.OK
    pipeline.close()
    assert link.sequences == [1, 2, 3, 4]  # the loss takes its place: 3
    assert [r.outcome.status if r.outcome else None for r in link.sent] == [0, 0, 0]
    assert link.lost == [(2, link.lost[0][1])]
    stats = pipeline.statistics()
    assert (stats["received"], stats["rejected_forged"], stats["overflows"]) == (3, 1, 1)
    assert (stats["handled"], stats["published"], stats["queued"]) == (4, 4, 0)
    assert pipeline.losses.resync.count == 1


def test_the_core_never_imports_the_bus() -> None:
    """The direction of the bus edge: pnpbroker.core runs without dbus-fast loaded at all."""
    code = (
        "import sys, pnpbroker.core.pipeline, pnpbroker.core.output; "
        "bad = sorted(m for m in sys.modules if m.startswith(('dbus_fast', 'pnpbroker.bus'))); "
        "print(' '.join(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
