"""The legacy /sbin/hotplug world: which mode the configuration asks for, and how it spawns.

Modes (config ``mode``): ``program`` (one program, the default), ``hotplug.d`` (every
``*.hotplug`` script of the subsystem, then of ``default``) and ``agents`` (``SUBSYSTEM.agent``,
else a fallback). The ``skip`` list wraps any of them. ``user``, ``group`` and ``limits``
switch the shared runner from posix_spawn to the fork/exec spawner.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pnpbroker.legacy.modes import (
    AgentMode,
    HotplugDirMode,
    Mode,
    ProgramMode,
    SkipList,
    agent_program,
    hotplug_scripts,
)
from pnpbroker.legacy.options import SkipPattern, credentials, rlimits
from pnpbroker.legacy.runner import ProgramRunner
from pnpbroker.legacy.spawn import ForkSpawner
from pnpbroker.uevent import Uevent

if TYPE_CHECKING:
    from pnpbroker.config import Config


def make_mode(config: Config, runner: ProgramRunner) -> Mode | None:
    """The mode for ``config`` (None when nothing would ever run); sets the runner's spawner."""
    runner.spawner = make_spawner(config)
    mode = _mode(config, runner)
    if mode is not None and config.skip:
        return SkipList(mode, config.skip)
    return mode


def make_spawner(config: Config) -> ForkSpawner | None:
    """The fork/exec spawner when credentials or limits are configured; else the fast path."""
    ids = credentials(config.user, config.group)
    if ids is None and not config.limits:
        return None
    return ForkSpawner(ids, rlimits(config.limits))


def planned(config: Config, event: Uevent) -> list[list[str]]:
    """The commands ``config`` would run for ``event``, in order (``run --dry-run``)."""
    if any(SkipPattern.parse(text).matches(event) for text in config.skip):
        return []
    if config.mode == "hotplug.d":
        scripts = hotplug_scripts(config.hotplug_d, event.subsystem)
    elif config.mode == "agents":
        scripts = [agent_program(config.agents_dir, config.agent_fallback, event.subsystem)]
    else:
        scripts = [config.hotplug_program]
    return [[script, event.subsystem] for script in scripts if script]


def _mode(config: Config, runner: ProgramRunner) -> Mode | None:
    if config.mode == "hotplug.d":
        return HotplugDirMode(config.hotplug_d, runner)
    if config.mode == "agents":
        return AgentMode(config.agents_dir, config.agent_fallback, runner)
    if not config.hotplug_program:
        return None
    # Absolute now: the daemon works in "/" once started.
    return ProgramMode(os.path.abspath(config.hotplug_program), runner)


__all__ = ["Mode", "ProgramRunner", "make_mode", "planned"]
