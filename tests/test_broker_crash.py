"""SIGKILL while the queue is long, restart on the same state dir: nothing read is lost.

Across the crash a sequence may be sent twice (the bus had not acknowledged it), but only with
the same content; clients drop repeats by sequence. The distinct sequences are exactly 1..N.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.collector import SignalCollector
from support.coreclient import mine, statistics, wait_until, write_program
from support.netns import NetNS, netns_uevent_socket
from test_broker_e2e import kernel_events, uevents_per_link

LINKS = 40


def journalled_seqnums(state_dir: Path) -> set[int]:
    """The kernel SEQNUMs the broker has committed to its journal (a read-only look)."""
    path = state_dir / "journal.sqlite"
    if not path.exists():
        return set()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT seqnum FROM events")}
    except sqlite3.OperationalError:  # the schema is not there yet
        return set()
    finally:
        db.close()


@pytest.mark.root
async def test_sigkill_with_a_long_queue_then_restart(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    program = write_program(tmp_path, tmp_path / "program.log", work="sleep 0.02")
    names = {f"c{i}" for i in range(LINKS)}
    is_mine = mine(names)
    with netns_uevent_socket(netns.name) as ref:
        per_link = uevents_per_link(netns, ref)
        async with SignalCollector(system_bus.address) as collector:
            with BrokerProcess(system_bus, state, ["-p", str(program)], netns=netns) as first:
                netns.burst(LINKS, prefix="c")
                netns.del_group(netns.last_group)
                sent = {int(e["SEQNUM"]) for e in kernel_events(ref, names, LINKS * per_link)}

                async def all_journalled() -> bool:
                    return sent <= journalled_seqnums(state)

                await wait_until(all_journalled, 60, "our events in the journal")
                before = await statistics(collector.bus)
                first.kill()
            assert before["queued"] > 0, "the queue was empty at the crash"
            seen_before = len(collector.members("Event"))
            with BrokerProcess(system_bus, state, ["-p", str(program)], netns=netns) as second:

                async def all_published() -> bool:
                    got = {int(m.body[4]["SEQNUM"]) for m in collector.members("Event")}
                    return sent <= got

                await wait_until(all_published, 120, "every journalled event published")
                assert second.stop() == 0, second.log()
    events = collector.members("Event")
    assert seen_before < len(events)
    by_sequence: dict[int, list[Any]] = {}
    for message in events:
        body = list(message.body)
        earlier = by_sequence.setdefault(body[0], body)
        assert earlier == body, f"sequence {body[0]} was sent twice with different content"
    assert sorted(by_sequence) == list(range(1, len(by_sequence) + 1))
    ours = [body for body in by_sequence.values() if is_mine(body[4])]
    assert {int(body[4]["SEQNUM"]) for body in ours} == sent
    assert all(body[5]["status"].value == int(body[4]["SEQNUM"]) % 7 for body in ours)
