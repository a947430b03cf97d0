"""Privileged control on the live broker: Pause, Resume, Reload, judged by the real polkitd.

The broker runs as a subprocess in a network namespace on the private system bus (with polkit's
own bus policy included so polkitd may own its name). Callers are `dbus-send` processes: root,
and `nobody` (denied, with the named error, while reading stays open to it).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.broker import BrokerProcess
from support.bus import POLKIT_BUS_POLICY, SystemBus
from support.netns import NetNS
from support.polkitd import Polkitd

from pnpbroker.names import BUS_NAME, ERROR_NOT_AUTHORIZED, INTERFACE, OBJECT_PATH

pytestmark = [pytest.mark.root, pytest.mark.bus_includes(POLKIT_BUS_POLICY)]

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def dbus_send(bus: SystemBus, member: str, *args: str, user: list[str] | None = None) -> str:
    """Call a broker method with dbus-send; return its output (errors included)."""
    command = [
        *(user or []), "dbus-send", f"--bus={bus.address}", "--print-reply",
        f"--dest={BUS_NAME}", OBJECT_PATH, f"{INTERFACE}.{member}", *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def get_property(bus: SystemBus, name: str) -> str:
    done = subprocess.run(
        ["busctl", f"--address={bus.address}", "get-property", BUS_NAME, OBJECT_PATH,
         INTERFACE, name],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout.strip()


def statistics(bus: SystemBus) -> dict[str, int]:
    words = get_property(bus, "Statistics").split()[2:]
    return {words[i].strip('"'): int(words[i + 1]) for i in range(0, len(words), 2)}


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def write_program(path: Path, log: Path, tag: str) -> None:
    path.write_text(f'#!/bin/sh\necho "{tag} $1 $INTERFACE" >> {log}\n')
    path.chmod(0o755)


@pytest.fixture
def broker(system_bus: SystemBus, netns: NetNS, tmp_path: Path) -> Iterator[BrokerProcess]:
    log = tmp_path / "ran.log"
    write_program(tmp_path / "a.sh", log, "A")
    write_program(tmp_path / "b.sh", log, "B")
    config = tmp_path / "broker.toml"
    config.write_text(f'hotplug_program = "{tmp_path / "a.sh"}"\n')
    process = BrokerProcess(system_bus, tmp_path / "state", ["--config", str(config)], netns=netns)
    with process:
        yield process


def ran(tmp_path: Path) -> list[str]:
    log = tmp_path / "ran.log"
    return log.read_text().splitlines() if log.exists() else []


async def test_root_pauses_and_resumes(
    system_bus: SystemBus, netns: NetNS, broker: BrokerProcess, tmp_path: Path
) -> None:
    async with Polkitd(system_bus.address):
        assert "error" not in dbus_send(system_bus, "Pause").lower()
        assert get_property(system_bus, "Paused") == "b true"
        before = statistics(system_bus)
        netns.add_ifbs(["ctl0"])
        wait_until(lambda: statistics(system_bus)["received"] > before["received"], "journalling")
        paused = statistics(system_bus)
        assert paused["queued"] > 0, "paused: events are journalled but not handled"
        assert paused["published"] == before["published"], "paused: nothing is published"
        assert not any("ctl0" in line for line in ran(tmp_path))

        assert "error" not in dbus_send(system_bus, "Resume").lower()
        assert get_property(system_bus, "Paused") == "b false"
        wait_until(lambda: any("A net ctl0" in line for line in ran(tmp_path)), "program run")
        wait_until(lambda: statistics(system_bus)["queued"] == 0, "queue drained")


async def test_root_reloads_the_configuration(
    system_bus: SystemBus, netns: NetNS, broker: BrokerProcess, tmp_path: Path
) -> None:
    async with Polkitd(system_bus.address):
        (tmp_path / "broker.toml").write_text(f'hotplug_program = "{tmp_path / "b.sh"}"\n')
        assert "error" not in dbus_send(system_bus, "Reload").lower()
        netns.add_ifbs(["rel0"])
        wait_until(lambda: any("rel0" in line for line in ran(tmp_path)), "program run")
        assert [line for line in ran(tmp_path) if "rel0" in line] == ["B net rel0"]


def busctl_call(bus: SystemBus, member: str, *args: str, user: list[str] | None = None) -> str:
    """Call a broker method with busctl (it can build a{sv} arguments); return its output."""
    command = [
        *(user or []), "busctl", f"--address={bus.address}", "call", BUS_NAME, OBJECT_PATH,
        INTERFACE, member, *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


TRIGGER_NET = ("a{sv}", "1", "subsystems", "as", "1", "net")


async def test_root_triggers_and_nobody_may_not(
    system_bus: SystemBus, netns: NetNS, broker: BrokerProcess, tmp_path: Path
) -> None:
    netns.add_ifbs(["trg0"])
    wait_until(lambda: any("A net trg0" in line for line in ran(tmp_path)), "program run")
    async with Polkitd(system_bus.address):
        denied = busctl_call(system_bus, "Trigger", *TRIGGER_NET, user=NOBODY)
        assert "not authorized for org.pnp.Broker.trigger" in denied
        reply = busctl_call(system_bus, "Trigger", *TRIGGER_NET).split()
        assert reply[0] == "su", reply
        uuid, count = reply[1].strip('"'), int(reply[2])
        assert count == 2, "the namespace's net devices: lo and trg0"
        wait_until(
            lambda: sum(line.startswith("A net ") for line in ran(tmp_path)) >= 3,
            "re-announced devices run the program",
        )
    announced = [line for line in ran(tmp_path) if line.startswith("A net ")]
    assert sorted(announced[-2:]) == ["A net lo", "A net trg0"]
    assert len(uuid) == 36


async def test_nobody_is_denied_but_may_read(system_bus: SystemBus, broker: BrokerProcess) -> None:
    async with Polkitd(system_bus.address):
        for member in ("Pause", "Resume", "Reload"):
            out = dbus_send(system_bus, member, user=NOBODY)
            assert f"Error {ERROR_NOT_AUTHORIZED}: not authorized for org.pnp.Broker.control" in out
            assert "Traceback" not in out
        assert get_property(system_bus, "Paused") == "b false"
        replay = dbus_send(system_bus, "GetEvents", "uint64:0", "uint32:10", user=NOBODY)
        assert replay.startswith("method return"), replay


def test_without_polkitd_only_root_is_allowed(system_bus: SystemBus, broker: BrokerProcess) -> None:
    assert not system_bus.name_has_owner("org.freedesktop.PolicyKit1")
    out = dbus_send(system_bus, "Pause", user=NOBODY)
    assert f"Error {ERROR_NOT_AUTHORIZED}" in out
    assert "polkitd is not running" in out
    assert get_property(system_bus, "Paused") == "b false"
    assert "error" not in dbus_send(system_bus, "Pause").lower()
    assert get_property(system_bus, "Paused") == "b true"
    assert "polkitd is not running" in broker.log()
    assert os.geteuid() == 0
