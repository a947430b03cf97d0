"""The journal: sequences 1..N never reused, cursors durable, retention touches only published."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest
from support.fakes import records

from pnpbroker import journalfile
from pnpbroker.journal import Journal, Lost
from pnpbroker.journalfile import JournalUnusable
from pnpbroker.outcome import Outcome
from pnpbroker.uevent import Uevent, from_properties, serialize


def _events(first_seqnum: int, count: int) -> list[Uevent]:
    return [
        from_properties(
            {
                "ACTION": "add",
                "DEVPATH": f"/devices/virtual/net/j{n}",
                "SUBSYSTEM": "net",
                "SEQNUM": str(n),
                "INTERFACE": f"j{n}",
            }
        )
        for n in range(first_seqnum, first_seqnum + count)
    ]


def _handle_and_publish(journal: Journal) -> None:
    for record in journal.unhandled(10_000):
        journal.record_outcome(record.sequence, Outcome(status=0))
    journal.mark_published(journal.handled)
    journal.flush()


def test_sequences_start_at_one_and_rise_by_one(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    assert journal.append(_events(100, 3)) == 3
    assert journal.append(_events(103, 2)) == 5
    assert [r.sequence for r in journal.unhandled(100)] == [1, 2, 3, 4, 5]
    assert [r.event.seqnum for r in records(journal.unhandled(100))] == [100, 101, 102, 103, 104]
    journal.close()


def test_never_reused_after_retention_deleted_everything_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path, max_events=0)
    journal.append(_events(1, 4))
    _handle_and_publish(journal)
    assert journal.prune() == 4
    assert journal.oldest == 0
    assert journal.append(_events(5, 1)) == 5
    _handle_and_publish(journal)
    journal.prune()
    journal.close()
    reopened = Journal(path, max_events=0)
    assert (reopened.last, reopened.handled, reopened.published) == (5, 5, 5)
    assert reopened.append(_events(6, 2)) == 7
    reopened.close()


def test_cursors_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    journal.append(_events(1, 5))
    for record in journal.unhandled(3):
        journal.record_outcome(record.sequence, Outcome(status=record.sequence))
    journal.mark_published(2)
    journal.flush()
    journal.close()
    reopened = Journal(path)
    assert (reopened.last, reopened.handled, reopened.published) == (5, 3, 2)
    assert [r.sequence for r in reopened.unhandled(100)] == [4, 5]
    assert [
        (r.sequence, r.outcome) for r in records(reopened.between(2, reopened.handled, 100))
    ] == [(3, Outcome(status=3))]
    # GetEvents returns every handled event: their outcomes are final, whatever was acknowledged.
    assert [r.sequence for r in reopened.between(0, reopened.handled, 100)] == [1, 2, 3]
    # --output writes only what the bus acknowledged.
    assert [r.sequence for r in reopened.between(0, reopened.published, 100)] == [1, 2]
    reopened.close()


def test_outcome_is_durable_without_flush(tmp_path: Path) -> None:
    """record_outcome commits at once: a SIGKILL right after it must not rerun the program."""
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    journal.append(_events(1, 2))
    journal.record_outcome(1, Outcome(status=7))
    # No close(), no flush(): read the file from a second connection, as a restart would.
    reopened = Journal(path)
    assert reopened.handled == 1
    assert [r.sequence for r in reopened.unhandled(10)] == [2]
    reopened.close()
    journal.close()


def test_retention_by_count_deletes_only_published(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite", max_events=2)
    journal.append(_events(1, 10))
    for record in journal.unhandled(6):
        journal.record_outcome(record.sequence, None)
    journal.mark_published(6)
    assert journal.prune() == 4  # 1..4 go; 5 and 6 are the two kept; 7..10 are unpublished
    assert journal.oldest == 5
    assert [r.sequence for r in journal.unhandled(100)] == [7, 8, 9, 10]
    assert [r.sequence for r in journal.between(0, journal.handled, 100)] == [5, 6]
    journal.close()


def test_retention_by_age_deletes_only_published(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path, max_events=1000, max_age=3600)
    journal.append(_events(1, 6))
    for record in journal.unhandled(4):
        journal.record_outcome(record.sequence, None)
    journal.mark_published(4)
    journal.flush()
    old = time.time() - 7200
    with sqlite3.connect(path) as db:  # age the rows 1, 2 and 6 by two hours
        db.execute("UPDATE events SET received=? WHERE seq IN (1, 2, 6)", (old,))
    assert journal.prune() == 2
    assert journal.oldest == 3
    assert [r.sequence for r in journal.between(0, journal.handled, 100)] == [3, 4]
    assert [r.sequence for r in journal.unhandled(100)] == [5, 6]
    journal.close()


def test_between_pages(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    journal.append(_events(1, 10))
    _handle_and_publish(journal)
    assert [r.sequence for r in journal.between(3, journal.handled, 4)] == [4, 5, 6, 7]
    assert journal.between(10, journal.handled, 4) == []
    first = records(journal.between(0, journal.handled, 1))
    assert first[0].event == _events(1, 1)[0]
    journal.close()


# ---------------------------------------------------------------------------------------------
# The file: identity, schema, durability, damage (tests/test_faults_journal.py: the real broker).

V1_SCHEMA = """
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, seqnum INTEGER NOT NULL,
                     received REAL NOT NULL, uevent BLOB NOT NULL, handler TEXT);
CREATE TABLE cursors (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
INSERT INTO cursors VALUES ('handled', 0), ('published', 0);
PRAGMA user_version=1;
"""


def test_a_journal_of_schema_1_is_migrated_and_keeps_its_events(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    rows = [(n, n, 0.0, serialize(e), "{}") for n, e in enumerate(_events(10, 3), 1)]
    db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    journal = Journal(path)
    assert journal.replaced is None
    assert [r.event.seqnum for r in records(journal.between(0, 3, 10))] == [10, 11, 12]
    assert journal.journal_id
    assert journal.append([Lost("u")]) == 4
    journal.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2


def test_the_identity_is_kept_until_the_journal_is_made_afresh(tmp_path: Path) -> None:
    first = Journal(tmp_path / "j.sqlite")
    first.close()
    again = Journal(tmp_path / "j.sqlite")
    again.close()
    other = Journal(tmp_path / "k.sqlite")
    other.close()
    assert first.journal_id == again.journal_id != other.journal_id


def test_a_damaged_file_is_moved_aside_and_the_fresh_journal_starts_with_a_loss(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.sqlite"
    path.write_bytes(b"SQLite format 3\0" + b"\xff" * 4000)
    journal = Journal(path)
    assert journal.replaced is not None
    assert journal.replaced.read_bytes().startswith(b"SQLite")
    assert journal.unhandled(10) == [Lost("", 1)]
    journal.close()


def test_a_newer_schema_is_moved_aside_never_read(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=3")
    db.close()
    journal = Journal(path)
    assert journal.replaced is not None
    journal.close()


def test_a_directory_in_its_place_is_unusable(tmp_path: Path) -> None:
    (tmp_path / "j.sqlite").mkdir()
    with pytest.raises(JournalUnusable, match="is a directory"):
        Journal(tmp_path / "j.sqlite")


@pytest.mark.parametrize(("sync", "fsyncs", "shown"), [("full", 1, 0), ("normal", 0, 3)])
async def test_nothing_is_shown_before_it_is_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: str, fsyncs: int, shown: int
) -> None:
    """``synced`` (what clients may see) moves only with a sync (an fsync of the WAL) under
    "full"; under "normal" it is what is handled, and a sync does nothing."""
    journal = Journal(tmp_path / "j.sqlite", sync=sync)
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    journal.append(_events(1, 3))
    _handle_and_publish(journal)
    assert (journal.handled, journal.synced) == (3, shown)
    await journal.sync()
    assert journal.synced == 3
    await journal.sync()  # nothing new: no second fsync
    assert len(synced) == fsyncs
    journal.close()


@pytest.mark.parametrize(("sync", "renewed"), [("full", False), ("normal", True)])
def test_a_journal_left_open_by_an_earlier_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: str, renewed: bool
) -> None:
    """Under "normal" its last commits may be gone: a new identity, so clients are told."""
    boot = tmp_path / "boot_id"
    monkeypatch.setattr(journalfile, "BOOT_ID", boot)
    boot.write_text("boot-1\n")
    crashed = Journal(tmp_path / "j.sqlite", sync=sync)
    crashed.append(_events(1, 2))
    crashed._db.close()  # no clean close: the power went
    boot.write_text("boot-2\n")
    after = Journal(tmp_path / "j.sqlite", sync=sync)
    assert (after.journal_id != crashed.journal_id) is renewed
    assert after.last == 2
    after.close()
    boot.write_text("boot-3\n")
    clean = Journal(tmp_path / "j.sqlite", sync=sync)
    assert clean.journal_id == after.journal_id  # closed cleanly: kept
    clean.close()


def test_the_cap_makes_room_from_published_entries_only(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite", max_entries=10)
    journal.append(_events(1, 8))
    assert journal.room(5) == 2  # nothing published: nothing to drop
    _handle_and_publish(journal)
    assert journal.room(5) == 5
    assert (journal.count, journal.oldest) == (5, 4)
    journal.close()
