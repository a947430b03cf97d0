"""``pnpbroker-helper``: the kernel's usermode helper, relaying each uevent to the broker.

For kernels without uevent netlink broadcast (hotplug2-dnode style): put its path in
``/proc/sys/kernel/hotplug``. The kernel runs it once per event with the subsystem as argv[1]
and the event's keys as the environment (plus HOME=/ and PATH=..., which it adds for any
helper and which are not part of the event). It sends one kernel-format datagram to the
broker's helper socket and exits at once; the broker checks the sender is root.

Deliberately small: no imports from the rest of pnpbroker, so it starts fast.
Exit codes: 0 sent, 100 usage, 111 the broker's socket could not be reached.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence

DEFAULT_SOCKET = "/run/pnpbroker/helper.sock"
#: Tests and unusual setups only: the kernel never sets this, and it is not sent.
SOCKET_VARIABLE = "PNPBROKER_HELPER_SOCKET"
#: Added by the kernel for the helper process, not part of the uevent (lib/kobject_uevent.c).
NOT_EVENT_KEYS = frozenset({b"HOME", b"PATH", SOCKET_VARIABLE.encode()})


def original_environment() -> list[tuple[bytes, bytes]]:
    """The environment exactly as the kernel passed it, in its order.

    Read from /proc/self/environ because Python edits ``os.environ`` at start-up (with the C
    locale it adds LC_CTYPE=C.UTF-8, PEP 538); without /proc (early boot), ``os.environb``.
    """
    try:
        with open("/proc/self/environ", "rb") as file:
            entries = [e for e in file.read().split(b"\0") if b"=" in e]
    except OSError:
        return list(os.environb.items())
    return [(key, value) for key, _, value in (e.partition(b"=") for e in entries)]


def datagram(subsystem: bytes, environ: list[tuple[bytes, bytes]]) -> bytes:
    """The kernel's netlink datagram for the event the helper was called with."""
    env = {k: v for k, v in environ if k not in NOT_EVENT_KEYS}
    env.setdefault(b"SUBSYSTEM", subsystem)
    header = env.get(b"ACTION", b"") + b"@" + env.get(b"DEVPATH", b"")
    return b"\0".join([header, *(key + b"=" + value for key, value in env.items())]) + b"\0"


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv if argv is None else argv
    if len(args) != 2:
        print("usage: pnpbroker-helper SUBSYSTEM (run by the kernel)", file=sys.stderr)
        return 100
    path = os.environ.get(SOCKET_VARIABLE, DEFAULT_SOCKET)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(datagram(os.fsencode(args[1]), original_environment()), path)
    except OSError as exc:
        print(f"pnpbroker-helper: cannot reach the broker at {path}: {exc}", file=sys.stderr)
        return 111
    return 0


if __name__ == "__main__":
    sys.exit(main())
