"""STAND-IN for libudev-zero's "udev" monitor: not libudev-zero itself.

libudev-zero is not packaged in Debian 12 nor on PyPI, so this listener receives and parses
the way its udev_monitor.c and udev_device.c (illiliti/libudev-zero 1.0.3) do, step by step:

- ``socket(AF_NETLINK, SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)`` bound to ``nl_groups = 0x4``
  (``UDEV_MONITOR_NLGRP``: the bitmask 0x4, i.e. netlink group 3);
- ``recvmsg`` into an 8192-byte buffer; a datagram with ``MSG_TRUNC`` is skipped;
- skipped when the sender address has ``nl_groups == 0`` (unicast), or ``nl_groups == 1`` with
  ``nl_pid != 0`` (userspace on the kernel's group); no credentials are asked for or checked;
- ``udev_device_new_from_uevent``: every NUL-ended field is read; ``DEVPATH=`` also gives
  ``SYSPATH=/sys...``, ``DEVNAME=`` becomes ``/dev/...``, a field without ``=`` (the kernel's
  ``ACTION@DEVPATH`` header) is skipped; the event is dropped unless ``DEVPATH``, ``SUBSYSTEM``,
  ``ACTION`` and ``SEQNUM`` were seen four times in all (so a repeated one drops it too).

Usage: ``zero_standin.py MARKS``. Prints ``READY`` once bound, then one JSON line per event
with its properties and whether the file MARKS/SEQNUM existed when it arrived.
"""

import json
import os
import socket
import sys

NETLINK_KOBJECT_UEVENT = 15
UDEV_MONITOR_NLGRP = 0x4
BUFFER = 8192
REQUIRED = ("DEVPATH", "SUBSYSTEM", "ACTION", "SEQNUM")


def device_from_uevent(buf: bytes) -> dict[str, str] | None:
    props: dict[str, str] = {}
    count = 0
    for field in buf.split(b"\0"):
        text = field.decode("utf-8", "replace")
        if text.startswith("DEVPATH="):
            props["SYSPATH"] = "/sys" + text[8:]
            props["DEVPATH"] = text[8:]
            count += 1
        elif text.startswith("DEVNAME="):
            props["DEVNAME"] = "/dev/" + text[8:]
        elif "=" in text:
            key, value = text.split("=", 1)
            count += key in REQUIRED[1:]
            props[key] = value
    return props if count == len(REQUIRED) else None


def main() -> None:
    marks = sys.argv[1]
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    sock.bind((0, UDEV_MONITOR_NLGRP))
    print("READY", flush=True)
    while True:
        data, _anc, flags, (nl_pid, nl_groups) = sock.recvmsg(BUFFER)
        if flags & socket.MSG_TRUNC:
            continue
        if nl_groups == 0 or (nl_groups == 1 and nl_pid):
            continue
        props = device_from_uevent(data)
        if props is None:
            continue
        marked = os.path.exists(os.path.join(marks, props["SEQNUM"]))
        print(json.dumps({"properties": props, "marked": marked}), flush=True)


if __name__ == "__main__":
    main()
