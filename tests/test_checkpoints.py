"""The journal's checkpoints run off the loop (pnpbroker/checkpoints.py), and lose nothing.

The journal's own connection never checkpoints (``wal_autocheckpoint=0``): its WAL grows past
SQLite's 1,000-page threshold until the worker's PASSIVE checkpoint copies it into the database
file. On a full disk (a real, small tmpfs) the checkpoint fails: the broker says so, keeps every
commit in the WAL, and the next checkpoint after room came back works; nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fakes import uevent, until
from support.mounts import tmpfs

from pnpbroker.checkpoints import PAGE_SIZE, PAGES
from pnpbroker.journal import Journal, Record
from pnpbroker.outcome import Outcome

#: Events per test: each outcome is a commit of at least one page, so this passes PAGES.
EVENTS = 1200


def handle(journal: Journal, first: int, count: int) -> None:
    """Journal ``count`` events (batches of 100, as the reader does) and store an outcome for
    each, one commit apiece, as the sequencer does."""
    for start in range(first, first + count, 100):
        journal.append([uevent(n) for n in range(start, min(start + 100, first + count))])
    for sequence in range(journal.handled + 1, journal.last + 1):
        journal.record_outcome(sequence, Outcome("/bin/true", 0, duration=0.001))


def wal_pages(path: Path) -> int:
    """Pages in the journal's WAL file (0 when it has none)."""
    try:
        return os.stat(f"{path}-wal").st_size // PAGE_SIZE
    except FileNotFoundError:
        return 0


def assert_all_there(path: Path, count: int) -> None:
    """A fresh journal on the file holds every event with its outcome."""
    journal = Journal(path, sync="normal")
    try:
        entries = journal.between(0, journal.last, count + 10)
        outcomes = [e.outcome for e in entries if isinstance(e, Record)]
        assert len(outcomes) == count
        assert all(o is not None and o.program == "/bin/true" for o in outcomes)
        assert journal.handled == journal.last == count
    finally:
        journal.close()


async def test_the_worker_checkpoints_what_the_journal_no_longer_does(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    journal = Journal(path, sync="normal")
    handle(journal, 1, EVENTS)
    assert journal.checkpoints.due.is_set()
    # No automatic checkpoint ran in a commit: the WAL holds every page written so far.
    assert wal_pages(path) > PAGES
    task = asyncio.get_running_loop().create_task(journal.checkpoints.run())
    try:
        await until(lambda: journal.checkpoints.done >= 1, 60)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert journal.checkpoints.last is not None
    busy, frames, copied = journal.checkpoints.last
    assert (busy, copied) == (0, frames)
    assert frames > PAGES
    assert not journal.checkpoints.due.is_set()
    assert journal.checkpoints.pages == 0
    journal.close()
    assert wal_pages(path) == 0  # the last connection closed took it all in
    assert_all_there(path, EVENTS)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "state", "size=24m") as where:
        yield where


def fill(where: Path) -> Path:
    """Take every free byte of the file system at ``where`` (blocks, then the last bytes)."""
    filler = where / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (65536, 512):
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * size)
    assert os.statvfs(where).f_bavail == 0
    return filler


@pytest.mark.root
async def test_a_full_disk_fails_checkpoints_and_loses_nothing(
    small_tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "pnpbroker.checkpoints")
    path = small_tmpfs / "journal.sqlite"
    journal = Journal(path, sync="normal")
    checkpoints = journal.checkpoints
    handle(journal, 1, EVENTS)
    filler = fill(small_tmpfs)
    task = asyncio.get_running_loop().create_task(checkpoints.run())
    try:
        await until(lambda: checkpoints._trouble.active, 60)
        assert "journal checkpoint failed (the WAL keeps growing)" in caplog.text
        assert "full" in caplog.text
        assert checkpoints.done == 0
        assert not task.done()
        filler.unlink()
        handle(journal, EVENTS + 1, EVENTS)  # room again: the next threshold checkpoints
        await until(lambda: checkpoints.done >= 1 or task.done(), 60)
        assert not task.done()
        assert "journal checkpoints work again" in caplog.text
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        journal.close()
    assert_all_there(path, 2 * EVENTS)
