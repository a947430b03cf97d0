"""The legacy handler modes besides the single program: hotplug.d, agents, and the skip list.

Each is a ``pnpbroker.hotplug.Handler``: given one event it runs what the classic /sbin/hotplug
world would have run, through the shared ``ProgramRunner`` (so timeouts, logging, credentials
and limits are the same everywhere), and returns the Event signal's ``handler`` dictionary.
Directories are read at each event, as /sbin/hotplug did: scripts added later take part.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from pnpbroker.hotplug import Handler, Outcome, ProgramRunner, event_environment
from pnpbroker.legacy.options import SkipPattern
from pnpbroker.uevent import Uevent

DEFAULT_DIR = "default"
SUFFIX = ".hotplug"


def component(subsystem: str) -> bool:
    """True when ``subsystem`` can name a file or directory without leaving the directory."""
    return bool(subsystem) and "/" not in subsystem and subsystem not in (".", "..")


def executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def hotplug_scripts(directory: str, subsystem: str) -> list[str]:
    """The ``*.hotplug`` programs for one event, in the order they run."""
    subdirs = [subsystem] if component(subsystem) and subsystem != DEFAULT_DIR else []
    found: list[str] = []
    for subdir in [*subdirs, DEFAULT_DIR]:
        where = os.path.join(directory, subdir)
        try:
            names = sorted(os.listdir(where))
        except OSError:
            continue
        paths = (os.path.join(where, n) for n in names if n.endswith(SUFFIX))
        found.extend(path for path in paths if executable(path))
    return found


def agent_program(directory: str, fallback: str, subsystem: str) -> str:
    """``DIR/SUBSYSTEM.agent`` when executable, else ``fallback``; "" when none."""
    if component(subsystem):
        agent = os.path.join(directory, f"{subsystem}.agent")
        if executable(agent):
            return agent
    return fallback


class HotplugDirHandler:
    """``DIR/SUBSYSTEM/*.hotplug`` then ``DIR/default/*.hotplug``, by name, each one run.

    A failing script does not stop the next one. The handler's ``status``/``signal`` are those
    of the first run that failed (0 when all succeeded); ``runs`` lists every run in order.
    """

    def __init__(self, directory: str, runner: ProgramRunner) -> None:
        self.directory = directory
        self.runner = runner

    async def handle(self, event: Uevent, sequence: int) -> dict[str, Any]:
        env = event_environment(event)
        label = f"event {sequence}"
        runs = [
            await self.runner.run([path, event.subsystem], env, label)
            for path in hotplug_scripts(self.directory, event.subsystem)
        ]
        return combine(self.directory, runs)


def combine(program: str, runs: Sequence[Outcome]) -> dict[str, Any]:
    """One handler dictionary for several runs (``runs`` becomes ``aa{sv}`` on the bus)."""
    failed = next((run for run in runs if not run.ok), None)
    return {
        "program": program,
        "status": failed.status if failed else 0,
        "signal": failed.signal if failed else 0,
        "timed_out": any(run.timed_out for run in runs),
        "duration": sum(run.duration for run in runs),
        "runs": [run.as_handler() for run in runs],
    }


class AgentHandler:
    """``DIR/SUBSYSTEM.agent`` when it is executable, else ``fallback`` (or nothing)."""

    def __init__(self, directory: str, fallback: str, runner: ProgramRunner) -> None:
        self.directory = directory
        self.fallback = fallback
        self.runner = runner

    async def handle(self, event: Uevent, sequence: int) -> dict[str, Any]:
        program = agent_program(self.directory, self.fallback, event.subsystem)
        if not program:
            return {}
        argv = [program, event.subsystem]
        outcome = await self.runner.run(argv, event_environment(event), f"event {sequence}")
        return outcome.as_handler()


class SkippingHandler:
    """Drops events matching the skip list before anything runs; they are still published."""

    def __init__(self, inner: Handler, patterns: Sequence[str]) -> None:
        self.inner = inner
        self.patterns = [SkipPattern.parse(text) for text in patterns]

    def skips(self, event: Uevent) -> bool:
        return any(pattern.matches(event) for pattern in self.patterns)

    async def handle(self, event: Uevent, sequence: int) -> dict[str, Any]:
        if self.skips(event):
            return {"skipped": True}
        return await self.inner.handle(event, sequence)
