"""No background task dies silently (fast, no root): the real pipeline and bus server, with the
fakes of tests/support/fakes.py where a bus or a kernel socket would be.

Every task the broker starts is supervised: one that ends on its own, or raises what it does
not know how to survive, stops the broker with exit 111 and a log line naming it. What a task
knows how to survive (a full disk, a bus that refuses us) is logged and retried instead.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest
from dbus_fast.errors import AuthError
from support.fakes import FakeLink, FakeSource, datagram, until

from pnpbroker.bus import server as bus_server
from pnpbroker.bus.link import BusLink
from pnpbroker.config import Config
from pnpbroker.contract import ExitCode
from pnpbroker.core import pipeline as core
from pnpbroker.core import sequencer as sequencing
from pnpbroker.core.pipeline import Pipeline
from pnpbroker.journal import Journal


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    config = Config(hotplug_program="/bin/true", state_dir=tmp_path)
    return Pipeline(config, FakeSource(), Journal(tmp_path / "journal.sqlite"))


async def test_a_helper_task_that_breaks_stops_the_broker_with_111(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(core, "HOUSEKEEPING_SECONDS", 0.01)

    def broken() -> int:
        raise RuntimeError("a bug in retention")

    monkeypatch.setattr(pipeline.journal, "prune", broken)
    code = await asyncio.wait_for(pipeline.run(), 30)
    pipeline.close()
    assert code == ExitCode.SYSTEM
    assert "housekeeping stopped unexpectedly" in caplog.text
    assert "a bug in retention" in caplog.text


async def test_housekeeping_survives_a_full_disk(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(core, "HOUSEKEEPING_SECONDS", 0.01)
    failures = []

    def full() -> int:
        failures.append(1)
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(pipeline.journal, "prune", full)
    run = asyncio.get_running_loop().create_task(pipeline.run())
    await until(lambda: len(failures) >= 3)
    assert not run.done()
    pipeline.stop()
    assert await run == ExitCode.OK
    pipeline.close()
    assert "database or disk is full" in caplog.text


async def test_an_outcome_that_cannot_be_stored_is_kept_and_stored_later(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The program ran once; its outcome waits in memory until the disk takes it."""
    monkeypatch.setattr(sequencing, "STORE_RETRY_SECONDS", 0.01)
    runs: list[int] = []
    real_run = pipeline.sequencer.mode.run  # type: ignore[union-attr]

    async def counting(event, sequence):  # type: ignore[no-untyped-def]
        runs.append(sequence)
        return await real_run(event, sequence)

    monkeypatch.setattr(pipeline.sequencer.mode, "run", counting)
    real_store = pipeline.journal.record_outcome
    refusals = [2]

    def store(sequence, outcome):  # type: ignore[no-untyped-def]
        if refusals[0]:
            refusals[0] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        real_store(sequence, outcome)

    monkeypatch.setattr(pipeline.journal, "record_outcome", store)
    link = FakeLink()
    pipeline.publisher.attach(link)
    run = asyncio.get_running_loop().create_task(pipeline.run())
    assert isinstance(pipeline.source, FakeSource)
    pipeline.source.feed(datagram(1), datagram(2))
    await until(lambda: link.sequences == [1, 2] or run.done())
    assert not run.done()
    pipeline.stop()
    await until(lambda: link.outstanding == 1 or run.done())
    link.ack()
    assert await run == ExitCode.OK
    pipeline.close()
    assert runs == [1, 2]
    assert "cannot store the outcome of event 1" in caplog.text


async def test_a_bus_keeper_that_breaks_stops_the_broker_with_111(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(address: str | None) -> BusLink:
        raise RuntimeError("a bug in the keeper")

    monkeypatch.setattr(BusLink, "connect", broken)
    code = await asyncio.wait_for(bus_server.BusServer(pipeline, "").run(), 30)
    assert code == ExitCode.SYSTEM
    assert "bus stopped unexpectedly" in caplog.text


async def test_the_bus_keeper_retries_what_a_bus_can_fix(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(bus_server, "RECONNECT_FIRST", 0.001)
    monkeypatch.setattr(bus_server, "RECONNECT_MAX", 0.001)
    attempts: list[int] = []

    async def refused(address: str | None) -> BusLink:
        attempts.append(1)
        raise AuthError("REJECTED")

    monkeypatch.setattr(BusLink, "connect", refused)
    caplog.set_level(logging.INFO)
    server = bus_server.BusServer(pipeline, "")
    run = asyncio.get_running_loop().create_task(server.run())
    await until(lambda: len(attempts) >= 20)
    assert not run.done()
    pipeline.stop()
    assert await run == ExitCode.OK
    assert caplog.text.count("REJECTED") == 1  # logged once, not per attempt


async def test_an_idle_broker_wakes_up_only_when_something_happens(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Housekeeping runs once after the last change and the status line is sent once; then
    neither wakes up until an event comes (no timers ticking in an idle broker)."""
    monkeypatch.setattr(core, "HOUSEKEEPING_SECONDS", 0.01)
    monkeypatch.setattr(core, "STATUS_SECONDS", 0.01)
    rounds: list[int] = []
    statuses: list[str] = []
    real_prune = pipeline.journal.prune

    def prune() -> int:
        rounds.append(pipeline.journal.last)
        return real_prune()

    monkeypatch.setattr(pipeline.journal, "prune", prune)
    monkeypatch.setattr(core, "sd_notify", statuses.append)
    link = FakeLink()
    pipeline.publisher.attach(link)
    run = asyncio.get_running_loop().create_task(pipeline.run())
    await until(lambda: len(rounds) == 1)
    await asyncio.sleep(0.3)  # thirty rounds' worth of time, and nothing happened
    assert rounds == [0]
    assert statuses == ["STATUS=0 events handled, 0 queued, 0 published"]
    assert isinstance(pipeline.source, FakeSource)
    pipeline.source.feed(datagram(1))
    await until(lambda: link.outstanding == 1)
    link.ack()
    await until(lambda: "STATUS=1 events handled, 0 queued, 1 published" in statuses)
    await until(lambda: rounds[-1:] == [1])
    pipeline.stop()
    assert await run == ExitCode.OK
    pipeline.close()
