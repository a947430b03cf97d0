#!/usr/bin/env python3
"""Watch devices from a thread, for a program without asyncio (like pyudev's MonitorObserver).

    python3 observer_thread.py --subsystem block

``Observer.start()`` returns once subscribed (nothing after that is missed); the callback then
runs in the observer's thread for each device present and each change. The main thread is free:
here it only waits for Ctrl-C.
"""

from __future__ import annotations

import argparse
import threading

from pnpclient import Device, Event, EventsLost, Item
from pnpclient.threads import Observer


def show(item: Item) -> None:
    if isinstance(item, Device):
        print(f"present {item.devpath} {item.properties.get('DEVNAME', '')}", flush=True)
    elif isinstance(item, Event):
        print(f"{item.action} {item.devpath} {item.properties.get('DEVNAME', '')}", flush=True)
    elif isinstance(item, EventsLost):
        print("events lost: the devices present follow again", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subsystem", action="append")
    args = parser.parse_args()
    observer = Observer(show, subsystem=args.subsystem, enumerate=True)
    observer.start()
    if observer.error is not None:
        raise SystemExit(f"observer_thread: {observer.error}")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        observer.stop()


if __name__ == "__main__":
    main()
