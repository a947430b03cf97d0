"""The fleet consumer's check: each host's sequence, for gaps and repeats; pure.

Messages come as (host, journal id, first, last, lost). A host's sequence must go on from where
it stopped, one by one. What skips ahead opens a gap (reported); a message that fills a gap later
is late (reported, and kept: an MQTT cluster may reorder a host's messages across topics); what
arrives again is a repeat (a resend across a crash or a cut connection: reported, and dropped).
A loss the host reported itself (``events/lost``) moves the sequence on and is reported as such.
A new journal id starts the host's sequence afresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Sequences remembered as missing per host, at most (a larger gap is reported, not tracked).
MAX_MISSING = 100_000


@dataclass(frozen=True, slots=True)
class Report:
    """``kind``: ``gap`` (first..last have not arrived), ``late`` (arrived after later ones: a gap
    closes), ``repeat`` (arrived again), ``lost`` (the host says first..last were never
    forwarded), ``journal`` (a new journal: first is 0), ``properties`` (the MQTT 5 user
    properties disagree with the payload)."""

    kind: str
    host: str
    journal_id: str
    first: int
    last: int

    def __str__(self) -> str:
        what = {
            "gap": "GAP: not arrived",
            "late": "LATE: arrived after later ones",
            "repeat": "REPEAT: arrived again",
            "lost": "LOST: reported lost by the host",
            "journal": "NEW JOURNAL: sequences start again",
            "properties": "USER PROPERTIES: journal_id/sequence disagree with the payload",
        }[self.kind]
        span = f" {self.first}..{self.last}" if self.kind != "journal" else ""
        return f"{self.host}: {what}{span} (journal {self.journal_id})"


@dataclass
class _Host:
    journal_id: str
    last: int  # the highest sequence taken
    missing: set[int] = field(default_factory=set)  # below ``last``, not arrived (bounded)


class Tracker:
    """Per host: the last sequence taken; :meth:`take` says whether a message is new."""

    def __init__(self) -> None:
        self.hosts: dict[str, _Host] = {}

    def take(
        self, host: str, journal_id: str, first: int, last: int, lost: bool = False
    ) -> tuple[bool, list[Report]]:
        """(new, reports): ``new`` is False for a repeat, which the caller should drop."""
        reports: list[Report] = []
        state = self.hosts.get(host)
        if state is None or state.journal_id != journal_id:
            if state is not None:
                reports.append(Report("journal", host, journal_id, 0, 0))
            state = self.hosts[host] = _Host(journal_id, first - 1)
        if last <= state.last:
            if first in state.missing:
                state.missing.difference_update(range(first, last + 1))
                return True, [*reports, Report("late", host, journal_id, first, last)]
            return False, [*reports, Report("repeat", host, journal_id, first, last)]
        if first > state.last + 1:
            reports.append(Report("gap", host, journal_id, state.last + 1, first - 1))
            if len(state.missing) + first - state.last < MAX_MISSING:
                state.missing.update(range(state.last + 1, first))
        if lost:
            reports.append(Report("lost", host, journal_id, first, last))
        state.last = last
        return True, reports
