"""Journals as a long-running broker leaves them, for the tests and for bench/."""

from __future__ import annotations

from pathlib import Path

from pnpbroker.journal import Journal
from pnpbroker.uevent import from_properties

JOURNAL_NAME = "journal.sqlite"
#: Events appended at a time.
CHUNK = 50_000


def prefill(state: Path, count: int) -> Path:
    """A journal in ``state`` holding ``count`` handled and published net events (the kind ifb
    links make), as after a broker ran for a while; its path."""
    state.mkdir(parents=True, exist_ok=True)
    path = state / JOURNAL_NAME
    journal = Journal(path, max_events=count)
    for first in range(1, count + 1, CHUNK):  # a million events at once would take gigabytes
        journal.append(
            [
                from_properties(
                    {
                        "ACTION": "add",
                        "DEVPATH": f"/devices/virtual/net/old{n}",
                        "SUBSYSTEM": "net",
                        "INTERFACE": f"old{n}",
                        "IFINDEX": str(n),
                        "SEQNUM": str(n),
                    }
                )
                for n in range(first, min(first + CHUNK, count + 1))
            ]
        )
    journal.skip_handling(journal.last)
    journal.mark_published(journal.last)
    journal.close()
    return path
