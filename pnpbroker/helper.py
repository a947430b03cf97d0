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
from collections.abc import Mapping, Sequence

DEFAULT_SOCKET = "/run/pnpbroker/helper.sock"
#: Tests and unusual setups only: the kernel never sets this, and it is not sent.
SOCKET_VARIABLE = "PNPBROKER_HELPER_SOCKET"
#: Added by the kernel for the helper process, not part of the uevent (lib/kobject_uevent.c).
NOT_EVENT_KEYS = frozenset({"HOME", "PATH", SOCKET_VARIABLE})


def datagram(subsystem: str, environ: Mapping[str, str]) -> bytes:
    """The kernel's netlink datagram for the event the helper was called with."""
    env = {k: v for k, v in environ.items() if k not in NOT_EVENT_KEYS}
    env.setdefault("SUBSYSTEM", subsystem)
    header = f"{env.get('ACTION', '')}@{env.get('DEVPATH', '')}"
    fields = [header, *(f"{key}={value}" for key, value in env.items())]
    return "\0".join(fields).encode("utf-8", "surrogateescape") + b"\0"


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv if argv is None else argv
    if len(args) != 2:
        print("usage: pnpbroker-helper SUBSYSTEM (run by the kernel)", file=sys.stderr)
        return 100
    path = os.environ.get(SOCKET_VARIABLE, DEFAULT_SOCKET)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(datagram(args[1], os.environ), path)
    except OSError as exc:
        print(f"pnpbroker-helper: cannot reach the broker at {path}: {exc}", file=sys.stderr)
        return 111
    return 0


if __name__ == "__main__":
    sys.exit(main())
