"""Read the devices present from sysfs, as udev's enumeration does: one entry per device.

Every device directory under ``/sys/devices`` that the kernel announces (a ``uevent`` file and a
``subsystem`` link; :func:`pnpbroker.coldplug.walk` finds them) gives an entry made of its
``uevent`` file (the keys the kernel adds to each of its events: ``MAJOR``, ``MINOR``,
``DEVNAME``, ``DEVTYPE``, ``DRIVER``, ``PRODUCT``, ``INTERFACE``, ...) plus what an event
carries and the file lacks: ``DEVPATH``, and ``SUBSYSTEM`` from the link. Blocking file reads:
the broker runs :func:`scan` in a thread.
"""

from __future__ import annotations

import os
from pathlib import Path

from pnpbroker import coldplug
from pnpbroker.client.table import Device, entry, is_device

SYSFS = Path("/sys")


def read_uevent(path: str) -> dict[str, str] | None:
    """The ``KEY=VALUE`` lines of a ``uevent`` file; None when the device is gone."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        return None  # removed while we walked (ENOENT, ENODEV): its remove event follows
    text = data.decode("utf-8", "replace")  # as D-Bus carries it (uevent.dbus_safe)
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def scan(sysfs: Path = SYSFS) -> list[Device]:
    """Every device present under ``sysfs``, parents first; ``PNP_SEQUENCE`` is 0."""
    found = []
    for found_dir in coldplug.walk(sysfs):
        if not is_device(found_dir.devpath, found_dir.subsystem):
            continue
        keys = read_uevent(os.path.join(found_dir.syspath, "uevent"))
        if keys is not None:
            found.append(entry(found_dir.devpath, found_dir.subsystem, keys, 0))
    return found
