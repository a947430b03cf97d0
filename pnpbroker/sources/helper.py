"""The broker's end of the kernel-helper bridge: a local datagram socket for ``pnpbroker-helper``.

On kernels without uevent netlink broadcast the kernel runs ``/proc/sys/kernel/hotplug`` per
event; ``pnpbroker-helper`` turns its argv and environment into one kernel-format datagram and
sends it here. The socket file is root's, mode 0600; and every datagram carries the sender's
credentials (SO_PASSCRED gives SCM_CREDENTIALS filled in by the kernel), so a datagram from
anyone but root is marked as forged and rejected by :func:`pnpbroker.sources.check`.

The kernel starts helpers concurrently, so their datagrams are put back in SEQNUM order before
they are handed on (:mod:`.reorder`: a bounded window). The descriptor the loop watches is an
epoll set of the socket and a timerfd that fires when the oldest held datagram's wait is over.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import socket
import struct
import time
from pathlib import Path

from pnpbroker.errors import SourceError
from pnpbroker.sources import KERNEL_PORT, Datagram, Item, reorder, seqnum_of, ucred_uid
from pnpbroker.uevent import MAX_UEVENT_SIZE

log = logging.getLogger(__name__)

DEFAULT_PATH = Path("/run/pnpbroker/helper.sock")
KERNEL_SEQNUM = Path("/sys/kernel/uevent_seqnum")
_CMSG_SIZE = socket.CMSG_SPACE(12)
BATCH = 512
_CLOCK_MONOTONIC = 1
_TFD_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC  # TFD_NONBLOCK, TFD_CLOEXEC
_libc = ctypes.CDLL(None, use_errno=True)


class HelperSource:
    """Listens on ``path``; each datagram from root is one uevent from the kernel's helper."""

    eof = False

    def __init__(self, path: Path, window: float = reorder.SECONDS) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a stale socket from a previous run
            old = os.umask(0o177)
            try:
                self.sock.bind(str(path))
            finally:
                os.umask(old)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        except OSError as exc:
            self.sock.close()
            raise SourceError(exc.errno, f"cannot listen on helper socket {path}: {exc}") from exc
        self.sock.setblocking(False)
        self.window = reorder.Reorder(window, last=kernel_seqnum())
        self.timer = Timer()
        self._epoll = select.epoll()
        self._epoll.register(self.sock.fileno(), select.EPOLLIN)
        self._epoll.register(self.timer.fd, select.EPOLLIN)
        log.info("listening for pnpbroker-helper on %s", path)

    def fileno(self) -> int:
        return self._epoll.fileno()

    def read_batch(self) -> list[Item]:
        """Datagrams in SEQNUM order, as far as the window allows; others (to be rejected by
        the reader: not root, no SEQNUM) at once."""
        now = time.monotonic()
        items: list[Item] = []
        for datagram in self._receive():
            seqnum = seqnum_of(datagram)
            if seqnum is None:
                items.append(datagram)
            else:
                items.extend(self.window.push(seqnum, datagram, now))
        self.timer.clear()
        items.extend(self.window.expired(now))
        self.timer.arm(self.window.deadline())
        return items

    def flush(self) -> list[Item]:
        """What the window still holds, in order."""
        return list(self.window.flush())

    def _receive(self) -> list[Datagram]:
        items: list[Datagram] = []
        for _ in range(BATCH):
            try:
                data, ancdata, flags, _ = self.sock.recvmsg(MAX_UEVENT_SIZE * 2, _CMSG_SIZE)
            except BlockingIOError:
                break
            uid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    uid = ucred_uid(payload)
            # Root relays the kernel; check() rejects any other uid (or none) as forged.
            truncated = bool(flags & socket.MSG_TRUNC)
            items.append(Datagram(data, KERNEL_PORT, uid, f"helper socket {self.path}", truncated))
        return items

    def close(self) -> None:
        self._epoll.close()
        self.timer.close()
        self.sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


def kernel_seqnum() -> int | None:
    """The SEQNUM of the kernel's latest event; None without sysfs (early boot)."""
    try:
        return int(KERNEL_SEQNUM.read_text())
    except (OSError, ValueError):
        return None


class Timer:
    """A timerfd on CLOCK_MONOTONIC: readable once the time given to :meth:`arm` has come."""

    _SPEC = struct.Struct("llll")  # struct itimerspec: interval, then value (sec, nsec)

    def __init__(self) -> None:
        self.fd = _libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_FLAGS)
        if self.fd < 0:
            code = ctypes.get_errno()
            raise SourceError(code, f"timerfd_create: {os.strerror(code)}")

    def arm(self, at: float | None) -> None:
        """Fire at monotonic time ``at`` (at once if it is past); None disarms."""
        seconds = 0.0 if at is None else max(at, 1e-9)  # 0 would disarm
        spec = ctypes.create_string_buffer(
            self._SPEC.pack(0, 0, int(seconds), int(seconds % 1 * 1e9))
        )
        if _libc.timerfd_settime(self.fd, 1, spec, None) != 0:  # TFD_TIMER_ABSTIME
            code = ctypes.get_errno()
            raise OSError(code, f"timerfd_settime: {os.strerror(code)}")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)
