"""The broker's device table with real uevents: GetDevices follows each action, equals sysfs
after a start amid a burst (the scan's race with the journal) and after lost events (the
rescan), and the D-Bus conventions around it (PropertiesChanged, InvalidArgs) as gdbus sees
them. Clients are in test_device_clients.py.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import require_binaries
from support.broker import ActivatedBroker, BrokerProcess
from support.bus import SystemBus
from support.netns import NetNS, netns_uevent_socket
from support.signals import Signals, net_event

from pnpbroker.client import Device, EventsLost, Item, devices
from pnpbroker.client.threads import Observer

pytestmark = pytest.mark.root
TIMEOUT = 60.0
NET = "/devices/virtual/net"
SO_RCVBUFFORCE = 33


def net_names(ns: NetNS) -> set[str]:
    """The namespace's network interfaces, as the kernel has them now."""
    out = subprocess.run(
        ["ip", "-n", ns.name, "-o", "link", "show"],
        capture_output=True, text=True, check=True, timeout=TIMEOUT,
    ).stdout  # fmt: skip
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def table(address: str, subsystem: str = "net") -> tuple[int, dict[str, Device]]:
    sequence, found = asyncio.run(devices(subsystem=subsystem, address=address))
    return sequence, {d.devpath.rsplit("/", 1)[-1]: d for d in found}


def marker(ns: NetNS, signals: Signals) -> int:
    """Add a link and wait for its signal: every event before it is handled and published."""
    name = f"m{secrets.token_hex(3)}"
    ns.add_ifbs([name])
    [(_, body)] = signals.wait(net_event("add", {name}), 1, TIMEOUT)
    return int(body[0])


def uevent_write(ns: NetNS, name: str, text: str) -> None:
    """Write into a net device's uevent file, inside the namespace (its sysfs shows it)."""
    script = f"printf '%s' '{text}' > /sys/class/net/{name}/uevent"
    subprocess.run([*ns.exec_prefix(), "sh", "-c", script], check=True, timeout=TIMEOUT)


def test_the_table_follows_each_action(
    system_bus: SystemBus, netns: NetNS, signals: Signals, tmp_path: Path
) -> None:
    netns.add_ifbs(["a0", "a1"])
    with BrokerProcess(system_bus, tmp_path / "state", netns=netns):
        first, found = table(system_bus.address)
        assert set(found) == {"lo", "a0", "a1"} == net_names(netns)
        assert {d.sequence for d in found.values()} == {0}  # read from sysfs
        netns.add_ifbs(["a2"])
        uuid = "0f3c1f0e-2a4b-4c5d-8e6f-708192a3b4c5"
        uevent_write(netns, "a0", f"change {uuid} COLOUR=red")
        netns.ip("link", "set", "a1", "name", "b1")
        netns.del_ifbs(["a2"])
        last = marker(netns, signals)
        sequence, found = table(system_bus.address)
    assert sequence >= last > first
    assert set(found) == net_names(netns)
    assert {"a0", "b1", "lo"} <= set(found)
    assert "a1" not in found
    assert "a2" not in found
    changed = found["a0"].properties
    assert changed["INTERFACE"] == "a0"
    assert "SYNTH_UUID" not in changed
    assert "SYNTH_ARG_COLOUR" not in changed
    assert int(changed["PNP_SEQUENCE"]) > first
    assert found["b1"].properties["INTERFACE"] == "b1"  # the move's own keys


def churn(ns: NetNS, stop: threading.Event) -> None:
    """Add and delete batches of links until told to stop."""
    rounds, kept = 0, None
    while not stop.is_set():
        ns.burst(50, prefix=f"c{rounds}x")
        if kept is None:
            kept = ns.last_group
        else:  # every other batch goes again, with the one before it
            ns.del_group(ns.last_group)
            kept = None
        rounds += 1


def test_the_table_is_sysfs_after_a_start_amid_churn(
    system_bus: SystemBus, netns: NetNS, signals: Signals, tmp_path: Path
) -> None:
    """The scan runs while events arrive: those journalled after its mark are folded in, in
    order, so what the scan saw and what the events say agree at the end."""
    stop = threading.Event()
    worker = threading.Thread(target=churn, args=(netns, stop))
    worker.start()
    try:
        time.sleep(0.2)
        broker = BrokerProcess(system_bus, tmp_path / "state", netns=netns).start()
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join(TIMEOUT)
    try:
        marker(netns, signals)
        _, found = table(system_bus.address)
        assert set(found) == net_names(netns)
        assert len(found) > 50
    finally:
        broker.close()


def test_lost_events_are_made_good_by_a_rescan(
    system_bus: SystemBus, netns: NetNS, signals: Signals, tmp_path: Path
) -> None:
    """A stopped broker on the smallest receive buffer loses events: removes among them. The
    table is read from sysfs again, so the removed devices leave it."""
    netns.add_ifbs([f"x{i}" for i in range(10)])
    sock = netns_uevent_socket(netns.name, rcvbuf=1)  # the kernel rounds up to its minimum
    broker = ActivatedBroker(system_bus, tmp_path / "state", fd=sock.fileno(), netns=netns)
    seen: list[Item] = []
    client = Observer(seen.append, subsystem="net", enumerate=True, address=system_bus.address)
    try:
        broker.start(pass_fds=(sock.fileno(),))
        _, before = table(system_bus.address)
        assert {f"x{i}" for i in range(10)} <= set(before)
        client.start()  # a client of the library that holds the devices, across the loss
        broker.send_signal(signal.SIGSTOP)
        netns.del_ifbs([f"x{i}" for i in range(5)])
        netns.add_ifbs([f"y{i}" for i in range(30)])
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        broker.send_signal(signal.SIGCONT)
        signals.wait(lambda s: s[0] == "EventsLost", 1, TIMEOUT)
        last = marker(netns, signals)
        _, after = table(system_bus.address)
        assert set(after) == net_names(netns)
        assert not {f"x{i}" for i in range(5)} & set(after)
        assert "device table: " in broker.log()
        wait_for(lambda: getattr(client.subscription.position, "sequence", 0) >= last)
    finally:
        client.stop()
        broker.close()
        sock.close()
    lost = next(i for i, item in enumerate(seen) if isinstance(item, EventsLost))
    again = [item.devpath for item in seen[lost + 1 :] if isinstance(item, Device)]
    present = {f"x{i}" for i in range(5, 10)} | {f"y{i}" for i in range(30)} | {"lo"}
    assert present <= {path.rsplit("/", 1)[1] for path in again}  # the list again, after it
    view = client.subscription.devices
    assert view is not None
    assert {d.devpath.rsplit("/", 1)[1] for d in view} == set(after)


def wait_for(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def gdbus(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    require_binaries(("gdbus",))
    argv = ["gdbus", "call", "--address", address, "--dest", "org.pnp.Broker"]
    argv += ["--object-path", "/org/pnp/Broker", "--method", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)


@pytest.mark.usefixtures("netns")
def test_bad_arguments_are_invalid_args(system_bus: SystemBus, tmp_path: Path) -> None:
    with BrokerProcess(system_bus, tmp_path / "state"):
        cases = [
            ("org.pnp.Broker1.GetDevices", "{'subsystem': <'net'>}"),
            ("org.pnp.Broker1.GetDevices", "{'colour': <['red']>}"),
            ("org.pnp.Broker1.GetDevices", "{'devpath': <'devices'>}"),
            ("org.pnp.Broker1.Trigger", "{'bogus': <1>}"),
            ("org.pnp.Broker1.Trigger", "{'action': <'explode'>}"),
        ]
        for method, argument in cases:
            done = gdbus(system_bus.address, method, argument)
            assert done.returncode != 0, (method, argument)
            assert "org.freedesktop.DBus.Error.InvalidArgs" in done.stderr, done.stderr
        # gdbus checks types against the introspection first; dbus-send sends what it is given.
        argv = ["dbus-send", f"--bus={system_bus.address}", "--print-reply"]
        argv += ["--dest=org.pnp.Broker", "/org/pnp/Broker", "org.pnp.Broker1.GetEvents"]
        wrong = subprocess.run([*argv, "string:zero"], capture_output=True, text=True, check=False)
        assert "Error org.freedesktop.DBus.Error.InvalidArgs: GetEvents takes (tu)" in wrong.stderr
        good = gdbus(system_bus.address, "org.pnp.Broker1.GetDevices", "{'subsystem': <['net']>}")
        assert good.returncode == 0, good.stderr
        assert "'/devices/virtual/net/lo', 'net'" in good.stdout


def test_paused_says_when_it_changes(system_bus: SystemBus, netns: NetNS, tmp_path: Path) -> None:
    """gdbus monitor sees PropertiesChanged for Paused (and none for LastSequence)."""
    require_binaries(("gdbus",))
    argv = ["gdbus", "monitor", "--address", system_bus.address, "--dest", "org.pnp.Broker"]
    with BrokerProcess(system_bus, tmp_path / "state", netns=netns):
        monitor = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            read_until(monitor, "owned by")  # gdbus has subscribed by then
            netns.add_ifbs(["p0"])
            for method in ("Pause", "Resume"):
                assert gdbus(system_bus.address, f"org.pnp.Broker1.{method}").returncode == 0
            lines = read_until(monitor, "'Paused': <false>")
        finally:
            monitor.terminate()
            monitor.wait(TIMEOUT)
            assert monitor.stdout is not None
            monitor.stdout.close()
    changed = [line for line in lines if "PropertiesChanged" in line]
    assert len(changed) == 2, lines
    assert "('org.pnp.Broker1', {'Paused': <true>}, @as [])" in changed[0]
    assert "('org.pnp.Broker1', {'Paused': <false>}, @as [])" in changed[1]
    assert not any("LastSequence" in line for line in lines)


def read_until(proc: subprocess.Popen[str], text: str) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    while not any(text in line for line in lines):
        if time.monotonic() > deadline:
            raise TimeoutError(lines[-5:])
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"monitor ended: {lines[-5:]}")
        lines.append(line)
    return lines
