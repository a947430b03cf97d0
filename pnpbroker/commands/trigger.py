"""``pnpbroker trigger``: coldplug (:mod:`pnpbroker.coldplug`), with ``--settle`` waiting for the
broker to publish every event it caused (:mod:`pnpbroker.settle`). The messages are here."""

from __future__ import annotations

import argparse
import sys
import uuid as uuidlib
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pnpbroker.coldplug import ACTIONS, InvalidTrigger, TriggerResult, check, trigger, walk
from pnpbroker.contract import ExitCode

if TYPE_CHECKING:
    from collections.abc import Callable

HELP = "make the kernel re-send devices' add events"
DEFAULT_TIMEOUT = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-s",
        "--subsystem",
        action="append",
        default=[],
        metavar="S",
        help="only devices of subsystem S (repeatable: any of them); default all devices",
    )
    parser.add_argument(
        "-c",
        "--action",
        default="add",
        metavar="ACTION",
        help=f"the action the kernel re-sends: {', '.join(ACTIONS)} (default add)",
    )
    parser.add_argument("--uuid", help="the SYNTH_UUID to use (default: a fresh one)")
    parser.add_argument(
        "-n",
        "--dry-run",
        action="store_true",
        help="write nothing; print the devpaths that would be triggered",
    )
    parser.add_argument("--sysfs", type=Path, default=Path("/sys"), help=argparse.SUPPRESS)
    _settle_arguments(parser)


def _settle_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--settle",
        action="store_true",
        help="wait until the broker has published every event this trigger caused",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"give up settling after S seconds (default {DEFAULT_TIMEOUT:g}; exit code 1)",
    )
    parser.add_argument("--bus-address", help="D-Bus address (default: the system bus)")


def main(args: argparse.Namespace) -> int:
    """0 done, 1 not settled in time, 100 bad arguments, 111 nothing could be written (or no
    bus to watch for --settle)."""
    uuid = args.uuid or str(uuidlib.uuid4())
    try:
        check(args.action, uuid)
    except InvalidTrigger as exc:
        return _fail(str(exc), ExitCode.USAGE)
    with _TerminalProgress(sys.stderr) as progress:
        run = _runner(args, uuid, progress if progress.enabled else None)
        done = _settled(args, uuid, run) if args.settle and not args.dry_run else run()
    if isinstance(done, TriggerResult):
        return _report(done)
    return _fail(*done)


def _runner(
    args: argparse.Namespace, uuid: str, progress: Callable[[int], None] | None
) -> Callable[[], TriggerResult]:
    def run() -> TriggerResult:
        devices = walk(args.sysfs, args.subsystem)
        return trigger(devices, args.action, uuid, dry_run=args.dry_run, progress=progress)

    return run


def _settled(
    args: argparse.Namespace, uuid: str, run: Callable[[], TriggerResult]
) -> TriggerResult | tuple[str, ExitCode]:
    """Trigger and wait for the broker; the result, or what went wrong and the exit code."""
    import asyncio

    from pnpbroker.client import ClientError, ConnectionLost
    from pnpbroker.settle import NotSettled, settle

    try:
        result, _ = asyncio.run(settle(run, uuid, args.bus_address, args.timeout))
    except NotSettled as exc:
        return str(exc), ExitCode.FAILED
    except (ConnectionLost, OSError, EOFError) as exc:
        return f"cannot watch the broker on the bus: {exc}", ExitCode.SYSTEM
    except ClientError as exc:  # the broker's journal does not go on from where we started
        return f"cannot follow the broker: {exc}", ExitCode.FAILED
    return result


def _report(result: TriggerResult) -> int:
    for failure in result.failed:
        print(f"pnpbroker trigger: warning: {failure}", file=sys.stderr)
    if result.dry_run:
        for device in result.devices:
            print(device.devpath)
    if result.devices and len(result.failed) == len(result.devices):
        return ExitCode.SYSTEM
    return ExitCode.OK


def _fail(message: str, code: ExitCode) -> int:
    print(f"pnpbroker trigger: {message}", file=sys.stderr)
    return code


class _TerminalProgress:
    """Shows `N devices` on a terminal, rewritten in place; does nothing when not a tty."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.count = 0

    def __enter__(self) -> _TerminalProgress:
        return self

    def __call__(self, count: int) -> None:
        self.count = count
        if count % 64 == 0:  # a terminal write per device would cost more than the trigger
            self.stream.write(f"\r{count} devices")
            self.stream.flush()

    def __exit__(self, *exc: object) -> None:
        if self.enabled and self.count:
            self.stream.write(f"\r{self.count} devices\n")
            self.stream.flush()
