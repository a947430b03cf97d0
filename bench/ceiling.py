"""The D-Bus side: a subscriber that counts ``Event`` signals, and the bare emitter (the ceiling).

``python -m bench.ceiling subscribe`` reads ``org.pnp.Broker1.Event`` signals from any sender and
speaks the ``bench.peers`` protocol, so it counts the broker's signals and the emitter's alike
(the SEQNUM, ACTION and DEVPATH come from the signal's properties).

``python -m bench.ceiling emit`` is the ceiling: dbus-fast sending the same signal shape
(``tsssa{ss}a{sv}`` on /org/pnp/Broker) as fast as it can, flow-controlled exactly as the
broker's publisher is and with the broker's own transport (``pnpbroker.bus.link.BusLink``): a
window of 128 signals marshalled into one buffer and written with one write, then a ``GetId``
round trip to the bus daemon as the barrier (its reply means the daemon has read every signal
before it), at most 4 windows in flight; ``EAGAIN`` on the socket means "wait for writable"
(dbus-fast alone would drop the connection). No journal, no sequencer, no name owned: what
is left is the bus itself, so broker / ceiling says what the broker's own work costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import deque
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from bench.events import NET_DIR, PREFIX
from bench.peers import Collector
from pnpbroker.bus.link import BusLink
from pnpbroker.bus.wire import EVENT_SIGNATURE, to_bus_daemon
from pnpbroker.core import publisher
from pnpbroker.names import INTERFACE

WINDOW = publisher.WINDOW
WINDOWS_IN_FLIGHT = publisher.MAX_BARRIERS
# Padding that makes an event look like a USB device's (10 keys in all), for the --keys 10 variant.
_USB_LIKE = {
    "MAJOR": "189",
    "MINOR": "3",
    "DEVNAME": "bus/usb/001/004",
    "DEVTYPE": "usb_device",
    "PRODUCT": "1d6b/2/606",
    "TYPE": "9/0/3",
    "BUSNUM": "001",
    "DEVNUM": "004",
}


def bodies(links: int, ten_keys: bool) -> list[list[Any]]:
    """The signal bodies the broker would send for ``links`` ifb link adds, in kernel order.

    Properties are exactly an ifb add's keys (net: 6 keys, queues: 4) or, with ``ten_keys``,
    padded to 10 keys each.
    """
    out: list[list[Any]] = []
    seq = 0
    for i in range(links):
        base = f"{NET_DIR}{PREFIX}{i}"
        net = {"SUBSYSTEM": "net", "INTERFACE": f"{PREFIX}{i}", "IFINDEX": str(i + 2)}
        for devpath, extra in ((base, net), (base + "/queues/rx-0", {"SUBSYSTEM": "queues"}),
                               (base + "/queues/tx-0", {"SUBSYSTEM": "queues"})):  # fmt: skip
            seq += 1
            props = {"ACTION": "add", "DEVPATH": devpath, **extra, "SEQNUM": str(seq)}
            if ten_keys:
                props.update(list(_USB_LIKE.items())[: 10 - len(props)])
            out.append([seq, "add", extra["SUBSYSTEM"], devpath, props, {}])
    return out


async def emit(address: str, links: int, ten_keys: bool) -> dict[str, float]:
    """Send every body as an Event signal the way the publisher does; return start and end."""
    bus = await MessageBus(bus_address=address).connect()
    link = BusLink(bus)  # the broker's transport: one write per window, EAGAIN waits
    barriers: deque[asyncio.Future[Message]] = deque()
    all_bodies = bodies(links, ten_keys)
    start = time.monotonic()
    for first in range(0, len(all_bodies), WINDOW):
        link.emit_many("Event", EVENT_SIGNATURE, all_bodies[first : first + WINDOW])
        barriers.append(link.barrier())
        while len(barriers) >= WINDOWS_IN_FLIGHT:
            await barriers.popleft()
    for future in barriers:
        await future
    end = time.monotonic()
    bus.disconnect()
    return {"start": start, "end": end}


async def subscribe(address: str, links: int, limit: float, ready_on_match: bool) -> None:
    """Count Event signals into a Collector until it is complete or ``limit`` s pass."""
    bus = await MessageBus(bus_address=address).connect()
    collector = Collector(links)
    done = asyncio.get_running_loop().create_future()

    def on_message(msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL or msg.member != "Event":
            return
        props = msg.body[4]
        complete = collector.take(int(props["SEQNUM"]), props["ACTION"], props["DEVPATH"])
        if complete and not done.done():
            done.set_result(None)

    bus.add_message_handler(on_message)
    rule = f"type='signal',interface='{INTERFACE}',member='Event'"
    await bus.call(to_bus_daemon("AddMatch", "s", [rule]))
    if ready_on_match:
        collector.ready = True
        print("READY", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done, limit)
    collector.report()
    bus.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["emit", "subscribe"])
    parser.add_argument("--address", required=True)
    parser.add_argument("--links", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--ten-keys", action="store_true", help="pad properties to 10 keys")
    parser.add_argument("--ready-on-match", action="store_true", help="READY without a probe")
    args = parser.parse_args()
    if args.mode == "emit":
        times = asyncio.run(emit(args.address, args.links, args.ten_keys))
        sys.stdout.write(json.dumps(times) + "\n")
    else:
        asyncio.run(subscribe(args.address, args.links, args.timeout, args.ready_on_match))


if __name__ == "__main__":
    main()
