"""The storm: 100,000 real uevents while the legacy program takes 5 ms each.

The events are real kernel uevents: ``change <uuid>`` written ``storm_events`` times into the
``uevent`` file of one ifb link in a fresh namespace (``python -m bench.storm write``, run inside
it), as fast as a Python loop can write (faster than links can be made), so the
kernel queues them in the broker's socket while the broker runs ``sleep5ms`` (C, ``nanosleep``
of 5 ms) for each one, strictly serially. Figures:

- kernel overflows: the broker's ``Statistics["overflows"]`` (ENOBUFS seen on its socket);
- lost: storm events not received as Event signals, plus gaps in the published sequence (the
  subscriber, ``python -m bench.storm subscribe``, checks every sequence it saw is there once);
- peak RSS: ``VmHWM`` of the broker process at the end;
- time to drain: from the first write to the last storm event's signal, beside the floor
  ``storm_events`` / (spawns/s of the Python posix_spawn loop of the same 5 ms program, the
  mean of a measurement just before and one just after, in the same run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid as uuidlib
from pathlib import Path

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from support.bus import SystemBus

from bench import events, harness, spawn
from bench.broker import BrokerPending, running_broker
from bench.measures import Config, Values
from pnpbroker.bus.wire import to_bus_daemon
from pnpbroker.names import BUS_NAME, INTERFACE, OBJECT_PATH

DEVICE = "storm0"
FLOOR_SPAWNS = 400


def broker_storm(cfg: Config) -> Values:
    """One storm: overflows, lost, peak RSS (MB), time to drain (s) and its floor (s)."""
    program = spawn.sleep_program()
    if program is None:
        raise BrokerPending("no C compiler for the 5 ms program")
    before = spawn.python_loop(FLOOR_SPAWNS, str(program))
    uuid = str(uuidlib.uuid4())
    with (
        events.netns() as ns,
        SystemBus() as bus,
        running_broker(ns, bus, ["-p", str(program)]) as proc,
    ):
        ns.ip("link", "add", DEVICE, "type", "ifb")
        limit = cfg.storm_events / before * 4 + 300
        sub = harness.Reader(_subscriber_argv(bus.address, uuid, cfg.storm_events, limit))
        try:
            harness.wait_ready(None, [sub])
            start = time.monotonic()
            writer = [sys.executable, "-m", "bench.storm", "write", "--uuid", uuid]
            harness.run_checked(ns.exec_argv([*writer, "--count", str(cfg.storm_events)]))
            got = json.loads(sub.lines.get(timeout=limit + 60))
            stats = asyncio.run(statistics(bus.address))
            hwm = vm_hwm(proc.pid)
        finally:
            sub.stop()
    # The floor: the program's spawn-and-run rate just before and just after the storm (the
    # machine is shared: one measurement alone may see a quieter or busier machine).
    floor = cfg.storm_events * 2 / (before + spawn.python_loop(FLOOR_SPAWNS, str(program)))
    return {
        "broker.storm.drain": got["last"] - start,
        "storm.floor": floor,
        "broker.storm.overflows": float(stats["overflows"]),
        "broker.storm.lost": float(cfg.storm_events - got["ours"] + got["gaps"] + got["repeats"]),
        "broker.storm.rss": hwm,
    }


def _subscriber_argv(address: str, uuid: str, count: int, limit: float) -> list[str]:
    argv = [sys.executable, "-m", "bench.storm", "subscribe", "--address", address]
    return [*argv, "--uuid", uuid, "--count", str(count), "--timeout", f"{limit:.0f}"]


def vm_hwm(pid: int) -> float:
    """Peak resident set size (VmHWM) of ``pid``, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmHWM for pid {pid}")


async def statistics(address: str) -> dict[str, int]:
    """The broker's ``Statistics`` property."""
    bus = await MessageBus(bus_address=address).connect()
    try:
        reply = await bus.call(
            Message(
                destination=BUS_NAME,
                path=OBJECT_PATH,
                interface="org.freedesktop.DBus.Properties",
                member="Get",
                signature="ss",
                body=[INTERFACE, "Statistics"],
            )
        )
    finally:
        bus.disconnect()
    if reply is None or reply.message_type == MessageType.ERROR:
        raise RuntimeError(f"Statistics: {reply.body if reply else 'no reply'}")
    return {key: int(value) for key, value in reply.body[0].value.items()}


def write(uuid: str, count: int) -> None:
    """``change <uuid>`` into /sys/class/net/storm0/uevent, ``count`` times (in the namespace)."""
    fd = os.open(f"/sys/class/net/{DEVICE}/uevent", os.O_WRONLY)
    data = f"change {uuid}".encode()
    try:
        for _ in range(count):
            os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


class Tally:
    """Every sequence seen (for gaps and repeats) and the storm's own events (by SYNTH_UUID)."""

    def __init__(self, uuid: str, count: int) -> None:
        self.uuid, self.count = uuid, count
        self.sequences: list[int] = []
        self.ours = 0
        self.last = 0.0

    def take(self, sequence: int, props: dict[str, str]) -> bool:
        self.sequences.append(sequence)
        if props.get("SYNTH_UUID") == self.uuid:
            self.ours += 1
            self.last = time.monotonic()
        return self.ours >= self.count

    def report(self) -> dict[str, float]:
        seen = set(self.sequences)
        span = max(seen) - min(seen) + 1 if seen else 0
        repeats = len(self.sequences) - len(seen)
        return {"ours": self.ours, "last": self.last, "gaps": span - len(seen), "repeats": repeats}


async def subscribe(address: str, uuid: str, count: int, limit: float) -> None:
    """READY once subscribed; then one JSON line when the storm is in or ``limit`` s passed."""
    bus = await MessageBus(bus_address=address).connect()
    tally = Tally(uuid, count)
    done = asyncio.get_running_loop().create_future()

    def on_message(msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL or msg.member != "Event":
            return
        if tally.take(msg.body[0], msg.body[4]) and not done.done():
            done.set_result(None)

    bus.add_message_handler(on_message)
    rule = f"type='signal',interface='{INTERFACE}',member='Event'"
    await bus.call(to_bus_daemon("AddMatch", "s", [rule]))
    print("READY", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done, limit)
    print(json.dumps(tally.report()), flush=True)
    bus.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["write", "subscribe"])
    parser.add_argument("--uuid", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--address")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    if args.mode == "write":
        write(args.uuid, args.count)
    else:
        asyncio.run(subscribe(args.address, args.uuid, args.count, args.timeout))


if __name__ == "__main__":
    main()
