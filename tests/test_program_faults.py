"""Programs that misbehave or could be harmed, with the real broker and real kernel uevents.

- A program that cannot be killed: it reads a file of a FUSE file system whose server took the
  request and never answers (tests/support/fuse.py), so after SIGTERM and SIGKILL it sits in
  uninterruptible sleep (state D). The broker abandons it with its pid in the outcome, goes on
  with the next events, reaps it once the server answers, and stops without waiting for it.
  Both ways of waiting: the pidfd, and SIGCHLD where pidfd_open fails (a seccomp filter makes
  the kernel answer ENOSYS, as a kernel before 5.3 does: tests/support/seccomp.py).
- A program gets exactly descriptors 0, 1 and 2 on both spawn paths, whatever the broker holds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO_ROOT
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.fuse import StuckFS, process_state
from support.netns import NetNS, netns_uevent_socket
from support.signals import Signals, net_event

pytestmark = pytest.mark.root

SECCOMP = str(REPO_ROOT / "tests" / "support" / "seccomp.py")
#: timeout, then kill_grace twice (after SIGTERM, after SIGKILL): seconds, kept short.
TIMEOUT, GRACE = 1.0, 0.5


@pytest.fixture
def signals(system_bus: SystemBus) -> Iterator[Signals]:
    watcher = Signals(system_bus.address)
    yield watcher
    watcher.close()


@pytest.fixture
def stuck_fs() -> Iterator[StuckFS]:
    with StuckFS() as fs:
        yield fs


def _program(path: Path, body: str) -> Path:
    path.write_text(body)
    path.chmod(0o755)
    return path


def _handler(signals: Signals, name: str) -> tuple[int, dict[str, object]]:
    """The sequence and the outcome (unwrapped) of the add event of interface ``name``."""
    [(_, body)] = signals.wait(net_event("add", {name}), 1)
    return body[0], {key: variant.value for key, variant in body[5].items()}


def _gone(pid: int, timeout: float = 60.0) -> None:
    """Wait until ``pid`` is gone altogether: exited and reaped (a zombie would stay "Z")."""
    deadline = time.monotonic() + timeout
    while process_state(pid):
        assert time.monotonic() < deadline, f"pid {pid} still {process_state(pid)}"
        time.sleep(0.05)


@pytest.mark.parametrize("wait", ["pidfd", "sigchld"])
def test_a_program_that_cannot_be_killed_is_abandoned_and_reaped_later(
    system_bus: SystemBus,
    netns: NetNS,
    signals: Signals,
    stuck_fs: StuckFS,
    tmp_path: Path,
    wait: str,
) -> None:
    program = _program(
        tmp_path / "hotplug",
        f'#!/bin/sh\ncase "$INTERFACE" in stuck*) exec cat {stuck_fs.file} ;; esac\nexit 0\n',
    )
    config = tmp_path / "pnpbroker.toml"
    config.write_text(f"kill_grace = {GRACE}\n")
    args = ["-c", str(config), "--hotplug-program", str(program), "--timeout", str(TIMEOUT)]
    wrapper = [sys.executable, SECCOMP] if wait == "sigchld" else []
    broker = BrokerProcess(system_bus, tmp_path / "state", args, netns=netns, wrapper=wrapper)
    with broker:
        netns.add_ifbs(["stuck0", "ok0"])
        stuck_seq, stuck = _handler(signals, "stuck0")
        pid = int(str(stuck["abandoned_pid"]))
        assert process_state(pid) == "D", "the program was not really stuck"
        assert (stuck["timed_out"], stuck["status"], stuck["signal"]) == (True, -1, 0)
        ok_seq, ok = _handler(signals, "ok0")  # the next event ran and was published
        assert ok_seq > stuck_seq
        assert (ok["status"], ok["timed_out"]) == (0, False)

        stuck_fs.release()  # the server answers at last: the killed reader ends
        _gone(pid)
        netns.add_ifbs(["stuck1"])
        _, again = _handler(signals, "stuck1")
        second = int(str(again["abandoned_pid"]))
        assert broker.stop() == 0  # at once, with the second one still in D
        assert process_state(second) == "D"
    log = broker.log()
    assert f"pid {pid} still there {GRACE:g} s after SIGKILL" in log
    # SIGTERM was already fatal (cat has no handler): the kernel delivers it once the read ends.
    assert f"abandoned pid {pid} ended at last (killed by signal 15); reaped" in log
    assert f"leaving 1 program(s) that could not be killed to init: pid {second}" in log
    fallback = "pidfd_open failed (ENOSYS): waiting for programs with SIGCHLD" in log
    assert fallback == (wait == "sigchld")


LIST_FDS = """#!/usr/bin/python3 -I
import json, os
fds = {}
for name in os.listdir("/proc/self/fd"):
    try:
        fds[name] = os.readlink(f"/proc/self/fd/{name}")
    except FileNotFoundError:
        pass  # the listing's own descriptor, closed by now
with open(os.path.join(OUT, os.environ["INTERFACE"]), "w") as out:
    json.dump(fds, out)
"""
#: Runs as root on the fork path too: `limits` alone switches from posix_spawn to fork/exec.
SPAWN_PATHS = {"posix_spawn": "", "fork": "limits = { nofile = 1024 }\n"}
#: What a service manager does between fork and exec: the socket to fd 3, LISTEN_PID, LISTEN_FDS.
LISTEN_WRAPPER = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


@pytest.mark.parametrize("spawn", SPAWN_PATHS)
@pytest.mark.parametrize("source", ["fd:N", "socket activation"])
def test_programs_get_exactly_descriptors_0_1_2(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path, spawn: str, source: str
) -> None:
    """Whatever the broker holds: the uevent socket it was handed (as --source fd:N, or on fd 3
    by socket activation), a descriptor left open by whoever started it, --output's, the helper
    socket, the journal's, the bus connection."""
    out = tmp_path / "fds"
    out.mkdir()
    program = _program(tmp_path / "list-fds", LIST_FDS.replace("OUT", repr(str(out)), 1))
    config = tmp_path / "pnpbroker.toml"
    config.write_text(SPAWN_PATHS[spawn])
    uevents = netns_uevent_socket(netns.name)
    stray = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # inheritable: no O_CLOEXEC
    output = os.open(tmp_path / "output", os.O_WRONLY | os.O_CREAT, 0o600)
    args = ["-c", str(config), "--hotplug-program", str(program), "--output", f"fd:{output}"]
    args += ["--helper-socket", str(tmp_path / "helper.sock")]
    wrapper: list[str] = []
    if source == "fd:N":
        args += ["--source", f"fd:{uevents.fileno()}"]
    else:
        wrapper = [sys.executable, "-c", LISTEN_WRAPPER, str(uevents.fileno())]
    passed = (uevents.fileno(), stray, output)
    broker = BrokerProcess(system_bus, tmp_path / "state", args, wrapper=wrapper)
    try:
        broker.start(pass_fds=passed)
        netns.add_ifbs(["fds0", "fds1"])
        for name in ("fds0", "fds1"):
            listing = _wait_for_file(out / name, broker)
            assert sorted(listing) == ["0", "1", "2"], listing
            assert all(target.startswith("pipe:") for target in listing.values()), listing
        assert broker.stop() == 0, broker.log()
    finally:
        broker.close()
        os.close(stray)
        os.close(output)
        uevents.close()


def _wait_for_file(path: Path, broker: BrokerProcess, timeout: float = 60.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().endswith("}"):
        assert time.monotonic() < deadline, f"no {path.name} written:\n{broker.log()}"
        time.sleep(0.05)
    listing: dict[str, str] = json.loads(path.read_text())
    return listing
