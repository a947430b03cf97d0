"""A dead bus: the broker goes on reading, journalling and running programs, and publishes
everything once a bus is back, with the same gap-free sequence."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.collector import SignalCollector
from support.coreclient import call, get_property, statistics
from support.netns import NetNS

pytestmark = pytest.mark.root


def wait_for_log(broker: BrokerProcess, text: str, count: int = 1, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while broker.log().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{broker.log()}"
        time.sleep(0.05)


async def test_events_during_a_bus_outage_are_published_when_it_returns(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    program = tmp_path / "program.sh"
    ran = tmp_path / "ran.log"
    program.write_text(f'#!/bin/sh\necho "$SEQNUM $INTERFACE" >> {ran}\n')
    program.chmod(0o755)
    with BrokerProcess(system_bus, tmp_path / "state", ["-p", str(program)], netns=netns) as broker:
        system_bus.crash()
        wait_for_log(broker, "bus connection lost")
        netns.add_ifbs(["out0", "out1", "out2"])
        deadline = time.monotonic() + 60
        while not (ran.exists() and ran.read_text().count("out") == 3):
            assert time.monotonic() < deadline, "programs did not run while the bus was down"
            await asyncio.sleep(0.05)
        assert broker.proc is not None
        assert broker.proc.poll() is None, broker.log()

        system_bus.start()
        wait_for_log(broker, "on the bus as org.pnp.Broker", count=2)
        async with SignalCollector(system_bus.address) as collector:
            stats = await statistics(collector.bus)
            last = await get_property(collector.bus, "LastSequence")
            (rows,) = await call(collector.bus, "GetEvents", "tu", [0, 0])
    assert [row[0] for row in rows] == list(range(1, last + 1))
    mine = [row for row in rows if row[4].get("INTERFACE", "").startswith("out")]
    assert sorted(row[4]["INTERFACE"] for row in mine if row[2] == "net") == [
        "out0",
        "out1",
        "out2",
    ]
    assert all(row[5]["status"].value == 0 for row in mine)
    assert stats["overflows"] == 0
    assert "system bus unreachable" in broker.log()
