"""Real kernel uevents, made with ifb links in a private network namespace.

Net-device uevents are delivered only inside the namespace that owns the device, so a reader
started with ``ip netns exec NS`` sees our links and nobody else's (other devices' events still
leak in from the host: every reader filters on our device paths). One ``link add ifbN type ifb``
makes three ``add`` uevents: the net device itself and its two queues (``queues/rx-0``,
``queues/tx-0``); ``EVENTS_PER_LINK`` says so and ``expected_devpaths`` lists them, so counts are
exact per device. All links are made in group 7 so that one ``link del group 7`` removes them.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from support.netns import NetNS

GROUP = 7
PREFIX = "ifb"
EVENTS_PER_LINK = 3
NET_DIR = "/devices/virtual/net/"
PROBE = "probe"
PROBE_DEVPATH = NET_DIR + PROBE
_OURS = re.compile(r"^/devices/virtual/net/ifb(\d+)(/queues/[rt]x-0)?$")

# One event as a reader saw it: (SEQNUM, ACTION, DEVPATH, arrival time on CLOCK_MONOTONIC).
Record = tuple[int, str, str, float]


def link_index(devpath: str) -> int | None:
    """The N of ifbN for one of our device paths (the link or its queues), else None."""
    match = _OURS.match(devpath)
    return int(match.group(1)) if match else None


def expected_devpaths(links: int) -> set[str]:
    """Every DEVPATH that ``links`` link adds produce: the net device and its two queues."""
    paths = set()
    for i in range(links):
        base = f"{NET_DIR}{PREFIX}{i}"
        paths.update({base, base + "/queues/rx-0", base + "/queues/tx-0"})
    return paths


def add_line(i: int) -> str:
    """One ``ip -batch`` line that makes link ifb<i> (three uevents)."""
    return f"link add {PREFIX}{i} group {GROUP} type ifb\n"


def add_probe(ns: NetNS) -> None:
    """Make the probe link whose ``add`` tells a reader's owner that the reader listens."""
    ns.ip("link", "add", PROBE, "type", "ifb", check=False)


def del_probe(ns: NetNS) -> None:
    ns.ip("link", "del", PROBE, check=False)


@contextmanager
def netns() -> Iterator[NetNS]:
    """A fresh namespace ``pnpt-bench-<random>`` (the test kit's), deleted with its links."""
    from support.netns import NetNS

    with NetNS(tag="bench") as ns:
        try:
            yield ns
        finally:
            ns.ip("link", "del", "group", str(GROUP), check=False)


@dataclass(frozen=True)
class Sent:
    """When each link's batch line went to ``ip``: sent[i] is CLOCK_MONOTONIC for ifb<i>."""

    sent: list[float]
    start: float
    end: float


def _batch(ns: NetNS) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ip", "-n", ns.name, "-batch", "-"], stdin=subprocess.PIPE, bufsize=0)


def burst(ns: NetNS, links: int) -> Sent:
    """All ``links`` lines at once: the kernel makes the events as fast as it can.

    ``end`` is when ``ip`` exited, i.e. when the kernel had made the last event. Per-line send
    times are not known in a burst (ip works through its input serially), so every entry of
    ``sent`` is the start; latency in a burst is measured against a reference reader instead.
    """
    proc = _batch(ns)
    assert proc.stdin is not None
    data = "".join(add_line(i) for i in range(links)).encode()
    start = time.monotonic()
    proc.stdin.write(data)
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"ip -batch failed: exit {proc.returncode}")
    return Sent([start] * links, start, time.monotonic())


def steady(ns: NetNS, links: int, rate: float, per_batch: int = 2) -> Sent:
    """``links`` links paced at ``rate`` uevents/s, ``per_batch`` lines per write.

    Each write is stamped just before it goes into ip's stdin pipe; ip reads lines as they come.
    """
    proc = _batch(ns)
    assert proc.stdin is not None
    period = per_batch * EVENTS_PER_LINK / rate
    sent: list[float] = []
    start = time.monotonic()
    for first in range(0, links, per_batch):
        due = start + (first // per_batch) * period
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        count = min(per_batch, links - first)
        now = time.monotonic()
        proc.stdin.write("".join(add_line(i) for i in range(first, first + count)).encode())
        sent.extend([now] * count)
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"ip -batch failed: exit {proc.returncode}")
    return Sent(sent, start, time.monotonic())
