"""Peer readers, each run as its own process inside the namespace: ``python -m bench.peers KIND``.

Every peer speaks the same small protocol on stdout, so the harness treats them (and the broker's
D-Bus subscriber in ``bench.ceiling``) alike: it prints ``READY`` once it has seen the ``add`` of
the probe link (proof that it is listening), then records every ``add`` of our ifb devices until
each expected device path has arrived or ``--timeout`` passes, and prints one JSON line
``{"records": [[seqnum, action, devpath, t], ...], "complete": bool}`` with ``t`` taken on
CLOCK_MONOTONIC when the event reached this process's Python code (after its parsing).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

from bench.events import PROBE_DEVPATH, Record, expected_devpaths

SO_RCVBUFFORCE = 33
NETLINK_KOBJECT_UEVENT = 15
# (SEQNUM, ACTION, DEVPATH) of one parsed event; None while nothing arrived within the poll.
Parsed = tuple[int, str, str]
Source = Callable[[float], Iterator[Parsed]]


class Collector:
    """Says READY on the probe, then keeps our devices' ``add`` events until all have come."""

    def __init__(self, links: int) -> None:
        self.expected = expected_devpaths(links)
        self.seen: set[str] = set()
        self.records: list[Record] = []
        self.ready = False

    def take(self, seqnum: int, action: str, devpath: str) -> bool:
        """Record one event; True once every expected device path has arrived."""
        now = time.monotonic()
        if not self.ready:
            if action == "add" and devpath == PROBE_DEVPATH:
                self.ready = True
                print("READY", flush=True)
            return False
        if action == "add" and devpath in self.expected:
            self.records.append((seqnum, action, devpath, now))
            self.seen.add(devpath)
        return self.seen == self.expected

    def report(self) -> None:
        """The one JSON line the harness reads."""
        out = {"records": self.records, "complete": self.seen == self.expected}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


def _parsed(fields: list[bytes]) -> Parsed | None:
    """(SEQNUM, ACTION, DEVPATH) from ``KEY=VALUE`` fields (others skipped); None if missing."""
    props = {}
    for field in fields:
        key, sep, value = field.partition(b"=")
        if sep:
            props[key.decode()] = value.decode(errors="replace")
    try:
        return int(props["SEQNUM"]), props["ACTION"], props["DEVPATH"]
    except (KeyError, ValueError):
        return None


def parse_datagram(data: bytes) -> Parsed | None:
    """``action@devpath\\0KEY=VALUE\\0...`` into (SEQNUM, ACTION, DEVPATH); None if malformed."""
    return _parsed(data.split(b"\0")[1:])


def netlink_source(timeout: float) -> Iterator[Parsed]:
    """The minimal listener: NETLINK_KOBJECT_UEVENT, group 1, a large forced receive buffer."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 128 * 1024 * 1024)
    sock.bind((0, 1))
    sock.settimeout(timeout)
    while True:
        data, (pid, _groups) = sock.recvfrom(1 << 16)
        if pid != 0:  # only the kernel may speak here
            continue
        parsed = parse_datagram(data)
        if parsed is not None:
            yield parsed


def udevadm_source(timeout: float, source: str = "--kernel") -> Iterator[Parsed]:
    """``udevadm monitor --kernel --property`` from the unpacked Debian package, parsed.

    Its output is read in raw chunks (not through a buffered readline, whose buffer select cannot
    see); an event counts as arrived when its closing blank line has been read.
    """
    udevadm = os.environ["BENCH_UDEVADM"]
    argv = [udevadm, "monitor", source, "--property"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pending = b""
    try:
        while True:
            if not select.select([fd], [], [], timeout)[0]:
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            blocks = (pending + chunk).split(b"\n\n")
            pending = blocks.pop()
            for block in blocks:
                parsed = _udevadm_block(block)
                if parsed is not None:
                    yield parsed
    finally:
        proc.terminate()
        proc.wait()


def _udevadm_block(block: bytes) -> Parsed | None:
    """One ``udevadm monitor --property`` block (header line, then KEY=VALUE lines)."""
    return _parsed(block.split(b"\n"))


def udevadm_udev_source(timeout: float) -> Iterator[Parsed]:
    """``udevadm monitor --udev --property``: the broker's ``--rebroadcast libudev`` events."""
    return udevadm_source(timeout, "--udev")


def pyudev_source(timeout: float) -> Iterator[Parsed]:
    """pyudev's kernel monitor (libudev underneath; needs no udevd for the kernel source)."""
    import pyudev  # type: ignore[import-not-found,unused-ignore]

    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
    monitor.set_receive_buffer_size(128 * 1024 * 1024)
    monitor.start()
    while True:
        device = monitor.poll(timeout=timeout)
        if device is None:
            raise TimeoutError
        yield int(device.sequence_number), str(device.action), str(device.device_path)


SOURCES: dict[str, Source] = {
    "netlink": netlink_source,
    "udevadm": udevadm_source,
    "pyudev": pyudev_source,
    "udevadm-udev": udevadm_udev_source,
}


def collect(source: Iterator[Parsed], links: int, timeout: float) -> Collector:
    """Feed ``source`` to a Collector until it is complete, the source idles, or time is up."""
    collector = Collector(links)
    deadline = time.monotonic() + timeout
    try:
        for seqnum, action, devpath in source:
            if collector.take(seqnum, action, devpath) or time.monotonic() > deadline:
                break
    except TimeoutError:
        pass
    return collector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=sorted(SOURCES))
    parser.add_argument("--links", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=60.0, help="overall and idle limit, s")
    args = parser.parse_args()
    source = SOURCES[args.kind](args.timeout)
    collect(source, args.links, args.timeout).report()


if __name__ == "__main__":
    main()
