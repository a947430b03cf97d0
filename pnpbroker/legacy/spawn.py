"""Starting a program as another user, with resource limits: the fork/exec path.

``os.posix_spawn`` (the fast path in ``pnpbroker.legacy.runner``) cannot change credentials or
limits, so when ``user``, ``group`` or ``limits`` are configured the runner starts programs with
this spawner instead. It does in the child what posix_spawn does (own process group, default
SIGPIPE/SIGXFSZ, empty signal mask, stdin at end of file, stdout/stderr to the log pipes) and then:
limits first (still root, so hard limits may be set), then groups, gid, uid, and ``chdir("/")``.
A failing step is reported over a close-on-exec pipe, as ``subprocess`` does, and becomes the
runner's ``cannot run`` outcome. The broker is single-threaded, so fork is safe here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
from collections.abc import Mapping
from dataclasses import dataclass

from pnpbroker.legacy.options import Credentials
from pnpbroker.legacy.runner import empty_input

_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


@dataclass(frozen=True)
class ForkSpawner:
    """A ``legacy.runner.Spawner`` applying credentials and ``(RLIMIT_*, value)`` limits."""

    credentials: Credentials | None
    limits: tuple[tuple[int, int], ...]

    def __call__(self, argv: list[str], env: Mapping[str, str], out: int, err: int) -> int:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child ends in exec or _exit
            os.close(read_fd)
            self._child(argv, env, out, err, write_fd)
        os.close(write_fd)
        with open(read_fd, "rb") as report:
            failure = report.read()
        if failure:
            os.waitpid(pid, 0)
            step, _, number = failure.decode().rpartition(":")
            code = int(number)
            raise OSError(code, f"{step}: {os.strerror(code)}")
        return pid

    def _child(
        self, argv: list[str], env: Mapping[str, str], out: int, err: int, report: int
    ) -> None:  # pragma: no cover - runs in the forked child
        step = "setup"
        try:
            step = "setpgid"
            os.setpgid(0, 0)
            for sig in _RESET_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            step = "stdio"
            _stdio(out, err)
            step = "setrlimit"
            for limit, value in self.limits:
                resource.setrlimit(limit, (value, value))
            step = "credentials"
            self._become()
            step = "chdir /"
            os.chdir("/")
            step = "exec"
            os.execve(argv[0], argv, env)  # noqa: S606 - argv as the kernel would give it
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.write(report, f"{step}:{exc.errno or errno.EIO}".encode())
        finally:
            os._exit(127)

    def _become(self) -> None:  # pragma: no cover - runs in the forked child
        ids = self.credentials
        if ids is None:
            return
        os.setgroups(list(ids.groups))
        os.setresgid(ids.gid, ids.gid, ids.gid)
        if ids.uid is not None:
            os.setresuid(ids.uid, ids.uid, ids.uid)


def _stdio(out: int, err: int) -> None:  # pragma: no cover - runs in the forked child
    """stdin: an empty pipe (as the fast path: nothing needed in /dev); stdout, stderr: the log."""
    empty = empty_input()
    _onto(empty, 0)
    if empty != 0:
        os.close(empty)
    _onto(out, 1)
    _onto(err, 2)


def _onto(fd: int, target: int) -> None:  # pragma: no cover - runs in the forked child
    """Make ``fd`` the program's ``target`` descriptor, kept across exec."""
    if fd == target:
        os.set_inheritable(fd, True)
    else:
        os.dup2(fd, target)  # the copy is inheritable
