#!/usr/bin/env python3
"""Print every event pnpbroker publishes, one JSON object per line; resume where it stopped.

    python3 print_events.py                    # from now on
    python3 print_events.py --since 0          # the whole journal first
    python3 print_events.py --state pos.txt    # remember the position; resume without a gap
    python3 print_events.py --enumerate        # the devices present first, then the changes

Needs only dbus-fast and pnpclient.py beside it; any user may run it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from pnpclient import ClientError, Device, EventsLost, Item, Position, subscribe


def _start(args: argparse.Namespace) -> Position | int | None:
    if args.state is not None and args.state.exists():
        return Position.parse(args.state.read_text())  # JOURNALID:SEQUENCE: checked on resume
    since: int | None = args.since
    return since


def _save(path: Path, position: Position) -> None:
    """Write the position atomically, so a crash leaves the old or the new one."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{position}\n")
    os.replace(temporary, path)


def _record(item: Item) -> dict[str, object]:
    if isinstance(item, EventsLost):
        return {"sequence": item.sequence, "events_lost": True, "uuid": item.resync_uuid}
    if isinstance(item, Device):
        return {"device": item.devpath, "properties": dict(item.properties)}
    return {
        "sequence": item.sequence,
        "action": item.action,
        "subsystem": item.subsystem,
        "devpath": item.devpath,
        "seqnum": item.seqnum,
        "properties": dict(item.properties),
    }


async def main(args: argparse.Namespace) -> None:
    after = None if args.enumerate else _start(args)
    events = subscribe(after=after, subsystem=args.subsystem, enumerate=args.enumerate)
    async with events:
        async for item in events:
            print(json.dumps(_record(item)), flush=True)
            if args.state is not None and events.position is not None:
                _save(args.state, events.position)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--since", type=int, help="replay events after this sequence first")
    parser.add_argument("--subsystem", action="append", help="only this subsystem (repeat)")
    parser.add_argument("--state", type=Path, help="file that keeps the position across runs")
    parser.add_argument("--enumerate", action="store_true", help="the devices present first")
    try:
        asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        pass
    except ClientError as exc:
        raise SystemExit(f"print_events: {exc}") from None
