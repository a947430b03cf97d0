"""Unprivileged load: 32 connections as ``nobody`` read a 50,000-event journal with GetEvents
in a loop while 1,500 real events arrive. No overflow, every event published; the latency
this adds is a figure in bench/ (``broker load``), not a threshold here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import REPO_ROOT
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.collector import SignalCollector
from support.coreclient import mine, statistics, wait_until
from support.journal import prefill
from support.netns import NetNS

pytestmark = pytest.mark.root

SCRIPT = REPO_ROOT / "tests" / "clients" / "journal_reader.py"
JOURNALLED = 50_000
PROCESSES, PER_PROCESS = 4, 8  # 32 connections
LINKS = 500  # 1,500 events


@contextmanager
def readers(bus: SystemBus) -> Iterator[list[dict[str, int]]]:
    """The reader processes as nobody, started; yields the list their totals go to when they
    stop."""
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO_ROOT), **bus.env()}
    argv = [*prefix, sys.executable, str(SCRIPT), str(PER_PROCESS), str(JOURNALLED)]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd="/")
        for _ in range(PROCESSES)
    ]
    totals: list[dict[str, int]] = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "READY"
        yield totals
    finally:
        for proc in procs:
            proc.terminate()
            out, _ = proc.communicate(timeout=60)
            if out.strip():
                totals.append(json.loads(out.strip().splitlines()[-1]))


async def test_unprivileged_readers_do_not_hold_up_the_events(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    prefill(state, JOURNALLED)
    names = {f"l{i}" for i in range(LINKS)}
    is_mine = mine(names)
    async with SignalCollector(system_bus.address) as collector:
        with BrokerProcess(system_bus, state, ["--no-program"], netns=netns) as broker:
            with readers(system_bus) as made:
                netns.add_ifbs(sorted(names))

                async def published() -> bool:
                    got = [m for m in collector.members("Event") if is_mine(m.body[4])]
                    return len(got) >= 3 * LINKS

                await wait_until(published, 300, "every event published under load")
                stats = await statistics(collector.bus)
            assert broker.stop() == 0, broker.log()
    assert len(made) == PROCESSES
    assert all(load["total"] > 0 for load in made), made  # each really read the journal
    assert sum(load["rows"] for load in made) > 0, made
    assert stats["overflows"] == 0
    ours = [m.body[0] for m in collector.members("Event") if is_mine(m.body[4])]
    assert len(set(ours)) == 3 * LINKS
    numbers = sorted({int(m.body[0]) for m in collector.members("Event")})
    assert numbers == list(range(numbers[0], numbers[-1] + 1))
