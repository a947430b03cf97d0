"""Network namespaces that make real kernel uevents on demand (for the tests and for bench/).

Net-device uevents are delivered only to the namespace that owns the device, so a test that adds
ifb links in its own namespace gets events no other test (or the host) sees. Links are made with
one `ip -batch` process, so thousands cost about as much as one `ip` call.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
NETLINK_KOBJECT_UEVENT = 15
KERNEL_GROUP = 1


def run_ip_batch(namespace: str, commands: Iterable[str], timeout: float = 120.0) -> None:
    """Run `ip` commands (one per line, without the leading `ip`) inside `namespace`."""
    script = "".join(f"{command}\n" for command in commands)
    result = subprocess.run(
        ["ip", "-n", namespace, "-batch", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"ip -batch in {namespace} failed: {result.stderr.strip()}")


class NetNS:
    """A fresh network namespace `pnpt-[TAG-]RANDOM`, deleted on exit with all its links."""

    def __init__(self, tag: str = "") -> None:
        middle = f"{tag}-" if tag else ""
        self.name = f"pnpt-{middle}{secrets.token_hex(4)}"
        self._next_group = 1000
        self.last_group = 0

    def create(self) -> NetNS:
        """`ip netns add`; also brings `lo` up so the namespace behaves like a normal host."""
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        run_ip_batch(self.name, ["link set lo up"])
        return self

    def delete(self) -> None:
        """`ip netns delete`; its links go with it. Safe when already gone."""
        if (NETNS_DIR / self.name).exists():
            subprocess.run(["ip", "netns", "delete", self.name], check=True, capture_output=True)

    @property
    def path(self) -> Path:
        """The bind-mounted namespace file, for setns()."""
        return NETNS_DIR / self.name

    def exec_prefix(self) -> list[str]:
        """Prefix a command line with this to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (so it sees the namespace's net-device uevents)."""
        return [*self.exec_prefix(), *argv]

    def ip(self, *args: str, check: bool = True) -> None:
        """One ``ip -n NS ...`` command; raises on failure when ``check``."""
        subprocess.run(["ip", "-n", self.name, *args], check=check, capture_output=True)

    def add_ifbs(self, names: Sequence[str], group: int | None = None) -> None:
        """Create ifb links `names` (one `add` uevent each), optionally in link group `group`."""
        suffix = f" group {group}" if group is not None else ""
        run_ip_batch(self.name, [f"link add {name}{suffix} type ifb" for name in names])

    def del_ifbs(self, names: Sequence[str]) -> None:
        """Delete the links `names` (one `remove` uevent each)."""
        run_ip_batch(self.name, [f"link del {name}" for name in names])

    def del_group(self, group: int) -> None:
        """Delete every link in group `group` with one netlink request (fast for thousands)."""
        if group == 0:
            raise ValueError("group 0 is the default group: it holds every link")
        run_ip_batch(self.name, [f"link del group {group}"])

    def burst(self, count: int, prefix: str = "b") -> list[str]:
        """Create `count` ifb links `PREFIX0..`, in a fresh group; returns their names.

        The group is `self.last_group`, so `del_group(ns.last_group)` removes the whole burst.
        """
        names = [f"{prefix}{i}" for i in range(count)]
        if any(len(name) > 15 for name in names):
            raise ValueError(f"interface names are at most 15 bytes: {names[-1]!r}")
        self.last_group = self._next_group
        self._next_group += 1
        self.add_ifbs(names, group=self.last_group)
        return names

    def __enter__(self) -> NetNS:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.delete()


def _setns(path: Path) -> None:
    """Move the calling thread (only it) into the network namespace at `path`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def netns_uevent_socket(namespace: str, rcvbuf: int = 16 << 20) -> socket.socket:
    """A kernel uevent socket (NETLINK_KOBJECT_UEVENT, group 1) opened inside `namespace`.

    A netlink socket belongs to the namespace it was created in, so a short-lived thread enters
    the namespace, creates the socket and exits; the socket stays with this process. The big
    receive buffer (SO_RCVBUFFORCE, needs root) keeps a burst from overflowing it.
    """
    result: list[socket.socket | BaseException] = []

    def opener() -> None:
        try:
            _setns(NETNS_DIR / namespace)
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
            sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
            sock.bind((0, KERNEL_GROUP))
            result.append(sock)
        except BaseException as exc:  # handed to the caller's thread below
            result.append(exc)

    thread = threading.Thread(target=opener, name=f"setns-{namespace}")
    thread.start()
    thread.join()
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


Uevent = dict[str, str]


def parse_uevent(datagram: bytes) -> Uevent | None:
    """KEY=VALUE pairs of a kernel datagram (`action@devpath\0KEY=VALUE\0...`), else None.

    Deliberately independent of pnpbroker.uevent: tests use it to check the broker.
    """
    header, _, rest = datagram.partition(b"\0")
    if b"@" not in header:
        return None
    fields = (item.decode(errors="replace") for item in rest.split(b"\0") if b"=" in item)
    return dict(field.split("=", 1) for field in fields)


def collect_uevents(
    sock: socket.socket, wanted: Callable[[Uevent], bool], count: int, timeout: float = 30.0
) -> list[Uevent]:
    """Read kernel uevents from `sock` until `count` of them satisfy `wanted`; return those.

    Raises TimeoutError (with what was seen) if they do not all arrive within `timeout`.
    """
    deadline = time.monotonic() + timeout
    found: list[Uevent] = []
    while len(found) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"saw {len(found)} of {count} wanted uevents: {found[-3:]}")
        sock.settimeout(remaining)
        try:
            event = parse_uevent(sock.recv(1 << 16))
        except TimeoutError:
            continue
        if event is not None and wanted(event):
            found.append(event)
    return found


def is_net_event(action: str, names: Iterable[str]) -> Callable[[Uevent], bool]:
    """A predicate for `collect_uevents`: net-subsystem `action` events of interfaces `names`."""
    wanted = set(names)

    def check(event: Uevent) -> bool:
        return (
            event.get("ACTION") == action
            and event.get("SUBSYSTEM") == "net"
            and event.get("INTERFACE") in wanted
        )

    return check
