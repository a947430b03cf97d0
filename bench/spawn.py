"""The spawn limit: how fast ``/bin/true`` can be run at all, serially, with a uevent's environment.

The broker's legacy path (one program per event, strictly serial) can go no faster than a tight
``os.posix_spawn`` + ``os.waitpid`` loop of the same program with the same kind of environment,
argv ``[/bin/true, "net"]`` and stdin from /dev/null. The same loop in C gives context: what
Python's own overhead costs.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bench.tools import compile_c

PROGRAM = "/bin/true"
ARGV = [PROGRAM, "net"]


def uevent_env(seqnum: int) -> dict[str, str]:
    """What a hotplug program gets for an ifb net add: its 6 uevent keys plus HOME and PATH."""
    return {
        "ACTION": "add",
        "DEVPATH": "/devices/virtual/net/ifb0",
        "SUBSYSTEM": "net",
        "INTERFACE": "ifb0",
        "IFINDEX": "2",
        "SEQNUM": str(seqnum),
        "HOME": "/",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }


def python_loop(count: int) -> float:
    """Spawns/s of the Python loop (a fresh environment dict per spawn, as per event)."""
    devnull = os.open("/dev/null", os.O_RDONLY)
    actions = [(os.POSIX_SPAWN_DUP2, devnull, 0)]
    try:
        start = time.monotonic()
        for i in range(count):
            pid = os.posix_spawn(PROGRAM, ARGV, uevent_env(i), file_actions=actions)
            os.waitpid(pid, 0)
        return count / (time.monotonic() - start)
    finally:
        os.close(devnull)


def c_loop(count: int) -> float | None:
    """Spawns/s of the same loop in C, or None without a compiler."""
    binary = compile_c(Path(__file__).with_name("spawn_loop.c"), "spawn_loop")
    if binary is None:
        return None
    out = subprocess.run(
        [str(binary), str(count), *ARGV], env=uevent_env(0), capture_output=True, text=True
    )
    out.check_returncode()
    return float(out.stdout)
