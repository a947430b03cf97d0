"""Helper mode order: ``pnpbroker-helper`` datagrams back in SEQNUM order before the journal.

The unit tests drive the window (pnpbroker.sources.reorder) with the time passed in. The root
test plays the kernel with real concurrent ``pnpbroker-helper`` processes started out of order
(the kernel starts one per event without waiting: CONFIG_UEVENT_HELPER is off here, so the
test starts them as the kernel would, argv[1] and the event's environment), against the real
broker on a private bus; the order is the one the Event signals carry.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.netns import NetNS
from support.signals import Signals

from pnpbroker.sources import Datagram
from pnpbroker.sources.reorder import Reorder

HELPER = str(Path(sys.executable).with_name("pnpbroker-helper"))
WINDOW = 5.0


def item(seqnum: int) -> Datagram:
    return Datagram(f"add@/x\0SEQNUM={seqnum}\0".encode())


def seqnums(items: list[Datagram]) -> list[int]:
    return [int(i.data.split(b"SEQNUM=")[1].rstrip(b"\0")) for i in items]


def test_the_next_seqnum_goes_at_once_and_takes_what_waited_behind_it() -> None:
    window = Reorder(1.0, last=10)
    assert window.push(13, item(13), 0.0) == []
    assert window.push(12, item(12), 0.1) == []
    assert seqnums(window.push(11, item(11), 0.2)) == [11, 12, 13]
    assert seqnums(window.push(14, item(14), 0.3)) == [14]
    assert window.deadline() is None


def test_a_gap_waits_the_window_then_everything_below_goes_in_order() -> None:
    window = Reorder(1.0, last=10)
    window.push(15, item(15), 0.0)
    window.push(13, item(13), 0.5)  # arrived later, lower: must not be overtaken
    assert window.deadline() == 1.0
    assert window.expired(0.9) == []
    assert seqnums(window.expired(1.0)) == [13, 15]
    assert window.last == 15


def test_without_a_known_start_the_first_waits_the_window() -> None:
    window = Reorder(1.0)
    assert window.push(7, item(7), 0.0) == []
    assert seqnums(window.expired(1.0)) == [7]
    assert seqnums(window.push(8, item(8), 1.1)) == [8]


def test_past_the_count_the_lowest_goes_first() -> None:
    window = Reorder(1.0, count=2, last=0)
    window.push(5, item(5), 0.0)
    window.push(3, item(3), 0.0)
    assert seqnums(window.push(4, item(4), 0.0)) == [3, 4, 5]  # 3 went, then 4 and 5 followed
    window.push(20, item(20), 0.0)
    window.push(18, item(18), 0.0)
    assert seqnums(window.push(22, item(22), 0.0)) == [18]  # 20 and 22 wait for 19 and 21
    assert len(window) == 2


def test_a_late_one_goes_at_once_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    window = Reorder(1.0, last=10)
    window.push(12, item(12), 0.0)
    window.expired(1.0)
    assert seqnums(window.push(11, item(11), 1.5)) == [11]
    assert window.late == 1
    assert "SEQNUM 11 came after SEQNUM 12 was journalled" in caplog.text
    assert window.push(12, item(12), 1.6) == [item(12)]  # a repeat of one handed on: late too


def test_flush_hands_over_everything_in_order() -> None:
    window = Reorder(1.0, last=0)
    for n in (9, 4, 6):
        window.push(n, item(n), 0.0)
    assert seqnums(window.flush()) == [4, 6, 9]
    assert window.flush() == []
    assert window.deadline() is None


@pytest.fixture
def signals(system_bus: SystemBus) -> Iterator[Signals]:
    watcher = Signals(system_bus.address)
    yield watcher
    watcher.close()


def _event(seqnum: int) -> dict[str, str]:
    devpath = f"/devices/virtual/pnpt/order{seqnum}"
    return {"ACTION": "add", "DEVPATH": devpath, "SUBSYSTEM": "pnpt", "SEQNUM": str(seqnum)}


def _start_helper(seqnum: int, socket_path: Path) -> subprocess.Popen[bytes]:
    """pnpbroker-helper as the kernel starts it: argv[1], the event's keys, HOME and PATH."""
    env = {**_event(seqnum), "HOME": "/", "PATH": "/sbin:/bin:/usr/sbin:/usr/bin"}
    env["PNPBROKER_HELPER_SOCKET"] = str(socket_path)
    return subprocess.Popen([HELPER, "pnpt"], env=env)


def _run_helpers(seqnums: list[int], socket_path: Path) -> None:
    """Start one helper per SEQNUM in the order given, all at once, then wait for them all."""
    helpers = [_start_helper(seqnum, socket_path) for seqnum in seqnums]
    assert [helper.wait(60) for helper in helpers] == [0] * len(helpers)


@pytest.mark.root
def test_concurrent_helpers_started_out_of_order_are_journalled_in_seqnum_order(
    system_bus: SystemBus, signals: Signals, netns: NetNS, tmp_path: Path
) -> None:
    """S+3 arrives first (its helper finished before the others started), then S+8 .. S+1 race;
    all must come out S, S+1, ... S+8. Then the window's edge: S+20 waits out the window and is
    journalled; S+19, sent after, is journalled after it, with a warning."""
    first = 10**15 + secrets.randbelow(10**9) * 100  # no kernel gets here: no collision
    config = tmp_path / "pnpbroker.toml"
    config.write_text(f"helper_window = {WINDOW}\n")
    sock = tmp_path / "helper.sock"
    args = ["-c", str(config), "--no-program", "--helper-socket", str(sock)]
    broker = BrokerProcess(system_bus, tmp_path / "state", args, netns=netns)

    def published(count: int) -> list[int]:
        found = signals.wait(lambda s: s[0] == "Event" and s[1][2] == "pnpt", count)
        return [int(body[4]["SEQNUM"]) - first for _, body in found]

    try:
        broker.start()
        _run_helpers([first], sock)
        assert published(1) == [0]  # the first, once its window was over: now S is known
        _run_helpers([first + 3], sock)
        _run_helpers([first + n for n in (8, 7, 6, 5, 4, 2, 1)], sock)
        assert published(9) == list(range(9))
        _run_helpers([first + 20], sock)
        assert published(10)[-1] == 20
        _run_helpers([first + 19], sock)
        assert published(11)[-2:] == [20, 19]
        assert broker.stop() == 0
    finally:
        broker.close()
    sequences = [b[0] for m, b in signals.seen if m == "Event" and b[2] == "pnpt"]
    assert sequences == sorted(sequences)
    warning = f"helper datagram SEQNUM {first + 19} came after SEQNUM {first + 20} was journalled"
    assert warning in broker.log()
