"""A pnpclient subscriber whose loop stalls after its first event.

Usage: ``stalled_subscriber.py block|await SECONDS``. ``block`` stops the whole loop
(``time.sleep``: nothing is read from the bus, the daemon's queue for us fills and it drops
signals); ``await`` only stops consuming (``asyncio.sleep``: the library keeps reading, into its
inbox). Prints JSON lines: ``{"ready": ...}`` once subscribed, one per item, ``{"stalling":
true}`` before the stall, and at exit (SIGTERM) the largest inbox seen.
"""

import asyncio
import json
import signal
import sys
import time

from pnpbroker.client import EventsLost, protocol, subscribe

peak = 0
_on_signal = protocol.Conn.on_signal


def _counting(self: protocol.Conn, message: protocol.Signal) -> None:
    global peak
    _on_signal(self, message)
    peak = max(peak, len(self.inbox))


protocol.Conn.on_signal = _counting  # type: ignore[method-assign,assignment]


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def main(mode: str, stall: float) -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    first = True
    try:
        async with subscribe(subsystem="net", action="add") as events:
            say(ready=str(events.position))
            async for item in events:
                if isinstance(item, EventsLost):
                    say(lost=item.sequence)
                    continue
                say(sequence=item.sequence, interface=item.properties.get("INTERFACE"))
                if first:
                    first = False
                    say(stalling=True)
                    if mode == "block":
                        time.sleep(stall)  # noqa: ASYNC251 - the stall this client is for
                    else:
                        await asyncio.sleep(stall)
    except asyncio.CancelledError:
        say(peak=peak)


asyncio.run(main(sys.argv[1], float(sys.argv[2])))
