"""Early boot with busybox mdev: /dev is an empty tmpfs until mdev, run by the broker, fills it.

Unlike test_mdev.py (where only mdev sees the test's tmpfs), here the broker itself, its
programs, ``pnpbroker trigger`` and ``pnpbroker-helper`` all run in a private mount namespace
whose /dev is an empty tmpfs, as in a busybox system before mdev ran: nothing there, not even
/dev/null. The program is ``/sbin/mdev`` as busybox systems have it: a link to busybox named
``mdev``. The events are real kernel uevents for the mem devices (null, zero, full, ...), made
by ``pnpbroker trigger --subsystem mem``; such events reach every listener on the machine, so
only those carrying this test's SYNTH_UUID count.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import require_binaries
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.mounts import tmpfs
from support.netns import NetNS, collect_uevents, netns_uevent_socket
from support.signals import Signals

pytestmark = pytest.mark.root

SYS = Path("/sys")
MEM = SYS / "devices/virtual/mem"
HELPER = str(Path(sys.executable).with_name("pnpbroker-helper"))
#: Enter an empty /dev (the tmpfs in $0), then run the rest: what the broker starts in.
EARLY_BOOT = 'mount --bind "$0" /dev && exec "$@"'


class EarlyBootBroker(BrokerProcess):
    """The broker in its own mount namespace with the test's empty tmpfs as /dev."""

    def __init__(self, *args: object, dev: Path, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.dev = dev

    def argv(self) -> list[str]:
        prefix = self.netns.exec_prefix() if self.netns is not None else []
        early = ["unshare", "--mount", "--propagation", "private", "sh", "-c", EARLY_BOOT]
        return [*prefix, *early, str(self.dev), *super().argv()[len(prefix) :]]

    def enter(self, argv: list[str]) -> list[str]:
        """``argv`` run in the broker's mount and network namespaces (its empty /dev)."""
        return ["nsenter", "-t", str(self.pid), "-m", "-n", "--", *argv]


@pytest.fixture
def empty_dev(tmp_path: Path) -> Iterator[Path]:
    """An empty tmpfs, as /dev is in early boot; unmounted after the test."""
    require_binaries(("busybox", "unshare", "nsenter", "mount", "umount"))
    with tmpfs(tmp_path / "dev", "mode=755", "pnpt-dev") as dev:
        yield dev


@pytest.fixture
def mdev(tmp_path: Path) -> Path:
    """``sbin/mdev``: a link to busybox, which picks the applet from argv[0]."""
    busybox = shutil.which("busybox")
    assert busybox is not None
    (tmp_path / "sbin").mkdir()
    link = tmp_path / "sbin" / "mdev"
    link.symlink_to(busybox)
    return link


def mem_devices() -> dict[str, str]:
    """Each mem device's name and ``MAJOR:MINOR``, as the kernel states it in sysfs."""
    return {d.name: (d / "dev").read_text().strip() for d in MEM.iterdir() if (d / "dev").exists()}


def assert_nodes(dev: Path, expected: dict[str, str]) -> None:
    """Every mem device is a character node in ``dev`` with the kernel's numbers."""
    assert {"null", "zero", "full"} <= set(expected)
    made = {}
    for name in expected:
        node = os.lstat(dev / name) if (dev / name).exists() else None
        if node is not None and stat.S_ISCHR(node.st_mode):
            made[name] = f"{os.major(node.st_rdev)}:{os.minor(node.st_rdev)}"
    assert made == expected, sorted(p.name for p in dev.iterdir())


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("spawn", ["posix_spawn", "fork"])
def test_trigger_makes_mdev_populate_an_empty_dev(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path, empty_dev: Path, mdev: Path, spawn: str
) -> None:
    """Both spawn paths: the fast one, and fork/exec (chosen by ``limits``)."""
    toml = tmp_path / "pnpbroker.toml"
    toml.write_text("limits = { nofile = 1024 }\n" if spawn == "fork" else "")
    args = ["-c", str(toml), "-p", str(mdev)]
    broker = EarlyBootBroker(system_bus, tmp_path / "state", args, netns=netns, dev=empty_dev)
    signals = Signals(system_bus.address)
    mine = str(uuid.uuid4())
    try:
        broker.start()
        assert list(empty_dev.iterdir()) == []  # nothing there: not even /dev/null
        trigger = ["pnpbroker", "trigger", "--subsystem", "mem", "--uuid", mine, "--settle"]
        done = run(
            broker.enter([sys.executable, "-m", *trigger]), {**os.environ, **system_bus.env()}
        )
        assert done.returncode == 0, done.stderr + broker.log()
        assert broker.stop() == 0
    finally:
        broker.close()
        signals.close()
    expected = mem_devices()
    assert_nodes(empty_dev, expected)
    events = [b for b in signals.events() if b[4].get("SYNTH_UUID") == mine]
    assert sorted(b[4]["DEVNAME"] for b in events) == sorted(expected)
    assert all(b[5]["program"].value == str(mdev) and b[5]["status"].value == 0 for b in events), (
        events
    )
    assert "cannot run" not in broker.log()


def test_helper_mode_needs_nothing_in_dev(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path, empty_dev: Path, mdev: Path
) -> None:
    """The kernel-helper bridge: the broker takes events only from pnpbroker-helper.

    The kernel here cannot call a usermode helper (CONFIG_UEVENT_HELPER is off), so the test
    does what it would: for each uevent, in order, run the helper with the event's keys plus
    HOME and PATH as its only environment, argv[1] the subsystem, no descriptors open at all,
    in the early-boot namespace. The broker's primary source is an idle stdin pipe.
    """
    sock_path = tmp_path / "helper.sock"
    args = ["--source", "stdin", "--helper-socket", str(sock_path), "-p", str(mdev)]
    broker = EarlyBootBroker(system_bus, tmp_path / "state", args, netns=netns, dev=empty_dev)
    watch = netns_uevent_socket(netns.name)
    signals = Signals(system_bus.address)
    mine = str(uuid.uuid4())
    expected = mem_devices()
    try:
        broker.start(stdin=subprocess.PIPE)
        trigger = [sys.executable, "-m", "pnpbroker", "trigger", "-s", "mem", "--uuid", mine]
        assert run(broker.enter(trigger)).returncode == 0
        events = collect_uevents(watch, lambda e: e.get("SYNTH_UUID") == mine, len(expected))
        for event in sorted(events, key=lambda e: int(e["SEQNUM"])):
            kernel_env = {**event, "HOME": "/", "PATH": "/sbin:/bin:/usr/sbin:/usr/bin"}
            kernel_env["PNPBROKER_HELPER_SOCKET"] = str(sock_path)
            closed = ["sh", "-c", 'exec "$@" <&- >&- 2>&-', "sh", HELPER, event["SUBSYSTEM"]]
            helped = run(broker.enter(["env", "-i", *[f"{k}={v}" for k, v in kernel_env.items()]])
                         + closed)  # fmt: skip
            assert helped.returncode == 0, helped
        published = signals.wait(
            lambda s: s[0] == "Event" and s[1][4].get("SYNTH_UUID") == mine, len(expected)
        )
        assert broker.proc is not None
        assert broker.proc.stdin is not None
        broker.proc.stdin.close()  # the end of the stream source: the broker finishes and exits
        assert broker.wait() == 0
    finally:
        broker.close()
        watch.close()
        signals.close()
    assert_nodes(empty_dev, expected)
    assert all(body[5]["status"].value == 0 for _, body in published), published


def test_no_system_bus_yet_mdev_still_runs(
    netns: NetNS, tmp_path: Path, empty_dev: Path, mdev: Path
) -> None:
    """Early boot has no system bus either: the broker journals and runs mdev all the same."""
    nowhere = {"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus"}
    args = ["-p", str(mdev)]
    broker = EarlyBootBroker(
        None, tmp_path / "state", args, netns=netns, dev=empty_dev, env=nowhere
    )
    mine = str(uuid.uuid4())
    expected = mem_devices()
    try:
        broker.start(wait_ready=False)  # READY=1 waits for the bus: nothing to wait for here
        wait_for_log(broker, "system bus unreachable")
        trigger = [sys.executable, "-m", "pnpbroker", "trigger", "-s", "mem", "--uuid", mine]
        assert run(broker.enter(trigger)).returncode == 0
        wait_for_nodes(empty_dev, expected)
        assert broker.stop() == 0
    finally:
        broker.close()
    assert_nodes(empty_dev, expected)


def wait_for_log(broker: BrokerProcess, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in broker.log():
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{broker.log()}"
        assert broker.proc is not None
        assert broker.proc.poll() is None, broker.log()
        time.sleep(0.05)


def wait_for_nodes(dev: Path, expected: dict[str, str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not all((dev / name).exists() for name in expected):
        assert time.monotonic() < deadline, sorted(p.name for p in dev.iterdir())
        time.sleep(0.05)
