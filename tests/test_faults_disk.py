"""A full disk, and a journal at its cap.

The state directory is a small tmpfs and a burst arrives: the broker neither exits nor runs a
program twice for one kernel event; it says loudly that the journal is full, waits, and once
the tmpfs grows again everything is handled and published. A journal that reaches
``journal_max_events`` while the broker is paused drops what does not fit and records one loss
in its place (EventsLost, with a resync once there is room again), never a crash.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.collector import SignalCollector
from support.coreclient import call, mine, read_program_log, statistics, wait_until, write_program
from support.mounts import tmpfs
from support.netns import NetNS

pytestmark = pytest.mark.root

#: The journal cap of the cap test: small, but room for a resync of this machine's devices.
CAP = 4000


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "state", "size=192k") as where:
        yield where


def sequences(collector: SignalCollector) -> dict[int, str]:
    """Every published sequence (events and losses) -> its kind, checking repeats agree."""
    found: dict[int, str] = {}
    for message in collector.messages:
        if message.member == "Event":
            found[int(message.body[0])] = "event"
        elif message.member == "EventsLost":
            found[int(message.body[0]) + 1] = "lost"
    return found


async def test_a_full_disk_pauses_the_broker_until_there_is_room(
    system_bus: SystemBus, netns: NetNS, small_tmpfs: Path, tmp_path: Path
) -> None:
    ran = tmp_path / "ran.log"
    program = write_program(tmp_path, ran)
    names = {f"f{i}" for i in range(150)}
    is_mine = mine(names)
    args = ["-p", str(program)]
    async with SignalCollector(system_bus.address) as collector:
        with BrokerProcess(system_bus, small_tmpfs, args, netns=netns) as broker:
            pid = broker.pid
            netns.add_ifbs(sorted(names))

            async def full() -> bool:
                return "disk is full" in broker.log()

            await wait_until(full, 60, "the broker saying the disk is full")
            await asyncio.sleep(5)  # several retries
            assert broker.running(), broker.log()
            grow = ["mount", "-o", "remount,size=64m", str(small_tmpfs)]
            await asyncio.to_thread(subprocess.run, grow, check=True)

            async def published() -> bool:
                bodies = [m.body[4] for m in collector.members("Event")]
                return sum(1 for props in bodies if is_mine(props)) >= 3 * len(names)

            await wait_until(published, 120, "every event published once there was room")
            stats = await statistics(collector.bus)
            assert broker.pid == pid
            assert broker.stop() == 0, broker.log()
    ours = [m.body for m in collector.members("Event") if is_mine(m.body[4])]
    seqnums = {int(body[4]["SEQNUM"]) for body in ours}
    assert len(seqnums) == 3 * len(names)
    started = [n for word, n in read_program_log(ran) if word == "start" and n in seqnums]
    assert sorted(started) == sorted(seqnums), "a program ran twice, or not at all"
    found = sequences(collector)
    assert sorted(found) == list(range(1, len(found) + 1))
    assert stats["overflows"] == 0
    assert "Traceback" not in broker.log()


async def test_the_journal_cap_is_a_loss_never_a_crash(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    config = tmp_path / "pnpbroker.toml"
    config.write_text(f"journal_max_events = {CAP}\n")
    args = ["--no-program", "-c", str(config)]
    first, second = {f"c{i}" for i in range(CAP // 3 + 100)}, {f"k{i}" for i in range(5)}
    async with SignalCollector(system_bus.address) as collector:
        with BrokerProcess(system_bus, tmp_path / "state", args, netns=netns) as broker:
            await call(collector.bus, "Pause")
            netns.add_ifbs(sorted(first))  # 300 events more than the journal holds
            stats: dict[str, int] = {}

            async def dropping() -> bool:
                stats.update(await statistics(collector.bus))
                return stats["journalled"] >= CAP and stats["dropped"] > 0

            await wait_until(dropping, 60, "the cap reached")
            capped = stats["journalled"]
            await asyncio.sleep(1)
            assert (await statistics(collector.bus))["journalled"] == capped
            await call(collector.bus, "Resume")
            [lost] = await collector.wait_for_count(1, "EventsLost")
            uuid = lost.body[1]

            # The resync starts once the backlog is published, and re-announces our links (their
            # queues have no uevent file: one event a link).
            def resynced(_: object) -> bool:
                names = {
                    m.body[4].get("INTERFACE")
                    for m in collector.members("Event")
                    if m.body[2] == "net" and m.body[4].get("SYNTH_UUID") == uuid
                }
                return first <= names

            try:
                await collector.wait_for(resynced, 60)
            except TimeoutError:
                raise AssertionError(f"no resync of {len(first)} links:\n{broker.log()}") from None
            netns.add_ifbs(sorted(second))
            later = mine(second)
            await collector.wait_for(
                lambda _: (
                    sum(1 for m in collector.members("Event") if later(m.body[4]))
                    >= 3 * len(second)
                )
            )
            assert broker.stop() == 0, broker.log()
    found = sequences(collector)
    assert sorted(found) == list(range(1, len(found) + 1))
    assert [n for n, kind in found.items() if kind == "lost"] == [capped]  # the last place
    assert "journal_max_events" in broker.log()
