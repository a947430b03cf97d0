"""The inherited uevent socket as systemd makes it: ``ListenNetlink=`` creates a SOCK_RAW socket.

Netlink treats SOCK_RAW and SOCK_DGRAM alike; the broker refused the raw one, so the shipped
socket unit left the service failed under a real systemd (tests/system has that test; this one
runs anywhere). The socket here is made as systemd's socket_address_listen() makes it: raw,
protocol NETLINK_KOBJECT_UEVENT, bound to group 1, SO_PASSCRED on.
"""

from __future__ import annotations

import os
import socket

import pytest

from pnpbroker.sources import Datagram, Overflow
from pnpbroker.sources.fd import open_fd
from pnpbroker.sources.netlink import KERNEL_GROUP, NETLINK_KOBJECT_UEVENT


@pytest.mark.parametrize("kind", [socket.SOCK_RAW, socket.SOCK_DGRAM])
def test_both_netlink_socket_types_are_a_uevent_source(kind: int) -> None:
    sock = socket.socket(socket.AF_NETLINK, kind | socket.SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind((0, KERNEL_GROUP))
    fd = sock.detach()
    source = open_fd(fd)
    try:
        assert source.fileno() == fd
        # Readable without blocking (host events may or may not be queued: both are fine).
        assert all(isinstance(item, Datagram | Overflow) for item in source.read_batch())
    finally:
        source.close()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # the source owned it and closed it
