#!/usr/bin/env python3
"""Wait for a device event that matches, like ``udevadm wait``, with a timeout.

    python3 wait_for_device.py --subsystem net --property INTERFACE=ifb0 --timeout 10

Prints the matching event's devpath and exits 0; exits 1 on timeout. To close the race with an
action you start yourself, read the broker's LastSequence first and pass it as --since.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pnpclient import ClientError, Event, subscribe


def _pairs(items: list[str]) -> dict[str, str]:
    """KEY=GLOB arguments as a mapping."""
    return dict(item.split("=", 1) for item in items)


async def wait_for(args: argparse.Namespace) -> Event:
    events = subscribe(
        action=args.action,
        subsystem=args.subsystem,
        devpath=args.devpath,
        properties=_pairs(args.property),
        after=args.since,
    )
    async with events:
        async for item in events:
            if isinstance(item, Event):
                return item
    raise ClientError("the subscription ended")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subsystem", action="append")
    parser.add_argument("--action", action="append", help="default: add")
    parser.add_argument("--devpath", help="devpath prefix")
    parser.add_argument("--property", action="append", default=[], metavar="KEY=GLOB")
    parser.add_argument("--since", type=int, help="also consider events after this sequence")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds (default 120)")
    args = parser.parse_args()
    args.action = args.action or ["add"]
    try:
        event = asyncio.run(asyncio.wait_for(wait_for(args), args.timeout))
    except TimeoutError:
        print(f"wait_for_device: nothing matched within {args.timeout:g} s", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"wait_for_device: {exc}", file=sys.stderr)
        return 2
    print(event.devpath)
    return 0


if __name__ == "__main__":
    sys.exit(main())
