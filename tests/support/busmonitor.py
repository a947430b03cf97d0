"""What a root user inside a machine sees: ``busctl monitor``, and the kernel's own uevents.

``BusMonitor`` runs ``busctl monitor --json=short`` in the machine as a transient unit writing
into the shared directory, so the tests read exactly what the system bus carried, repeats
included. ``KernelListener`` is an independent uevent socket in the machine's network
namespace: the ground truth of which events the kernel sent, to count what the broker lost.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.container import SHARED, Machine, wait_for
from support.netns import KERNEL_GROUP, NETLINK_KOBJECT_UEVENT, _setns, parse_uevent

SO_RCVBUFFORCE = 33


@dataclass(frozen=True)
class Event:
    """One Event signal as busctl printed it."""

    sequence: int
    action: str
    subsystem: str
    devpath: str
    properties: dict[str, str]
    handler: dict[str, Any]


def _plain(variants: dict[str, Any]) -> dict[str, Any]:
    """busctl's ``{"key": {"type": "s", "data": ...}}`` for a{sv}, as ``{"key": data}``."""
    return {key: value["data"] for key, value in variants.items()}


class BusMonitor:
    """``busctl monitor --json=short ARGS`` inside ``machine``; ``events()`` parses its output."""

    def __init__(self, machine: Machine, *args: str) -> None:
        self.machine = machine
        self.unit = f"pnpt-monitor-{secrets.token_hex(4)}"
        self.output = machine.shared / f"{self.unit}.json"
        self.errors = machine.shared / f"{self.unit}.err"
        self.args = args

    def __enter__(self) -> BusMonitor:
        self.machine.run([
            "systemd-run", f"--unit={self.unit}", "--quiet",
            "-p", f"StandardOutput=file:{SHARED / self.output.name}",
            "-p", f"StandardError=file:{SHARED / self.errors.name}",
            "busctl", "monitor", "--json=short", *self.args,
        ])  # fmt: skip
        # busctl says this once it is a monitor (after BecomeMonitor succeeded).
        wait_for(f"{self.unit} to monitor", lambda: self._said("Monitoring bus message stream"))
        return self

    def _said(self, text: str) -> bool:
        return self.errors.exists() and text in self.errors.read_text()

    def __exit__(self, *exc: object) -> None:
        self.machine.run(["systemctl", "stop", self.unit], check=False)

    def messages(self) -> list[dict[str, Any]]:
        if not self.output.exists():
            return []
        lines = self.output.read_text().split("\n")[:-1]  # the last may be half written
        return [json.loads(line) for line in lines if line.strip()]

    def events(self) -> list[Event]:
        found = []
        for message in self.messages():
            if message.get("member") == "Event" and message.get("type") == "signal":
                seq, action, subsystem, devpath, props, handler = message["payload"]["data"]
                found.append(Event(seq, action, subsystem, devpath, props, _plain(handler)))
        return found

    def wait(self, what: str, done: Any, timeout: float = 120.0) -> list[Event]:
        """Wait until ``done(events)`` is true; return the events then."""

        def check() -> list[Event] | None:
            events = self.events()
            return events if done(events) else None

        return wait_for(what, check, timeout)


class KernelListener:
    """Every uevent the kernel sends in the machine's network namespace, read in a thread.

    The thread only keeps the datagrams (parsed at :meth:`close`), so it keeps up with a burst
    however busy the test process is; its own overflow (ENOBUFS) is kept as ``overflowed``:
    the test's shortfall, not the broker's.
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.sock = self._open(Path(f"/proc/{machine.leader}/ns/net"))
        self.events: list[dict[str, str]] = []
        self.overflowed: list[str] = []
        self._datagrams: list[bytes] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, name="kernel-listener", daemon=True)
        self._thread.start()

    @staticmethod
    def _open(netns: Path) -> socket.socket:
        made: list[socket.socket | BaseException] = []

        def opener() -> None:  # a thread: setns moves only the calling thread
            try:
                _setns(netns)
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 256 << 20)
                sock.bind((0, KERNEL_GROUP))
                made.append(sock)
            except BaseException as exc:
                made.append(exc)

        thread = threading.Thread(target=opener)
        thread.start()
        thread.join()
        if isinstance(made[0], BaseException):
            raise made[0]
        made[0].settimeout(0.2)
        return made[0]

    def _read(self) -> None:
        while not self._stop:
            try:
                self._datagrams.append(self.sock.recv(1 << 16))
            except TimeoutError:
                continue
            except OSError as exc:  # ENOBUFS: the ground truth is incomplete
                self.overflowed.append(str(exc))

    def close(self) -> list[dict[str, str]]:
        """Every event the kernel sent before this call. The kernel may still be delivering
        (a burst's last events sit in the socket when ``ip`` returns), so a marker link is
        added and the reading stops only once its ``add`` came: all before it came first."""
        marker = f"klend{secrets.token_hex(3)}"
        field = f"\0INTERFACE={marker}\0".encode()
        scanned = 0

        def marker_came() -> bool:
            nonlocal scanned
            came = self._datagrams[scanned:]
            scanned += len(came)
            return any(field in data for data in came)

        self.machine.netns(["ip", "link", "add", marker, "type", "ifb"])
        try:
            wait_for(f"the listener's marker {marker}", lambda: self.overflowed or marker_came())
        finally:
            self._stop = True
            self._thread.join(10)
            self.sock.close()
            self.machine.netns(["ip", "link", "del", marker])
        parsed = (parse_uevent(data) for data in self._datagrams)
        self.events = [event for event in parsed if event is not None]
        return self.events
