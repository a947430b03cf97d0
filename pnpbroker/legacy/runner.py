"""Running one legacy program for one event, exactly as the kernel would have run its helper.

``argv = [PROGRAM, SUBSYSTEM]``, the environment is the event's keys plus the kernel's
``HOME=/`` and ``PATH=/sbin:/bin:/usr/sbin:/usr/bin`` and nothing inherited, stdin is at end of
file (a pipe whose writing end is closed: like /dev/null, but needs nothing in /dev, which a
busybox system fills only through this very program).
Spawning is ``os.posix_spawn`` (vfork-cheap); the exit is awaited on a pidfd so the event loop
keeps draining the kernel socket meanwhile. On timeout the program's process group gets SIGTERM,
then SIGKILL after a grace period. Its stdout and stderr go to our log, tagged with the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping

from pnpbroker.outcome import Outcome, describe
from pnpbroker.uevent import Uevent

log = logging.getLogger(__name__)

KERNEL_ENV = {"HOME": "/", "PATH": "/sbin:/bin:/usr/sbin:/usr/bin"}
#: Signals Python ignores for itself that a child must get back at their defaults.
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
#: Another way to start a program (``pnpbroker.legacy.spawn``: user, group, limits):
#: ``(argv, env, stdout_fd, stderr_fd) -> pid`` of a child leading its own process group.
Spawner = Callable[[list[str], Mapping[str, str], int, int], int]


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

    def _watch(self) -> None:
        if not self._watching:
            loop = asyncio.get_running_loop()
            loop.add_reader(self._stdout.read_fd, self._stdout.drain)
            loop.add_reader(self._stderr.read_fd, self._stderr.drain)
            self._watching = True

    def _spawn(self, argv: list[str], env: Mapping[str, str]) -> int:
        if self.spawner is not None:
            return self.spawner(argv, env, self._stdout.write_fd, self._stderr.write_fd)
        return os.posix_spawn(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, self._stdin, 0),
                (os.POSIX_SPAWN_DUP2, self._stdout.write_fd, 1),
                (os.POSIX_SPAWN_DUP2, self._stderr.write_fd, 2),
            ],
            setpgroup=0,
            setsigdef=_RESET_SIGNALS,
            setsigmask=(),
        )

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
        status, timed_out = await self._wait(pid, label)
        for out in (self._stdout, self._stderr):
            out.drain()
            out.finish()
        code = os.waitstatus_to_exitcode(status)
        outcome = Outcome(
            argv[0], max(code, -1), max(-code, 0), timed_out, time.monotonic() - start
        )
        if code != 0:
            log.warning("%s: %s %s", label, argv[0], describe(outcome))
        return outcome

    async def _wait(self, pid: int, label: str) -> tuple[int, bool]:
        pidfd = os.pidfd_open(pid)
        try:
            if await _readable(pidfd, self.timeout):
                return _reap(pid), False
            log.error("%s: %g s timeout, sending SIGTERM to pid %d", label, self.timeout, pid)
            _killpg(pid, signal.SIGTERM)
            if not await _readable(pidfd, self.grace):
                log.error("%s: still running after %g s, sending SIGKILL", label, self.grace)
                _killpg(pid, signal.SIGKILL)
                await _readable(pidfd, None)
            return _reap(pid), True
        finally:
            os.close(pidfd)

    def close(self) -> None:
        if self._watching:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._stdout.read_fd)
            loop.remove_reader(self._stderr.read_fd)
            self._watching = False
        self._stdout.close()
        self._stderr.close()
        os.close(self._stdin)


def empty_input() -> int:
    """A descriptor that reads as end of file at once (close-on-exec; dup2 it to 0)."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    os.close(write_fd)
    return read_fd


def _killpg(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _reap(pid: int) -> int:
    """The wait status of a child whose pidfd said it exited (so this does not block)."""
    return os.waitpid(pid, os.WNOHANG)[1]


async def _readable(fd: int, limit: float | None) -> bool:
    """Wait until ``fd`` is readable (a pidfd: the process exited); False on timeout."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        async with asyncio.timeout(limit):
            await ready
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
    return True
