"""A client's view of a running broker, for the core's end-to-end tests.

Calls and property reads go over a real bus connection (the collector's, usually), exactly as
any client would make them. Helpers here wait with a timeout that only stops a hang.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from pnpbroker.bus.wire import to_bus_daemon

BUS_NAME = "org.pnp.Broker"
OBJECT_PATH = "/org/pnp/Broker"
INTERFACE = "org.pnp.Broker1"

#: A legacy program that logs "start SEQNUM" and "end SEQNUM" (O_APPEND) around its work and
#: exits with SEQNUM % 7, so the status in each signal can be checked against the event.
LOGGING_PROGRAM = """#!/bin/sh
echo "start $SEQNUM" >> {log}
{work}
echo "end $SEQNUM" >> {log}
exit $((SEQNUM % 7))
"""


def write_program(directory: Path, log: Path, work: str = ":", name: str = "hotplug") -> Path:
    """Write LOGGING_PROGRAM with ``work`` (shell) between its two lines; return its path."""
    path = directory / name
    path.write_text(LOGGING_PROGRAM.format(log=log, work=work))
    path.chmod(0o755)
    log.touch()
    return path


def read_program_log(log: Path) -> list[tuple[str, int]]:
    """The ("start"|"end", seqnum) lines the program wrote, in order."""
    lines = log.read_text().split()
    return [(word, int(number)) for word, number in zip(lines[::2], lines[1::2], strict=True)]


async def call(bus: MessageBus, member: str, signature: str = "", body: Any = None,
               *, interface: str = INTERFACE) -> list[Any]:  # fmt: skip
    """Call a broker method; raise RuntimeError carrying the D-Bus error if it fails."""
    reply = await bus.call(
        Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
    )
    assert reply is not None
    if reply.message_type == MessageType.ERROR:
        raise RuntimeError(f"{member}: {reply.error_name}: {reply.body}")
    return list(reply.body)


async def get_property(bus: MessageBus, name: str) -> Any:
    """One property of org.pnp.Broker1, unwrapped from its variant."""
    body = await call(
        bus, "Get", "ss", [INTERFACE, name], interface="org.freedesktop.DBus.Properties"
    )
    variant = body[0]
    assert isinstance(variant, Variant)
    return variant.value


async def statistics(bus: MessageBus) -> dict[str, int]:
    return dict(await get_property(bus, "Statistics"))


async def name_owner(bus: MessageBus, name: str = BUS_NAME) -> str:
    """The unique name that owns ``name`` now (the broker's connection)."""
    reply = await bus.call(to_bus_daemon("GetNameOwner", "s", [name]))
    assert reply is not None
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    return str(reply.body[0])


async def wait_until(
    check: Callable[[], Awaitable[bool]], within: float = 60.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it is true; fail after ``within`` seconds (a hang, not a threshold)."""
    try:
        async with asyncio.timeout(within):
            while not await check():  # noqa: ASYNC110 - polling another process's state
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise TimeoutError(f"{what} not reached within {within} s") from None


def mine(devices: set[str]) -> Callable[[dict[str, str]], bool]:
    """A predicate: the event is about one of ``devices`` (net names) or their queues."""

    def check(props: dict[str, str]) -> bool:
        parts = props.get("DEVPATH", "").split("/")
        return (
            len(parts) > 4 and parts[1:4] == ["devices", "virtual", "net"] and (parts[4] in devices)
        )

    return check


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
