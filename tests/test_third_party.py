"""Clients that are not ours see the interface and the signals as the contract documents them.

busctl (systemd), gdbus (GLib) and dbus-python under Debian's own /usr/bin/python3: none of
them imports anything from this repository.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from support import REPO_ROOT, require_binaries, skip_or_fail
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.netns import NetNS

TIMEOUT = 60.0
DEST, PATH, IFACE = "org.pnp.Broker", "/org/pnp/Broker", "org.pnp.Broker1"
CONTRACT_XML = REPO_ROOT / "dbus" / "org.pnp.Broker1.xml"
SYSTEM_PYTHON = "/usr/bin/python3"

# What the contract (dbus/org.pnp.Broker1.xml, docs/dbus.md) documents, as D-Bus signatures.
METHODS = {
    "GetEvents": ("tu", "a(tsssa{ss}a{sv})"),
    "GetEvents2": ("tua{sv}", "a(tsssa{ss}a{sv})a(ts)t"),
    "GetDevices": ("a{sv}", "ta(ssa{ss})"),
    "Trigger": ("a{sv}", "su"),
    "Pause": ("", ""),
    "Resume": ("", ""),
    "Reload": ("", ""),
}
SIGNALS = {"Event": "tsssa{ss}a{sv}", "EventsLost": "ts"}
PROPERTIES = {
    "LastSequence": "t",
    "OldestSequence": "t",
    "Paused": "b",
    "Version": "s",
    "Statistics": "a{st}",
    "JournalId": "s",
}

DBUS_PYTHON_SUBSCRIBER = r"""
import json, sys
import dbus, dbus.mainloop.glib
from gi.repository import GLib

dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
bus = dbus.bus.BusConnection(sys.argv[1])

def on_event(sequence, action, subsystem, devpath, properties, handler):
    print(json.dumps({"sequence": int(sequence), "action": str(action),
                      "subsystem": str(subsystem), "devpath": str(devpath),
                      "properties": {str(k): str(v) for k, v in properties.items()},
                      "handler": sorted(str(k) for k in handler)}), flush=True)

bus.add_signal_receiver(on_event, signal_name="Event", dbus_interface="org.pnp.Broker1",
                        bus_name="org.pnp.Broker", path="/org/pnp/Broker")
broker = bus.get_object("org.pnp.Broker", "/org/pnp/Broker")
rows = broker.GetEvents(dbus.UInt64(0), dbus.UInt32(0), dbus_interface="org.pnp.Broker1")
last = broker.Get("org.pnp.Broker1", "LastSequence",
                  dbus_interface="org.freedesktop.DBus.Properties")
print(json.dumps({"replayed": len(rows), "last": int(last)}), flush=True)
GLib.MainLoop().run()
"""


def read_lines(
    proc: subprocess.Popen[bytes],
    done: Callable[[list[str]], bool],
    stream: IO[bytes] | None = None,
) -> list[str]:
    """Lines from a child until ``done`` (stdout unless ``stream``); time out only on a hang.

    The pipes are unbuffered (``bufsize=0``): a buffered reader would hide lines from select().
    """
    out = stream or proc.stdout
    assert out is not None
    lines: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    while not done(lines):
        ready, _, _ = select.select([out], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise TimeoutError(f"after {lines[-3:]}")
        line = out.readline()
        if not line:
            raise AssertionError(f"exited {proc.wait()}: {proc.stderr and proc.stderr.read()!r}")
        lines.append(line.decode().rstrip("\n"))
    return lines


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(TIMEOUT)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture
def broker(system_bus: SystemBus, netns: NetNS, tmp_path: Path) -> Iterator[BrokerProcess]:
    with BrokerProcess(system_bus, tmp_path / "state", netns=netns) as running:
        yield running


def interface_from_xml(xml: str) -> ET.Element:
    node = ET.fromstring(xml)
    found = node.find(f"interface[@name='{IFACE}']")
    assert found is not None, xml
    return found


def members(interface: ET.Element) -> dict[str, Any]:
    """Methods, signals and properties of one introspected interface, as signatures."""

    def types(element: ET.Element, direction: str | None) -> str:
        args = element.findall("arg")
        return "".join(
            a.get("type", "") for a in args if direction is None or a.get("direction") == direction
        )

    return {
        "methods": {
            m.get("name"): (types(m, "in"), types(m, "out")) for m in interface.findall("method")
        },
        "signals": {s.get("name"): types(s, None) for s in interface.findall("signal")},
        "properties": {
            p.get("name"): p.get("type")
            for p in interface.findall("property")
            if p.get("access") == "read"
        },
    }


DOCUMENTED = {"methods": METHODS, "signals": SIGNALS, "properties": PROPERTIES}


@pytest.mark.root
@pytest.mark.usefixtures("broker")
def test_gdbus_introspect(system_bus: SystemBus) -> None:
    require_binaries(("gdbus",))
    xml = subprocess.run(
        [
            "gdbus",
            "introspect",
            "--address",
            system_bus.address,
            "--dest",
            DEST,
            "--object-path",
            PATH,
            "--xml",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    ).stdout
    assert members(interface_from_xml(xml)) == DOCUMENTED
    if CONTRACT_XML.exists():  # the contract file, once it is on main
        assert members(interface_from_xml(CONTRACT_XML.read_text())) == DOCUMENTED


@pytest.mark.root
@pytest.mark.usefixtures("broker")
def test_busctl_introspect(system_bus: SystemBus) -> None:
    out = subprocess.run(
        ["busctl", f"--address={system_bus.address}", "introspect", DEST, PATH, IFACE],
        check=True,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    ).stdout
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(".")}
    for name, (args, result) in METHODS.items():
        assert rows[f".{name}"][:3] == ["method", args or "-", result or "-"]
    for name, signature in SIGNALS.items():
        assert rows[f".{name}"][:2] == ["signal", signature]
    for name, signature in PROPERTIES.items():
        assert rows[f".{name}"][:2] == ["property", signature]


@pytest.mark.root
@pytest.mark.usefixtures("broker")
def test_busctl_monitor_sees_event_signals(system_bus: SystemBus, netns: NetNS) -> None:
    """``busctl monitor org.pnp.Broker`` (root: it becomes a bus monitor) shows Event signals."""
    argv = ["busctl", f"--address={system_bus.address}", "--json=short", "monitor", DEST]
    monitor = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    try:
        # busctl says on stderr once it monitors; only then are signals guaranteed to show.
        read_lines(monitor, lambda got: any("Monitoring" in x for x in got), monitor.stderr)
        netns.add_ifbs(["t0"])
        lines = read_lines(monitor, lambda got: any('"t0"' in x for x in got))
    finally:
        stop(monitor)
    signals = [m for m in map(json.loads, lines) if m.get("member") == "Event"]
    event = next(m for m in signals if "t0" in json.dumps(m))
    assert (event["type"], event["path"], event["interface"]) == ("signal", PATH, IFACE)
    assert event["payload"]["type"] == SIGNALS["Event"]
    sequence, action, subsystem, devpath, props, handler = event["payload"]["data"]
    assert (action, subsystem, props["INTERFACE"], handler) == ("add", "net", "t0", {})
    assert devpath.endswith("/t0")
    assert sequence > 0


@pytest.mark.root
@pytest.mark.usefixtures("broker")
def test_dbus_python_subscriber_as_nobody(system_bus: SystemBus, netns: NetNS) -> None:
    """dbus-python with the GLib main loop, Debian's Python, as `nobody`: replay and signals."""
    check = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import dbus.mainloop.glib; from gi.repository import GLib"],
        capture_output=True,
        check=False,
    )
    if check.returncode != 0:
        skip_or_fail("python3-dbus with python3-gi is not installed (run scripts/setup)")
    netns.add_ifbs(["d0"])
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    argv = [*prefix, SYSTEM_PYTHON, "-c", DBUS_PYTHON_SUBSCRIBER, system_bus.address]
    env = {"PATH": os.environ["PATH"]}
    client = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, env=env, cwd="/"
    )
    try:
        (hello,) = read_lines(client, lambda got: len(got) == 1)
        netns.add_ifbs(["d1"])
        lines = read_lines(client, lambda got: any('"d1"' in x for x in got))
    finally:
        stop(client)
    status = json.loads(hello)
    assert status["replayed"] >= 1
    assert status["last"] >= status["replayed"]
    events = [json.loads(x) for x in lines]
    d1 = next(e for e in events if e["properties"].get("INTERFACE") == "d1")
    assert (d1["action"], d1["subsystem"], d1["handler"]) == ("add", "net", [])
    assert d1["sequence"] > status["last"] - 1
