"""sd_notify: tell a service manager (or a test) that the broker is ready, reloading, stopping."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

#: How often a status line is looked at (and sent, when it changed).
STATUS_SECONDS = 1.0


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


async def report_status(status_line: Callable[[], str]) -> None:
    """Send ``STATUS=`` (what ``systemctl status`` shows) whenever ``status_line()`` changed,
    at most once every :data:`STATUS_SECONDS`; until cancelled."""
    last = ""
    while True:
        if (line := status_line()) != last:
            sd_notify(f"STATUS={line}")
            last = line
        await asyncio.sleep(STATUS_SECONDS)
