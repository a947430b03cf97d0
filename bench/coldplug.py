"""Coldplug of the whole /sys: ``pnpbroker trigger --settle`` beside a shell loop and udevadm.

All three run inside a fresh namespace (so the net devices are that namespace's ``lo`` only; every
other device is the host's) with a broker (no program) in it on a private bus:

- ``udevadm trigger --dry-run``: how fast udevadm enumerates the same devices (writes nothing);
- the floor: ``for f in $(find /sys/devices -name uevent); do echo add > $f; done`` in ``sh``,
  i.e. writing every ``uevent`` file with nothing else (no settle, no uuid, no order);
- ``pnpbroker trigger --settle``: walk, write ``add <uuid>`` to each device, and wait until the
  broker has published every event the kernel sent back; timed as the command a user types
  (the interpreter's start included). ``devices`` is its own count (``trigger --dry-run``).

The floor's events also reach the broker; the settle runs first, so they never queue before it.
"""

from __future__ import annotations

import subprocess
import sys
import time

from support.bus import SystemBus

from bench import events
from bench.broker import running_broker
from bench.harness import REPO, python_env
from bench.measures import Config, Values

SHELL_FLOOR = "for f in $(find /sys/devices -name uevent); do echo add > $f 2>/dev/null; done"
TRIGGER = [sys.executable, "-m", "pnpbroker", "trigger"]


def _timed(argv: list[str]) -> tuple[float, str]:
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=python_env())
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:6]} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return elapsed, done.stdout


def coldplug(cfg: Config) -> Values:
    """Devices/s and seconds of each of the three, over the same /sys."""
    out: Values = {}
    with (
        events.netns() as ns,
        SystemBus() as bus,
        running_broker(ns, bus, ["--no-program"]),
    ):
        if cfg.udevadm is not None:
            argv = [str(cfg.udevadm), "trigger", "--dry-run", "--verbose", "--action=add"]
            took, listed = _timed(ns.exec_argv(argv))
            out["coldplug.udevadm"] = len(listed.splitlines()) / took
        _, listed = _timed(ns.exec_argv([*TRIGGER, "--dry-run"]))
        devices = len(listed.split())
        argv = [*TRIGGER, "--settle", "--timeout", "120", "--bus-address", bus.address]
        settle, _ = _timed(ns.exec_argv(argv))
        _, files = _timed(ns.exec_argv(["sh", "-c", "find /sys/devices -name uevent | wc -l"]))
        floor, _ = _timed(ns.exec_argv(["sh", "-c", SHELL_FLOOR]))
    count = int(files)
    out.update(
        {
            "coldplug.devices": float(devices),
            "broker.coldplug": devices / settle,
            "broker.coldplug.time": settle,
            "coldplug.shell": count / floor,
            "coldplug.shell.time": floor,
        }
    )
    return out
