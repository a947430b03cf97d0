"""Clients of the device table, as `nobody`: dbus-python with GLib, gdbus, the C example (sd-bus)
and the client library's three loops (asyncio, a thread, GLib). Each takes the table with
GetDevices after its match rule, then applies the events after the table's sequence, and must
end up holding the broker's table; the library also under a burst of events.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import REPO_ROOT, require_binaries
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.netns import NetNS
from support.signals import Signals, net_event
from support.users import checkout_for_nobody, python_argv_for_nobody, subprocess_kwargs

from pnpbroker.client import Event, devices, subscribe

pytestmark = pytest.mark.root
TIMEOUT = 60.0
NET = "/devices/virtual/net"
SYSTEM_PYTHON = "/usr/bin/python3"

#: dbus-python with the GLib main loop, Debian's python3: the race-free recipe by hand.
DBUS_PYTHON = r"""
import json, sys
import dbus, dbus.mainloop.glib
from gi.repository import GLib

dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
bus = dbus.bus.BusConnection(sys.argv[1])
table, seen = {}, {"sequence": 0}

def show():
    print(json.dumps({"sequence": seen["sequence"], "devices": sorted(table)}), flush=True)

def on_event(sequence, action, subsystem, devpath, properties, handler):
    if sequence <= seen["sequence"]:
        return  # already in the table
    seen["sequence"] = int(sequence)
    if action == "remove":
        table.pop(str(devpath), None)
    else:
        if action == "move":
            table.pop(str(properties["DEVPATH_OLD"]), None)
        table[str(devpath)] = dict(properties)
    show()

# 1. the match rule (signals queue up from here), 2. the table, 3. only later events.
bus.add_signal_receiver(on_event, signal_name="Event", dbus_interface="org.pnp.Broker1",
                        bus_name="org.pnp.Broker", path="/org/pnp/Broker", arg2="net")
broker = bus.get_object("org.pnp.Broker", "/org/pnp/Broker")
sequence, rows = broker.GetDevices({"subsystem": dbus.Array(["net"], signature="s")},
                                   dbus_interface="org.pnp.Broker1", signature="a{sv}")
seen["sequence"] = int(sequence)
table.update({str(devpath): dict(props) for devpath, subsystem, props in rows})
show()
GLib.MainLoop().run()
"""

#: The library, asyncio.
LIBRARY_ASYNCIO = r"""
import asyncio, json
from pnpbroker.client import Event, subscribe

def show(events):
    devices = sorted(d.devpath for d in events.devices)
    print(json.dumps({"sequence": events.position.sequence, "devices": devices}), flush=True)

async def main():
    async with subscribe(subsystem="net", enumerate=True) as events:
        show(events)
        async for item in events:
            if isinstance(item, Event):
                show(events)

asyncio.run(main())
"""

#: The library, a thread calling back (pyudev's MonitorObserver's way).
LIBRARY_THREAD = r"""
import json, threading
from pnpbroker.client import Event
from pnpbroker.client.threads import Observer

def show(item=None):
    if item is None or isinstance(item, Event):
        sub = observer.subscription
        devices = sorted(d.devpath for d in sub.devices)
        print(json.dumps({"sequence": sub.position.sequence, "devices": devices}), flush=True)

observer = Observer(show, subsystem="net", enumerate=True)
observer.start()
show()
threading.Event().wait()
"""

#: The library on the GLib main loop: Debian's python3 with python3-gi, and no dbus-fast.
LIBRARY_GLIB = r"""
import json, sys
from gi.repository import GLib
assert "dbus_fast" not in sys.modules
from pnpbroker.client import Event
from pnpbroker.client.glib import GLibSubscription

def show(item=None):
    if item is None or isinstance(item, Event):
        devices = sorted(d.devpath for d in sub.devices)
        print(json.dumps({"sequence": sub.position.sequence, "devices": devices}), flush=True)

sub = GLibSubscription(show, on_error=lambda e: sys.exit(f"failed: {e}"), on_started=show,
                       subsystem="net", enumerate=True)
sub.start()
GLib.MainLoop().run()
"""


def read_lines(
    proc: subprocess.Popen[bytes], done: Callable[[list[str]], bool], timeout: float = TIMEOUT
) -> list[str]:
    """Lines from the child's stdout until ``done``; time out only to stop a hang."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    buffer = b""
    while not done(lines):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(left, 0))
        if not ready:
            raise TimeoutError(f"after {lines[-3:]}; stderr: {stderr_of(proc)}")
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            raise AssertionError(f"exited {proc.wait()}: {stderr_of(proc)}")
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        lines += [line.decode() for line in complete]
    return lines


def stderr_of(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None or proc.stderr is None:
        return "(running)"
    return proc.stderr.read().decode(errors="replace")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(TIMEOUT)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def as_nobody(
    argv: list[str], bus: SystemBus, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **subprocess_kwargs(bus.address, env),
    )


def broker_table(bus: SystemBus) -> tuple[int, list[str]]:
    sequence, found = asyncio.run(devices(subsystem="net", address=bus.address))
    return sequence, [d.devpath for d in found]


@pytest.fixture
def broker(system_bus: SystemBus, netns: NetNS, tmp_path: Path) -> Iterator[BrokerProcess]:
    netns.add_ifbs(["k0", "k1"])
    with BrokerProcess(system_bus, tmp_path / "state", netns=netns) as running:
        yield running


def _client_argv(kind: str) -> tuple[list[str], dict[str, str]]:
    if kind == "dbus-python":
        return [SYSTEM_PYTHON, "-c", DBUS_PYTHON], {}
    if kind == "glib":
        return [SYSTEM_PYTHON, "-c", LIBRARY_GLIB], {"PYTHONPATH": str(checkout_for_nobody())}
    argv, env = python_argv_for_nobody()
    code = LIBRARY_ASYNCIO if kind == "asyncio" else LIBRARY_THREAD
    return [*argv, "-c", code], env


@pytest.mark.usefixtures("broker")
@pytest.mark.parametrize("kind", ["dbus-python", "asyncio", "thread", "glib"])
def test_a_client_that_follows_the_recipe_holds_the_brokers_table(
    kind: str, system_bus: SystemBus, netns: NetNS, signals: Signals
) -> None:
    argv, env = _client_argv(kind)
    client = as_nobody([*argv, system_bus.address], system_bus, env)
    try:
        [first] = read_lines(client, lambda got: len(got) >= 1)
        assert json.loads(first)["devices"] == [f"{NET}/k0", f"{NET}/k1", f"{NET}/lo"]
        netns.add_ifbs(["k2", "k3"])
        netns.ip("link", "set", "k1", "name", "j1")
        netns.del_ifbs(["k0"])
        signals.wait(net_event("remove", {"k0"}), 1, TIMEOUT)
        wanted = sorted(f"{NET}/{name}" for name in ("j1", "k2", "k3", "lo"))
        lines = read_lines(
            client, lambda got: bool(got) and json.loads(got[-1])["devices"] == wanted
        )
    finally:
        stop(client)
    sequence, table = broker_table(system_bus)
    assert table == wanted
    assert json.loads(lines[-1])["sequence"] <= sequence
    shown = [json.loads(line)["sequence"] for line in [first, *lines]]
    assert shown == sorted(shown)


def showing(line: str) -> list[str]:
    shown: list[str] = json.loads(line)["devices"]
    return shown


@pytest.mark.usefixtures("broker")
def test_gdbus_reads_the_table_as_nobody(system_bus: SystemBus) -> None:
    require_binaries(("gdbus",))
    argv = ["gdbus", "call", "--address", system_bus.address, "--dest", "org.pnp.Broker"]
    argv += ["--object-path", "/org/pnp/Broker", "--method", "org.pnp.Broker1.GetDevices"]
    done = subprocess.run(
        [*argv, "{'subsystem': <['net']>, 'properties': <{'INTERFACE': 'k*'}>}"],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
        **subprocess_kwargs(system_bus.address),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"('{NET}/k0', 'net', {{" in done.stdout
    assert f"('{NET}/k1', 'net', {{" in done.stdout
    assert "/lo'" not in done.stdout
    assert "'PNP_SEQUENCE': '0'" in done.stdout


@pytest.fixture
def world_readable() -> Iterator[Path]:
    """A directory `nobody` can read (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="pnpt-nobody-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.usefixtures("broker")
def test_the_c_example_builds_and_runs_as_nobody(
    system_bus: SystemBus, netns: NetNS, world_readable: Path
) -> None:
    """examples/c/pnp-devices.c, built as its comment says, with sd-bus from libsystemd-dev."""
    require_binaries(("cc", "pkg-config"))
    program = world_readable / "pnp-devices"
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "libsystemd"],
        capture_output=True, text=True, check=True, timeout=TIMEOUT,
    ).stdout.split()  # fmt: skip
    source = REPO_ROOT / "examples" / "c" / "pnp-devices.c"
    subprocess.run(
        ["cc", "-Wall", "-Wextra", "-Werror", "-o", str(program), str(source), *flags],
        check=True, timeout=120,
    )  # fmt: skip
    client = as_nobody([str(program), "net", "2"], system_bus)
    try:
        lines = read_lines(client, lambda got: bool(got) and got[-1].startswith("sequence "))
        netns.add_ifbs(["k2"])
        netns.del_ifbs(["k0"])
        lines += read_lines(client, lambda got: len(got) == 2)
        assert client.wait(TIMEOUT) == 0
    finally:
        stop(client)
    assert lines[:3] == [
        f"present {NET}/k0 (net) k0",
        f"present {NET}/k1 (net) k1",
        f"present {NET}/lo (net) lo",
    ]
    table_sequence = int(lines[3].split()[1])
    changes = [line.split() for line in lines[4:]]
    assert [(c[1], c[2], c[3]) for c in changes] == [
        ("add", f"{NET}/k2", "(net)"),
        ("remove", f"{NET}/k0", "(net)"),
    ]
    assert table_sequence < int(changes[0][0]) < int(changes[1][0])


async def test_enumerate_then_subscribe_holds_under_a_burst(
    system_bus: SystemBus, netns: NetNS, broker: BrokerProcess
) -> None:
    """Devices and events together: a burst of adds and removes runs while the client takes
    the table; at the end its devices are the broker's and the kernel's."""
    loop = asyncio.get_running_loop()
    burst = loop.run_in_executor(None, lambda: netns.burst(1000, prefix="u"))
    delivered: list[int] = []
    async with subscribe(subsystem="net", enumerate=True, address=system_bus.address) as events:
        start = events.position
        await burst
        await loop.run_in_executor(None, lambda: netns.del_group(netns.last_group))
        last = f"z{secrets.token_hex(2)}"
        await loop.run_in_executor(None, lambda: netns.add_ifbs([last]))
        async with asyncio.timeout(TIMEOUT):
            async for item in events:
                if isinstance(item, Event):
                    delivered.append(item.sequence)
                    if item.properties.get("INTERFACE") == last:
                        break
        assert events.devices is not None
        view = [d.devpath for d in events.devices]
    assert start is not None
    assert all(sequence > start.sequence for sequence in delivered)
    assert delivered == sorted(set(delivered))
    _, table = await devices(subsystem="net", address=system_bus.address)
    assert view == [d.devpath for d in table]
    assert sorted(view) == sorted(f"{NET}/{n}" for n in ("k0", "k1", "lo", last))


@pytest.mark.usefixtures("broker")
def test_the_glib_example_keeps_its_list_as_nobody(
    system_bus: SystemBus, netns: NetNS, world_readable: Path
) -> None:
    """examples/device_list_glib.py copied out with pnpclient (``cp -rL``), Debian's python3
    with python3-gi and no dbus-fast, labels from sysfs (read in the namespace's sysfs)."""
    copy = world_readable / "examples"
    subprocess.run(["cp", "-rL", str(REPO_ROOT / "examples"), str(copy)], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(copy)], check=True)
    script = [SYSTEM_PYTHON, str(copy / "device_list_glib.py"), "--subsystem", "net"]
    client = subprocess.Popen(
        [*netns.exec_prefix(), "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         *script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={"PATH": os.environ["PATH"], **system_bus.env()}, cwd="/",
    )  # fmt: skip
    try:
        lines = read_lines(client, lambda got: len(got) == 3)
        netns.add_ifbs(["k2"])
        netns.del_ifbs(["k0"])
        lines += read_lines(client, lambda got: len(got) == 2)
    finally:
        stop(client)
    assert lines[2] == f"+ {NET}/lo lo 00:00:00:00:00:00"
    assert lines[0].startswith(f"+ {NET}/k0 k0 ")
    assert lines[3].startswith(f"+ {NET}/k2 k2 ")
    assert len(lines[3].split()[3]) == len("00:00:00:00:00:00")  # the ifb's MAC, from sysfs
    assert lines[4] == f"- {NET}/k0"


def test_the_usb_example_names_devices_from_sysfs(tmp_path: Path) -> None:
    """usb_notifier.py's names: sysfs attributes while the device is there, PRODUCT if not."""
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    try:
        import usb_notifier
    finally:
        sys.path.remove(str(REPO_ROOT / "examples"))
    device = tmp_path / "devices/pci0000:00/0000:00:14.0/usb1/1-2"
    device.mkdir(parents=True)
    for name, value in [
        ("idVendor", "046d"), ("idProduct", "c52b"),
        ("manufacturer", "Logitech"), ("product", "USB Receiver"),
    ]:  # fmt: skip
        (device / name).write_text(f"{value}\n")
    devpath = "/devices/pci0000:00/0000:00:14.0/usb1/1-2"
    named = usb_notifier.name_of(devpath, {"PRODUCT": "46d/c52b/1203"}, tmp_path)
    assert named == "Logitech USB Receiver (046d:c52b)"
    gone = usb_notifier.name_of("/devices/gone", {"PRODUCT": "46d/c52b/1203"}, tmp_path)
    assert gone == "USB device (46d/c52b/1203)"
