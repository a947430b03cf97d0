"""``pnpbroker monitor``: like ``udevadm monitor``, but over the bus and for any user.

A thin front end over :mod:`pnpbroker.client` (the same module as ``examples/pnpclient.py``):
it only parses options and formats what the subscription yields. One line per event; with
``--property`` every key follows; ``--json`` prints one object per line for ``jq``.
Device strings are the kernel's and anyone's who can name a device (a network interface name
may hold an ESC), so control characters never reach the terminal: in text they are written as
``\\xNN`` (``\\uNNNN`` beyond Latin-1: line separators, bidirectional overrides); in JSON as
``\\uNNNN`` escapes (json escapes U+0000-U+001F itself, not DEL, C1 or those).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
from typing import Any, TextIO

from pnpbroker.client import (
    BrokerReset,
    ClientError,
    ConnectionLost,
    Event,
    EventsLost,
    Item,
    JournalGap,
    Outcome,
    subscribe,
)
from pnpbroker.contract import STOP_SIGNALS, ExitCode

HELP = "print the broker's events (any user)"

_COLOURS = {"add": "32", "remove": "31", "change": "33", "bind": "36", "unbind": "35"}
#: C0, DEL, C1, the line and paragraph separators, and the bidirectional marks and overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with its control characters written out as escapes (``\\x1b``, ``\\u202e``)."""
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def json_line(item: Item) -> str:
    """One JSON line; the characters JSON leaves raw (DEL, C1, ...) as ``\\uNNNN`` escapes."""
    text = json.dumps(as_json(item), ensure_ascii=False)
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The monitor's options (``pnpbroker monitor --help``)."""
    parser.add_argument(
        "-p", "--property", action="store_true", help="print every key of each event"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "-s", "--subsystem", action="append", metavar="NAME", help="only this subsystem (repeat)"
    )
    parser.add_argument(
        "-a", "--action", action="append", metavar="ACTION", help="only this action (repeat)"
    )
    parser.add_argument("--devpath", metavar="PREFIX", help="only devices under this devpath")
    parser.add_argument(
        "--since", type=int, metavar="SEQ", help="first replay journalled events after SEQ"
    )
    parser.add_argument("--bus-address", help="D-Bus address (default: the system bus)")


def describe(outcome: Outcome | None) -> str:
    """The handler outcome in a few words."""
    if outcome is None:
        return "-"
    if outcome.skipped:
        return "skipped"
    if outcome.error:
        return f"error: {outcome.error}"
    if outcome.abandoned_pid:
        return f"timed out, unkillable: pid {outcome.abandoned_pid} abandoned"
    if outcome.timed_out:
        return f"timed out ({outcome.duration:.2f}s)"
    if outcome.signal:
        return f"signal {outcome.signal} ({outcome.duration:.2f}s)"
    word = "ok" if outcome.status == 0 else f"exit {outcome.status}"
    return f"{word} ({outcome.duration:.2f}s)"


def _paint(text: str, code: str | None, colour: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if colour and code else text


def format_text(item: Item, *, properties: bool, colour: bool) -> str:
    """The human form: ``SEQUENCE ACTION DEVPATH (SUBSYSTEM) OUTCOME`` (+ keys)."""
    if isinstance(item, EventsLost):
        uuid = f", resync {printable(item.resync_uuid)}" if item.resync_uuid else ""
        return _paint(f"EVENTS LOST after sequence {item.after_sequence}{uuid}", "1;31", colour)
    action = _paint(f"{printable(item.action):<8}", _COLOURS.get(item.action), colour)
    failed = item.handler is not None and not item.handler.ok
    outcome = _paint(printable(describe(item.handler)), "31" if failed else None, colour)
    where = f"{printable(item.devpath)} ({printable(item.subsystem)})"
    line = f"{item.sequence:>8} {action} {where} {outcome}"
    if properties:
        keys = "".join(f"{printable(k)}={printable(v)}\n" for k, v in item.properties.items())
        line = f"{line}\n{keys}"
    return line


def as_json(item: Item) -> dict[str, Any]:
    """The JSON form: the signal's fields by name, plus the kernel's seqnum."""
    if isinstance(item, EventsLost):
        return {"events_lost": {"after_sequence": item.after_sequence, "uuid": item.resync_uuid}}
    return {
        "sequence": item.sequence,
        "action": item.action,
        "subsystem": item.subsystem,
        "devpath": item.devpath,
        "seqnum": item.seqnum,
        "properties": dict(item.properties),
        "handler": dict(item.handler.raw) if item.handler is not None else None,
    }


def _use_colour(out: TextIO) -> bool:
    return out.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def _announce(position: int | None) -> None:
    """One line on stderr once subscribed: from here on nothing is missed."""
    where = "the broker is not running; waiting" if position is None else f"after {position}"
    print(f"pnpbroker monitor: listening for events {where}", file=sys.stderr, flush=True)


async def _print_events(args: argparse.Namespace, out: TextIO) -> None:
    colour = _use_colour(out)
    events = subscribe(
        action=args.action,
        subsystem=args.subsystem,
        devpath=args.devpath,
        after=args.since,
        address=args.bus_address,
    )
    async with events:
        _announce(events.position)
        async for item in events:
            if args.json:
                text = json_line(item)
            else:
                text = format_text(item, properties=args.property, colour=colour)
            print(text, file=out, flush=True)


async def _until_signalled(args: argparse.Namespace, out: TextIO) -> None:
    """Run until SIGINT or SIGTERM, which end the monitor like the end of a stream."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await _print_events(args, out)


def main(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``pnpbroker monitor``: 0 when stopped by a signal, 1 if events cannot be delivered."""
    try:
        asyncio.run(_until_signalled(args, out))
    except (JournalGap, BrokerReset) as exc:
        print(f"pnpbroker monitor: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except ConnectionLost as exc:
        print(f"pnpbroker monitor: {exc}", file=sys.stderr)
        return ExitCode.SYSTEM
    except ClientError as exc:
        print(f"pnpbroker monitor: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except BrokenPipeError:
        # The reader went away (| head): not an error. Keep Python from complaining at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    return ExitCode.OK


__all__ = [
    "Event",
    "add_arguments",
    "as_json",
    "describe",
    "format_text",
    "json_line",
    "main",
    "printable",
]
