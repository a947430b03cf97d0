"""The netlink source and its check: only the kernel's well-formed datagrams get in.

Forgeries are real: a root process in the namespace opens a NETLINK_KOBJECT_UEVENT socket with
a nonzero port and sends to group 1, as any privileged attacker could.
"""

from __future__ import annotations

import logging
import select
import subprocess
import sys
from pathlib import Path

import pytest
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.collector import SignalCollector
from support.coreclient import mine, statistics, wait_until
from support.netns import NetNS, netns_uevent_socket

from pnpbroker.errors import ForgedSender, MalformedUevent
from pnpbroker.sources import Datagram, check
from pnpbroker.sources.netlink import NetlinkSource, set_receive_buffer
from pnpbroker.uevent import MAX_UEVENT_SIZE

FORGED = (
    b"add@/devices/virtual/net/forged0\0ACTION=add\0DEVPATH=/devices/virtual/net/forged0\0"
    b"SUBSYSTEM=net\0INTERFACE=forged0\0SEQNUM=1\0"
)
MALFORMED = b"add@/devices/virtual/net/forged1\0ACTION=add\0no equals sign\0"
OVERSIZED = FORGED + b"PAD=" + b"x" * (3 * MAX_UEVENT_SIZE) + b"\0"

_SENDER = """
import socket, sys
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)
sock.bind((0x7e57, 0))  # a nonzero port: the kernel's is 0
for hexdata in sys.argv[1:]:
    sock.sendto(bytes.fromhex(hexdata), (0, 1))
"""


def send_forged(ns: NetNS, *datagrams: bytes) -> None:
    """Send ``datagrams`` to the uevent multicast group from userspace, inside ``ns``."""
    subprocess.run(
        [*ns.exec_prefix(), sys.executable, "-c", _SENDER, *(d.hex() for d in datagrams)],
        check=True,
        timeout=30,
    )


def _drain(source: NetlinkSource, count: int, kernel: bool) -> list[Datagram]:
    """Read until ``count`` datagrams from the kernel (or from elsewhere) arrived; host events
    leak into the namespace, so the two are told apart by the sender's port."""
    found: list[Datagram] = []
    while len(found) < count:
        ready, _, _ = select.select([source], [], [], 30)
        assert ready, f"only {len(found)} of {count} datagrams arrived"
        items = [item for item in source.read_batch() if isinstance(item, Datagram)]
        found += [item for item in items if (item.sender == 0) == kernel]
    return found[:count]


@pytest.mark.root
def test_source_reports_forged_and_truncated(netns: NetNS) -> None:
    source = NetlinkSource(netns_uevent_socket(netns.name))
    try:
        send_forged(netns, FORGED, MALFORMED, OVERSIZED)
        forged, malformed, oversized = _drain(source, 3, kernel=False)
    finally:
        source.close()
    for item in (forged, malformed, oversized):
        assert item.sender != 0
        assert item.uid == 0  # root sent it: the port, not the uid, gives it away
        with pytest.raises(ForgedSender, match="is not the kernel"):
            check(item)
    assert forged.data == FORGED
    assert not forged.truncated
    assert oversized.truncated


@pytest.mark.root
def test_source_admits_the_kernel(netns: NetNS) -> None:
    source = NetlinkSource(netns_uevent_socket(netns.name))
    try:
        netns.add_ifbs(["k0"])
        is_ours = mine({"k0"})
        while True:
            item = _drain(source, 1, kernel=True)[0]
            event = check(item)
            if is_ours(dict(event)):
                break
    finally:
        source.close()
    assert (item.sender, item.uid) == (0, 0)
    assert event.action == "add"


def test_check_names_what_is_wrong() -> None:
    """Datagrams made here as if from the kernel (port 0, uid 0): a stand-in, since no process
    can send with the kernel's port; the parser's own cases are in test_uevent.py."""
    with pytest.raises(MalformedUevent, match="not KEY=VALUE"):
        check(Datagram(MALFORMED + b"\0"))
    with pytest.raises(MalformedUevent, match="oversized"):
        check(Datagram(OVERSIZED[: 2 * MAX_UEVENT_SIZE], truncated=True))
    with pytest.raises(ForgedSender, match="uid 1000"):
        check(Datagram(FORGED, sender=0, uid=1000))
    with pytest.raises(ForgedSender, match="uid None"):
        check(Datagram(FORGED, sender=0, uid=None))
    assert check(Datagram(FORGED)).devpath == "/devices/virtual/net/forged0"


@pytest.mark.root
def test_receive_buffer_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pnpbroker.sources.netlink"):
        source = NetlinkSource.open(4 << 20)
        got = set_receive_buffer(source.sock, 8 << 20)
        source.close()
    assert got >= 8 << 20
    assert any("asked 8388608 bytes, got" in r.getMessage() for r in caplog.records)


@pytest.mark.root
async def test_broker_rejects_counts_and_goes_on(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    with BrokerProcess(system_bus, tmp_path / "state", ["--no-program"], netns=netns) as broker:
        async with SignalCollector(system_bus.address) as collector:
            send_forged(netns, FORGED, MALFORMED, OVERSIZED)
            netns.add_ifbs(["real0"])
            is_real, is_forged = mine({"real0"}), mine({"forged0", "forged1"})

            async def real_published() -> bool:
                events = collector.members("Event")
                return any(is_real(m.body[4]) for m in events)

            await wait_until(real_published, 30, "the real event")
            stats = await statistics(collector.bus)
            assert not any(is_forged(m.body[4]) for m in collector.members("Event"))
        assert broker.stop() == 0
    assert stats["rejected_forged"] == 3
    assert stats["rejected_malformed"] == 0
    assert stats["overflows"] == 0
    assert "rejected forged datagram" in broker.log()
