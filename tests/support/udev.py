"""libudev clients nobody here wrote, run inside a test's namespace, and what they received.

- ``udevadm monitor`` from Debian's udev package, unpacked by scripts/setup into .cache/udev
  (never installed: its scripts would start udevd);
- tests/clients/pyudev_monitor.py: Debian's python3-pyudev over libudev1, under /usr/bin/python3;
- tests/clients/zero_standin.py: a stand-in that parses as libudev-zero does (see its docstring).

Each client's output is read by a thread into :class:`Received` events; for udevadm, whether the
hotplug program's mark file exists is checked the moment its block is read.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from support import REPO_ROOT, skip_or_fail
from support.netns import NetNS

UDEVADM = REPO_ROOT / ".cache" / "udev" / "root" / "bin" / "udevadm"
CLIENTS = REPO_ROOT / "tests" / "clients"
SYSTEM_PYTHON = "/usr/bin/python3"
AS_NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
TIMEOUT = 60.0

#: The test's hotplug program: marks each event's SEQNUM as its last act, a little later, so a
#: client that got the event before the program finished would find no mark.
MARKING_PROGRAM = '#!/bin/sh\nsleep 0.05\n: > "{marks}/$SEQNUM"\n'


@dataclass(frozen=True)
class Received:
    """One event as a client got it: its keys and whether the program's mark was there."""

    properties: dict[str, str]
    marked: bool
    initialized: bool | None = None

    @property
    def key(self) -> tuple[int, int, str, str]:
        """(broker sequence, SEQNUM, ACTION, DEVPATH)."""
        p = self.properties
        return (int(p.get("PNP_SEQUENCE", -1)), int(p["SEQNUM"]), p["ACTION"], p["DEVPATH"])


def require_udevadm() -> Path:
    if not os.access(UDEVADM, os.X_OK):
        skip_or_fail(f"needs {UDEVADM} (scripts/setup unpacks Debian's udev package there)")
    return UDEVADM


def require_pyudev() -> None:
    probe = [SYSTEM_PYTHON, "-c", "import pyudev; pyudev.Context()"]
    if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        skip_or_fail("needs Debian's python3-pyudev (scripts/setup installs it)")


def marking_program(directory: Path, marks: Path) -> Path:
    path = directory / "hotplug"
    path.write_text(MARKING_PROGRAM.format(marks=marks))
    path.chmod(0o755)
    return path


def _udevadm_block(block: str, marks: Path) -> Received | None:
    """One ``udevadm monitor --property`` block: a header line, then KEY=VALUE lines."""
    lines = block.strip("\n").split("\n")
    if not lines or not lines[0].startswith(("UDEV", "KERNEL")):
        return None
    props = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    if "SEQNUM" not in props:
        return None
    return Received(props, (marks / props["SEQNUM"]).exists())


class Client:
    """A client process in ``ns``; :meth:`events` is what it printed so far, parsed."""

    def __init__(
        self,
        ns: NetNS,
        argv: Sequence[str],
        marks: Path,
        *,
        udevadm: bool,
        env: dict[str, str] | None = None,
    ) -> None:
        self.marks = marks
        self.udevadm = udevadm
        self.proc = subprocess.Popen(
            [*ns.exec_prefix(), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **(env or {})},
        )
        self.received: list[Received] = []
        self._stderr: str | None = None
        self._lines: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        block = ""
        for line in self.proc.stdout:
            if not self.udevadm:
                self._take(self._json(line))
            elif line == "\n":
                self._take(_udevadm_block(block, self.marks))
                block = ""
            else:
                block += line

    @staticmethod
    def _json(line: str) -> Received | None:
        if not line.startswith("{"):
            return None
        data = json.loads(line)
        return Received(data["properties"], data["marked"], data.get("initialized"))

    def _take(self, event: Received | None) -> None:
        if event is not None:
            with self._lock:
                self.received.append(event)

    def events(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def wait_for(self, done: Callable[[list[Received]], bool], timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.events()):
            if self.proc.poll() is not None:
                raise AssertionError(f"client exited {self.proc.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"client got {[e.key for e in self.events()][-5:]}")
            time.sleep(0.02)

    def stderr(self) -> str:
        """Its standard error, once it has exited."""
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        if self._stderr is None:
            self._stderr = self.proc.stderr.read()
        return self._stderr

    def close(self) -> str:
        """Stop the client (if it still runs); return its standard error."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(TIMEOUT)
        self._pump_thread.join(TIMEOUT)  # it read to the end of stdout
        err = self.stderr()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return err


def udevadm_monitor(ns: NetNS, marks: Path, *options: str) -> Client:
    """``udevadm monitor --udev --property`` (as root, as people run it)."""
    argv = [str(require_udevadm()), "monitor", "--udev", "--property", *options]
    return Client(ns, argv, marks, udevadm=True)


def pyudev_monitor(ns: NetNS, marks: Path, *filters: str) -> Client:
    """pyudev's ``Monitor.from_netlink(context, source='udev')`` as nobody, with ``filters``
    (``subsystem:NAME``, ``tag:NAME``)."""
    require_pyudev()
    script = str(CLIENTS / "pyudev_monitor.py")
    argv = [*AS_NOBODY, SYSTEM_PYTHON, script, str(marks), *filters]
    return Client(ns, argv, marks, udevadm=False)


def zero_standin(ns: NetNS, marks: Path) -> Client:
    """The libudev-zero stand-in on mask 0x4, as nobody."""
    script = str(CLIENTS / "zero_standin.py")
    argv = [*AS_NOBODY, SYSTEM_PYTHON, script, str(marks)]
    return Client(ns, argv, marks, udevadm=False)


def subscribe(ns: NetNS, client: Client, tries: int = 20) -> None:
    """Add (and remove) a probe link until the client shows its ``add``: then it listens."""
    for attempt in range(tries):
        name = f"probe{attempt}"
        ns.add_ifbs([name])
        try:
            client.wait_for(functools.partial(_shows, name), 2.0)
        except TimeoutError:
            continue
        finally:
            ns.del_ifbs([name])
        return
    raise TimeoutError(f"the client never showed a probe link ({tries} tries)")


def _shows(interface: str, got: list[Received]) -> bool:
    return any(e.properties.get("INTERFACE") == interface for e in got)
