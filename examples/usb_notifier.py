#!/usr/bin/env python3
"""React to USB devices coming and going, as a desktop notifier would.

Subscribes to whole USB devices (``DEVTYPE=usb_device``) being added or removed and shows a
notification with ``notify-send`` when it is installed, else prints a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess

from pnpclient import Event, EventsLost, subscribe


def describe(event: Event) -> str:
    props = event.properties
    name = props.get("ID_MODEL") or props.get("PRODUCT", "unknown device")
    verb = "connected" if event.action == "add" else "removed"
    return f"USB {verb}: {name} ({event.devpath})"


def notify(text: str) -> None:
    if shutil.which("notify-send"):
        subprocess.run(["notify-send", "USB", text], check=False)
    else:
        print(text, flush=True)


async def main() -> None:
    events = subscribe(
        subsystem="usb", action=("add", "remove"), properties={"DEVTYPE": "usb_device"}
    )
    async with events:
        async for item in events:
            if isinstance(item, EventsLost):
                notify("device events were lost; the list of USB devices may be stale")
            else:
                notify(describe(item))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
