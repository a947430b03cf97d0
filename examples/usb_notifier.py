#!/usr/bin/env python3
"""React to USB devices coming and going, as a desktop notifier would; no udev needed.

The kernel's own keys say what a device is: a whole USB device has ``DEVTYPE=usb_device``
(its interfaces have ``usb_interface``), ``PRODUCT=vendor/product/release`` in hex, ``TYPE``
(class/subclass/protocol) and ``DEVNAME=bus/usb/BBB/DDD``. The names a person reads are sysfs
attributes of the device, world-readable: ``/sys$DEVPATH/manufacturer``, ``product``,
``idVendor``, ``idProduct``, ``serial`` (udev's ``ID_VENDOR``, ``ID_MODEL``... come from the
same files, or from the hwdb). They are read while the device is there: at ``add``, or for the
devices present at start (``enumerate=True``), and remembered for the ``remove``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from pathlib import Path

from pnpclient import Device, Event, EventsLost, subscribe

SYSFS = Path("/sys")


def attribute(devpath: str, name: str, sysfs: Path = SYSFS) -> str | None:
    """A sysfs attribute of the device, or None (absent, unreadable, or the device is gone)."""
    try:
        return (sysfs / devpath.lstrip("/") / name).read_text(errors="replace").strip()
    except OSError:
        return None


def name_of(devpath: str, properties: dict[str, str], sysfs: Path = SYSFS) -> str:
    """'Logitech USB Receiver (046d:c52b)', from sysfs; the kernel's PRODUCT if unreadable."""
    vendor, product = attribute(devpath, "idVendor", sysfs), attribute(devpath, "idProduct", sysfs)
    words = [attribute(devpath, key, sysfs) for key in ("manufacturer", "product")]
    label = " ".join(word for word in words if word) or "USB device"
    ids = f"{vendor}:{product}" if vendor and product else properties.get("PRODUCT", "?")
    return f"{label} ({ids})"


def notify(text: str) -> None:
    if shutil.which("notify-send"):
        subprocess.run(["notify-send", "USB", text], check=False)
    else:
        print(text, flush=True)


async def main() -> None:
    names: dict[str, str] = {}
    events = subscribe(subsystem="usb", devtype="usb_device", enumerate=True)
    async with events:
        async for item in events:
            if isinstance(item, EventsLost):
                names.clear()  # the present devices follow again
            elif isinstance(item, Device):
                names[item.devpath] = name_of(item.devpath, dict(item.properties))
                print(f"present: {names[item.devpath]}", flush=True)
            elif isinstance(item, Event) and item.action == "add":
                names[item.devpath] = name_of(item.devpath, dict(item.properties))
                notify(f"connected: {names[item.devpath]}")
            elif isinstance(item, Event) and item.action == "remove":
                notify(f"removed: {names.pop(item.devpath, item.properties.get('PRODUCT'))}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
