"""``pnpbroker trigger --settle``: coldplug, then wait until the broker published every event.

The kernel answers each accepted ``uevent`` write with one event carrying our SYNTH_UUID, so
"settled" means: as many Event signals with ``properties["SYNTH_UUID"] == uuid`` as writes were
accepted. We subscribe before writing (a signal sent before the match exists is never seen), and
write from a thread so the loop keeps reading signals meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid as uuidlib

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from pnpbroker import coldplug, names
from pnpbroker.bus.wire import EVENT_SIGNATURE, to_bus_daemon
from pnpbroker.errors import BrokerError

DEFAULT_TIMEOUT = 120.0
EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE, EXIT_SYSTEM = 0, 1, 100, 111
MATCH = (
    f"type='signal',sender='{names.BUS_NAME}',path='{names.OBJECT_PATH}',"
    f"interface='{names.INTERFACE}',member='Event'"
)


class NotSettled(TimeoutError, BrokerError):
    """Fewer events of the trigger were published than it caused, before the timeout."""

    def __init__(self, uuid: str, seen: int, wanted: int, timeout: float) -> None:
        super().__init__(
            f"timed out after {timeout:g} s: the broker published {seen} of {wanted} events "
            f"with SYNTH_UUID={uuid} (is it running, on this bus, and in this network namespace?)"
        )
        self.uuid, self.seen, self.wanted = uuid, seen, wanted


class Watcher:
    """Counts the broker's Event signals that carry one SYNTH_UUID."""

    def __init__(self, bus: MessageBus, uuid: str) -> None:
        self.bus = bus
        self.uuid = uuid
        self.seen = 0
        self.wanted: int | None = None
        self._done = asyncio.Event()
        bus.add_message_handler(self._on_message)

    @classmethod
    async def connect(cls, address: str | None, uuid: str) -> Watcher:
        """Connect and subscribe; once this returns, no matching signal can be missed."""
        bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
        watcher = cls(bus, uuid)
        reply = await bus.call(to_bus_daemon("AddMatch", "s", [MATCH]))
        if reply is None or reply.message_type == MessageType.ERROR:
            bus.disconnect()
            raise ConnectionError(f"AddMatch refused: {reply.body if reply else 'no reply'}")
        return watcher

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL or msg.member != "Event":
            return
        if msg.interface != names.INTERFACE or msg.signature != EVENT_SIGNATURE:
            return
        if msg.body[4].get("SYNTH_UUID") == self.uuid:
            self.seen += 1
            self._check()

    def _check(self) -> None:
        if self.wanted is not None and self.seen >= self.wanted:
            self._done.set()

    async def wait(self, wanted: int, seconds: float) -> None:
        """Return once ``wanted`` events were seen; NotSettled after ``seconds``."""
        self.wanted = wanted
        self._check()
        try:
            async with asyncio.timeout(seconds):
                await self._done.wait()
        except TimeoutError:
            raise NotSettled(self.uuid, self.seen, wanted, seconds) from None

    def close(self) -> None:
        self.bus.disconnect()


def add_settle_arguments(parser: argparse.ArgumentParser) -> None:
    """``--settle``, ``--timeout S`` and ``--bus-address`` beside coldplug's own arguments."""
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


async def settle(args: argparse.Namespace) -> tuple[coldplug.TriggerResult, float]:
    """Subscribe, trigger (in a thread), wait; the result and the seconds it took to settle."""
    args.uuid = args.uuid or str(uuidlib.uuid4())
    coldplug.check(args.action, args.uuid)  # bad arguments: fail before connecting
    watcher = await Watcher.connect(args.bus_address, args.uuid)
    try:
        start = time.monotonic()
        with coldplug._TerminalProgress(sys.stderr) as progress:
            result = await asyncio.to_thread(
                coldplug.trigger_from_args, args, progress if progress.enabled else None
            )
        await watcher.wait(result.written, args.timeout)
        return result, time.monotonic() - start
    finally:
        watcher.close()


def run_settle(args: argparse.Namespace) -> int:
    """The whole ``trigger --settle`` command; exit codes as ``run_trigger``, 1 on timeout."""
    if args.dry_run:
        return coldplug.run_trigger(args)
    try:
        result, _ = asyncio.run(settle(args))
    except coldplug.InvalidTrigger as exc:
        print(f"pnpbroker trigger: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NotSettled as exc:
        print(f"pnpbroker trigger: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except (OSError, EOFError) as exc:
        print(f"pnpbroker trigger: cannot watch the broker on the bus: {exc}", file=sys.stderr)
        return EXIT_SYSTEM
    for failure in result.failed:
        print(f"pnpbroker trigger: warning: {failure}", file=sys.stderr)
    if result.devices and len(result.failed) == len(result.devices):
        return EXIT_SYSTEM
    return EXIT_OK
