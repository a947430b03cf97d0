"""The fleet forwarder against a real mosquitto: every event, in order, acknowledged before the
``forwarded`` cursor moves; across a dead MQTT broker, a cut network, and bad credentials.

The broker runs in the test's network namespace (real ifb uevents) with its feed socket;
``pnpbroker forward`` beside it; mosquitto in the same namespace (or, for the cut, in another
one behind a veth pair); ``pnpbroker fleet-monitor`` is the persistent-session subscriber whose
view is asserted. Host events leak into the namespace and are forwarded too: the checks are
that each host's sequence arrives whole and in order, and that the test's links are in it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.fleet import FleetMonitorProcess, Line, sequences, write_toml
from support.mosquitto import Mosquitto
from support.netns import NetNS

pytestmark = pytest.mark.root
HOST = "pnpt-host-a"


@dataclass
class Fleet:
    tmp: Path
    netns: NetNS
    broker: BrokerProcess
    mqtt: Mosquitto
    feed: Path

    def forwarder(self, **settings: object) -> BrokerProcess:
        values = {
            "broker": self.mqtt.address,
            "port": self.mqtt.port,
            "host": HOST,
            "feed": str(self.feed),
            "keepalive": 5,
            **settings,
        }
        conf = write_toml(
            self.tmp / f"forward-{len(list(self.tmp.glob('forward-*')))}.toml", values
        )
        return BrokerProcess(None, self.tmp, ["-c", str(conf)], netns=self.netns, command="forward")

    def monitor(self, **settings: object) -> FleetMonitorProcess:
        values = {
            "broker": self.mqtt.address,
            "port": self.mqtt.port,
            "client_id": "pnpt-fleet",
            "keepalive": 5,
            **settings,
        }
        conf = write_toml(self.tmp / "monitor.toml", values)
        return FleetMonitorProcess(conf, self.netns)

    def journal(self) -> sqlite3.Connection:
        return sqlite3.connect(self.tmp / "state" / "journal.sqlite")


@pytest.fixture
def fleet(system_bus: SystemBus, netns: NetNS, tmp_path: Path) -> Iterator[Fleet]:
    feed = tmp_path / "feed.sock"
    conf = write_toml(tmp_path / "broker.toml", {"forward_socket": str(feed)})
    args = ["--no-program", "-c", str(conf)]
    with (
        Mosquitto(tmp_path / "mosquitto", netns=netns) as mqtt,
        BrokerProcess(system_bus, tmp_path / "state", args, netns=netns) as broker,
    ):
        yield Fleet(tmp_path, netns, broker, mqtt, feed)


def links_seen(names: list[str], action: str = "add") -> Callable[[list[Line]], bool]:
    wanted = set(names)

    def check(events: list[Line]) -> bool:
        got = {
            e["properties"].get("INTERFACE")
            for e in events
            if e["action"] == action and e["subsystem"] == "net"
        }
        return wanted <= got

    return check


def assert_whole(monitor: FleetMonitorProcess) -> list[int]:
    """The host's sequence arrived 1, 2, 3, ... with nothing missing; returns it."""
    seqs = sequences(monitor.events, HOST)
    assert seqs == list(range(1, len(seqs) + 1)), "out of order or missing"
    assert not [r for r in monitor.reports if r["report"] in ("gap", "lost")], monitor.reports
    return seqs


def test_every_event_forwarded_in_order(fleet: Fleet) -> None:
    with fleet.monitor() as monitor, fleet.forwarder() as forwarder:
        names = fleet.netns.burst(300, prefix="fa")
        monitor.wait_for(links_seen(names))
        fleet.netns.del_group(fleet.netns.last_group)
        monitor.wait_for(links_seen(names, "remove"))
        seqs = assert_whole(monitor)
        assert forwarder.stop() == 0
    first = monitor.events[0]
    assert set(first) == {
        "host", "sequence", "journal_id", "action", "subsystem", "devpath", "properties",
        "outcome", "time",
    }  # fmt: skip
    fleet.broker.stop()
    with fleet.journal() as db:
        (forwarded,) = db.execute("SELECT seq FROM cursors WHERE name='forwarded'").fetchone()
    assert forwarded >= seqs[-1], forwarder.log() + fleet.broker.log()


def test_mosquitto_stopped_mid_burst(fleet: Fleet) -> None:
    with fleet.monitor() as monitor, fleet.forwarder():
        names = fleet.netns.burst(2000, prefix="fk")
        monitor.wait_for(lambda events: len(events) >= 100)
        fleet.mqtt.stop()
        fleet.mqtt.start()
        monitor.wait_for(links_seen(names))
        assert_whole(monitor)
