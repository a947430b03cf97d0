"""The broker's end of the kernel-helper bridge: a local datagram socket for ``pnpbroker-helper``.

On kernels without uevent netlink broadcast the kernel runs ``/proc/sys/kernel/hotplug`` per
event; ``pnpbroker-helper`` turns its argv and environment into one kernel-format datagram and
sends it here. The socket file is root's, mode 0600; and every datagram carries the sender's
credentials (SO_PASSCRED gives SCM_CREDENTIALS filled in by the kernel), so a datagram from
anyone but root is marked as forged and rejected by :func:`pnpbroker.sources.check`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

from pnpbroker.errors import SourceError
from pnpbroker.sources import KERNEL_PORT, Datagram, Item, ucred_uid
from pnpbroker.uevent import MAX_UEVENT_SIZE

log = logging.getLogger(__name__)

DEFAULT_PATH = Path("/run/pnpbroker/helper.sock")
_CMSG_SIZE = socket.CMSG_SPACE(12)
BATCH = 512


class HelperSource:
    """Listens on ``path``; each datagram from root is one uevent from the kernel's helper."""

    eof = False

    def __init__(self, path: Path) -> None:
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
        log.info("listening for pnpbroker-helper on %s", path)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_batch(self) -> list[Item]:
        items: list[Item] = []
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
        self.sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
