"""The test infrastructure itself works: bus, policy, namespaces, kernel uevents."""

from __future__ import annotations

import pytest
from dbus_fast import BusType, RequestNameReply
from dbus_fast.aio import MessageBus
from support.bus import SystemBus
from support.netns import NetNS, collect_uevents, is_net_event, netns_uevent_socket

BROKER = "org.pnp.Broker"


@pytest.mark.root
async def test_root_can_own_broker_name(system_bus: SystemBus) -> None:
    bus = await MessageBus(bus_address=system_bus.address, bus_type=BusType.SYSTEM).connect()
    try:
        assert await bus.request_name(BROKER) == RequestNameReply.PRIMARY_OWNER
        assert system_bus.name_has_owner(BROKER)
    finally:
        bus.disconnect()


@pytest.mark.root
def test_ifb_add_events_seen_in_netns(netns: NetNS) -> None:
    with netns_uevent_socket(netns.name) as sock:
        names = netns.burst(200, prefix="ti")
        events = collect_uevents(sock, is_net_event("add", names), len(names))
    assert sorted(e["INTERFACE"] for e in events) == sorted(names)
