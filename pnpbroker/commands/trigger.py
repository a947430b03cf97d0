"""``pnpbroker trigger``: coldplug (:mod:`pnpbroker.coldplug`), as ``udevadm trigger`` does.

It chooses the devices itself (sysfs is readable by anyone); root writes their ``uevent``
files, anyone else asks the broker's Trigger method to (polkit decides). ``--settle`` waits for
the broker to publish every event it caused (:mod:`pnpbroker.settle`). The messages are here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid as uuidlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pnpbroker.coldplug import (
    ACTIONS,
    Device,
    InvalidTrigger,
    Match,
    NoSuchDevice,
    TriggerResult,
    check,
    find,
    trigger,
    walk,
)
from pnpbroker.contract import ExitCode

if TYPE_CHECKING:
    from collections.abc import Callable

    from pnpbroker.remote import Remote, RemoteError

HELP = "make the kernel re-send devices' events (coldplug); any user, through the broker"
DEFAULT_TIMEOUT = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "devices",
        nargs="*",
        metavar="DEVICE",
        help="only these devices: a devpath, a /sys path or a /dev node (default: all)",
    )
    _match_arguments(parser)
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
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print the devpath of each device triggered"
    )
    parser.add_argument("--sysfs", type=Path, default=Path("/sys"), help=argparse.SUPPRESS)
    _settle_arguments(parser)


def _match_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-s",
        "--subsystem",
        "--subsystem-match",
        action="append",
        default=[],
        metavar="S",
        help="only devices of subsystem S (repeatable: any of them)",
    )
    parser.add_argument(
        "-y",
        "--sysname-match",
        action="append",
        default=[],
        metavar="GLOB",
        help="only devices whose name (the devpath's last part) matches (repeatable: any)",
    )
    parser.add_argument(
        "-a",
        "--attr-match",
        action="append",
        default=[],
        metavar="ATTR[=GLOB]",
        help="only devices whose sysfs attribute ATTR exists, or matches GLOB (repeatable: all)",
    )
    parser.add_argument(
        "-b",
        "--parent-match",
        action="append",
        default=[],
        metavar="DEVICE",
        help="only DEVICE and the devices below it (repeatable: any)",
    )


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
    """Print the UUID (and with --verbose or --dry-run the devpaths); 0 done, 1 not settled in
    time or refused by the broker, 100 bad arguments, 111 nothing could be written (or no bus)."""
    uuid = args.uuid or str(uuidlib.uuid4())
    try:
        check(args.action, uuid)
        devices = choose(args)
    except InvalidTrigger as exc:
        return _fail(str(exc), ExitCode.USAGE)
    except NoSuchDevice as exc:
        return _fail(str(exc), ExitCode.FAILED)
    if args.verbose or args.dry_run:
        for device in devices:
            print(device.devpath)
    if args.dry_run:
        return ExitCode.OK
    if os.geteuid() == 0:
        code = _locally(args, devices, uuid)
    else:
        code = _through_broker(args, devices, uuid)
    if code == ExitCode.OK:
        print(uuid, flush=True)
    return code


def choose(args: argparse.Namespace) -> list[Device]:
    """The devices named, or all (of the subsystems), that pass the matches; NoSuchDevice."""
    sysfs = args.sysfs
    if args.devices:
        named = [find(sysfs, path) for path in args.devices]
        found = [d for d in named if not args.subsystem or d.subsystem in args.subsystem]
    else:
        found = list(walk(sysfs, args.subsystem))
    attrs = [_attr(spec) for spec in args.attr_match]
    parents = tuple(find(sysfs, path).devpath for path in args.parent_match)
    match = Match(tuple(args.sysname_match), tuple(attrs), parents)
    return [device for device in found if match(device)]


def _attr(spec: str) -> tuple[str, str | None]:
    """ATTR[=GLOB] as (ATTR, GLOB or None)."""
    name, sep, glob = spec.partition("=")
    return name, glob if sep else None


def _locally(args: argparse.Namespace, devices: list[Device], uuid: str) -> int:
    """As root: write the uevent files ourselves."""
    with _TerminalProgress(sys.stderr) as progress:

        def run() -> TriggerResult:
            shown = progress if progress.enabled else None
            return trigger(devices, args.action, uuid, progress=shown)

        if not args.settle:
            return _report(run())
        done = _settling(lambda _remote: asyncio.to_thread(run), _written, args, uuid)
    return done if isinstance(done, int) else _report(done)


def _written(result: TriggerResult) -> int:
    return result.written


def _through_broker(args: argparse.Namespace, devices: list[Device], uuid: str) -> int:
    """Not root: the broker writes them, if polkit lets us (org.pnp.Broker.trigger)."""
    from dbus_fast import Variant

    options = {
        "devices": Variant("as", [device.devpath for device in devices]),
        "action": Variant("s", args.action),
        "uuid": Variant("s", uuid),
    }

    async def run(remote: Remote) -> list[Any]:
        return await remote.call("Trigger", "a{sv}", [options])

    def written(reply: list[Any]) -> int:
        return int(reply[1])

    done = _settling(run, written, args, uuid) if args.settle else _once(run, args)
    if isinstance(done, int):
        return done
    if written(done) < len(devices):
        gone = len(devices) - written(done)
        print(f"pnpbroker trigger: warning: {gone} devices refused or gone", file=sys.stderr)
    return ExitCode.OK


def _once(run: Callable[[Remote], Any], args: argparse.Namespace) -> Any:
    """One call over the bus: its result, or the exit code after the message."""
    from pnpbroker.remote import Remote, RemoteError

    async def call() -> Any:
        remote = await Remote.connect(args.bus_address)
        try:
            return await run(remote)
        finally:
            remote.close()

    try:
        return asyncio.run(call())
    except RemoteError as exc:
        return _refused(exc)
    except OSError as exc:
        return _fail(f"cannot reach the broker on the bus: {exc}", ExitCode.SYSTEM)


def _settling(
    run: Callable[[Remote], Any], written: Callable[[Any], int], args: argparse.Namespace, uuid: str
) -> Any:
    """Trigger and wait for the broker; the result, or the exit code after the message."""
    from pnpbroker.remote import RemoteError
    from pnpbroker.settle import NotSettled, settle

    try:
        result, _ = asyncio.run(settle(run, written, uuid, args.bus_address, args.timeout))
    except NotSettled as exc:
        return _fail(str(exc), ExitCode.FAILED)
    except RemoteError as exc:
        return _refused(exc)
    except (OSError, EOFError) as exc:
        return _fail(f"cannot watch the broker on the bus: {exc}", ExitCode.SYSTEM)
    return result


def _refused(exc: RemoteError) -> int:
    if exc.not_running:
        return _fail(f"the broker is not running: {exc}", ExitCode.SYSTEM)
    return _fail(f"the broker refused: {exc}", ExitCode.FAILED)


def _report(result: TriggerResult) -> int:
    for failure in result.failed:
        print(f"pnpbroker trigger: warning: {failure}", file=sys.stderr)
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
