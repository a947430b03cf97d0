"""The client library against the real broker: ordering, replay, restarts, unprivileged use.

Every test runs the broker as a subprocess in its own network namespace on a private system bus
and makes events with ifb links. Sequences are compared whole: no gap and no repeat.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import REPO_ROOT
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.netns import NetNS

from pnpbroker import names
from pnpbroker.client import (
    BrokerReset,
    Event,
    JournalGap,
    Subscription,
    subscribe,
)

EXAMPLES = REPO_ROOT / "examples"
TIMEOUT = 60.0


def ifb_added(wanted: set[str]) -> Callable[[Event], bool]:
    """The net ``add`` event of one of the interfaces ``wanted``."""

    def check(event: Event) -> bool:
        return (
            event.action == "add"
            and event.subsystem == "net"
            and event.properties.get("INTERFACE") in wanted
        )

    return check


async def take_until(
    events: Subscription, done: Callable[[list[Event]], bool], into: list[Event] | None = None
) -> list[Event]:
    """Read events until ``done(all so far)``; time out only to stop a hang."""
    seen: list[Event] = [] if into is None else into

    async def reader() -> None:
        async for item in events:
            if isinstance(item, Event):
                seen.append(item)
                if done(seen):
                    return

    await asyncio.wait_for(reader(), TIMEOUT)
    return seen


def all_of(check: Callable[[Event], bool], count: int) -> Callable[[list[Event]], bool]:
    return lambda seen: sum(1 for e in seen if check(e)) >= count


def assert_contiguous(sequences: list[int], first: int = 1) -> None:
    assert sequences == list(range(first, first + len(sequences))), sequences


def slow_program(tmp_path: Path) -> Path:
    """A legacy program that takes a little while, so a kill lands mid-stream."""
    program = tmp_path / "hotplug"
    program.write_text("#!/bin/sh\nsleep 0.02\n")
    program.chmod(0o755)
    return program


async def start(broker: BrokerProcess) -> BrokerProcess:
    return await asyncio.to_thread(broker.start)


async def add_ifbs(netns: NetNS, prefix: str, count: int) -> set[str]:
    links = [f"{prefix}{i}" for i in range(count)]
    await asyncio.to_thread(netns.add_ifbs, links)
    return set(links)


def test_the_library_stands_alone(tmp_path: Path) -> None:
    """A copy of examples/pnpclient (``cp -rL``) imports without the pnpbroker package, each of
    its modules, and names the same contract."""
    assert (EXAMPLES / "pnpclient").resolve() == REPO_ROOT / "pnpbroker" / "client"
    subprocess.run(["cp", "-rL", str(EXAMPLES / "pnpclient"), str(tmp_path)], check=True)
    code = (
        "import sys; sys.modules['pnpbroker'] = None; sys.path.insert(0, sys.argv[1]);"
        "import pnpclient as c, pnpclient.threads, pnpclient.protocol;"
        "print(c.BUS_NAME, c.OBJECT_PATH, c.INTERFACE, c.ERROR_JOURNAL_GAP)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], check=True, capture_output=True, text=True
    ).stdout.split()
    assert out == [names.BUS_NAME, names.OBJECT_PATH, names.INTERFACE, names.ERROR_JOURNAL_GAP]


@pytest.mark.root
async def test_replay_then_live_with_filters(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    """Events journalled before the client started come first, then live ones; filters hold."""
    with BrokerProcess(system_bus, tmp_path / "state", netns=netns):
        early = await add_ifbs(netns, "e", 5)
        async with subscribe(after=0) as everything:
            await take_until(everything, all_of(ifb_added(early), 5))
        filtered = subscribe(after=0, subsystem="net", action="add", properties={"INTERFACE": "l*"})
        async with filtered:
            late = await add_ifbs(netns, "l", 5)
            got = await take_until(filtered, all_of(ifb_added(late), 5))
    assert {e.properties["INTERFACE"] for e in got} == late
    assert [e.sequence for e in got] == sorted(e.sequence for e in got)
    assert all(e.seqnum is not None and e.handler is None for e in got)


@pytest.mark.root
async def test_from_now_skips_the_past(system_bus: SystemBus, netns: NetNS, tmp_path: Path) -> None:
    with BrokerProcess(system_bus, tmp_path / "state", netns=netns):
        past = await add_ifbs(netns, "p", 3)
        async with subscribe(after=0) as events:
            await take_until(events, all_of(ifb_added(past), 3))
        async with subscribe() as events:
            assert events.position is not None  # fixed on entering
            fresh = await add_ifbs(netns, "f", 3)
            got = await take_until(events, all_of(ifb_added(fresh), 3))
    assert not any(ifb_added(past)(e) for e in got)


@pytest.mark.root
async def test_broker_killed_mid_stream(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    """SIGKILL the broker while it publishes; restart it: no gap, no repeat, handler outcomes."""
    args = ["-p", str(slow_program(tmp_path))]
    first_run = BrokerProcess(system_bus, tmp_path / "state", args, netns=netns)
    second_run = BrokerProcess(system_bus, tmp_path / "state", args, netns=netns)
    seen: list[Event] = []
    try:
        await start(first_run)
        async with subscribe(after=0) as events:
            first = await add_ifbs(netns, "k", 40)
            await take_until(events, all_of(ifb_added(first), 5), seen)
            await asyncio.to_thread(first_run.kill)
            await start(second_run)
            second = await add_ifbs(netns, "r", 5)
            await take_until(events, all_of(ifb_added(first | second), 45), seen)
    finally:
        first_run.close()
        second_run.close()
    assert_contiguous([e.sequence for e in seen])
    assert all(e.handler is not None and e.handler.ok for e in seen)


@pytest.mark.root
async def test_client_resumes_from_saved_position(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    """A client that stops and resumes from its saved position sees each event once."""
    with BrokerProcess(system_bus, tmp_path / "state", netns=netns):
        first = await add_ifbs(netns, "a", 10)
        async with subscribe(after=0) as events:
            before = await take_until(events, all_of(ifb_added(first), 4))
            saved = events.position
        assert saved is not None
        assert saved.sequence == before[-1].sequence
        assert saved.journal_id
        second = await add_ifbs(netns, "b", 10)
        async with subscribe(after=saved) as events:
            after = await take_until(events, all_of(ifb_added(first | second), 16))
    delivered = [e.sequence for e in before + after]
    assert_contiguous(delivered)
    assert len({e.properties.get("INTERFACE") for e in before + after} & (first | second)) == 20


@pytest.mark.root
async def test_fresh_state_dir_is_a_reset(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    """A broker whose sequence went backwards is reported, never read as a continuation."""
    with BrokerProcess(system_bus, tmp_path / "old", netns=netns):
        links = await add_ifbs(netns, "o", 5)
        events = subscribe(after=0)
        await take_until(events, all_of(ifb_added(links), 5))
    with (
        BrokerProcess(system_bus, tmp_path / "new", netns=netns),
        pytest.raises(BrokerReset, match="broker reset"),
    ):
        # The old broker's last events may still come first: they are real.
        await take_until(events, lambda seen: False)
    await events.aclose()


@pytest.mark.root
async def test_pruned_journal_is_a_gap(system_bus: SystemBus, netns: NetNS, tmp_path: Path) -> None:
    """Asking for events retention removed raises JournalGap (after housekeeping prunes)."""
    cfg = tmp_path / "broker.toml"
    cfg.write_text("retention_events = 2\n")
    with BrokerProcess(
        system_bus, tmp_path / "state", ["--no-program", "-c", str(cfg)], netns=netns
    ):
        await add_ifbs(netns, "g", 5)
        await asyncio.wait_for(_oldest_above(system_bus, 1), TIMEOUT)
        with pytest.raises(JournalGap) as caught:
            async with subscribe(after=0) as events:
                await asyncio.wait_for(anext(events), TIMEOUT)
    assert caught.value.wanted == 1
    assert caught.value.oldest > 1


async def _oldest_above(bus: SystemBus, floor: int) -> None:
    """Poll the property: housekeeping prunes on its own clock and sends no signal for it."""
    while await asyncio.to_thread(_property, bus, "OldestSequence") <= floor:  # noqa: ASYNC110
        await asyncio.sleep(0.5)


def _property(bus: SystemBus, name: str) -> int:
    out = subprocess.run(
        [
            *("busctl", f"--address={bus.address}", "get-property"),
            *(names.BUS_NAME, names.OBJECT_PATH, names.INTERFACE, name),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(out[1])


def read_json_lines(
    proc: subprocess.Popen[bytes], done: Callable[[list[dict[str, object]]], bool]
) -> list[dict[str, object]]:
    """Lines of JSON from ``proc`` until ``done``; time out only to stop a hang.

    The pipe is unbuffered (``bufsize=0``): a buffered reader would hide lines from select().
    """
    assert proc.stdout is not None
    records: list[dict[str, object]] = []
    deadline = time.monotonic() + TIMEOUT
    while not done(records):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(left, 0))
        if not ready:
            raise TimeoutError(f"{len(records)} records, last {records[-3:]}")
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(
                f"client exited {proc.wait()}: {proc.stderr and proc.stderr.read()!r}"
            )
        records.append(json.loads(line))
    return records


def as_nobody(argv: list[str], bus: SystemBus) -> subprocess.Popen[bytes]:
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    env = {"PATH": os.environ["PATH"], **bus.env()}
    return subprocess.Popen(
        prefix + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, env=env, cwd="/"
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(TIMEOUT)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def interfaces_added(records: list[dict[str, object]]) -> set[str]:
    found = set()
    for record in records:
        props = record.get("properties")
        if record.get("action") == "add" and record.get("subsystem") == "net":
            assert isinstance(props, dict)
            found.add(str(props.get("INTERFACE")))
    return found


@pytest.mark.root
def test_nobody_receives_and_replays(system_bus: SystemBus, netns: NetNS, tmp_path: Path) -> None:
    """examples/print_events.py as `nobody`, on a bus with the project's policy."""
    script = [sys.executable, str(EXAMPLES / "print_events.py")]
    with BrokerProcess(system_bus, tmp_path / "state", netns=netns):
        live = as_nobody([*script, "--since", "0"], system_bus)
        try:
            links = {f"n{i}" for i in range(5)}
            netns.add_ifbs(sorted(links))
            got = read_json_lines(live, lambda r: links <= interfaces_added(r))
        finally:
            stop(live)
        replay = as_nobody([*script, "--since", "0"], system_bus)
        try:
            again = read_json_lines(replay, lambda r: len(r) >= len(got))
        finally:
            stop(replay)
    assert [r["sequence"] for r in again] == [r["sequence"] for r in got]
    assert_contiguous([int(str(r["sequence"])) for r in got])


@pytest.mark.root
def test_example_scripts_copied_out(system_bus: SystemBus, netns: NetNS, tmp_path: Path) -> None:
    """A copy of examples/ (cp -L) works: wait_for_device matches or times out; resume by state."""
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-rL", str(EXAMPLES), str(copy)], check=True)
    env = {**os.environ, **system_bus.env()}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, env=env, timeout=TIMEOUT
        )

    with BrokerProcess(system_bus, tmp_path / "state", netns=netns):
        netns.add_ifbs(["w0"])
        found = run(
            str(copy / "wait_for_device.py"), "--subsystem", "net",
            "--property", "INTERFACE=w0", "--timeout", str(TIMEOUT),
        )  # fmt: skip
        assert (found.returncode, found.stdout.strip()) == (0, "/devices/virtual/net/w0")
        missing = run(
            str(copy / "wait_for_device.py"), "--property", "INTERFACE=nothere",
            "--timeout", "0.5",
        )  # fmt: skip
        assert missing.returncode == 1
        assert "not within 0.5 s" in missing.stderr
        gone = run(
            str(copy / "wait_for_device.py"), "--devpath", "/devices/virtual/net/nothere",
            "--removed", "--timeout", str(TIMEOUT),
        )  # fmt: skip
        assert (gone.returncode, gone.stdout.strip()) == (0, "/devices/virtual/net/nothere")
        state = tmp_path / "position"
        first = print_events_until(copy, state, env)
        netns.add_ifbs(["w1"])
        second = print_events_until(copy, state, env, until="w1")
    delivered = [int(str(r["sequence"])) for r in first + second]
    assert_contiguous(delivered)


def print_events_until(
    copy: Path, state: Path, env: dict[str, str], until: str = "w0"
) -> list[dict[str, object]]:
    """print_events.py --since 0 --state FILE until interface ``until`` is added, then stop."""
    argv = [sys.executable, str(copy / "print_events.py"), "--since", "0", "--state", str(state)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, env=env
    )
    try:
        got = read_json_lines(proc, lambda r: until in interfaces_added(r))
        proc.send_signal(signal.SIGINT)  # asyncio turns it into cancellation at an await:
        # Read on while it stops: with the pipe full (host events leak in) its print blocks,
        # and it would never reach that await.
        rest, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0  # the line printed and its position saved go together
        got += [json.loads(line) for line in rest.splitlines()]
    finally:
        stop(proc)
    journal_id, _, sequence = state.read_text().strip().rpartition(":")
    assert journal_id
    assert int(sequence) == got[-1]["sequence"]
    return got
