"""End to end: real kernel uevents in a netns -> the broker -> the legacy program -> D-Bus signals.

A reference socket in the same namespace sees what the kernel sent; a subscriber connection sees
what the broker published. Host events leak into every namespace, so assertions about single
events are about our own links; the sequence is checked over everything published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import socket
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import dbus_fast
import pytest
from dbus_fast import Message
from dbus_fast.aio import MessageBus
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.collector import SignalCollector
from support.coreclient import (
    get_property,
    mine,
    name_owner,
    read_program_log,
    statistics,
    wait_until,
    write_program,
)
from support.netns import NetNS, netns_uevent_socket, parse_uevent

TARGET_EVENTS = 10_000


class Published:
    """Every Event signal, in arrival order, checked against the program's log as it arrives."""

    def __init__(self, program_log: Path | None, wanted: set[str]) -> None:
        self.rows: list[tuple[int, dict[str, str], dict[str, Any]]] = []
        self.ours: list[int] = []  # SEQNUM of our own devices' events, in arrival order
        self.before_end: list[int] = []  # SEQNUMs whose signal came before the program's "end"
        self.is_mine = mine(wanted)
        self._log = program_log.open() if program_log is not None else None
        self._partial = ""
        self._ended: set[int] = set()
        self._target = 0
        self._done = asyncio.Event()

    def on_message(self, message: Message) -> None:
        if message.member != "Event":
            return
        sequence, _, _, _, props, handler = message.body
        self.rows.append((sequence, props, {k: v.value for k, v in handler.items()}))
        if self._log is not None and handler:
            self._read_log()
            if int(props["SEQNUM"]) not in self._ended:
                self.before_end.append(int(props["SEQNUM"]))
        if self.is_mine(props):
            self.ours.append(int(props["SEQNUM"]))
            if len(self.ours) >= self._target:
                self._done.set()

    def _read_log(self) -> None:
        assert self._log is not None
        *lines, self._partial = (self._partial + self._log.read()).split("\n")
        for line in lines:
            word, _, number = line.partition(" ")
            if word == "end":
                self._ended.add(int(number))

    async def wait_for_ours(self, count: int, within: float) -> None:
        self._target = count
        if len(self.ours) < count:
            self._done.clear()
            try:
                async with asyncio.timeout(within):
                    await self._done.wait()
            except TimeoutError:
                raise TimeoutError(f"{len(self.ours)} of {count} of our events published") from None

    def close(self) -> None:
        if self._log is not None:
            self._log.close()


def uevents_per_link(ns: NetNS, ref: socket.socket) -> int:
    """How many uevents one ifb link makes when added and deleted (the device and its queues)."""
    ns.add_ifbs(["calib0"])
    ns.del_ifbs(["calib0"])
    count = 0
    ref.settimeout(30)
    while True:
        event = parse_uevent(ref.recv(1 << 16)) or {}
        if mine({"calib0"})(event):
            count += 1
            if event.get("ACTION") == "remove" and event.get("SUBSYSTEM") == "net":
                return count


def kernel_events(ref: socket.socket, wanted: set[str], count: int) -> list[dict[str, str]]:
    """Our devices' events as the kernel sent them (reference socket), in kernel order."""
    found: list[dict[str, str]] = []
    ref.settimeout(120)
    is_mine = mine(wanted)
    while len(found) < count:
        event = parse_uevent(ref.recv(1 << 16))
        if event is not None and is_mine(event):
            found.append(event)
    return found


def start_stopped_subscriber(bus: SystemBus) -> subprocess.Popen[str]:
    """A client that subscribes to the broker's signals and then never reads (SIGSTOP)."""
    code = (
        "import asyncio, os, signal\n"
        "from dbus_fast.aio import MessageBus\n"
        "from dbus_fast import Message\n"
        "async def main():\n"
        "    bus = await MessageBus(bus_address=os.environ['ADDR']).connect()\n"
        "    await bus.call(Message(destination='org.freedesktop.DBus',"
        " path='/org/freedesktop/DBus', interface='org.freedesktop.DBus', member='AddMatch',"
        " signature='s', body=[\"type='signal',interface='org.pnp.Broker1'\"]))\n"
        "    print('subscribed', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGSTOP)\n"
        "    await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={"ADDR": bus.address},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "subscribed"
    return proc


@pytest.mark.root
async def test_ten_thousand_uevents(system_bus: SystemBus, netns: NetNS, tmp_path: Path) -> None:
    program_log = tmp_path / "program.log"
    program = write_program(tmp_path, program_log)
    with netns_uevent_socket(netns.name, rcvbuf=128 << 20) as ref:
        per_link = uevents_per_link(netns, ref)
        links = math.ceil(TARGET_EVENTS / per_link)
        names = {f"e{i}" for i in range(links)}
        broker = BrokerProcess(system_bus, tmp_path / "state", ["-p", str(program)], netns=netns)
        published = Published(program_log, names)
        with broker:
            async with SignalCollector(system_bus.address) as collector:
                collector.bus.add_message_handler(published.on_message)
                owner = await name_owner(collector.bus)
                stopped = start_stopped_subscriber(system_bus)
                try:
                    netns.burst(links, prefix="e")
                    netns.del_group(netns.last_group)
                    sent = kernel_events(ref, names, links * per_link)
                    await published.wait_for_ours(len(sent), within=180)
                    assert await name_owner(collector.bus) == owner, "the broker lost its bus"
                    # LastSequence moves when the bus daemon acknowledged (a Ping round trip).
                    last = published.rows[-1][0]
                    await wait_until(
                        lambda: _reached(collector.bus, last), what=f"LastSequence {last}"
                    )
                    stats = await statistics(collector.bus)
                finally:
                    stopped.send_signal(signal.SIGKILL)
                    stopped.wait()
                    assert stopped.stdout is not None
                    stopped.stdout.close()
            assert broker.stop() == 0, broker.log()
        published.close()
    _check_all(published, sent, read_program_log(program_log), stats)


async def _reached(bus: MessageBus, sequence: int) -> bool:
    return int(await get_property(bus, "LastSequence")) >= sequence


def _check_all(
    published: Published,
    sent: list[dict[str, str]],
    program: list[tuple[str, int]],
    stats: dict[str, int],
) -> None:
    assert len(sent) >= TARGET_EVENTS
    kernel_order = [int(e["SEQNUM"]) for e in sent]
    # Each of ours published exactly once, in kernel order.
    assert published.ours == kernel_order
    # Sequence 1..N with no gap and no repeat over everything published.
    sequences = [sequence for sequence, _, _ in published.rows]
    assert sequences == list(range(1, len(sequences) + 1))
    assert stats["overflows"] == 0
    # The program: once per event, never two at once, done before the signal, status in it.
    starts = Counter(n for word, n in program if word == "start")
    assert all(starts[n] == 1 for n in kernel_order)
    pairs = list(zip(program[::2], program[1::2], strict=True))
    assert all(a == ("start", n) and b == ("end", n) for (a, b), n in _with_n(pairs))
    assert published.before_end == []
    for _, props, handler in published.rows:
        if published.is_mine(props):
            assert handler["status"] == int(props["SEQNUM"]) % 7
            assert (handler["signal"], handler["timed_out"]) == (0, False)


def _with_n(
    pairs: list[tuple[tuple[str, int], tuple[str, int]]],
) -> list[tuple[tuple[tuple[str, int], tuple[str, int]], int]]:
    return [(pair, pair[0][1]) for pair in pairs]


@pytest.mark.root
async def test_slow_program_queues_without_loss(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    """A program that sleeps 20 ms: the journal queues the burst, the kernel drops nothing."""
    program = write_program(tmp_path, tmp_path / "program.log", work="sleep 0.02")
    links = 40
    names = {f"s{i}" for i in range(links)}
    published = Published(None, names)
    with netns_uevent_socket(netns.name) as ref:
        per_link = uevents_per_link(netns, ref)
        broker = BrokerProcess(system_bus, tmp_path / "state", ["-p", str(program)], netns=netns)
        async with SignalCollector(system_bus.address) as collector:
            collector.bus.add_message_handler(published.on_message)
            broker.start()
            netns.burst(links, prefix="s")
            netns.del_group(netns.last_group)
            sent = kernel_events(ref, names, links * per_link)
            queued = [0]

            async def queue_seen() -> bool:
                queued[0] = max(queued[0], (await statistics(collector.bus))["queued"])
                return queued[0] > 0 or len(published.ours) == len(sent)

            await wait_until(queue_seen, what="a queue")
            await published.wait_for_ours(len(sent), within=120)
            stats = await statistics(collector.bus)
        assert broker.stop() == 0, broker.log()
        broker.close()
    assert queued[0] > 0, "the queue never built up"
    assert stats["overflows"] == 0
    assert published.ours == [int(e["SEQNUM"]) for e in sent]


@pytest.mark.root
async def test_busctl_monitor_shows_event_signals(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    with BrokerProcess(system_bus, tmp_path / "state", ["--no-program"], netns=netns):
        monitor = await asyncio.create_subprocess_exec(
            "busctl", f"--address={system_bus.address}", "monitor", "org.pnp.Broker",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert monitor.stdout is not None
        seen: list[str] = []
        try:
            async with asyncio.timeout(30):
                seen.append((await monitor.stdout.readline()).decode())
                assert "Monitoring" in seen[0]
                netns.add_ifbs(["m0"])
                while '"m0"' not in seen[-1]:
                    seen.append((await monitor.stdout.readline()).decode())
        finally:
            monitor.terminate()
            await monitor.wait()
    text = "".join(seen)
    assert "Interface=org.pnp.Broker1" in text
    assert "Member=Event" in text


_NOBODY_CLIENT = """
import asyncio, json, os, sys
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

def broker(member, signature="", body=(), interface="org.pnp.Broker1"):
    return Message(destination="org.pnp.Broker", path="/org/pnp/Broker", interface=interface,
                   member=member, signature=signature, body=list(body))

async def main():
    bus = await MessageBus(bus_address=os.environ["DBUS_SYSTEM_BUS_ADDRESS"]).connect()
    got = asyncio.get_running_loop().create_future()
    def on_message(m):
        if m.member == "Event" and m.body[4].get("INTERFACE") == sys.argv[1] and not got.done():
            got.set_result(m.body[0])
    bus.add_message_handler(on_message)
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="AddMatch", signature="s",
        body=["type='signal',sender='org.pnp.Broker',interface='org.pnp.Broker1'"]))
    print("subscribed", flush=True)
    sequence = await asyncio.wait_for(got, 60)
    props = "org.freedesktop.DBus.Properties"
    rows = await bus.call(broker("GetEvents", "tu", (sequence - 1, 0)))
    last = await bus.call(broker("Get", "ss", ("org.pnp.Broker1", "LastSequence"), props))
    stats = await bus.call(broker("Get", "ss", ("org.pnp.Broker1", "Statistics"), props))
    for reply in (rows, last, stats):
        if reply.message_type == MessageType.ERROR:
            print(json.dumps({"error": [reply.error_name, reply.body]}), flush=True)
            return
    print(json.dumps({"uid": os.getuid(), "sequence": sequence,
                      "rows": [r[0] for r in rows.body[0]], "last": last.body[0].value,
                      "stats": sorted(stats.body[0].value)}), flush=True)

asyncio.run(main())
"""


@pytest.mark.root
async def test_unprivileged_client(system_bus: SystemBus, netns: NetNS, tmp_path: Path) -> None:
    """As `nobody`: receive the signal, call GetEvents, read properties (the bus policy)."""
    site = Path(dbus_fast.__file__).parent.parent
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _NOBODY_CLIENT, "u0",
        stdout=asyncio.subprocess.PIPE, user="nobody", group="nogroup", extra_groups=[], cwd="/",
        env={"DBUS_SYSTEM_BUS_ADDRESS": system_bus.address, "PYTHONPATH": str(site)},
    )  # fmt: skip
    assert client.stdout is not None
    with BrokerProcess(system_bus, tmp_path / "state", ["--no-program"], netns=netns):
        try:
            async with asyncio.timeout(60):
                assert (await client.stdout.readline()).strip() == b"subscribed"
                netns.add_ifbs(["u0"])
                answer = json.loads(await client.stdout.readline())
        finally:
            if client.returncode is None:
                client.kill()
            await client.wait()
    assert answer["uid"] != 0
    assert answer["sequence"] in answer["rows"]
    assert answer["last"] >= answer["sequence"]
    assert "published" in answer["stats"]


@pytest.mark.root
async def test_overflow_is_announced_and_the_broker_goes_on(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    """A tiny receive buffer and a burst: ENOBUFS is counted, EventsLost sent, nothing stops."""
    args = ["--no-program", "--receive-buffer", "1K"]
    after = {f"after{i}" for i in range(20)}
    published = Published(None, after)
    with BrokerProcess(system_bus, tmp_path / "state", args, netns=netns) as broker:
        async with SignalCollector(system_bus.address) as collector:
            collector.bus.add_message_handler(published.on_message)
            netns.burst(500, prefix="o")
            # A buffer this small may drop a later link's events too: add links until one of
            # them is published (each try waits a while; the test fails only if none gets by).
            for name in sorted(after):
                netns.add_ifbs([name])
                with contextlib.suppress(TimeoutError):
                    await published.wait_for_ours(1, within=3)
                    break
            assert published.ours, "no event got through after the overflow"
            stats, lost = await every_overflow_announced(collector)
        assert broker.stop() == 0, broker.log()
    assert stats["overflows"] > 0
    assert len(lost) == stats["overflows"]
    afters = [message.body[0] for message in lost]
    assert afters == sorted(afters)
    # Each loss names the coldplug that re-announces the devices (tests/test_sources_broker.py
    # checks that the re-announcement really comes).
    assert all(uuid.UUID(resync) for _, resync in (message.body for message in lost))
    assert afters[-1] <= published.rows[-1][0]
    assert "KERNEL DROPPED UEVENTS" in broker.log()


async def every_overflow_announced(
    collector: SignalCollector,
) -> tuple[dict[str, int], list[Message]]:
    """Statistics and the EventsLost signals once each overflow counted has been announced.

    An overflow is counted when the reader meets it and announced when its loss is published,
    so a later one may be counted and not yet announced: the signals are taken before the
    counters (never more signals than overflows), and again after each new signal.
    """
    async with asyncio.timeout(120):  # a hang, not a threshold
        while True:
            lost = collector.members("EventsLost")
            stats = await statistics(collector.bus)
            assert len(lost) <= stats["overflows"], (len(lost), stats)
            if len(lost) == stats["overflows"]:
                return stats, lost
            await collector.wait_for(lambda _: len(collector.members("EventsLost")) > len(lost))  # noqa: B023
