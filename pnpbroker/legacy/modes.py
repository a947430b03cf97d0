"""The legacy modes: what runs for one event (config ``mode``), and the skip list around them.

Each is a :class:`Mode`: given one event it runs what the classic /sbin/hotplug world would
have run, through the shared ``ProgramRunner`` (so timeouts, logging, credentials and limits are
the same everywhere), and returns the event's :class:`~pnpbroker.outcome.Outcome` (None when
nothing ran). Directories are read at each event, as /sbin/hotplug did: scripts added later take
part. A ``*.hotplug`` file is run only if it is trusted as a root program should be (cron's rule
for /etc/cron.d): not hidden (the shell's ``*.hotplug`` glob never matched dotfiles), owned by
root (or the broker's own user), not writable by group or others, and, for a symbolic link,
the link root's too. Any other is skipped, with a warning once per file and reason.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Sequence
from typing import Protocol

from pnpbroker.legacy.options import SkipPattern
from pnpbroker.legacy.runner import ProgramRunner, event_environment
from pnpbroker.outcome import SKIPPED, Outcome, combine
from pnpbroker.uevent import Uevent

log = logging.getLogger(__name__)

DEFAULT_DIR = "default"
SUFFIX = ".hotplug"
#: Told of each script skipped: its path, and why.
Refused = Callable[[str, str], None]


class Mode(Protocol):
    """What the serial stage calls for each event: run its programs, say how they ended."""

    async def run(self, event: Uevent, sequence: int) -> Outcome | None: ...


def component(subsystem: str) -> bool:
    """True when ``subsystem`` can name a file or directory without leaving the directory."""
    return bool(subsystem) and "/" not in subsystem and subsystem not in (".", "..")


def executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def untrusted(path: str) -> str | None:
    """Why a root process must not run ``path`` (see the module docstring); None if it may."""
    if os.path.basename(path).startswith("."):
        return "a hidden file"
    owners = {0, os.geteuid()}
    try:
        link, target = os.lstat(path), os.stat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    for info in (link, target):
        if info.st_uid not in owners:
            return f"owned by uid {info.st_uid}, not root"
    if target.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "writable by group or others"
    return None


def hotplug_scripts(directory: str, subsystem: str, refused: Refused | None = None) -> list[str]:
    """The ``*.hotplug`` programs for one event, in the order they run; ``refused`` hears of
    those skipped as untrusted."""
    subdirs = [subsystem] if component(subsystem) and subsystem != DEFAULT_DIR else []
    found: list[str] = []
    for subdir in [*subdirs, DEFAULT_DIR]:
        where = os.path.join(directory, subdir)
        try:
            names = sorted(os.listdir(where))
        except OSError:
            continue
        for path in (os.path.join(where, n) for n in names if n.endswith(SUFFIX)):
            if (why := untrusted(path)) is not None:
                if refused is not None:
                    refused(path, why)
            elif executable(path):
                found.append(path)
    return found


def agent_program(directory: str, fallback: str, subsystem: str) -> str:
    """``DIR/SUBSYSTEM.agent`` when executable, else ``fallback``; "" when none."""
    if component(subsystem):
        agent = os.path.join(directory, f"{subsystem}.agent")
        if executable(agent):
            return agent
    return fallback


class ProgramMode:
    """The classic mode: one program, ``argv[1]`` = subsystem, the event as environment."""

    def __init__(self, program: str, runner: ProgramRunner) -> None:
        self.program = program
        self.runner = runner

    async def run(self, event: Uevent, sequence: int) -> Outcome:
        argv = [self.program, event.subsystem]
        return await self.runner.run(argv, event_environment(event), f"event {sequence}")


class HotplugDirMode:
    """``DIR/SUBSYSTEM/*.hotplug`` then ``DIR/default/*.hotplug``, by name, each one run.

    A failing script does not stop the next one. The outcome's ``status``/``signal`` are those
    of the first run that failed (0 when all succeeded); ``runs`` lists every run in order.
    """

    def __init__(self, directory: str, runner: ProgramRunner) -> None:
        self.directory = directory
        self.runner = runner
        self._told: set[tuple[str, str]] = set()

    async def run(self, event: Uevent, sequence: int) -> Outcome:
        env = event_environment(event)
        label = f"event {sequence}"
        runs = [
            await self.runner.run([path, event.subsystem], env, label)
            for path in hotplug_scripts(self.directory, event.subsystem, self._refuse)
        ]
        return combine(self.directory, tuple(runs))

    def _refuse(self, path: str, why: str) -> None:
        if (path, why) not in self._told:
            self._told.add((path, why))
            log.warning("hotplug.d: not running %s: %s", path, why)


class AgentMode:
    """``DIR/SUBSYSTEM.agent`` when it is executable, else ``fallback`` (or nothing)."""

    def __init__(self, directory: str, fallback: str, runner: ProgramRunner) -> None:
        self.directory = directory
        self.fallback = fallback
        self.runner = runner

    async def run(self, event: Uevent, sequence: int) -> Outcome | None:
        program = agent_program(self.directory, self.fallback, event.subsystem)
        if not program:
            return None
        argv = [program, event.subsystem]
        return await self.runner.run(argv, event_environment(event), f"event {sequence}")


class SkipList:
    """Drops events matching the skip list before anything runs; they are still published."""

    def __init__(self, inner: Mode, patterns: Sequence[str]) -> None:
        self.inner = inner
        self.patterns = [SkipPattern.parse(text) for text in patterns]

    def skips(self, event: Uevent) -> bool:
        return any(pattern.matches(event) for pattern in self.patterns)

    async def run(self, event: Uevent, sequence: int) -> Outcome | None:
        if self.skips(event):
            return SKIPPED
        return await self.inner.run(event, sequence)
