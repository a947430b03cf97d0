"""The broker as a real subprocess, inside a test's network namespace, on a test's bus.

Readiness is the broker's own sd_notify ``READY=1`` on a socket we hand it: no sleeps. Its
log and that socket live in a directory of its own under /tmp, removed at :meth:`close` (the
log is kept in memory for the test to read) or, for a broker never closed, when it is
collected or the tests end.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from support.bus import SystemBus
from support.netns import NetNS


class BrokerFailed(AssertionError):
    """The broker exited or never became ready; carries its log."""


class BrokerProcess:
    """``python -m pnpbroker run`` with a state dir, optional netns, and its log in a file."""

    def __init__(
        self,
        bus: SystemBus | None,
        state_dir: Path,
        args: Sequence[str] = ("--no-program",),
        *,
        netns: NetNS | None = None,
        env: Mapping[str, str] | None = None,
        command: str = "run",
        wrapper: Sequence[str] = (),
    ) -> None:
        self.bus = bus
        self.state_dir = state_dir
        self.args = list(args)
        self.netns = netns
        self.extra_env = dict(env or {})
        self.command = command
        self.wrapper = list(wrapper)  # e.g. setpriv dropping capabilities
        self._dir = Path(tempfile.mkdtemp(prefix="pnpt-broker-"))
        self._remove_dir = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        self._closed_log = ""  # the log, once close() removed its file
        self.log_path = self._dir / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._notify: socket.socket | None = None

    def argv(self) -> list[str]:
        prefix = self.netns.exec_prefix() if self.netns is not None else []
        state = ["--state-dir", str(self.state_dir)] if self.command == "run" else []
        command = [sys.executable, "-m", "pnpbroker", self.command, *state, *self.args]
        return [*prefix, *self.wrapper, *command]

    def start(
        self, timeout: float = 30.0, *, wait_ready: bool = True, **popen: object
    ) -> BrokerProcess:
        if not self._remove_dir.alive:  # started again after close(): the log goes on
            self._dir.mkdir()
            self._remove_dir = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
            self.log_path.write_text(self._closed_log)
        notify_path = self._dir / f"notify-{time.monotonic_ns()}"
        if self._notify is not None:  # started again (a restart): a fresh socket, no stale state
            self._notify.close()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        if self.bus is not None:
            env.update(self.bus.env())
        env.update(NOTIFY_SOCKET=str(notify_path), PYTHONUNBUFFERED="1", **self.extra_env)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stderr=log,
                env=env,
                **popen,  # type: ignore[call-overload]
            )
        if wait_ready:
            self.wait_for_state("READY=1", timeout)
        return self

    def wait_for_state(self, wanted: str, timeout: float = 30.0) -> None:
        """Wait for an sd_notify message containing ``wanted`` (e.g. READY=1)."""
        assert self._notify is not None
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.proc.poll() is not None:
                raise BrokerFailed(f"broker exited with {self.proc.returncode}:\n{self.log()}")
            ready, _, _ = select.select([self._notify], [], [], min(left, 0.2))
            if ready and wanted in self._notify.recv(4096).decode():
                return
        raise BrokerFailed(f"no {wanted} within {timeout} s:\n{self.log()}")

    def running(self) -> bool:
        """Started, and not exited."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def log(self) -> str:
        if not self._remove_dir.alive:
            return self._closed_log
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        if self._remove_dir.alive:
            self._closed_log = self.log()
            self._remove_dir()

    def __enter__(self) -> BrokerProcess:
        try:
            return self.start()
        except BaseException:
            self.close()  # a broker that never became ready: no process, no socket left over
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


#: Set LISTEN_PID to our own pid, move the socket to fd 3, then exec the broker: what a
#: service manager does between fork and exec.
LISTEN_WRAPPER = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class ActivatedBroker(BrokerProcess):
    """The broker started the socket-activation way, with ``fd`` as its fd 3."""

    def __init__(self, *args: object, fd: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fd = fd

    def argv(self) -> list[str]:
        prefix = self.netns.exec_prefix() if self.netns is not None else []
        wrapper = [sys.executable, "-c", LISTEN_WRAPPER, str(self.fd)]
        rest = super().argv()[len(prefix) :]
        return [*prefix, *wrapper, *rest]
