#!/usr/bin/env python3
"""Keep a list of devices current on a GLib main loop, as a GTK application would.

    python3 device_list_glib.py                       # USB devices (DEVTYPE=usb_device)
    python3 device_list_glib.py --subsystem net       # network interfaces

Needs PyGObject (Debian: python3-gi) and pnpclient beside it, not dbus-fast: the callbacks run
on the main loop, where a GTK application would update its list model. Prints ``+ DEVPATH
LABEL`` when a device is there (present at start, or added), ``- DEVPATH`` when it goes,
``* DEVPATH LABEL`` when it changes. Labels are read from sysfs attributes while the device
exists (USB: manufacturer and product; net: the interface name and its address).
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from gi.repository import GLib
from pnpclient import ClientError, Device, Event, EventsLost, Item
from pnpclient.glib import GLibSubscription

SYSFS = Path("/sys")


def read(devpath: str, name: str) -> str:
    try:
        return (SYSFS / devpath.lstrip("/") / name).read_text(errors="replace").strip()
    except OSError:
        return ""


def label(devpath: str, properties: dict[str, str]) -> str:
    """What a person would read: sysfs names first, the kernel's keys otherwise."""
    words = [read(devpath, "manufacturer"), read(devpath, "product")]
    if properties.get("INTERFACE"):
        words = [properties["INTERFACE"], read(devpath, "address")]
    found = " ".join(word for word in words if word)
    return found or properties.get("DEVNAME") or properties.get("PRODUCT") or devpath


class DeviceList:
    """The application's model: devpath -> label."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}

    def on_item(self, item: Item) -> None:
        if isinstance(item, EventsLost):
            self.rows.clear()  # the devices present follow again
        elif isinstance(item, Device):
            self.put("+", item.devpath, dict(item.properties))
        elif isinstance(item, Event) and item.action == "remove":
            self.rows.pop(item.devpath, None)
            print(f"- {item.devpath}", flush=True)
        elif isinstance(item, Event):
            self.put(
                "+" if item.devpath not in self.rows else "*", item.devpath, dict(item.properties)
            )

    def put(self, mark: str, devpath: str, properties: dict[str, str]) -> None:
        self.rows[devpath] = label(devpath, properties)
        print(f"{mark} {devpath} {self.rows[devpath]}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subsystem", default="usb")
    parser.add_argument("--devtype", help="default: usb_device for usb")
    args = parser.parse_args()
    devtype = args.devtype or ("usb_device" if args.subsystem == "usb" else None)
    loop = GLib.MainLoop()
    failed: list[ClientError] = []

    def on_error(error: ClientError) -> None:
        failed.append(error)
        loop.quit()

    model = DeviceList()
    subscription = GLibSubscription(
        model.on_item, on_error=on_error, subsystem=args.subsystem, devtype=devtype, enumerate=True
    )
    subscription.start()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    loop.run()
    subscription.stop()
    if failed:
        print(f"device_list_glib: {failed[0]}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
