"""Running one legacy program for one event, exactly as the kernel would have run its helper.

``argv = [PROGRAM, SUBSYSTEM]``, the environment is the event's keys plus the kernel's
``HOME=/`` and ``PATH=/sbin:/bin:/usr/sbin:/usr/bin`` and nothing inherited, stdin is at end of
file (a pipe whose writing end is closed: like /dev/null, but needs nothing in /dev, which a
busybox system fills only through this very program).
Spawning is ``os.posix_spawn`` (vfork-cheap); the exit is awaited on a pidfd so the event loop
keeps draining the kernel socket meanwhile. On timeout the program's process group gets SIGTERM,
then SIGKILL after a grace period; a program still there one more grace period after SIGKILL
cannot be killed (uninterruptible sleep, "D": a hung FUSE or NFS server, a stuck driver) and is
abandoned: the outcome names its pid, the next event goes on, and it is reaped if it ever exits
(:mod:`.children`). Its stdout and stderr go to our log, tagged with the event.
A program gets exactly descriptors 0, 1 and 2: before each start every other descriptor of the
broker is marked close-on-exec (:func:`inherit_nothing`), whoever opened it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import resource
import signal
import time
from collections.abc import Callable, Mapping

from pnpbroker.legacy.children import Child, Children
from pnpbroker.outcome import Outcome, describe
from pnpbroker.uevent import Uevent

log = logging.getLogger(__name__)

KERNEL_ENV = {"HOME": "/", "PATH": "/sbin:/bin:/usr/sbin:/usr/bin"}
#: Signals Python ignores for itself that a child must get back at their defaults.
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
#: Another way to start a program (``pnpbroker.legacy.spawn``: user, group, limits):
#: ``(argv, env, stdout_fd, stderr_fd) -> pid`` of a child leading its own process group.
Spawner = Callable[[list[str], Mapping[str, str], int, int], int]
#: close_range(2)'s flag: mark the range close-on-exec instead of closing it (Linux 5.11).
_CLOSE_RANGE_CLOEXEC = 1 << 2
_SYS_CLOSE_RANGE = 436  # the same number on every architecture (added after the 5.1 unification)
_libc = ctypes.CDLL(None, use_errno=True)


def event_environment(event: Uevent) -> dict[str, str]:
    """The environment the kernel gives a hotplug helper: the event's keys, HOME and PATH."""
    env = dict(KERNEL_ENV)
    env.update(event.properties)
    return env


class _OutputLog:
    """One pipe kept open for all runs (never two at once); lines are logged with the event."""

    def __init__(self, level: int) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.level = level
        self.label = ""
        self._partial = b""

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.read_fd, 65536):
                self._emit(chunk)

    def _emit(self, chunk: bytes) -> None:
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            log.log(self.level, "%s: %s", self.label, line.decode("utf-8", "replace"))
        if len(self._partial) > 4096:
            self.finish()

    def finish(self) -> None:
        """Flush a last line that had no newline."""
        if self._partial:
            log.log(self.level, "%s: %s", self.label, self._partial.decode("utf-8", "replace"))
            self._partial = b""

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class ProgramRunner:
    """Runs programs one at a time with a timeout; never two at once by construction."""

    def __init__(self, timeout: float = 180.0, grace: float = 5.0) -> None:
        self.timeout = timeout
        self.grace = grace
        self._stdout = _OutputLog(logging.INFO)
        self._stderr = _OutputLog(logging.WARNING)
        self._watching = False
        self._stdin = empty_input()
        self.spawner: Spawner | None = None  # None: the posix_spawn fast path below
        self.children = Children()

    def _watch(self) -> None:
        if not self._watching:
            loop = asyncio.get_running_loop()
            loop.add_reader(self._stdout.read_fd, self._stdout.drain)
            loop.add_reader(self._stderr.read_fd, self._stderr.drain)
            self._watching = True

    def _spawn(self, argv: list[str], env: Mapping[str, str]) -> int:
        if self.spawner is not None:
            inherit_nothing()
            return self.spawner(argv, env, self._stdout.write_fd, self._stderr.write_fd)
        return spawn(argv, env, self._stdin, self._stdout.write_fd, self._stderr.write_fd)

    async def run(self, argv: list[str], env: Mapping[str, str], label: str) -> Outcome:
        """Run ``argv`` to its end (or its timeout) and say how it ended."""
        self._watch()
        self._stdout.label = self._stderr.label = f"{label}: {os.path.basename(argv[0])}"
        start = time.monotonic()
        try:
            pid = self._spawn(argv, env)
        except OSError as exc:
            log.error("%s: cannot run %s: %s", label, argv[0], exc.strerror)
            return Outcome(argv[0], -1, error=f"cannot run: {exc.strerror}")
        child = self.children.watch(pid)
        timed_out = await self._wait(child, label)
        for out in (self._stdout, self._stderr):
            out.drain()
            out.finish()
        duration = time.monotonic() - start
        if child.status is None:
            return Outcome(argv[0], -1, 0, True, duration, abandoned_pid=pid)
        code = os.waitstatus_to_exitcode(child.status)
        outcome = Outcome(argv[0], max(code, -1), max(-code, 0), timed_out, duration)
        if code != 0:
            log.warning("%s: %s %s", label, argv[0], describe(outcome))
        return outcome

    async def _wait(self, child: Child, label: str) -> bool:
        """Wait for the program's end, killing it after the timeout; True if it timed out.

        A program still there ``grace`` seconds after SIGKILL is left behind (``child.status``
        stays None) and reaped, with a log line, if it ever exits.
        """
        pid = child.pid
        if await child.wait(self.timeout):
            return False
        log.error("%s: %g s timeout, sending SIGTERM to pid %d", label, self.timeout, pid)
        _killpg(pid, signal.SIGTERM)
        if await child.wait(self.grace):
            return True
        log.error("%s: still running after %g s, sending SIGKILL", label, self.grace)
        _killpg(pid, signal.SIGKILL)
        if await child.wait(self.grace):
            return True
        log.error(
            "%s: pid %d still there %g s after SIGKILL: it cannot be killed (uninterruptible "
            "sleep, state D: a hung file system or driver); abandoned, the next event goes on",
            label,
            pid,
            self.grace,
        )
        child.on_exit = functools.partial(_abandoned_exit, label)
        return True

    def close(self) -> None:
        if self._watching:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._stdout.read_fd)
            loop.remove_reader(self._stderr.read_fd)
            self._watching = False
        self.children.close()
        self._stdout.close()
        self._stderr.close()
        os.close(self._stdin)


def spawn(argv: list[str], env: Mapping[str, str], stdin: int, out: int, err: int) -> int:
    """The fast path: ``os.posix_spawn`` with exactly fds 0-2 (``stdin``, ``out``, ``err``), its
    own process group, SIGPIPE/SIGXFSZ at their defaults and an empty signal mask; the pid.
    (``bench/spawn.py``'s limit runs this very function in a bare loop.)"""
    inherit_nothing()
    return os.posix_spawn(
        argv[0],
        argv,
        env,
        file_actions=[
            (os.POSIX_SPAWN_DUP2, stdin, 0),
            (os.POSIX_SPAWN_DUP2, out, 1),
            (os.POSIX_SPAWN_DUP2, err, 2),
        ],
        setpgroup=0,
        setsigdef=_RESET_SIGNALS,
        setsigmask=(),
    )


def empty_input() -> int:
    """A descriptor that reads as end of file at once (close-on-exec; dup2 it to 0)."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    os.close(write_fd)
    return read_fd


def _killpg(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _abandoned_exit(label: str, child: Child) -> None:
    status = os.waitstatus_to_exitcode(child.status or 0)
    how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
    log.warning("%s: abandoned pid %d ended at last (%s); reaped", label, child.pid, how)


def inherit_nothing() -> None:
    """Mark every descriptor from 3 up close-on-exec: a program gets only 0, 1 and 2.

    Whatever the broker inherited (``--source fd:N``, descriptors left open by whoever started
    it) and whatever a library opened without O_CLOEXEC. One close_range(2) call; where the
    kernel has none (before 5.11), each descriptor listed in /proc/self/fd.
    """
    args = (ctypes.c_long(3), ctypes.c_long(0xFFFFFFFF), ctypes.c_long(_CLOSE_RANGE_CLOEXEC))
    if _libc.syscall(ctypes.c_long(_SYS_CLOSE_RANGE), *args) == 0:
        return
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc either (early boot): every possible descriptor
        fds = list(range(min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1 << 16)))
    for fd in fds:
        if fd >= 3:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)
