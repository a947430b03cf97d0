"""sd_notify: tell a service manager (or a test) that the broker is ready, reloading, stopping."""

from __future__ import annotations

import os
import socket


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to ``$NOTIFY_SOCKET``; False when there is none."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            # Never block the loop: a reader that stopped reading (a test) costs a status line.
            sock.sendto(state.encode(), socket.MSG_DONTWAIT, path)
        except OSError:
            return False
    return True
