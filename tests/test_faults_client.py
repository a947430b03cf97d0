"""A subscriber that stalls during a burst skips nothing, silently or otherwise.

The bus daemon here has a small queue per connection (``max_outgoing_bytes``): when a client
stops reading, the daemon drops the signals meant for it, and with bus-side filters the client
cannot see the gap in the sequence. The client library notices that ``LastSequence`` passed what
it has, fetches the matching events with the server-side filter of ``GetEvents2`` and delivers
them, in order, once each. A client that stops consuming but not reading keeps a bounded inbox.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import REPO_ROOT
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.netns import NetNS

from pnpbroker.client import INBOX_MAX

pytestmark = pytest.mark.root

SCRIPT = REPO_ROOT / "tests" / "clients" / "stalled_subscriber.py"
QUEUE_BYTES = 64 << 10
#: Links in the burst (one matching signal each): more than the inbox may hold.
BURST = 1200
TIMEOUT = 120.0


@pytest.fixture
def small_queue_bus() -> Iterator[SystemBus]:
    with SystemBus(limits={"max_outgoing_bytes": QUEUE_BYTES}) as bus:
        yield bus


class Client:
    """The stalled subscriber as ``nobody``, its JSON lines read as they come."""

    def __init__(self, bus: SystemBus, mode: str, stall: float) -> None:
        prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO_ROOT), **bus.env()}
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, str(SCRIPT), mode, str(stall)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd="/",
            bufsize=0,
        )
        self.lines: list[dict[str, Any]] = []

    def read_until(self, done: Any, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while not done(self.lines):
            left = deadline - time.monotonic()
            assert left > 0, f"{len(self.lines)} lines, last {self.lines[-3:]}"
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                line = self.proc.stdout.readline()
                assert line, f"client ended: {self.proc.stderr and self.proc.stderr.read()!r}"
                self.lines.append(json.loads(line))
        return self.lines

    def interfaces(self) -> list[str]:
        return [str(line["interface"]) for line in self.lines if "interface" in line]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        assert self.proc.stdout is not None
        self.lines += [json.loads(line) for line in self.proc.stdout.read().splitlines()]
        self.proc.stdout.close()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def burst_through_a_stall(netns: NetNS, client: Client, count: int = BURST) -> set[str]:
    client.read_until(lambda lines: any("ready" in line for line in lines))
    netns.add_ifbs(["probe"])
    client.read_until(lambda lines: any("stalling" in line for line in lines))
    names = {f"s{i}" for i in range(count)}
    netns.add_ifbs(sorted(names))
    client.read_until(lambda lines: names <= set(client.interfaces()))
    return names


def assert_each_once_in_order(client: Client, names: set[str]) -> None:
    got = [line for line in client.lines if "interface" in line]
    assert sorted(client.interfaces()) == sorted({*names, "probe"}), "a repeat or a stranger"
    numbers = [line["sequence"] for line in got]
    assert numbers == sorted(set(numbers))


def test_a_stalled_loop_gets_what_the_daemon_dropped(
    small_queue_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    with BrokerProcess(small_queue_bus, tmp_path / "state", netns=netns):
        client = Client(small_queue_bus, "block", 8)
        try:
            names = burst_through_a_stall(netns, client, 400)
        finally:
            client.stop()
    assert "full message queue" in small_queue_bus.log(), "the daemon dropped nothing"
    assert_each_once_in_order(client, names)


def test_a_client_that_stops_consuming_keeps_a_bounded_inbox(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    with BrokerProcess(system_bus, tmp_path / "state", netns=netns):
        client = Client(system_bus, "await", 8)
        try:
            names = burst_through_a_stall(netns, client)
        finally:
            client.stop()
    assert_each_once_in_order(client, names)
    [peak] = [line["peak"] for line in client.lines if "peak" in line]
    assert 0 < peak <= INBOX_MAX < BURST
