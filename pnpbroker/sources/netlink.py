"""The kernel's uevent multicast: a NETLINK_KOBJECT_UEVENT socket on group 1.

Opened by us, or inherited from a service manager (socket activation). Credentials are passed
with every datagram so :func:`pnpbroker.sources.check` can tell the kernel from a forger.
"""

from __future__ import annotations

import errno
import logging
import os
import socket

from pnpbroker.errors import SourceError
from pnpbroker.sources import Datagram, Item, Overflow, ucred_uid
from pnpbroker.uevent import MAX_UEVENT_SIZE

log = logging.getLogger(__name__)

NETLINK_KOBJECT_UEVENT = 15
KERNEL_GROUP = 1
SO_RCVBUFFORCE = 33
#: Read a little more than the largest datagram we accept, so an oversized one is seen as such.
_RECV_SIZE = MAX_UEVENT_SIZE * 2
_CMSG_SIZE = socket.CMSG_SPACE(12)
#: Datagrams drained per read_batch(): bounds one transaction and one loop turn.
BATCH = 512


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for ``size`` bytes (SO_RCVBUFFORCE, else SO_RCVBUF); return what the kernel gave."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        log.warning("SO_RCVBUFFORCE not permitted; falling back to SO_RCVBUF (rmem_max caps it)")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    # The kernel reports double what it books (bookkeeping overhead); users asked for the half.
    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    level = logging.INFO if got >= size else logging.WARNING
    log.log(level, "netlink receive buffer: asked %d bytes, got %d", size, got)
    return got


def burst_room(fd: int) -> int | None:
    """How many of the largest uevents the receive buffer of socket ``fd`` surely holds at
    once (at least 1): how far a trigger may run ahead of the reader. None if ``fd`` is no
    socket (a stream source: the kernel's events do not come through it)."""
    copy = os.dup(fd)
    try:
        sock = socket.socket(fileno=copy)
    except OSError:  # ENOTSOCK
        os.close(copy)
        return None
    with sock:
        booked = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    # SO_RCVBUF reports what the kernel books (double what was asked), and it counts each
    # datagram's whole allocation against it: reckon two pages a uevent.
    return max(1, booked // (2 * MAX_UEVENT_SIZE))


#: Netlink treats both alike; systemd's ListenNetlink= makes SOCK_RAW, most programs SOCK_DGRAM.
NETLINK_TYPES = (socket.SOCK_DGRAM, socket.SOCK_RAW)


class NetlinkSource:
    """Drains a uevent netlink socket without blocking; ENOBUFS becomes an :class:`Overflow`."""

    eof = False

    def __init__(self, sock: socket.socket) -> None:
        if sock.family != socket.AF_NETLINK or sock.type not in NETLINK_TYPES:
            raise SourceError(f"fd {sock.fileno()} is not a netlink datagram socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setblocking(False)
        self.sock = sock

    @classmethod
    def open(cls, receive_buffer: int) -> NetlinkSource:
        """Open our own socket on the kernel's group, with a receive buffer of that size."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
        except OSError as exc:
            raise SourceError(exc.errno, f"cannot open the uevent netlink socket: {exc}") from exc
        try:
            set_receive_buffer(sock, receive_buffer)
            sock.bind((0, KERNEL_GROUP))
        except OSError as exc:
            sock.close()
            raise SourceError(exc.errno, f"cannot bind the uevent netlink socket: {exc}") from exc
        return cls(sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_batch(self) -> list[Item]:
        items: list[Item] = []
        recvmsg = self.sock.recvmsg
        for _ in range(BATCH):
            try:
                data, ancdata, flags, address = recvmsg(_RECV_SIZE, _CMSG_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                items.append(Overflow())
                continue
            uid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    uid = ucred_uid(payload)
            items.append(Datagram(data, address[0], uid, truncated=bool(flags & socket.MSG_TRUNC)))
        return items

    def flush(self) -> list[Item]:
        return []

    def close(self) -> None:
        self.sock.close()
