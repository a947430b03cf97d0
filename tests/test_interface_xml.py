"""dbus/org.pnp.Broker1.xml is the contract: the live broker's introspection must equal it.

The comparison is generic (every method, signal and property on either side), so members added
later must be added to both the service and the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dbus_fast import introspection as intr
from dbus_fast.aio import MessageBus
from support import REPO_ROOT
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.coreclient import BUS_NAME, INTERFACE, OBJECT_PATH

CONTRACT = REPO_ROOT / "dbus" / "org.pnp.Broker1.xml"
EMITS = "org.freedesktop.DBus.Property.EmitsChangedSignal"


def _args(args: list[intr.Arg]) -> list[tuple[str | None, str, str]]:
    return [(a.name, str(a.signature), a.direction.value if a.direction else "out") for a in args]


def normalized(interface: intr.Interface) -> dict[str, Any]:
    """Names, signatures, directions, argument names, property access and annotations."""
    return {
        "methods": {
            m.name: {"in": _args(m.in_args), "out": _args(m.out_args)} for m in interface.methods
        },
        "signals": {s.name: _args(s.args) for s in interface.signals},
        "properties": {
            p.name: (p.signature, p.access.value, p.annotations.get(EMITS, "true"))
            for p in interface.properties
        },
    }


def contract_interface() -> intr.Interface:
    node = intr.Node.parse(CONTRACT.read_text())
    found = [i for i in node.interfaces if i.name == INTERFACE]
    assert len(found) == 1, f"{CONTRACT} must describe {INTERFACE} once"
    return found[0]


def test_contract_file_is_complete() -> None:
    """The file itself: every argument named, the documented members present."""
    contract = normalized(contract_interface())
    assert {"Event", "EventsLost"} <= set(contract["signals"])
    assert "GetEvents" in contract["methods"]
    assert {"LastSequence", "OldestSequence", "Version", "Statistics"} <= set(
        contract["properties"]
    )
    for kind in ("signals", "methods"):
        for member, args in contract[kind].items():
            flat = args if kind == "signals" else args["in"] + args["out"]
            assert all(name for name, _, _ in flat), f"{member} has an unnamed argument"
    text = CONTRACT.read_text()
    assert text.count("<!--") >= len(contract["signals"]) + len(contract["methods"])


@pytest.mark.root
async def test_live_introspection_matches_the_contract(
    system_bus: SystemBus, tmp_path: Path
) -> None:
    with BrokerProcess(system_bus, tmp_path / "state", ["--no-program"]):
        bus = await MessageBus(bus_address=system_bus.address).connect()
        try:
            node = await bus.introspect(BUS_NAME, OBJECT_PATH)
        finally:
            bus.disconnect()
    live = [i for i in node.interfaces if i.name == INTERFACE]
    assert len(live) == 1
    assert normalized(live[0]) == normalized(contract_interface())
