"""Start readers, make sure they listen, make events, and turn their records into figures.

A reader is any process that speaks the ``bench.peers`` protocol (READY on the probe, then one
JSON line of records): the netlink/udevadm/pyudev peers, and the D-Bus subscriber that counts the
broker's or the ceiling emitter's ``Event`` signals. Readiness is proven, not assumed: the probe
link is added (and removed again) until every reader has said READY.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.events import EVENTS_PER_LINK, Record, Sent, add_probe, del_probe, link_index

if TYPE_CHECKING:
    from support.netns import NetNS

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a bench subprocess: the repo and the cached extra packages importable."""
    env = dict(os.environ)
    paths = [str(REPO), str(CACHE / "pylib"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Result:
    """What one reader got: its records, and whether every expected device path arrived."""

    records: list[Record]
    complete: bool


class Reader:
    """One reader process; its stdout lines are read by a thread into a queue."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=python_env(env),
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.ready = False
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def poll_ready(self, wait: float) -> bool:
        """True once the reader said READY (waiting at most ``wait`` s for it now)."""
        if not self.ready:
            try:
                line = self.lines.get(timeout=wait)
            except queue.Empty:
                return False
            if line == "":
                raise RuntimeError(f"reader exited before READY: {self.argv}")
            self.ready = line.strip() == "READY"
        return self.ready

    def result(self, timeout: float) -> Result:
        """The reader's JSON line (it stops by itself once complete or after its timeout)."""
        line = self.lines.get(timeout=timeout)
        self.proc.wait(timeout=10)
        if not line:
            raise RuntimeError(f"reader gave no result: {self.argv}")
        data = json.loads(line)
        records = [(int(s), str(a), str(d), float(t)) for s, a, d, t in data["records"]]
        return Result(records, bool(data["complete"]))

    def pause(self) -> None:
        pause_group(self.proc.pid)

    def resume(self) -> float:
        return resume_group(self.proc.pid)

    def stop(self) -> None:
        """End the reader and anything it started (its whole process group), even if paused."""
        for sig in (signal.SIGTERM, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=10)


def pause_group(pid: int) -> None:
    """SIGSTOP a process group (a reader, the broker): events queue in its socket meanwhile."""
    os.killpg(pid, signal.SIGSTOP)


def resume_group(pid: int) -> float:
    """SIGCONT a process group; return when, on CLOCK_MONOTONIC."""
    now = time.monotonic()
    os.killpg(pid, signal.SIGCONT)
    return now


def peer_argv(ns: NetNS, kind: str, links: int, timeout: float) -> list[str]:
    """A ``bench.peers`` reader of ``kind`` inside the namespace."""
    cmd = [sys.executable, "-m", "bench.peers", kind, "--links", str(links)]
    return ns.exec_argv([*cmd, "--timeout", str(timeout)])


def wait_ready(ns: NetNS | None, readers: list[Reader], limit: float = 30.0) -> None:
    """Add and remove the probe link until every reader has seen it (or ``limit`` passes).

    Without a namespace (the D-Bus ceiling) the readers say READY by themselves.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if ns is not None:
            add_probe(ns)
        ready = all(r.poll_ready(0.5) for r in readers)
        if ns is not None:
            del_probe(ns)
        if ready:
            return
    raise TimeoutError("readers not ready: " + " ".join(str(r.argv) for r in readers))


def run_checked(argv: list[str]) -> None:
    """Run a bench helper (repo importable) to its end; raise with its stderr if it fails."""
    done = subprocess.run(argv, cwd=REPO, env=python_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed ({done.returncode}): {done.stderr.strip()[-500:]}")


def collect(readers: list[Reader], timeout: float) -> list[Result]:
    """Every reader's result; readers are stopped in any case."""
    try:
        return [r.result(timeout) for r in readers]
    finally:
        for r in readers:
            r.stop()


def checked(result: Result, links: int) -> Result:
    """Refuse an incomplete run: a figure from lost events would be wrong, not slow."""
    if not result.complete or len(result.records) != links * EVENTS_PER_LINK:
        got = len(result.records)
        raise RuntimeError(f"reader got {got} of {links * EVENTS_PER_LINK} events")
    return result


def rate(result: Result, sent: Sent) -> float:
    """Events/s from the moment the first line went to ip until the last event arrived."""
    last = max(t for *_, t in result.records)
    return len(result.records) / (last - sent.start)


def drain_rate(result: Result, resumed: float) -> float:
    """Events/s a reader drained from its queue after it was resumed with every event waiting."""
    last = max(t for *_, t in result.records)
    return len(result.records) / (last - resumed)


def latencies_vs_sent(result: Result, sent: Sent) -> list[float]:
    """Seconds from writing the line that made each event to its arrival at the reader."""
    out = []
    for _seq, _action, devpath, t in result.records:
        index = link_index(devpath)
        assert index is not None
        out.append(t - sent.sent[index])
    return out


def latencies_vs_reference(result: Result, reference: Result) -> list[float]:
    """Seconds each event arrived after it reached a minimal netlink reader running alongside."""
    first = {seq: t for seq, *_, t in reference.records}
    return [t - first[seq] for seq, *_, t in result.records if seq in first]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=1000, method="inclusive")
    return cuts[max(0, min(len(cuts) - 1, round(q * 10) - 1))]
