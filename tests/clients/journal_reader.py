"""Load: CONNECTIONS bus connections, each calling GetEvents from a random place in the journal
in a loop, as fast as the broker answers. Usage: ``journal_reader.py CONNECTIONS HIGHEST``.
Prints ``READY`` once every connection made its first call, and at SIGTERM one JSON line: the
calls made, the rows received and the seconds passed since READY, and the calls made in all."""

import asyncio
import json
import random
import signal
import sys
import time

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

calls = rows = total = 0


async def reader(highest: int, started: asyncio.Event, count: list[int]) -> None:
    global calls, rows, total
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    while True:
        reply = await bus.call(
            Message(
                destination="org.pnp.Broker",
                path="/org/pnp/Broker",
                interface="org.pnp.Broker1",
                member="GetEvents",
                signature="tu",
                body=[random.randrange(highest), 0],
            )
        )
        assert reply is not None
        assert reply.message_type == MessageType.METHOD_RETURN, reply
        calls += 1
        total += 1
        rows += len(reply.body[0])
        count[0] += 1
        if count[0] == 1:
            started.set()


async def main(connections: int, highest: int) -> None:
    global calls, rows
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    starts = [asyncio.Event() for _ in range(connections)]
    tasks = [asyncio.create_task(reader(highest, s, [0])) for s in starts]
    await asyncio.gather(*(s.wait() for s in starts))
    calls = rows = 0
    ready = time.monotonic()
    print("READY", flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    seconds = time.monotonic() - ready
    result = {"calls": calls, "rows": rows, "seconds": seconds, "total": total}
    print(json.dumps(result), flush=True)


asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
