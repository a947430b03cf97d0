"""dbus-fast's internals that pnpbroker.bus.link relies on, and the link over a real bus daemon.

The link owns its connection's writer (pnpbroker.bus.writer) and marshals its signals itself
(pnpbroker.bus.frames). Here: the internals are where it expects them; the frames are the
bytes dbus-fast would make; and over a real dbus-daemon that stops reading (SIGSTOP: its side
of the socket fills up), the link waits instead of failing and loses nothing, and a daemon
that dies fails whoever waits instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import signal
import tomllib
from collections.abc import Iterator

import pytest
from dbus_fast import DBusError, Message
from dbus_fast.service import ServiceInterface
from packaging.requirements import Requirement
from support import REPO_ROOT
from support.bus import SystemBus
from support.fakes import uevent
from support.signals import Signals

from pnpbroker import names
from pnpbroker.bus import frames
from pnpbroker.bus.link import BusLink, check_internals
from pnpbroker.bus.wire import event_body, signal_of
from pnpbroker.bus.writer import LOW_WATER
from pnpbroker.journal import Entry, Lost, Record
from pnpbroker.outcome import Outcome
from pnpbroker.uevent import from_properties


def test_the_internals_are_where_the_link_expects_them() -> None:
    check_internals()


def test_the_installed_version_is_in_the_pinned_range() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    [pin] = [Requirement(d) for d in project["dependencies"] if d.startswith("dbus-fast")]
    assert pin.specifier, "dbus-fast must be pinned to a range: the link uses its internals"
    assert importlib.metadata.version("dbus-fast") in pin.specifier


def _entries(count: int, first: int = 1) -> list[Entry]:
    return [Record(n, uevent(n), None) for n in range(first, first + count)]


@pytest.mark.parametrize(
    "entry",
    [
        Record(7, uevent(7), None),
        Record(8, uevent(8), Outcome("/sbin/hotplug", 1, 0, False, 0.25)),
        Record(
            9,
            from_properties(
                {
                    "ACTION": "change",
                    "DEVPATH": "/devices/x",
                    "SUBSYSTEM": "block",
                    "SEQNUM": "9",
                    "ID_MODEL": "d\udce9j\u00e0 vu",
                    "DEVNAME": "sda",
                }
            ),
            None,
        ),
        Lost("uuid-1", 10),
    ],
    ids=["event", "outcome", "not-utf8", "loss"],
)
def test_a_frame_is_the_message_dbus_fast_would_make(entry: Entry) -> None:
    member, signature, body = signal_of(entry)
    msg = Message.new_signal(names.OBJECT_PATH, names.INTERFACE, member, signature, body)
    msg.serial = 4242
    assert frames.signal(member, signature, body, 4242) == bytes(msg._marshall(False))


@contextlib.contextmanager
def _paused(bus: SystemBus) -> Iterator[None]:
    """The bus daemon stops reading (its socket buffers fill up), until the block ends."""
    assert bus.process is not None
    os.kill(bus.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(bus.process.pid, signal.SIGCONT)


async def _fill(link: BusLink) -> int:
    """Send events until the socket takes no more and the writer holds more than its low-water
    mark; how many."""
    sent = 0
    while link.writer.unsent < LOW_WATER:
        link.send(_entries(256, sent + 1))
        sent += 256
    return sent


@pytest.mark.root  # the bus policy lets root own org.pnp.Broker
async def test_a_bus_daemon_that_stops_reading_makes_the_link_wait_and_lose_nothing(
    system_bus: SystemBus, signals: Signals
) -> None:
    link = await BusLink.connect(system_bus.address)
    await link.serve(_Exported())
    with _paused(system_bus):
        sent = await _fill(link)
        waiting = asyncio.ensure_future(link.drained())
        for _ in range(20):
            await asyncio.sleep(0)
        assert link.connected  # dbus-fast's own writer would have dropped the connection
        assert not waiting.done()  # and the queue waits for the socket
        link.send(_entries(3, sent + 1))  # what comes meanwhile queues behind, in order
    await waiting
    await link.barrier()
    got = await asyncio.to_thread(signals.wait, lambda s: s[0] == "Event", sent + 3)
    assert [body[0] for _, body in got] == list(range(1, sent + 4))
    [last] = _entries(1, sent + 3)
    assert isinstance(last, Record)
    assert got[-1][1] == event_body(last)
    link.close()


async def test_a_bus_daemon_that_dies_fails_whoever_waits(system_bus: SystemBus) -> None:
    link = await BusLink.connect(system_bus.address)
    assert system_bus.process is not None
    os.kill(system_bus.process.pid, signal.SIGSTOP)
    await _fill(link)
    waiting = asyncio.ensure_future(link.drained())
    barrier = link.barrier()
    system_bus.crash()
    with pytest.raises(ConnectionError):
        await waiting
    with pytest.raises((ConnectionError, EOFError, DBusError)):
        await barrier
    with pytest.raises(ConnectionError):
        link.send(_entries(1))
    await link.wait_closed()
    assert not link.connected


class _Exported(ServiceInterface):
    """The broker's interface name with nothing in it: the name and the path are what count."""

    def __init__(self) -> None:
        super().__init__(names.INTERFACE)
