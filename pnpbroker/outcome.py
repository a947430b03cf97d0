"""What the legacy stage did with one event: a frozen value, and its JSON form for the journal.

An event's outcome is one of: nothing ran (``None`` wherever an ``Outcome | None`` is expected:
no program configured, no agent for the subsystem), :data:`SKIPPED` (the skip list matched), or
the account of the program's run. Modes that run several programs (``hotplug.d``) sum them up
in the outer fields and list each run in :attr:`Outcome.runs`.

The JSON form (:meth:`Outcome.to_json`) is what the journal stores; the D-Bus form (the
``handler`` argument of the ``Event`` signal, ``a{sv}``) is built from it with an explicit
signature per key by :mod:`pnpbroker.bus.wire`, and decoded by :mod:`pnpbroker.client`. Keys
that only sometimes apply (``error``, ``runs``, ``abandoned_pid``) are left out when they do
not; a field added later must say the same (and get its signature in the wire module: a test
holds the two equal).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The JSON (and D-Bus) form of an outcome: key -> bool, int, float, str, or a list of those.
Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the program (or programs) for one event ended."""

    program: str = ""  # the program run (in hotplug.d mode: the directory)
    status: int = 0  # exit status; -1 when killed by a signal or never started
    signal: int = 0  # the terminating signal, 0 if none
    timed_out: bool = False
    duration: float = 0.0  # seconds
    error: str = ""  # why it could not be started (or why the stage failed)
    skipped: bool = False  # the skip list matched: nothing ran
    runs: tuple[Outcome, ...] | None = None  # each run, in order, for modes that run several
    abandoned_pid: int = 0  # a program still there after SIGKILL, left running (0: none)

    @property
    def ok(self) -> bool:
        """Exit status 0 (for several runs: none failed)."""
        return self.status == 0

    def to_json(self) -> Json:
        """The journal's form; the Event signal's ``handler`` carries the same keys."""
        if self.skipped:
            return {"skipped": True}
        out: Json = {
            "program": self.program,
            "status": self.status,
            "signal": self.signal,
            "timed_out": self.timed_out,
            "duration": self.duration,
        }
        if self.error:
            out["error"] = self.error
        if self.runs is not None:
            out["runs"] = [run.to_json() for run in self.runs]
        if self.abandoned_pid:
            out["abandoned_pid"] = self.abandoned_pid
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Outcome | None:
        """The outcome stored as ``data``; None for ``{}`` (nothing ran)."""
        if not data:
            return None
        if data.get("skipped"):
            return SKIPPED
        runs = data.get("runs")
        return cls(
            program=str(data.get("program", "")),
            status=int(data.get("status", 0)),
            signal=int(data.get("signal", 0)),
            timed_out=bool(data.get("timed_out", False)),
            duration=float(data.get("duration", 0.0)),
            error=str(data.get("error", "")),
            runs=None if runs is None else tuple(_run(item) for item in runs),
            abandoned_pid=int(data.get("abandoned_pid", 0)),
        )


#: The outcome of an event that matched the skip list.
SKIPPED = Outcome(skipped=True)


def _run(data: Mapping[str, Any]) -> Outcome:
    run = Outcome.from_json(data)
    if run is None:
        raise ValueError("an empty entry in runs")
    return run


def combine(program: str, runs: tuple[Outcome, ...]) -> Outcome:
    """One outcome for several runs: the first failure's status and signal (0 if none failed),
    timed out if any was, the total duration, the first abandoned pid, and every run."""
    failed = next((run for run in runs if not run.ok), None)
    abandoned = next((run.abandoned_pid for run in runs if run.abandoned_pid), 0)
    return Outcome(
        program=program,
        status=failed.status if failed else 0,
        signal=failed.signal if failed else 0,
        timed_out=any(run.timed_out for run in runs),
        duration=float(sum(run.duration for run in runs)),
        runs=runs,
        abandoned_pid=abandoned,
    )


def describe(outcome: Outcome) -> str:
    """A short human account of a run, for the log."""
    if outcome.error:
        return outcome.error
    if outcome.abandoned_pid:
        return f"timed out, could not be killed: pid {outcome.abandoned_pid} abandoned"
    if outcome.timed_out:
        return f"timed out after {outcome.duration:.1f} s (signal {outcome.signal})"
    if outcome.signal:
        return f"killed by signal {outcome.signal}"
    return f"exited with status {outcome.status}"
