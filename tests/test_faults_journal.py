"""A journal that cannot be used, and the journal's identity.

Real corruptions of a journal a real broker wrote: what is wrong with the file itself (cut
short, a garbage header, a schema from a newer broker, not a journal at all) is moved aside with
a loud log, as journald does, and a fresh journal starts (a new ``JournalId``, a loss as its
first entry). What is wrong around it (a file the broker may not read, a directory in its place)
is one line on stderr and exit 111, before any program runs: a restart cannot rerun programs.

``JournalId`` names a journal; the client library puts it in every position it hands out and
raises :class:`JournalChanged` rather than resume against another journal.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.coreclient import write_program
from support.netns import NetNS

from pnpbroker.client import Event, JournalChanged, Position, subscribe

pytestmark = pytest.mark.root

JOURNAL = "journal.sqlite"
NO_DAC = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search",
          "--inh-caps", "-dac_override,-dac_read_search")  # fmt: skip


def journal_id(bus: SystemBus) -> str:
    words = bus.busctl(
        "get-property", "org.pnp.Broker", "/org/pnp/Broker", "org.pnp.Broker1", "JournalId"
    )
    assert words[0] == "s"
    return words[1].strip('"')


def last_sequence(bus: SystemBus) -> int:
    words = bus.busctl(
        "get-property", "org.pnp.Broker", "/org/pnp/Broker", "org.pnp.Broker1", "LastSequence"
    )
    return int(words[1])


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def filled_journal(bus: SystemBus, netns: NetNS, state: Path, prefix: str) -> str:
    """Run a broker on ``state`` until three links' events are journalled; its JournalId."""
    with BrokerProcess(bus, state, ["--no-program"], netns=netns) as broker:
        netns.add_ifbs([f"{prefix}{i}" for i in range(3)])
        wait_for(lambda: last_sequence(bus) >= 9, "nine events journalled")
        found = journal_id(bus)
        assert broker.stop() == 0, broker.log()
    return found


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2 + 100)


def garbage_header(path: Path) -> None:
    with path.open("r+b") as file:
        file.write(os.urandom(100))


def newer_schema(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()


def not_a_journal(path: Path) -> None:
    path.unlink()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE photos (name TEXT)")
    db.commit()
    db.close()


@pytest.mark.parametrize(
    "damage", [truncate, garbage_header, newer_schema, not_a_journal], ids=lambda f: f.__name__
)
def test_a_damaged_journal_is_moved_aside_and_a_fresh_one_starts(
    damage: Callable[[Path], None], system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    old_id = filled_journal(system_bus, netns, state, "d")
    damage(state / JOURNAL)
    damaged = (state / JOURNAL).read_bytes()
    with BrokerProcess(system_bus, state, ["--no-program"], netns=netns) as broker:
        new_id = journal_id(system_bus)
        rows = system_bus.busctl(
            "--json=short", "call", "org.pnp.Broker", "/org/pnp/Broker", "org.pnp.Broker1",
            "GetEvents2", "tua{sv}", "0", "1", "0",
        )  # fmt: skip
        assert broker.stop() == 0, broker.log()
    assert new_id != old_id
    aside = [p for p in state.iterdir() if p.name.startswith(f"{JOURNAL}.corrupt-")]
    [moved] = [p for p in aside if not p.name.endswith(("-wal", "-shm"))]
    assert moved.read_bytes() == damaged  # kept as it was, nothing deleted
    errors = [line for line in broker.log().splitlines() if "moved aside" in line]
    assert len(errors) == 1, broker.log()
    assert "ERROR" in errors[0]
    assert str(moved) in errors[0]
    assert "Traceback" not in broker.log()
    _events, lost, _through = json.loads(" ".join(rows))["data"]
    assert lost == [[1, ""]]  # the fresh journal's first entry says so


def unreadable(path: Path) -> None:
    path.chmod(0)


def a_directory(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.mkdir()


@pytest.mark.parametrize("damage", [unreadable, a_directory], ids=lambda f: f.__name__)
def test_a_journal_the_broker_cannot_use_is_one_line_and_exit_111(
    damage: Callable[[Path], None], system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    filled_journal(system_bus, netns, state, "u")
    damage(state / JOURNAL)
    ran = tmp_path / "ran.log"
    program = write_program(tmp_path, ran)
    broker = BrokerProcess(system_bus, state, ["-p", str(program)], netns=netns, wrapper=NO_DAC)
    try:
        broker.start(wait_ready=False)
        netns.add_ifbs(["u9"])
        assert broker.wait(60) == 111, broker.log()
    finally:
        broker.close()
    lines = broker.log().strip().splitlines()
    assert len(lines) == 1, lines
    assert str(state / JOURNAL) in lines[0]
    assert ran.read_text() == ""  # nothing ran: a restart loop reruns nothing


def test_the_journal_id_is_kept_across_restarts_and_new_for_a_new_journal(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    first = filled_journal(system_bus, netns, tmp_path / "one", "a")
    again = filled_journal(system_bus, netns, tmp_path / "one", "b")
    other = filled_journal(system_bus, netns, tmp_path / "two", "c")
    assert first == again != other


async def test_a_client_is_told_when_it_would_resume_against_another_journal(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    """Two journals with as many events: sequence numbers alone cannot tell them apart."""
    await asyncio.to_thread(filled_journal, system_bus, netns, tmp_path / "one", "p")
    with BrokerProcess(system_bus, tmp_path / "one", ["--no-program"], netns=netns):
        async with subscribe(after=0) as events:
            async with asyncio.timeout(60):
                while events.position is None or events.position.sequence < 9:
                    assert isinstance(await anext(events), Event)
            saved = str(events.position)
    position = Position.parse(saved)
    assert position.journal_id
    assert position.sequence == 9
    await asyncio.to_thread(filled_journal, system_bus, netns, tmp_path / "two", "q")
    with (
        BrokerProcess(system_bus, tmp_path / "two", ["--no-program"], netns=netns),
        pytest.raises(JournalChanged) as caught,
    ):
        async with subscribe(after=saved) as events:
            await asyncio.wait_for(anext(events), 60)
    assert caught.value.expected == position.journal_id
    assert caught.value.found not in ("", position.journal_id)
