"""The commands that ask the running broker, as users run them: ``trigger`` as `nobody` (the
broker writes, polkit decides), ``info``, ``control``, ``settle``, and ``monitor --enumerate``.

Each is a real ``python -m pnpbroker`` process inside the test's network namespace (so its
sysfs shows the namespace's devices), as `nobody` where a user would run it, against the broker
on the private system bus with the real polkitd.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.broker import BrokerProcess
from support.bus import POLKIT_BUS_POLICY, SystemBus
from support.netns import NetNS
from support.polkitd import Polkitd
from support.signals import Signals
from support.users import python_argv_for_nobody

pytestmark = [pytest.mark.root, pytest.mark.bus_includes(POLKIT_BUS_POLICY)]
TIMEOUT = 60.0
NET = "/devices/virtual/net"
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
TRIGGER_RULE = """polkit.addRule(function(action, subject) {
    if (action.id == "org.pnp.Broker.trigger" && subject.user == "nobody")
        return polkit.Result.YES;
});
"""


def pnpbroker(
    bus: SystemBus, netns: NetNS, *args: str, root: bool = False
) -> subprocess.CompletedProcess[str]:
    """``pnpbroker ARGS`` in the namespace, as nobody unless ``root``."""
    extra: dict[str, str] = {}
    if root:
        argv = [sys.executable]
    else:
        python, extra = python_argv_for_nobody()
        argv = [*NOBODY, *python]
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **bus.env(), **extra}
    return subprocess.run(
        [*netns.exec_prefix(), *argv, "-m", "pnpbroker", *args],
        capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd="/", check=False,
    )  # fmt: skip


@pytest.fixture
def broker(system_bus: SystemBus, netns: NetNS, tmp_path: Path) -> Iterator[BrokerProcess]:
    netns.add_ifbs(["c0", "c1"])
    with BrokerProcess(system_bus, tmp_path / "state", netns=netns) as running:
        yield running


@pytest.mark.usefixtures("broker")
async def test_nobody_triggers_through_the_broker_when_polkit_allows(
    system_bus: SystemBus, netns: NetNS, signals: Signals
) -> None:
    async with Polkitd(system_bus.address, {"50-nobody.rules": TRIGGER_RULE}):
        done = pnpbroker(system_bus, netns, "trigger", "-s", "net", "-y", "c*", "-v", "--settle")
    assert done.returncode == 0, done.stderr
    *devpaths, uuid = done.stdout.split()
    assert devpaths == [f"{NET}/c0", f"{NET}/c1"]
    tagged = [b for b in signals.events() if b[4].get("SYNTH_UUID") == uuid]
    assert sorted(b[3] for b in tagged) == devpaths
    assert {b[1] for b in tagged} == {"add"}


@pytest.mark.usefixtures("broker")
async def test_nobody_is_refused_without_a_rule(
    system_bus: SystemBus, netns: NetNS, signals: Signals
) -> None:
    async with Polkitd(system_bus.address):
        done = pnpbroker(system_bus, netns, "trigger", "/sys/class/net/c0", "-c", "change")
    assert done.returncode == 1
    assert "the broker refused: not authorized for org.pnp.Broker.trigger" in done.stderr
    assert done.stdout == ""
    dry = pnpbroker(system_bus, netns, "trigger", "-n", "-b", "/sys/class/net/c1")
    assert (dry.returncode, dry.stdout) == (0, f"{NET}/c1\n")  # a dry run asks nobody


def test_info_prints_the_table_entry(system_bus: SystemBus, netns: NetNS, broker: object) -> None:
    text = pnpbroker(system_bus, netns, "info", "/sys/class/net/c0")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[:3] == [f"P: {NET}/c0", "M: c0", "U: net"]
    assert "E: INTERFACE=c0" in lines
    assert "E: PNP_SEQUENCE=0" in lines
    as_json = json.loads(pnpbroker(system_bus, netns, "info", "--json", f"{NET}/c1").stdout)
    assert (as_json["devpath"], as_json["properties"]["INTERFACE"]) == (f"{NET}/c1", "c1")
    missing = pnpbroker(system_bus, netns, "info", f"{NET}/nothere")
    assert missing.returncode == 1
    assert "not in the broker's device table" in missing.stderr


@pytest.mark.usefixtures("broker")
async def test_control_and_settle(system_bus: SystemBus, netns: NetNS) -> None:
    async with Polkitd(system_bus.address):
        status = pnpbroker(system_bus, netns, "control", "status")
        assert status.returncode == 0, status.stderr
        assert "Paused: False" in status.stdout.splitlines()
        refused = pnpbroker(system_bus, netns, "control", "pause")
        assert refused.returncode == 1
        assert "not authorized for org.pnp.Broker.control" in refused.stderr
        assert pnpbroker(system_bus, netns, "control", "pause", root=True).returncode == 0
        netns.add_ifbs(["c2"])
        stuck = pnpbroker(system_bus, netns, "settle", "--timeout", "1")
        assert stuck.returncode == 1
        assert "(it is paused)" in stuck.stderr
        as_json = pnpbroker(system_bus, netns, "control", "status", "--json")
        assert json.loads(as_json.stdout)["Paused"] is True
        assert pnpbroker(system_bus, netns, "control", "resume", root=True).returncode == 0
        settled = pnpbroker(system_bus, netns, "settle")
        assert settled.returncode == 0, settled.stderr
        after = json.loads(pnpbroker(system_bus, netns, "control", "status", "--json").stdout)
        assert after["Statistics"]["queued"] == 0


@pytest.mark.usefixtures("broker")
def test_monitor_enumerates_then_follows_with_timestamps(
    system_bus: SystemBus, netns: NetNS
) -> None:
    python, extra = python_argv_for_nobody()
    env = {"PATH": os.environ["PATH"], **system_bus.env(), **extra}
    argv = [*NOBODY, *python, "-m", "pnpbroker", "monitor", "--enumerate", "-s", "net", "-T"]
    monitor = subprocess.Popen(
        [*argv, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd="/"
    )
    try:
        assert monitor.stderr is not None
        assert "after the devices present" in monitor.stderr.readline().decode()
        netns.add_ifbs(["c3"])
        records = read_json(monitor, lambda r: r.get("properties", {}).get("INTERFACE") == "c3")
    finally:
        monitor.terminate()
        monitor.wait(TIMEOUT)
        for stream in (monitor.stdout, monitor.stderr):
            if stream is not None:
                stream.close()
    present = [r["device"]["devpath"] for r in records if "device" in r]
    assert present == [f"{NET}/c0", f"{NET}/c1", f"{NET}/lo"]
    assert records[-1]["action"] == "add"
    stamps = [r["timestamp"] for r in records]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] - time.monotonic()) < 3600  # CLOCK_MONOTONIC seconds, as udevadm's


def read_json(
    proc: subprocess.Popen[bytes], done: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + TIMEOUT
    while not found or not done(found[-1]):
        assert time.monotonic() < deadline, found[-3:]
        line = proc.stdout.readline()
        assert line, f"monitor ended: {found[-3:]}"
        found.append(json.loads(line))
    return found
