"""A socket handed to us: systemd's socket activation (LISTEN_FDS) or ``--source fd:N``.

The service manager (``systemd/pnpbroker.socket``) owns the uevent socket, so the kernel's
events queue in it while the broker restarts. We only check what we were given: a netlink
datagram socket (``SOCK_DGRAM``, or ``SOCK_RAW``: the same for netlink, and what systemd's
``ListenNetlink=`` makes). Anything else is a wrong invocation that no restart can fix, so it is
reported as a configuration error (exit code 2, which the unit's RestartPreventExitStatus honours).
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import MutableMapping

from pnpbroker.errors import ConfigError
from pnpbroker.sources.netlink import (
    KERNEL_GROUP,
    NETLINK_KOBJECT_UEVENT,
    NETLINK_TYPES,
    NetlinkSource,
)

log = logging.getLogger(__name__)

#: sd_listen_fds(3): passed descriptors start here.
SD_LISTEN_FDS_START = 3
_TYPES = {
    socket.SOCK_STREAM: "stream",
    socket.SOCK_SEQPACKET: "seqpacket",
    socket.SOCK_RAW: "raw",
    socket.SOCK_DGRAM: "datagram",
}


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[int]:
    """The descriptors a service manager passed to this process (sd_listen_fds protocol).

    Only honoured when LISTEN_PID is our pid: the variables may have leaked from a parent.
    They are removed either way so that the legacy program does not inherit them.
    """
    env = os.environ if environ is None else environ
    pid, count = env.pop("LISTEN_PID", ""), env.pop("LISTEN_FDS", "")
    env.pop("LISTEN_FDNAMES", None)
    if not pid or not count or not pid.isdigit() or int(pid) != os.getpid():
        return []
    if not count.isdigit():
        raise ConfigError("LISTEN_FDS", f"not a number: {count!r}")
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))
    for fd in fds:
        os.set_inheritable(fd, False)  # sd_listen_fds sets FD_CLOEXEC: not for the program
    return fds


def describe(fd: int) -> str:
    """What ``fd`` is, in words, for an error message."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        return f"not an open descriptor ({exc.strerror})"
    if not stat.S_ISSOCK(mode):
        kind = "pipe" if stat.S_ISFIFO(mode) else "regular file" if stat.S_ISREG(mode) else "file"
        return f"a {kind}, not a socket"
    with socket.socket(fileno=os.dup(fd)) as sock:
        kind = _TYPES.get(sock.type, f"type {int(sock.type)}")
        family = getattr(sock.family, "name", str(sock.family))
        if sock.type not in NETLINK_TYPES:
            return f"a {kind} socket ({family}), not a datagram socket"
        return f"a {kind} socket of family {family}, not AF_NETLINK"


def open_fd(fd: int) -> NetlinkSource:
    """The uevent source on inherited descriptor ``fd``; ConfigError if it is anything else."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        raise ConfigError("source", f"fd {fd} is {describe(fd)}") from None
    if sock.family != socket.AF_NETLINK or sock.type not in NETLINK_TYPES:
        reason = describe(fd)
        sock.detach()
        raise ConfigError("source", f"fd {fd} is {reason}: expected a uevent netlink socket")
    if sock.proto != NETLINK_KOBJECT_UEVENT or not sock.getsockname()[1] & KERNEL_GROUP:
        sock.detach()
        raise ConfigError(
            "source", f"fd {fd} is a netlink socket but not one bound to the kernel's uevents"
        )
    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    log.info("using inherited uevent socket on fd %d (receive buffer %d bytes)", fd, got)
    return NetlinkSource(sock)
