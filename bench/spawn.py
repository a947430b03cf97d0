"""The spawn limit: how fast a program can be run at all, serially, with a uevent's environment.

The broker's legacy path (one program per event, strictly serial) can go no faster than a tight
``os.posix_spawn`` + ``os.waitpid`` loop of the same program with the same environment and the
same spawn attributes, by the same function (``pnpbroker.legacy.runner.spawn``), as the broker's
``ProgramRunner``: argv ``[PROGRAM, "net"]``, the event's keys plus the kernel's HOME and PATH,
only fds 0-2 (every other descriptor marked close-on-exec first), stdin an empty pipe, stdout
and stderr into a pipe, its own process group, SIGPIPE/SIGXFSZ at their defaults, an empty
signal mask. The same loop in C gives context: what Python's own overhead costs. The storm's
program is ``sleep5ms.c`` (a C ``nanosleep`` of 5 ms: nothing else runs, so "5 ms each" is what
it costs).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bench.tools import compile_c
from pnpbroker.legacy import runner
from pnpbroker.legacy.runner import KERNEL_ENV, empty_input

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
    """Spawns/s of the Python loop: the broker's own spawn (``runner.spawn``: fds 0-2 only,
    stdin an empty pipe, stdout and stderr into a pipe, own process group, signals reset) and a
    fresh environment dict per spawn, as per event; then ``os.waitpid``."""
    stdin = empty_input()
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    argv = [program, "net"]
    try:
        start = time.monotonic()
        for i in range(count):
            os.waitpid(runner.spawn(argv, uevent_env(i), stdin, write_fd, write_fd), 0)
        return count / (time.monotonic() - start)
    finally:
        for fd in (stdin, read_fd, write_fd):
            os.close(fd)


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
