#!/usr/bin/env python3
"""Wait until a device that matches exists, like ``udevadm wait``: at once if it already does.

    python3 wait_for_device.py --subsystem net --property INTERFACE=ifb0 --timeout 10
    python3 wait_for_device.py --devpath /devices/virtual/net/ifb0 --removed

Prints the devpath of the device and exits 0 (with ``--removed``: once no device matches);
exits 1 on timeout. The broker's device table answers first (``enumerate=True``), then the
events after it: there is no window in which the device can appear unseen.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pnpclient import ClientError, subscribe


def _pairs(items: list[str]) -> dict[str, str]:
    """KEY=GLOB arguments as a mapping."""
    return dict(item.split("=", 1) for item in items)


async def wait_for(args: argparse.Namespace) -> str:
    events = subscribe(
        subsystem=args.subsystem,
        devtype=args.devtype,
        devpath=args.devpath,
        properties=_pairs(args.property),
        enumerate=True,
    )
    async with events:  # the devices present are read here: events.devices
        while True:
            if events.devices is not None:
                present = [device.devpath for device in events.devices]
                if present and not args.removed:
                    return present[0]
                if not present and args.removed:
                    return args.devpath or ""
            await anext(events)  # a device, or an event that changed the table
    raise ClientError("the subscription ended")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subsystem", action="append")
    parser.add_argument("--devtype", action="append")
    parser.add_argument("--devpath", help="the device at this devpath (or below it)")
    parser.add_argument("--property", action="append", default=[], metavar="KEY=GLOB")
    parser.add_argument("--removed", action="store_true", help="wait until none matches")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds (default 120)")
    args = parser.parse_args()
    try:
        devpath = asyncio.run(asyncio.wait_for(wait_for(args), args.timeout))
    except TimeoutError:
        print(f"wait_for_device: not within {args.timeout:g} s", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"wait_for_device: {exc}", file=sys.stderr)
        return 2
    print(devpath)
    return 0


if __name__ == "__main__":
    sys.exit(main())
