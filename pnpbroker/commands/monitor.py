"""``pnpbroker monitor``: like ``udevadm monitor``, but over the bus and for any user.

A thin front end over :mod:`pnpbroker.client` (the same package as ``examples/pnpclient``):
it only parses options and formats what the subscription yields. One line per event (with
``--enumerate``, one per present device first); with ``--property`` every key follows;
``--json`` prints one object per line for ``jq``; ``--timestamp`` adds when it was received.
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
import time
from collections.abc import Sequence
from typing import Any, TextIO

from pnpbroker.client import (
    BrokerReset,
    ClientError,
    ConnectionLost,
    Device,
    Event,
    EventsLost,
    Item,
    JournalGap,
    Outcome,
    Position,
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


def json_line(found: dict[str, Any]) -> str:
    """One JSON line; the characters JSON leaves raw (DEL, C1, ...) as ``\\uNNNN`` escapes."""
    text = json.dumps(found, ensure_ascii=False)
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The monitor's options (``pnpbroker monitor --help``)."""
    parser.add_argument(
        "-p", "--property", action="store_true", help="print every key of each event"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "-s",
        "--subsystem",
        "--subsystem-match",
        action="append",
        metavar="SUBSYSTEM[/DEVTYPE]",
        help="only this subsystem, and DEVTYPE if given (repeat: any of them)",
    )
    parser.add_argument(
        "-a", "--action", action="append", metavar="ACTION", help="only this action (repeat)"
    )
    parser.add_argument(
        "--devpath", metavar="DEVPATH", help="only the device at DEVPATH and those below it"
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--since",
        type=_position,
        metavar="POSITION",
        help="first replay journalled events after POSITION: JOURNALID:SEQ as printed when "
        "listening (checked against the broker's journal), or a bare SEQ (0: all)",
    )
    start.add_argument(
        "-e",
        "--enumerate",
        action="store_true",
        help="first the devices present (the broker's table), then every change to them",
    )
    parser.add_argument(
        "-T",
        "--timestamp",
        action="store_true",
        help="print when each line was received (CLOCK_MONOTONIC seconds, as udevadm monitor)",
    )
    parser.add_argument("--bus-address", help="D-Bus address (default: the system bus)")


def _position(text: str) -> Position:
    try:
        return Position.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


def format_text(
    item: Item, *, properties: bool, colour: bool, timestamp: float | None = None
) -> str:
    """The human form: ``SEQUENCE ACTION DEVPATH (SUBSYSTEM) OUTCOME`` (+ keys); a present
    device (``--enumerate``) as ``- present DEVPATH (SUBSYSTEM)``; ``[SECONDS]`` first with
    a timestamp."""
    stamp = "" if timestamp is None else f"[{timestamp:.6f}] "
    if isinstance(item, EventsLost):
        uuid = f", resync {printable(item.resync_uuid)}" if item.resync_uuid else ", no resync"
        return stamp + _paint(f"{item.sequence:>8} EVENTS LOST here{uuid}", "1;31", colour)
    where = f"{printable(item.devpath)} ({printable(item.subsystem)})"
    if isinstance(item, Device):
        line = f"{'-':>8} {_paint('present ', '1', colour)} {where}"
    else:
        action = _paint(f"{printable(item.action):<8}", _COLOURS.get(item.action), colour)
        failed = item.handler is not None and not item.handler.ok
        outcome = _paint(printable(describe(item.handler)), "31" if failed else None, colour)
        line = f"{item.sequence:>8} {action} {where} {outcome}"
    if properties:
        keys = "".join(f"{printable(k)}={printable(v)}\n" for k, v in item.properties.items())
        line = f"{line}\n{keys}"
    return stamp + line


def as_json(item: Item, timestamp: float | None = None) -> dict[str, Any]:
    """The JSON form: the signal's fields by name, plus the kernel's seqnum; a present device
    as ``{"device": {...}}``; ``timestamp`` (seconds) when asked for."""
    found = _json(item)
    if timestamp is not None:
        found["timestamp"] = round(timestamp, 6)
    return found


def _json(item: Item) -> dict[str, Any]:
    if isinstance(item, EventsLost):
        lost = {"after_sequence": item.after_sequence, "uuid": item.resync_uuid}
        return {"sequence": item.sequence, "events_lost": lost}
    if isinstance(item, Device):
        fields = ("devpath", "subsystem", "sequence")
        device: dict[str, Any] = {name: getattr(item, name) for name in fields}
        return {"device": {**device, "properties": dict(item.properties)}}
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


def _announce(position: Position | None, enumerate: bool) -> None:
    """One line on stderr once subscribed: from here on nothing is missed."""
    if enumerate:
        where = "after the devices present"
    elif position is None:
        where = "the broker is not running; waiting"
    else:
        where = f"after {position}"
    print(f"pnpbroker monitor: listening for events {where}", file=sys.stderr, flush=True)


def subsystem_matches(specs: Sequence[str] | None) -> tuple[list[str], list[tuple[str, str]]]:
    """``-s SUBSYSTEM[/DEVTYPE]`` arguments: the subsystems, and each (subsystem, devtype)."""
    pairs = [tuple(spec.split("/", 1)) if "/" in spec else (spec, "") for spec in specs or ()]
    return list(dict.fromkeys(s for s, _ in pairs)), [(s, d) for s, d in pairs]


def _pair_matches(item: Item, pairs: list[tuple[str, str]]) -> bool:
    """Whether an item is of one of the SUBSYSTEM/DEVTYPE pairs (EventsLost always is)."""
    if not pairs or isinstance(item, EventsLost):
        return True
    devtype = item.properties.get("DEVTYPE")
    return any(item.subsystem == s and (not d or devtype == d) for s, d in pairs)


def _render(args: argparse.Namespace, item: Item, colour: bool) -> str:
    stamp = time.monotonic() if args.timestamp else None
    if args.json:
        return json_line(as_json(item, stamp))
    return format_text(item, properties=args.property, colour=colour, timestamp=stamp)


async def _print_events(args: argparse.Namespace, out: TextIO) -> None:
    from pnpbroker.client import subscribe

    colour = _use_colour(out)
    subsystems, pairs = subsystem_matches(args.subsystem)
    events = subscribe(
        action=args.action,
        subsystem=subsystems,
        devpath=args.devpath,
        after=args.since,
        enumerate=args.enumerate,
        address=args.bus_address,
    )
    async with events:
        _announce(events.position, args.enumerate)
        async for item in events:
            if _pair_matches(item, pairs):
                print(_render(args, item, colour), file=out, flush=True)


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
    if args.enumerate and args.action:
        print("pnpbroker monitor: --enumerate follows every action", file=sys.stderr)
        return ExitCode.USAGE
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


__all__ = ["Event", "add_arguments", "as_json", "describe", "format_text", "main"]
