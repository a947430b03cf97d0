"""The test infrastructure itself works: bus and its policy, users, namespaces, kernel uevents."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType, RequestNameReply
from dbus_fast.aio import MessageBus
from support import skip_or_fail
from support.broker import BrokerProcess
from support.bus import POLICY_FILE, POLKIT_BUS_POLICY, SystemBus
from support.collector import SignalCollector, connect, disconnect
from support.docsteps import Step, documented_steps
from support.netns import (
    NetNS,
    Uevent,
    collect_uevents,
    is_net_event,
    netns_uevent_socket,
    parse_uevent,
)
from support.users import (
    checkout_for_nobody,
    python_argv_for_nobody,
    python_as_nobody_async,
    run_as_nobody,
    subprocess_kwargs,
)

BROKER = "org.pnp.Broker"
PATH = "/org/pnp/Broker"
IFACE = "org.pnp.Broker1"

# Run as nobody: connect, then call argv[1] (a JSON list of Message keyword arguments) and print
# the reply as JSON, or try to own the name when argv[1] is "own".
CLIENT = """
import asyncio, json, sys
from dbus_fast import BusType, Message
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

async def main():
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    out = {"unique_name": bus.unique_name}
    if sys.argv[1] == "own":
        try:
            out["reply"] = str(await bus.request_name("org.pnp.Broker"))
        except DBusError as exc:
            out["error"] = exc.type
    else:
        reply = await bus.call(Message(**json.loads(sys.argv[1])))
        out["error"] = reply.error_name
    print(json.dumps(out))
    bus.disconnect()
    await bus.wait_for_disconnect()

asyncio.run(main())
"""

# Run as nobody: subscribe to the broker's signals, say "ready", print the first one's member.
LISTENER = """
import asyncio
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

async def main():
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    got = asyncio.get_running_loop().create_future()
    bus.add_message_handler(
        lambda m: m.message_type == MessageType.SIGNAL and m.member == "Event"
        and not got.done() and got.set_result(m.body))
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="AddMatch", signature="s",
        body=["type='signal',sender='org.pnp.Broker',interface='org.pnp.Broker1'"]))
    print("ready", flush=True)
    print(await asyncio.wait_for(got, 30), flush=True)

asyncio.run(main())
"""


def answer_everything(message: Message) -> Message | None:
    """Reply to every method call: a stand-in for the broker, to test only the bus policy."""
    if message.message_type == MessageType.METHOD_CALL:
        return Message.new_method_return(message)
    return None


@pytest.fixture
async def stand_in_broker(system_bus: SystemBus) -> AsyncIterator[MessageBus]:
    """A root connection owning org.pnp.Broker that answers any call (not the real broker)."""
    bus = await connect(system_bus.address)
    bus.add_message_handler(answer_everything)
    assert await bus.request_name(BROKER) == RequestNameReply.PRIMARY_OWNER
    yield bus
    await disconnect(bus)


async def nobody_client(system_bus: SystemBus, action: str) -> dict[str, str]:
    result = await python_as_nobody_async(CLIENT, action, bus_address=system_bus.address)
    assert result.returncode == 0, result.stderr
    out: dict[str, str] = json.loads(result.stdout)
    return out


async def call_as_nobody(system_bus: SystemBus, interface: str, member: str) -> str | None:
    """Call `interface.member` on the broker's path as nobody; the error name or None."""
    message = {"destination": BROKER, "path": PATH, "interface": interface, "member": member}
    return (await nobody_client(system_bus, json.dumps(message))).get("error")


@pytest.mark.root
async def test_client_connects_and_talks_to_the_bus(system_bus: SystemBus) -> None:
    bus = await connect(system_bus.address)
    try:
        reply = await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="GetId",
            )
        )
        assert reply is not None
        assert reply.message_type == MessageType.METHOD_RETURN
        assert bus.unique_name is not None
        assert bus.unique_name.startswith(":")
    finally:
        await disconnect(bus)


@pytest.mark.root
@pytest.mark.bus_includes(POLKIT_BUS_POLICY)
def test_bus_includes_marker_adds_policy_files(system_bus: SystemBus) -> None:
    config = system_bus.config_path.read_text()
    assert f"<include>{POLICY_FILE}</include>" in config
    assert f"<include>{POLKIT_BUS_POLICY}</include>" in config
    assert not system_bus.name_has_owner("org.freedesktop.PolicyKit1")


@pytest.mark.root
async def test_bus_daemon_refuses_peer_ping_like_a_debian_system_bus(
    system_bus: SystemBus,
) -> None:
    """Debian's system.conf allows only org.freedesktop.DBus{,.Introspectable,.Properties} on
    the bus daemon, for root too: a round trip to the daemon must use e.g. GetId, not Ping."""
    bus = await connect(system_bus.address)
    try:
        reply = await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus.Peer",
                member="Ping",
            )
        )
        assert reply is not None
        assert reply.error_name == "org.freedesktop.DBus.Error.AccessDenied"
    finally:
        await disconnect(bus)


@pytest.mark.root
async def test_root_can_own_broker_name(system_bus: SystemBus) -> None:
    assert not system_bus.name_has_owner(BROKER)
    bus = await connect(system_bus.address)
    try:
        assert await bus.request_name(BROKER) == RequestNameReply.PRIMARY_OWNER
        assert system_bus.name_has_owner(BROKER)
    finally:
        await disconnect(bus)


@pytest.mark.root
async def test_nobody_connects_but_cannot_own_broker_name(system_bus: SystemBus) -> None:
    out = await nobody_client(system_bus, "own")
    assert out["unique_name"].startswith(":")
    assert out["error"] == "org.freedesktop.DBus.Error.AccessDenied"
    assert not system_bus.name_has_owner(BROKER)


@pytest.mark.root
@pytest.mark.parametrize(
    ("interface", "member"),
    [
        (IFACE, "GetEvents"),
        ("org.freedesktop.DBus.Introspectable", "Introspect"),
        ("org.freedesktop.DBus.Properties", "GetAll"),
        ("org.freedesktop.DBus.Peer", "Ping"),
    ],
)
@pytest.mark.usefixtures("stand_in_broker")
async def test_nobody_may_call_the_broker_interfaces(
    system_bus: SystemBus, interface: str, member: str
) -> None:
    assert await call_as_nobody(system_bus, interface, member) is None


@pytest.mark.root
@pytest.mark.usefixtures("stand_in_broker")
async def test_nobody_may_not_call_other_interfaces_on_the_broker(
    system_bus: SystemBus,
) -> None:
    error = await call_as_nobody(system_bus, "org.example.NotExported", "Anything")
    assert error == "org.freedesktop.DBus.Error.AccessDenied"


async def emit_event(bus: MessageBus, sequence: int) -> None:
    await bus.send(
        Message.new_signal(
            PATH, IFACE, "Event", "tsssa{ss}a{sv}", [sequence, "add", "net", "/x", {}, {}]
        )
    )


@pytest.mark.root
async def test_collector_and_nobody_receive_broker_signals(
    system_bus: SystemBus, stand_in_broker: MessageBus
) -> None:
    argv, env = python_argv_for_nobody()
    listener = await asyncio.create_subprocess_exec(
        *argv,
        "-c",
        LISTENER,
        stdout=subprocess.PIPE,
        **subprocess_kwargs(system_bus.address, env),
    )
    try:
        assert listener.stdout is not None
        async with asyncio.timeout(30):
            assert await listener.stdout.readline() == b"ready\n"
        async with SignalCollector(system_bus.address) as collector:
            await emit_event(stand_in_broker, 7)
            events = await collector.wait_for_count(1)
        async with asyncio.timeout(30):
            out = (await listener.stdout.read()).decode()
    finally:
        if listener.returncode is None:
            listener.kill()
        await listener.wait()
    assert events[0].body[:2] == [7, "add"]
    assert events[0].sender == stand_in_broker.unique_name
    assert out.startswith("[7, 'add'")


def test_skip_or_fail_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        skip_or_fail("needs something")


def test_skip_or_fail_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        skip_or_fail("needs something")


def run_root_test_as_nobody(ci: str | None) -> subprocess.CompletedProcess[str]:
    """Run one root-marked test of this file as nobody, the way a CI runner without root would."""
    argv, env = python_argv_for_nobody()
    env |= {"PYTHONDONTWRITEBYTECODE": "1"} | ({"CI": ci} if ci is not None else {})
    test = "tests/test_support.py::test_root_can_own_broker_name"
    command = [*argv, "-m", "pytest", "-p", "no:cacheprovider", "-rsE", test]
    return run_as_nobody(command, env=env, cwd=str(checkout_for_nobody()), timeout=120)


@pytest.mark.root
def test_root_marker_skips_without_root_outside_ci() -> None:
    result = run_root_test_as_nobody(ci=None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "needs root" in result.stdout


@pytest.mark.root
def test_root_marker_fails_without_root_under_ci() -> None:
    result = run_root_test_as_nobody(ci="true")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout
    assert "CI is set" in result.stdout


def test_parse_uevent_reads_kernel_datagrams_only() -> None:
    kernel = b"add@/devices/virtual/net/x\0ACTION=add\0SUBSYSTEM=net\0INTERFACE=x\0SEQNUM=5\0"
    assert parse_uevent(kernel) == {
        "ACTION": "add",
        "SUBSYSTEM": "net",
        "INTERFACE": "x",
        "SEQNUM": "5",
    }
    assert parse_uevent(b"libudev\0\xfe\xed\xca\xfe") is None


@pytest.mark.root
def test_uevent_socket_sees_ifb_add_in_its_namespace(netns: NetNS) -> None:
    with netns_uevent_socket(netns.name) as sock:
        netns.add_ifbs(["tione"])
        (event,) = collect_uevents(sock, is_net_event("add", ["tione"]), 1)
    assert event["DEVPATH"].endswith("/net/tione")
    assert int(event["SEQNUM"]) > 0


@pytest.mark.root
def test_uevent_socket_does_not_see_other_namespaces(netns: NetNS) -> None:
    seen: list[Uevent] = []

    def mine(event: Uevent) -> bool:
        seen.append(event)
        return is_net_event("add", ["timine"])(event)

    with NetNS(tag="other") as other, netns_uevent_socket(netns.name) as sock:
        other.add_ifbs(["tiother"])  # its uevent is broadcast before `ip` returns
        netns.add_ifbs(["timine"])
        collect_uevents(sock, mine, 1)
    assert not [e for e in seen if e.get("INTERFACE") == "tiother"]


@pytest.mark.root
def test_burst_gives_one_add_per_link_and_group_delete_removes_all(netns: NetNS) -> None:
    with netns_uevent_socket(netns.name) as sock:
        names = netns.burst(200, prefix="ti")
        added = collect_uevents(sock, is_net_event("add", names), len(names))
        netns.del_group(netns.last_group)
        removed = collect_uevents(sock, is_net_event("remove", names), len(names))
    assert sorted(e["INTERFACE"] for e in added) == sorted(names)
    assert sorted(e["INTERFACE"] for e in removed) == sorted(names)


def test_documented_steps_are_a_sections_scripts_and_named_files(tmp_path: Path) -> None:
    doc = tmp_path / "page.md"
    doc.write_text(
        "# Page\n\n## Set up\n\n```toml\n# /etc/a.toml\nk = 1\n```\n\n"
        "```\n# not a path\n```\n\n### Deeper\n\n```sh\necho one\n# ## not a heading\n```\n\n"
        "```json\n{}\n```\n\n## Next\n\n```sh\necho two\n```\n"
    )
    assert documented_steps(doc, "Set up") == [
        Step("# /etc/a.toml\nk = 1\n", "/etc/a.toml"),
        Step("echo one\n# ## not a heading\n"),
    ]
    assert documented_steps(doc, "Deeper") == [Step("echo one\n# ## not a heading\n")]
    with pytest.raises(AssertionError, match="no section"):
        documented_steps(doc, "Missing")


def test_a_broker_process_leaves_no_directory_behind(tmp_path: Path) -> None:
    """Its log and notify socket live in a /tmp directory: gone at close() (the log still
    readable), and gone for a broker never closed once it is collected."""
    closed = BrokerProcess(None, tmp_path / "state")
    closed.log_path.write_text("what it logged\n")
    closed.close()
    assert not closed.log_path.parent.exists()
    assert closed.log() == "what it logged\n"
    forgotten = BrokerProcess(None, tmp_path / "state")
    directory = forgotten.log_path.parent
    assert directory.is_dir()
    del forgotten
    gc.collect()
    assert not directory.exists()
