"""dbus-fast's internals that pnpbroker.bus.link relies on: fail loudly when a release changes them.

The link queues whole windows on dbus-fast's writer and makes EAGAIN a zero-length write. Here
that writer (dbus-fast's own ``_MessageWriter``) drives a real socket pair whose buffer is full,
with a stand-in for the bus object it belongs to (the connection itself is not under test): the
write must wait instead of failing, then finish once the peer reads.
"""

from __future__ import annotations

import importlib.metadata
import socket
import tomllib
from types import SimpleNamespace
from typing import Any

from dbus_fast import Message
from dbus_fast.aio.message_bus import _MessageWriter
from packaging.requirements import Requirement
from support import REPO_ROOT

from pnpbroker.bus.link import _SendWaitsOnEAGAIN, check_internals


def test_the_internals_are_where_the_link_expects_them() -> None:
    check_internals()


def test_the_installed_version_is_in_the_pinned_range() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    [pin] = [Requirement(d) for d in project["dependencies"] if d.startswith("dbus-fast")]
    assert pin.specifier, "dbus-fast must be pinned to a range: the link uses its internals"
    assert importlib.metadata.version("dbus-fast") in pin.specifier


class _Loop:
    """The writer's view of the event loop: which descriptor it wants to be told about."""

    def __init__(self) -> None:
        self.writers: dict[int, Any] = {}

    def add_writer(self, fd: int, callback: Any) -> None:
        self.writers[fd] = callback

    def remove_writer(self, fd: int) -> None:
        self.writers.pop(fd, None)


def _full_pair() -> tuple[socket.socket, socket.socket]:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        while True:
            ours.send(b"\0" * 4096)
    except BlockingIOError:
        pass
    return ours, peer


def _drain(peer: socket.socket) -> bytes:
    peer.setblocking(False)
    got = bytearray()
    try:
        while chunk := peer.recv(1 << 16):
            got += chunk
    except BlockingIOError:
        pass
    return bytes(got)


def test_a_full_socket_makes_the_writer_wait_not_fail() -> None:
    ours, peer = _full_pair()
    loop = _Loop()
    failures: list[BaseException] = []
    bus = SimpleNamespace(
        _negotiate_unix_fd=False,
        _sock=_SendWaitsOnEAGAIN(ours),
        _loop=loop,
        _fd=ours.fileno(),
        unique_name=":1.1",
        _user_disconnect=False,
        _finalize=failures.append,
    )
    writer = _MessageWriter(bus)  # type: ignore[arg-type]
    window = bytearray()
    for serial in range(1, 129):
        msg = Message.new_signal("/a", "a.b", "Event", "s", ["x" * 200])
        msg.serial = serial
        window += msg._marshall(writer.negotiate_unix_fd)
    writer.messages.append((window, None, None))
    writer.schedule_write(None, None)
    assert loop.writers == {ours.fileno(): writer.write_callback}
    writer.write_callback()  # the socket is full: nothing written, nothing failed
    assert writer.buf is not None
    assert writer.offset < len(window)
    assert failures == []
    received = bytearray()
    for _ in range(10_000):  # the peer reads, the loop reports writable, the writer goes on
        if ours.fileno() not in loop.writers:
            break
        received += _drain(peer)
        writer.write_callback()
    received += _drain(peer)
    assert failures == []
    assert writer.buf is None
    assert not writer.messages
    assert received.endswith(window)  # the filler, then the whole window, in one piece
    assert set(received[: -len(window)]) == {0}
    ours.close()
    peer.close()
