"""``pnpbroker trigger --settle`` believes only the broker, and counts each event once.

Real parts: the broker and ``pnpbroker trigger`` as processes in the test's network namespace,
a private system bus with the shipped policy, and a forger that is a second connection as
``nobody``. Each test leaves the settle short of its events and lets it run to its own
``--timeout``: a settle must end with exit 1 and the number of distinct events the broker really
published. One that believed a forged signal, or counted a repeat, would have ended with 0.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.netns import NetNS, collect_uevents, netns_uevent_socket
from support.signals import Signals
from support.users import python_argv_for_nobody, subprocess_kwargs

from pnpbroker.bus.wire import to_bus_daemon

pytestmark = pytest.mark.root

#: Sent as nobody: a NameOwnerChanged claiming org.pnp.Broker, then Event signals carrying the
#: settle's SYNTH_UUID (sequences 1, 2, ...), all unicast to the settle's connection; then a
#: round trip to the bus daemon, so that they were all routed before this prints "forged".
FORGER = """
import asyncio, sys
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

async def main(target, uuid, count):
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    def signal(path, interface, member, signature, body):
        bus.send(Message(message_type=MessageType.SIGNAL, destination=target, path=path,
                         interface=interface, member=member, signature=signature, body=body))
    signal("/org/freedesktop/DBus", "org.freedesktop.DBus", "NameOwnerChanged", "sss",
           ["org.pnp.Broker", "", bus.unique_name])
    async def barrier():  # a round trip: dbus-fast's writer must never meet a full socket
        await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                               interface="org.freedesktop.DBus", member="GetId"))
    for n in range(1, count + 1):
        props = {"ACTION": "add", "DEVPATH": f"/devices/virtual/net/f{n}", "SUBSYSTEM": "net",
                 "SEQNUM": str(n), "SYNTH_UUID": uuid}
        signal("/org/pnp/Broker", "org.pnp.Broker1", "Event", "tsssa{ss}a{sv}",
               [n, "add", "net", props["DEVPATH"], props, {}])
        if n % 16 == 0:
            await barrier()
    await barrier()
    print("forged", bus.unique_name, flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


@pytest.fixture
def signals(system_bus: SystemBus) -> Iterator[Signals]:
    watcher = Signals(system_bus.address)
    yield watcher
    watcher.close()


def _trigger(netns: NetNS, uuid: str, timeout: float) -> subprocess.Popen[str]:
    argv = [*netns.exec_prefix(), sys.executable, "-m", "pnpbroker", "trigger", "--settle"]
    argv += ["--subsystem", "net", "--uuid", uuid, "--timeout", str(timeout)]
    return subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = process.communicate(timeout=180)
    return process.returncode, err


def _end(process: subprocess.Popen[str] | None) -> None:
    """After a failure: the command must not outlive the test."""
    if process is not None and process.returncode is None:
        process.kill()
        process.communicate(timeout=60)


def _devices(netns: NetNS) -> int:
    argv = [*netns.exec_prefix(), sys.executable, "-m", "pnpbroker", "trigger", "--dry-run"]
    done = subprocess.run([*argv, "--subsystem", "net"], capture_output=True, text=True, check=True)
    return len(done.stdout.split())


async def _connection_of(address: str, pid: int) -> str:
    """The unique bus name of the connection process ``pid`` holds."""
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(to_bus_daemon("ListNames"))
        assert reply is not None
        (names,) = reply.body
        for name in (n for n in names if n.startswith(":")):
            reply = await bus.call(to_bus_daemon("GetConnectionUnixProcessID", "s", [name]))
            ok = reply is not None and reply.message_type == MessageType.METHOD_RETURN
            if ok and reply.body[0] == pid:
                return str(name)
    finally:
        bus.disconnect()
    raise AssertionError(f"no bus connection of pid {pid}")


async def _pause(address: str) -> None:
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(
            Message(
                destination="org.pnp.Broker",
                path="/org/pnp/Broker",
                interface="org.pnp.Broker1",
                member="Pause",
            )
        )
        assert reply is not None
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    finally:
        bus.disconnect()


def test_forged_unicast_signals_from_another_user_are_not_counted(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    """The broker is paused, so it publishes none of the trigger's events; nobody sends the
    settle every one of them (and a NameOwnerChanged naming itself the broker) directly."""
    uuid = str(uuidlib.uuid4())
    wanted = _devices(netns)
    kernel = netns_uevent_socket(netns.name)
    broker = BrokerProcess(system_bus, tmp_path / "state", netns=netns)
    trigger = None
    try:
        broker.start()
        asyncio.run(_pause(system_bus.address))
        trigger = _trigger(netns, uuid, timeout=15)
        # The settle writes only once subscribed: its first event means it is listening.
        collect_uevents(kernel, lambda e: e.get("SYNTH_UUID") == uuid, 1)
        target = asyncio.run(_connection_of(system_bus.address, trigger.pid))
        python, env = python_argv_for_nobody()
        forged = subprocess.run(
            [*python, "-c", FORGER, target, uuid, str(wanted)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            **subprocess_kwargs(system_bus.address, env),
        )
        assert forged.stdout.startswith("forged :"), forged.stderr
        code, err = _finish(trigger)
        assert broker.stop() == 0
    finally:
        _end(trigger)
        broker.close()
        kernel.close()
    assert code == 1, err
    assert f"the broker published 0 of {wanted} events with SYNTH_UUID={uuid}" in err


BLOCKING = """#!/bin/sh
if [ -n "$SYNTH_UUID" ] && [ "$INTERFACE" = {name} ]; then
    while [ -e {block} ]; do sleep 0.05; done
fi
exit 0
"""


def test_a_broker_restart_mid_settle_counts_each_event_once(
    system_bus: SystemBus, netns: NetNS, signals: Signals, tmp_path: Path
) -> None:
    """The first broker publishes the events of lo, r0 and r1, then its program blocks on r2;
    it is killed before its published cursor was saved (the journal is left as such a crash
    leaves it), so the second one sends those three again, then blocks on r2 as well. Three
    distinct events of six: the settle must not end, whatever the repeats add up to."""
    netns.add_ifbs(["r0", "r1", "r2", "r3", "r4"])
    wanted = _devices(netns)
    assert wanted == 6
    block = tmp_path / "block"
    block.touch()
    program = tmp_path / "hotplug"
    program.write_text(BLOCKING.format(name="r2", block=block))
    program.chmod(0o755)
    uuid = str(uuidlib.uuid4())
    state = tmp_path / "state"
    args = ["--hotplug-program", str(program), "--timeout", "600"]

    def ours(count: int) -> None:
        signals.wait(lambda s: s[0] == "Event" and s[1][4].get("SYNTH_UUID") == uuid, count)

    first = BrokerProcess(system_bus, state, args, netns=netns)
    second = BrokerProcess(system_bus, state, args, netns=netns)
    trigger = None
    try:
        first.start()
        trigger = _trigger(netns, uuid, timeout=30)
        ours(3)
        first.kill()
        with sqlite3.connect(state / "journal.sqlite") as db:  # the lazily saved cursor, unsaved
            db.execute("UPDATE cursors SET seq = 0 WHERE name = 'published'")
        second.start()
        ours(6)  # the same three again, from the second broker
        code, err = _finish(trigger)
        tagged = [b for m, b in signals.seen if m == "Event" and b[4].get("SYNTH_UUID") == uuid]
        block.unlink()
        assert second.stop() == 0
    finally:
        _end(trigger)
        block.unlink(missing_ok=True)
        first.close()
        second.close()
    assert sorted(b[4]["INTERFACE"] for b in tagged) == ["lo", "lo", "r0", "r0", "r1", "r1"]
    assert code == 1, err
    assert f"the broker published 3 of {wanted} events with SYNTH_UUID={uuid}" in err


def test_settle_is_not_caught_up_by_forged_signals(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    """``pnpbroker settle`` waits for the broker's LastSequence to reach what it journalled; the
    broker is paused with events journalled, and nobody sends Event signals with sequences
    past them straight to the settle: it must still run out of time, saying it is paused."""
    broker = BrokerProcess(system_bus, tmp_path / "state", netns=netns)
    settle = None
    try:
        broker.start()
        asyncio.run(_pause(system_bus.address))
        netns.add_ifbs(["p0", "p1", "p2"])
        argv = [sys.executable, "-m", "pnpbroker", "settle", "--timeout", "15"]
        settle = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        target = _wait_for_connection(system_bus.address, settle)
        python, env = python_argv_for_nobody()
        forged = subprocess.run(
            [*python, "-c", FORGER, target, "none", "200"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            **subprocess_kwargs(system_bus.address, env),
        )
        assert forged.stdout.startswith("forged :"), forged.stderr
        code, err = _finish(settle)
        assert broker.stop() == 0
    finally:
        _end(settle)
        broker.close()
    assert code == 1, err
    assert "(it is paused)" in err


def _wait_for_connection(address: str, process: subprocess.Popen[str]) -> str:
    """The unique name of ``process``'s bus connection, once it has one."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return asyncio.run(_connection_of(address, process.pid))
        except AssertionError:
            assert time.monotonic() < deadline, "the settle never connected"
            assert process.poll() is None, "the settle ended before it connected"
            time.sleep(0.05)
