"""``pnpbroker settle``: wait until the broker has handled what it had queued (``udevadm settle``).

Settled means the broker's ``LastSequence`` (events whose program finished; their Event signals
follow at once) reached every event journalled when settle asked, or ``--sequence N``. Unlike
``udevadm settle`` it does not compare with the kernel's counter: the kernel's SEQNUM counts
every network namespace's events, and the broker sees only its own.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pnpbroker.contract import ExitCode

HELP = "wait until the broker has handled every queued event (or one sequence)"
DEFAULT_TIMEOUT = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sequence",
        type=int,
        metavar="N",
        help="wait for the event with sequence N (default: all journalled when asked)",
    )
    parser.add_argument(
        "-t",
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"give up after S seconds (default {DEFAULT_TIMEOUT:g}; exit code 1)",
    )
    parser.add_argument("--bus-address", help="D-Bus address (default: the system bus)")


def main(args: argparse.Namespace) -> int:
    """0 settled, 1 not in time (or the broker is not running), 111 no bus."""
    from pnpbroker.remote import RemoteError
    from pnpbroker.settle import NotCaughtUp, caught_up

    try:
        asyncio.run(caught_up(args.bus_address, args.sequence, args.timeout))
    except NotCaughtUp as exc:
        return _fail(str(exc), ExitCode.FAILED)
    except RemoteError as exc:
        why = "the broker is not running" if exc.not_running else "the broker refused"
        return _fail(f"{why}: {exc}", ExitCode.FAILED)
    except OSError as exc:
        return _fail(f"cannot reach the bus: {exc}", ExitCode.SYSTEM)
    return ExitCode.OK


def _fail(message: str, code: ExitCode) -> int:
    print(f"pnpbroker settle: {message}", file=sys.stderr)
    return code
