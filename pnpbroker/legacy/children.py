"""Knowing when a program exits without blocking the loop: a pidfd, or SIGCHLD where there is none.

``os.pidfd_open`` (Linux 5.3) gives a descriptor that turns readable when the process exits, and
the loop watches it. Where it fails (ENOSYS on an older kernel or under a seccomp filter, EPERM
from a filter) the watcher says so once and falls back for good to SIGCHLD: the loop's handler
tries ``waitpid(pid, WNOHANG)`` for each watched child, never ``waitpid(-1)`` (which would take
the status of children that are not ours to reap). Either way the status is collected as soon
as the process exits, so a program the runner gave up on (one that could not be killed) is
still reaped if it ever ends: no zombie is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Errors of pidfd_open that mean "no pidfds here" rather than "no such process".
_NO_PIDFD = (errno.ENOSYS, errno.EPERM, errno.EACCES, errno.EINVAL)


class Child:
    """One watched process: its wait status once it exited, and who to tell."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.status: int | None = None
        #: Called once the process was reaped (for a program the runner abandoned).
        self.on_exit: Callable[[Child], None] | None = None
        self._exited = asyncio.Event()

    async def wait(self, limit: float | None) -> bool:
        """True once the process has exited and was reaped; False after ``limit`` seconds."""
        try:
            async with asyncio.timeout(limit):
                await self._exited.wait()
        except TimeoutError:
            return False
        return True

    def reaped(self, status: int) -> None:
        self.status = status
        self._exited.set()
        if self.on_exit is not None:
            self.on_exit(self)


class Children:
    """Watches the runner's children; see the module docstring."""

    def __init__(self) -> None:
        self.pidfd_open: Callable[[int], int] = os.pidfd_open  # the seam the tests fail on purpose
        self._watched: dict[int, Child] = {}
        self._pidfds: dict[int, int] = {}  # pid -> its pidfd
        self._sigchld = False

    @property
    def watched(self) -> list[int]:
        """The pids still running (abandoned ones included)."""
        return sorted(self._watched)

    def watch(self, pid: int) -> Child:
        """Start watching ``pid`` (a child of ours, not yet reaped)."""
        child = self._watched[pid] = Child(pid)
        if not self._sigchld and self._watch_pidfd(pid):
            return child
        self._try_reap(child)  # it may have exited before SIGCHLD was handled
        return child

    def _watch_pidfd(self, pid: int) -> bool:
        try:
            pidfd = self.pidfd_open(pid)
        except OSError as exc:
            if exc.errno not in _NO_PIDFD:
                raise
            self._fall_back(exc)
            return False
        self._pidfds[pid] = pidfd
        asyncio.get_running_loop().add_reader(pidfd, self._on_pidfd, pid)
        return True

    def _fall_back(self, exc: OSError) -> None:
        log.warning(
            "pidfd_open failed (%s): waiting for programs with SIGCHLD from now on",
            errno.errorcode.get(exc.errno or 0, exc.strerror),
        )
        self._sigchld = True
        asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, self._on_sigchld)

    def _on_pidfd(self, pid: int) -> None:
        self._close_pidfd(pid)
        if (child := self._watched.get(pid)) is not None:
            self._try_reap(child)

    def _on_sigchld(self) -> None:
        for child in list(self._watched.values()):
            self._try_reap(child)

    def _try_reap(self, child: Child) -> None:
        try:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: nothing more will come
            pid, status = child.pid, 0
        if pid == 0:
            return
        del self._watched[child.pid]
        child.reaped(status)

    def _close_pidfd(self, pid: int) -> None:
        pidfd = self._pidfds.pop(pid, None)
        if pidfd is not None:
            asyncio.get_running_loop().remove_reader(pidfd)
            os.close(pidfd)

    def close(self) -> None:
        """Stop watching; children still running are left to init (or our subreaper)."""
        if self._watched:
            log.warning(
                "leaving %d program(s) that could not be killed to init: pid %s",
                len(self._watched),
                ", ".join(map(str, self.watched)),
            )
        for pid in list(self._pidfds):
            self._close_pidfd(pid)
        self._watched.clear()
        if self._sigchld:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)
            self._sigchld = False
