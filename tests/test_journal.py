"""The journal: sequences 1..N never reused, cursors durable, retention touches only published."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from pnpbroker.journal import Journal
from pnpbroker.outcome import Outcome
from pnpbroker.uevent import Uevent, from_properties


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
    assert [r.event.seqnum for r in journal.unhandled(100)] == [100, 101, 102, 103, 104]
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
    assert [(r.sequence, r.outcome) for r in reopened.between(2, reopened.handled, 100)] == [
        (3, Outcome(status=3))
    ]
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
    records = journal.between(0, journal.handled, 1)
    assert records[0].event == _events(1, 1)[0]
    journal.close()
