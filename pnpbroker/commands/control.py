"""``pnpbroker control``: pause, resume, reload, or show the status of the running broker.

Over the bus, so any user may ask: ``status`` reads the properties; the others are methods
that polkit guards (``org.pnp.Broker.control``), as ``udevadm control`` is for root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from pnpbroker.contract import ExitCode

HELP = "pause, resume or reload the running broker, or print its status"
METHODS = {"pause": "Pause", "resume": "Resume", "reload": "Reload"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=[*METHODS, "status"], help="what to do")
    parser.add_argument("--json", action="store_true", help="status as one JSON object")
    parser.add_argument("--bus-address", help="D-Bus address (default: the system bus)")


async def _ask(args: argparse.Namespace) -> dict[str, Any]:
    from pnpbroker.remote import Remote

    remote = await Remote.connect(args.bus_address)
    try:
        if args.what in METHODS:
            await remote.call(METHODS[args.what])
            return {}
        return await remote.properties()
    finally:
        remote.close()


def format_status(props: dict[str, Any]) -> str:
    """``Key: value`` lines, then the statistics one per line."""
    lines = [f"{key}: {props[key]}" for key in sorted(props) if key != "Statistics"]
    stats = props.get("Statistics", {})
    lines += [f"Statistics.{key}: {stats[key]}" for key in sorted(stats)]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """0 done, 1 refused (polkit) or not running, 111 no bus."""
    from pnpbroker.remote import RemoteError

    try:
        props = asyncio.run(_ask(args))
    except RemoteError as exc:
        why = "the broker is not running" if exc.not_running else "the broker refused"
        print(f"pnpbroker control: {why}: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except OSError as exc:
        print(f"pnpbroker control: cannot reach the bus: {exc}", file=sys.stderr)
        return ExitCode.SYSTEM
    if args.what == "status":
        print(json.dumps(props, sort_keys=True) if args.json else format_status(props))
    return ExitCode.OK
