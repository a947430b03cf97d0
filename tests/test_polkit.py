"""The broker's authorizer against the real polkitd on a private bus (and without polkitd)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from support.broker import BrokerProcess
from support.bus import POLKIT_BUS_POLICY, SystemBus
from support.polkitd import Polkitd
from support.users import python_as_nobody_async

from pnpbroker.bus.polkit import (
    ALLOW_USER_INTERACTION,
    POLKIT_INTERFACE,
    POLKIT_NAME,
    Authority,
    NotAuthorized,
)
from pnpbroker.bus.wire import to_bus_daemon
from pnpbroker.names import ACTION_CONTROL, ACTION_TRIGGER, ERROR_NOT_AUTHORIZED

pytestmark = [pytest.mark.root, pytest.mark.bus_includes(POLKIT_BUS_POLICY)]

ACTIONS = (ACTION_TRIGGER, ACTION_CONTROL)

# Run by the system python as another user: hold a bus connection until stdin closes.
_CLIENT = """import sys, dbus
bus = dbus.bus.BusConnection(sys.argv[1])
print(bus.get_unique_name(), flush=True)
sys.stdin.read()
"""

_GROUP_RULE = """polkit.addRule(function(action, subject) {
    if (action.id == "%s" && subject.isInGroup("%s")) return polkit.Result.YES;
});
"""


@dataclass(frozen=True)
class TempUser:
    """A system user made for one test, member of one supplementary group."""

    name: str
    group: str


@pytest.fixture
def temp_user() -> Iterator[TempUser]:
    """A real user in a real group: polkit reads a subject's groups from the user database."""
    tag = secrets.token_hex(3)
    user = TempUser(name=f"pnpt-pk-{tag}", group=f"pnpt-pkg-{tag}")
    subprocess.run(["groupadd", "--system", user.group], check=True)
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--no-user-group", "--gid", "nogroup",
             "--groups", user.group, "--shell", "/usr/sbin/nologin", user.name],
            check=True,
        )  # fmt: skip
        try:
            yield user
        finally:
            subprocess.run(["userdel", user.name], check=True)
    finally:
        subprocess.run(["groupdel", user.group], check=True)


@pytest.fixture
async def bus(system_bus: SystemBus) -> AsyncIterator[MessageBus]:
    """The test's own (root) connection, standing in for the broker's."""
    connection = await MessageBus(bus_address=system_bus.address).connect()
    yield connection
    connection.disconnect()


@asynccontextmanager
async def bus_client(
    address: str, user: str, groups: list[str] | None = None
) -> AsyncIterator[str]:
    """Yield the unique name of a connection held by a process running as ``user``."""
    process = await asyncio.create_subprocess_exec(
        "/usr/bin/python3", "-c", _CLIENT, address,
        user=user, group="nogroup", extra_groups=groups or [],
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            name = (await process.stdout.readline()).decode().strip()
        assert name.startswith(":"), f"client as {user} did not connect"
        yield name
    finally:
        process.stdin.close()
        async with asyncio.timeout(30):
            await process.wait()


def pkaction(address: str, action_id: str) -> str:
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address}
    return subprocess.run(
        ["pkaction", "--action-id", action_id, "--verbose"],
        env=env, check=True, capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip


async def test_policy_file_is_loaded_by_polkitd(system_bus: SystemBus) -> None:
    async with Polkitd(system_bus.address):
        for action_id in ACTIONS:
            text = pkaction(system_bus.address, action_id)
            assert text.startswith(f"{action_id}:")
            assert "implicit any:      no" in text
            assert "implicit inactive: no" in text
            assert "implicit active:   auth_admin_keep" in text
            assert "Authentication is required" in text


async def test_root_is_authorized(system_bus: SystemBus, bus: MessageBus) -> None:
    assert bus.unique_name is not None
    async with Polkitd(system_bus.address):
        for action_id in ACTIONS:
            await Authority(bus).check(bus.unique_name, action_id)


async def test_nobody_is_denied(system_bus: SystemBus, bus: MessageBus) -> None:
    authority = Authority(bus)
    async with Polkitd(system_bus.address), bus_client(system_bus.address, "nobody") as name:
        for action_id in ACTIONS:
            with pytest.raises(NotAuthorized, match=action_id) as caught:
                await authority.check(name, action_id)
            assert caught.value.action_id == action_id
            assert caught.value.error_name == ERROR_NOT_AUTHORIZED
            assert "denied by polkit" in str(caught.value)


async def test_rule_grants_group_member(
    system_bus: SystemBus, bus: MessageBus, temp_user: TempUser
) -> None:
    rules = {"50-pnpt.rules": _GROUP_RULE % (ACTION_CONTROL, temp_user.group)}
    authority = Authority(bus)
    async with Polkitd(system_bus.address, rules):
        async with bus_client(system_bus.address, temp_user.name, [temp_user.group]) as member:
            await authority.check(member, ACTION_CONTROL)
            with pytest.raises(NotAuthorized, match=ACTION_TRIGGER):
                await authority.check(member, ACTION_TRIGGER)
        async with bus_client(system_bus.address, "nobody") as outsider:
            with pytest.raises(NotAuthorized, match=ACTION_CONTROL):
                await authority.check(outsider, ACTION_CONTROL)


async def test_vanished_caller_is_denied(system_bus: SystemBus, bus: MessageBus) -> None:
    async with bus_client(system_bus.address, "nobody") as name:
        pass
    async with Polkitd(system_bus.address):
        with pytest.raises(NotAuthorized, match="polkit could not check it"):
            await Authority(bus).check(name, ACTION_CONTROL)


async def test_without_polkitd_only_root_is_allowed(
    system_bus: SystemBus, bus: MessageBus, caplog: pytest.LogCaptureFixture
) -> None:
    assert bus.unique_name is not None
    authority = Authority(bus)
    with caplog.at_level(logging.WARNING, logger="pnpbroker.bus.polkit"):
        for action_id in ACTIONS:
            await authority.check(bus.unique_name, action_id)
        async with bus_client(system_bus.address, "nobody") as name:
            with pytest.raises(NotAuthorized, match="only root"):
                await authority.check(name, ACTION_CONTROL)
        with pytest.raises(NotAuthorized, match="bus daemon could not check it"):
            await authority.check(name, ACTION_CONTROL)  # gone by now
    absent = [r for r in caplog.records if "polkitd is not running" in r.getMessage()]
    assert len(absent) == 1


async def test_broken_connection_denies_without_raising_anything_else(
    system_bus: SystemBus, caplog: pytest.LogCaptureFixture
) -> None:
    connection = await MessageBus(bus_address=system_bus.address).connect()
    assert connection.unique_name is not None
    connection.disconnect()
    with pytest.raises(NotAuthorized, match="the authorization check failed"):
        await Authority(connection).check(connection.unique_name, ACTION_TRIGGER)
    assert any("disconnected" in record.getMessage() for record in caplog.records)


async def _polkitd_pid(bus: MessageBus) -> int:
    reply = await bus.call(to_bus_daemon("GetConnectionUnixProcessID", "s", [POLKIT_NAME]))
    assert reply is not None
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    return int(reply.body[0])


async def test_a_polkitd_that_does_not_answer_is_a_denial_in_time(
    system_bus: SystemBus, bus: MessageBus
) -> None:
    """polkitd stopped (SIGSTOP) takes the call and never answers: each check ends after its
    own timeout, the interactive one after the longer one, with a message saying why."""
    assert bus.unique_name is not None
    async with Polkitd(system_bus.address):
        pid = await _polkitd_pid(bus)
        os.kill(pid, signal.SIGSTOP)
        try:
            quick = Authority(bus, timeout=0.5, interactive=300)
            with pytest.raises(NotAuthorized, match=r"polkit did not answer within 0\.5 s"):
                await quick.check(bus.unique_name, ACTION_CONTROL)
            patient = Authority(bus, timeout=300, interactive=0.5)
            with pytest.raises(NotAuthorized, match=r"polkit did not answer within 0\.5 s"):
                await patient.check(bus.unique_name, ACTION_CONTROL, interactive=True)
        finally:
            os.kill(pid, signal.SIGCONT)


#: Run as nobody: call Pause, with the ALLOW_INTERACTIVE_AUTHORIZATION flag if argv[1] is "1".
_PAUSE = """import asyncio, sys
from dbus_fast import BusType, Message, MessageFlag
from dbus_fast.aio import MessageBus

async def main(interactive):
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if interactive else MessageFlag(0)
    reply = await bus.call(Message(destination="org.pnp.Broker", path="/org/pnp/Broker",
                                   interface="org.pnp.Broker1", member="Pause", flags=flags))
    print(reply.error_name)

asyncio.run(main(sys.argv[1] == "1"))
"""


async def _become_monitor(address: str, rule: str) -> tuple[MessageBus, list[Message]]:
    """A connection that sees copies of the messages ``rule`` matches (root only)."""
    monitor = await MessageBus(bus_address=address).connect()
    seen: list[Message] = []

    def copy(msg: Message) -> bool:
        if msg.member == "CheckAuthorization":
            seen.append(msg)
        return msg.message_type is MessageType.METHOD_CALL  # a monitor never answers a copy

    monitor.add_message_handler(copy)
    become = Message(
        destination="org.freedesktop.DBus",
        path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus.Monitoring",
        member="BecomeMonitor",
        signature="asu",
        body=[[rule], 0],
    )
    reply = await monitor.call(become)
    assert reply is not None
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    return monitor, seen


async def test_polkit_may_ask_for_a_password_only_when_the_caller_allows_it(
    system_bus: SystemBus, tmp_path: Path
) -> None:
    """The real broker, the real polkitd, a client as nobody calling Pause with and without
    ALLOW_INTERACTIVE_AUTHORIZATION; the CheckAuthorization calls are read off the bus."""
    rule = f"type='method_call',interface='{POLKIT_INTERFACE}',member='CheckAuthorization'"
    async with Polkitd(system_bus.address):
        monitor, seen = await _become_monitor(system_bus.address, rule)
        try:
            with BrokerProcess(system_bus, tmp_path / "state"):
                for interactive in ("1", "0"):
                    done = await python_as_nobody_async(
                        _PAUSE, interactive, bus_address=system_bus.address
                    )
                    assert done.stdout.strip() == ERROR_NOT_AUTHORIZED, done.stderr
            async with asyncio.timeout(30):
                while len(seen) < 2:  # noqa: ASYNC110 - copies come on the monitor's own time
                    await asyncio.sleep(0.01)
        finally:
            monitor.disconnect()
    flags = [msg.body[3] for msg in seen]
    assert flags == [ALLOW_USER_INTERACTION, 0]
    assert all(msg.body[1] == ACTION_CONTROL for msg in seen)
