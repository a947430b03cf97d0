"""The D-Bus side: a subscriber that counts ``Event`` signals, and the bare emitters (the ceiling).

``python -m bench.ceiling subscribe`` reads ``org.pnp.Broker1.Event`` signals from any sender and
speaks the ``bench.peers`` protocol, so it counts the broker's signals and the emitters' alike
(the SEQNUM, ACTION and DEVPATH come from the signal's properties).

``python -m bench.ceiling emit`` is the ceiling: a bare dbus-fast emitter of the same signals
(``tsssa{ss}a{sv}`` on /org/pnp/Broker, the keys of the same ifb events) as fast as the bus takes
them. Each message is built and marshalled by dbus-fast (``Message.new_signal``, ``_marshall``)
and written to the connection's socket at once with a plain non-blocking ``send``; on
``EAGAIN`` (or a short write) it waits until the socket is writable and writes the rest. No
round trips, no windows, no journal: what is left is dbus-fast and the bus itself.
``bench/emit_sdbus.c`` is the same emitter in C with sd-bus (``sd_bus_send``, and
``sd_bus_flush`` when its queue grows), for context: the fastest emitter of any kind here.
Both read the bodies from a file ``bodies`` writes (one event a line), so they send the same.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from bench.events import NET_DIR, PREFIX
from bench.peers import Collector
from pnpbroker.bus.wire import EVENT_SIGNATURE, to_bus_daemon
from pnpbroker.names import INTERFACE, OBJECT_PATH

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
    """Send every body as an Event signal, unpaced; return when the first and last went."""
    bus = await MessageBus(bus_address=address).connect()
    sock, loop = bus._sock, asyncio.get_running_loop()
    assert sock is not None
    all_bodies = bodies(links, ten_keys)
    start = time.monotonic()
    for body in all_bodies:
        msg = Message.new_signal(OBJECT_PATH, INTERFACE, "Event", EVENT_SIGNATURE, body)
        msg.serial = bus.next_serial()
        data = memoryview(msg._marshall(False))
        while data:
            try:
                data = data[sock.send(data) :]
            except BlockingIOError:
                await _writable(loop, sock.fileno())
    end = time.monotonic()
    bus.disconnect()
    return {"start": start, "end": end}


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready = loop.create_future()
    loop.add_writer(fd, ready.set_result, None)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


def write_bodies(path: str, links: int) -> None:
    """The bodies as text for the C emitter: per event one line, tab-separated: sequence,
    action, subsystem, devpath, then KEY=VALUE for each property."""
    with open(path, "w") as out:
        for seq, action, subsystem, devpath, props, _handler in bodies(links, False):
            fields = [str(seq), action, subsystem, devpath, *(f"{k}={v}" for k, v in props.items())]
            out.write("\t".join(fields) + "\n")


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
