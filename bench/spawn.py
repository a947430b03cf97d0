"""The spawn limit: how fast a program can be run at all, serially, with a uevent's environment.

The broker's legacy path (one program per event, strictly serial) can go no faster than a tight
``os.posix_spawn`` + ``os.waitpid`` loop of the same program with the same environment and the
same spawn attributes as ``pnpbroker.legacy.runner.ProgramRunner`` uses: argv ``[PROGRAM, "net"]``,
the event's keys plus the kernel's HOME and PATH, stdin from /dev/null, stdout and stderr into a
pipe, its own process group, SIGPIPE/SIGXFSZ at their defaults, an empty signal mask. The same
loop in C gives context: what Python's own overhead costs. The storm's program is
``sleep5ms.c`` (a C ``nanosleep`` of 5 ms: nothing else runs, so "5 ms each" is what it costs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from bench.tools import compile_c
from pnpbroker.legacy.runner import KERNEL_ENV

PROGRAM = "/bin/true"
HERE = Path(__file__).resolve().parent


def uevent_env(seqnum: int) -> dict[str, str]:
    """What a hotplug program gets for an ifb net add: its 6 uevent keys plus HOME and PATH."""
    return {
        **KERNEL_ENV,
        "ACTION": "add",
        "DEVPATH": "/devices/virtual/net/ifb0",
        "SUBSYSTEM": "net",
        "INTERFACE": "ifb0",
        "IFINDEX": "2",
        "SEQNUM": str(seqnum),
    }


def python_loop(count: int, program: str = PROGRAM) -> float:
    """Spawns/s of the Python loop (a fresh environment dict per spawn, as per event)."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, write_fd, 1),
        (os.POSIX_SPAWN_DUP2, write_fd, 2),
    ]
    reset = (signal.SIGPIPE, signal.SIGXFSZ)
    argv = [program, "net"]
    try:
        start = time.monotonic()
        for i in range(count):
            pid = os.posix_spawn(
                program,
                argv,
                uevent_env(i),
                file_actions=actions,
                setpgroup=0,
                setsigdef=reset,
                setsigmask=(),
            )
            os.waitpid(pid, 0)
        return count / (time.monotonic() - start)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def c_loop(count: int, program: str = PROGRAM) -> float | None:
    """Spawns/s of the same loop in C, or None without a compiler."""
    binary = compile_c(HERE / "spawn_loop.c", "spawn_loop")
    if binary is None:
        return None
    out = subprocess.run(
        [str(binary), str(count), program, "net"],
        env=uevent_env(0),
        capture_output=True,
        text=True,
    )
    out.check_returncode()
    return float(out.stdout)


def sleep_program() -> Path | None:
    """The storm's 5 ms program, compiled into .cache (None without a compiler)."""
    return compile_c(HERE / "sleep5ms.c", "sleep5ms")
