"""A loss travels in the ordered stream: journalled at its place, with its own sequence.

A real overflow: the broker's inherited uevent socket has the smallest receive buffer and the
broker is stopped while a burst queues in it. The loss is then a journal entry of its own,
published in order (EventsLost between the Event before it and the Event after it; its sequence
is ``after_sequence + 1``), shown by GetEvents2, ``monitor --since`` and ``--output``, and
still published when the bus was down at the moment it happened.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.broker import ActivatedBroker
from support.bus import SystemBus
from support.netns import NetNS, netns_uevent_socket
from support.signals import Signal, Signals, net_event
from test_sources_broker import SO_RCVBUFFORCE, links

from pnpbroker.core.output import LOST_HEADER

pytestmark = pytest.mark.root

TIMEOUT = 60.0


def overflow(broker: ActivatedBroker, sock: socket.socket, netns: NetNS) -> set[str]:
    """Stop the broker, queue a burst into its tiny buffer, make the buffer big, resume it."""
    broker.send_signal(signal.SIGSTOP)
    names = links(netns, 40)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    broker.send_signal(signal.SIGCONT)
    return names


def sequence_of(sig: Signal) -> int:
    member, body = sig
    return int(body[0]) + 1 if member == "EventsLost" else int(body[0])


def broker_signals(seen: list[Signal]) -> list[Signal]:
    """The Event and EventsLost signals (the bus daemon sends the watcher its own, too)."""
    return [sig for sig in seen if sig[0] in ("Event", "EventsLost")]


def assert_in_order(seen: list[Signal], first: int = 1) -> list[int]:
    """Distinct sequences, in arrival order, are first, first + 1, ... (repeats are allowed
    after a reconnection, with the same content); returns them."""
    order: list[int] = []
    bodies: dict[int, Signal] = {}
    for sig in broker_signals(seen):
        number = sequence_of(sig)
        if number in bodies:
            assert bodies[number] == sig, f"sequence {number} sent twice, differently"
            continue
        bodies[number] = sig
        order.append(number)
    assert order == list(range(first, first + len(order))), order
    return order


def get_events2(bus: SystemBus, after: int = 0) -> tuple[list[Any], list[Any], int]:
    out = bus.busctl(
        "--json=short", "call", "org.pnp.Broker", "/org/pnp/Broker", "org.pnp.Broker1",
        "GetEvents2", "tua{sv}", str(after), "0", "0",
    )  # fmt: skip
    events, lost, through = json.loads(" ".join(out))["data"]
    return events, lost, through


def read_json_lines(proc: subprocess.Popen[str], until: int) -> list[dict[str, Any]]:
    """monitor --json lines until one has sequence >= until."""
    assert proc.stdout is not None
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + TIMEOUT
    while not found or found[-1].get("sequence", 0) < until:
        assert time.monotonic() < deadline, found[-3:]
        line = proc.stdout.readline()
        assert line, f"monitor ended: {proc.stderr and proc.stderr.read()}"
        found.append(json.loads(line))
    return found


def stream_records(data: bytes) -> list[bytes]:
    return [record for record in data.split(b"\0\0") if record]


def test_an_overflow_takes_its_place_in_the_sequence(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    sock = netns_uevent_socket(netns.name, rcvbuf=1)
    output = os.open(tmp_path / "output.bin", os.O_WRONLY | os.O_CREAT, 0o600)
    output = os.dup2(output, 40)  # clear of fd 3, where the broker's socket goes
    args = ["--no-program", "--output", f"fd:{output}"]
    broker = ActivatedBroker(system_bus, tmp_path / "state", args, fd=sock.fileno(), netns=netns)
    watcher = Signals(system_bus.address)
    try:
        broker.start(pass_fds=(sock.fileno(), output))
        names = overflow(broker, sock, netns)
        [(_, lost)] = watcher.wait(lambda s: s[0] == "EventsLost", 1)
        loss_at, uuid = int(lost[0]) + 1, lost[1]
        watcher.wait(net_event("add", names, uuid), len(names))  # the resync came after it
        order = assert_in_order(watcher.seen)
        assert loss_at in order
        events, lost_rows, through = get_events2(system_bus)
        assert [loss_at, uuid] in lost_rows
        journal = sorted([e[0] for e in events] + [row[0] for row in lost_rows])
        assert journal == list(range(1, through + 1))
        monitor = subprocess.Popen(
            [sys.executable, "-m", "pnpbroker", "monitor", "--since", "0", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **system_bus.env()},
        )
        try:
            printed = read_json_lines(monitor, loss_at + 1)
        finally:
            assert monitor.stdout is not None
            assert monitor.stderr is not None
            monitor.stdout.close()  # it may be writing the rest: a broken pipe ends it
            monitor.terminate()
            monitor.wait(TIMEOUT)
            monitor.stderr.close()
        assert [line["sequence"] for line in printed] == list(range(1, len(printed) + 1))
        assert printed[loss_at - 1]["events_lost"]["uuid"] == uuid
        assert broker.stop() == 0, broker.log()
    finally:
        broker.close()
        watcher.close()
        sock.close()
        os.close(output)
    # --output holds every published entry in order: each event's datagram, each loss's record.
    records = stream_records((tmp_path / "output.bin").read_bytes())
    seqnums = {e[0]: e[4]["SEQNUM"] for e in events}
    for sequence, record in enumerate(records[:through], 1):
        if sequence in seqnums:
            assert f"SEQNUM={seqnums[sequence]}".encode() in record.split(b"\0"), sequence
        else:
            assert record.startswith(LOST_HEADER), sequence
    assert f"RESYNC_UUID={uuid}".encode() in records[loss_at - 1].split(b"\0")


def test_a_loss_while_the_bus_is_down_is_published_when_it_returns(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    sock = netns_uevent_socket(netns.name, rcvbuf=1)
    broker = ActivatedBroker(
        system_bus, tmp_path / "state", ["--no-program"], fd=sock.fileno(), netns=netns
    )
    try:
        broker.start(pass_fds=(sock.fileno(),))
        broker.send_signal(signal.SIGSTOP)
        system_bus.crash()
        broker.send_signal(signal.SIGCONT)
        names = overflow(broker, sock, netns)
        deadline = time.monotonic() + TIMEOUT
        while "KERNEL DROPPED UEVENTS" not in broker.log():
            assert time.monotonic() < deadline, broker.log()
            time.sleep(0.1)
        broker.send_signal(signal.SIGSTOP)  # so that the watcher listens before it reconnects
        system_bus.start()
        watcher = Signals(system_bus.address)
        try:
            broker.send_signal(signal.SIGCONT)
            [(_, lost)] = watcher.wait(lambda s: s[0] == "EventsLost", 1)
            watcher.wait(net_event("add", names, lost[1]), len(names))
            assert_in_order(watcher.seen, first=sequence_of(broker_signals(watcher.seen)[0]))
        finally:
            watcher.close()
        assert broker.stop() == 0, broker.log()
    finally:
        broker.close()
        sock.close()
