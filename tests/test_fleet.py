"""The fleet forwarder against a real mosquitto: every event, in order, acknowledged before the
``forwarded`` cursor moves; across a dead MQTT broker, a cut network, and bad credentials.

The broker runs in the test's network namespace (real ifb uevents) with its feed socket;
``pnpbroker forward`` beside it; mosquitto in the same namespace (or, for the cut, in another
one behind a veth pair); ``pnpbroker fleet-monitor`` is the persistent-session subscriber whose
view is asserted. Host events leak into the namespace and are forwarded too: the checks are
that each host's sequence arrives whole and in order, and that the test's links are in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.collector import connect, disconnect
from support.coreclient import statistics
from support.fleet import FleetMonitorProcess, Line, retained, sequences, write_toml
from support.mosquitto import CertificateAuthority, Mosquitto, TlsFiles
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


@contextlib.contextmanager
def running_fleet(bus: SystemBus, netns: NetNS, tmp: Path, mosquitto: Mosquitto) -> Iterator[Fleet]:
    feed = tmp / "feed.sock"
    conf = write_toml(tmp / "broker.toml", {"forward_socket": str(feed)})
    args = ["--no-program", "-c", str(conf)]
    with (
        mosquitto as mqtt,
        BrokerProcess(bus, tmp / "state", args, netns=netns) as broker,
    ):
        yield Fleet(tmp, netns, broker, mqtt, feed)


@pytest.fixture
def fleet(system_bus: SystemBus, netns: NetNS, tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(
        system_bus, netns, tmp_path, Mosquitto(tmp_path / "mosquitto", netns=netns)
    ) as running:
        yield running


def wait_log(process: BrokerProcess, text: str, timeout: float = 60.0, count: int = 1) -> None:
    """Until ``text`` is in the process's log ``count`` times (or it exited)."""
    deadline = time.monotonic() + timeout
    while process.log().count(text) < count:
        if time.monotonic() > deadline or (process.proc and process.proc.poll() is not None):
            raise AssertionError(f"no {text!r} in the log:\n{process.log()}")
        time.sleep(0.1)


def wait_journalled(fleet: Fleet, devpaths: str, count: int, timeout: float = 120.0) -> None:
    """Until the journal holds ``count`` events whose datagram contains ``devpaths``."""
    deadline = time.monotonic() + timeout
    sql = "SELECT COUNT(*) FROM events WHERE instr(uevent, ?)"
    while True:
        with contextlib.closing(fleet.journal()) as db:
            if db.execute(sql, (devpaths.encode(),)).fetchone()[0] >= count:
                return
        assert time.monotonic() < deadline, f"the journal never held {count} {devpaths} events"
        time.sleep(0.05)


async def forwarded_statistic(fleet: Fleet) -> int:
    """The broker's Statistics["forwarded"], over the bus."""
    assert fleet.broker.bus is not None
    bus = await connect(fleet.broker.bus.address)
    try:
        return (await statistics(bus))["forwarded"]
    finally:
        await disconnect(bus)


def journalled(fleet: Fleet) -> int:
    with contextlib.closing(fleet.journal()) as db:
        return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def cursor(fleet: Fleet, name: str = "forwarded") -> int:
    with contextlib.closing(fleet.journal()) as db:
        row = db.execute("SELECT seq FROM cursors WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else 0  # the row is written at the first save


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
        assert asyncio.run(forwarded_statistic(fleet)) >= seqs[-1]
    first = monitor.events[0]
    assert set(first) == {
        "host", "sequence", "journal_id", "action", "subsystem", "devpath", "properties",
        "outcome", "time",
    }  # fmt: skip
    fleet.broker.stop()
    assert cursor(fleet) >= seqs[-1], forwarder.log() + fleet.broker.log()


def test_mosquitto_stopped_mid_burst(fleet: Fleet) -> None:
    with fleet.monitor() as monitor, fleet.forwarder():
        names = fleet.netns.burst(2000, prefix="fk")
        monitor.wait_for(lambda events: len(events) >= 100)
        fleet.mqtt.stop()
        fleet.mqtt.start()
        monitor.wait_for(links_seen(names))
        assert_whole(monitor)


def settled(fleet: Fleet, monitor: FleetMonitorProcess) -> None:
    """Until everything the forwarder was sent so far is published: a new link's event came."""
    name = f"fs{len(monitor.events)}"
    fleet.netns.add_ifbs([name])
    monitor.wait_for(links_seen([name]))


def test_devices_retained_and_cleared_on_remove(fleet: Fleet) -> None:
    topic = f"pnpbroker/{HOST}/devices/devices/virtual/net/"
    with fleet.monitor() as monitor, fleet.forwarder():
        names = fleet.netns.burst(5, prefix="fr")
        settled(fleet, monitor)
        devices = retained(fleet.netns, fleet.mqtt.port, "pnpbroker/+/devices/#")
        assert topic + "lo" in devices  # from the table's sysfs scan
        for name in names:
            entry = json.loads(devices[topic + name])
            assert entry["devpath"] == f"/devices/virtual/net/{name}"
            assert entry["properties"]["INTERFACE"] == name
            assert entry["host"] == HOST
        fleet.netns.del_group(fleet.netns.last_group)
        settled(fleet, monitor)
        devices = retained(fleet.netns, fleet.mqtt.port, "pnpbroker/+/devices/#")
        assert not [t for t in devices if t.startswith(topic + "fr")], devices
        assert topic + "lo" in devices
        later = fleet.netns.burst(3, prefix="fw")
        settled(fleet, monitor)
    fleet.netns.del_group(fleet.netns.last_group)  # while no forwarder runs
    with fleet.monitor() as monitor, fleet.forwarder():
        monitor.wait_for(links_seen(later, "remove"))
        settled(fleet, monitor)
        devices = retained(fleet.netns, fleet.mqtt.port, "pnpbroker/+/devices/#")
        assert not [t for t in devices if t.startswith(topic + "fw")], devices


def test_broker_killed_mid_burst_the_forwarder_sends_nothing_twice(fleet: Fleet) -> None:
    with fleet.monitor() as monitor, fleet.forwarder() as forwarder:
        assert forwarder.proc is not None
        forwarder.proc.send_signal(signal.SIGSTOP)  # the burst waits in the journal
        names = fleet.netns.burst(1500, prefix="fk")
        wait_journalled(fleet, "/fk", 3 * len(names))  # (a kill loses what its socket holds)
        forwarder.proc.send_signal(signal.SIGCONT)
        monitor.wait_for(lambda events: len(events) >= 100)
        fleet.broker.kill()  # its forwarded cursor is saved lazily: it sends some again
        fleet.broker.start()
        later = fleet.netns.burst(100, prefix="fl")
        monitor.wait_for(links_seen(names + later))
        assert_whole(monitor)
        assert not monitor.reports, monitor.reports  # the forwarder skipped what paho had
        wait_log(forwarder, "broker feed connected", count=2)


def test_a_kernel_overflow_reaches_the_fleet_at_its_place(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    feed = tmp_path / "feed.sock"
    conf = write_toml(tmp_path / "broker.toml", {"forward_socket": str(feed)})
    args = ["--no-program", "-c", str(conf), "--receive-buffer", "4096"]
    with (
        Mosquitto(tmp_path / "mosquitto", netns=netns) as mqtt,
        BrokerProcess(system_bus, tmp_path / "state", args, netns=netns) as broker,
    ):
        fleet = Fleet(tmp_path, netns, broker, mqtt, feed)
        with fleet.monitor() as monitor, fleet.forwarder():
            broker.send_signal(signal.SIGSTOP)  # a burst overflows its tiny buffer
            fleet.netns.burst(200, prefix="fo")
            broker.send_signal(signal.SIGCONT)
            after = fleet.netns.burst(5, prefix="fa")  # after the loss: they come through
            monitor.wait_for(links_seen(after))
            losses = [r for r in monitor.reports if r["report"] == "lost"]
    assert len(losses) >= 1, monitor.reports
    assert all(r["first"] == r["last"] for r in losses)  # each a journal entry of its own
    whole = sorted([*sequences(monitor.events, HOST), *(r["first"] for r in losses)])
    assert whole == list(range(1, len(whole) + 1))
    assert not [r for r in monitor.reports if r["report"] in ("gap", "repeat")], monitor.reports


@pytest.fixture
def far_netns() -> Iterator[NetNS]:
    """Where mosquitto runs for the cut: another namespace, behind a veth pair."""
    with NetNS(tag="mqtt") as ns:
        yield ns


def test_network_cut_and_restored(
    system_bus: SystemBus, netns: NetNS, far_netns: NetNS, tmp_path: Path
) -> None:
    here, there = "10.251.0.1", "10.251.0.2"
    netns.ip(
        "link", "add", "pnpv0", "type", "veth", "peer", "name", "pnpv1", "netns", far_netns.name
    )
    netns.ip("addr", "add", f"{here}/24", "dev", "pnpv0")
    far_netns.ip("addr", "add", f"{there}/24", "dev", "pnpv1")
    netns.ip("link", "set", "pnpv0", "up")
    far_netns.ip("link", "set", "pnpv1", "up")
    mqtt = Mosquitto(tmp_path / "mosquitto", address=there, netns=far_netns)
    with (
        running_fleet(system_bus, netns, tmp_path, mqtt) as fleet,
        fleet.monitor() as monitor,
        fleet.forwarder() as forwarder,
    ):
        names = fleet.netns.burst(1000, prefix="fc")
        monitor.wait_for(lambda events: len(events) >= 100)
        netns.ip("link", "set", "pnpv0", "down")
        wait_log(forwarder, "connection to mqtt://10.251.0.2:1883 lost")
        later = fleet.netns.burst(200, prefix="fd")  # journalled while the network is away
        netns.ip("link", "set", "pnpv0", "up")
        monitor.wait_for(links_seen(names + later))
        assert_whole(monitor)


def test_wrong_password_is_a_clear_error_and_journalling_goes_on(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    users = {HOST: "right", "pnpt-fleet": "watch"}
    mqtt = Mosquitto(tmp_path / "mosquitto", netns=netns, passwords=users)
    wrong, right, watch = (
        write_toml(tmp_path / f"{name}.secrets", {"username": user, "password": password})
        for name, user, password in (
            ("wrong", HOST, "wrong"), ("right", HOST, "right"), ("watch", "pnpt-fleet", "watch")
        )
    )  # fmt: skip
    for path in (wrong, right, watch):
        path.chmod(0o600)
    with running_fleet(system_bus, netns, tmp_path, mqtt) as fleet:
        with fleet.forwarder(secrets=str(wrong)) as forwarder:
            # mosquitto answers a wrong password with 0x87 (not authorized), not 0x86
            wait_log(forwarder, "refused us (client id 'pnpt-host-a'): Not authorized; check the")
            names = fleet.netns.burst(50, prefix="fp")
            wait_journalled(fleet, "/fp", 3 * len(names))
            assert cursor(fleet) == 0
            assert forwarder.proc is not None
            assert forwarder.proc.poll() is None  # still trying
        with (
            fleet.monitor(secrets=str(watch)) as monitor,
            fleet.forwarder(secrets=str(right)),
        ):
            monitor.wait_for(links_seen(names))  # journalled meanwhile, forwarded now
            assert_whole(monitor)


def test_secrets_others_can_read_are_refused(tmp_path: Path) -> None:
    secrets = write_toml(tmp_path / "secrets.toml", {"username": "u", "password": "p"})
    secrets.chmod(0o644)
    conf = write_toml(tmp_path / "forward.toml", {"broker": "127.0.0.1", "secrets": str(secrets)})
    result = subprocess.run(
        [sys.executable, "-m", "pnpbroker", "forward", "-c", str(conf)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"is mode 0644: others could read the password; chmod 600 {secrets}" in result.stderr


#: The ACL docs/fleet.md documents: each host writes only below its own name.
ACL = """\
# The fleet's monitors read every host's events and status.
user pnpt-fleet
topic read pnpbroker/#

# Each host writes only its own topics; %u is its user name, here its certificate's CN.
pattern write pnpbroker/%u/#
"""


@pytest.fixture
def pki(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


def tls_fleet(
    bus: SystemBus, netns: NetNS, tmp: Path, pki: CertificateAuthority
) -> contextlib.AbstractContextManager[Fleet]:
    server = pki.issue("mqtt-server", ips=("127.0.0.1",))
    mqtt = Mosquitto(tmp / "mosquitto", port=8883, netns=netns, tls=server, acl=ACL)
    return running_fleet(bus, netns, tmp, mqtt)


def tls_settings(files: TlsFiles) -> dict[str, object]:
    return {"ca": str(files.ca), "cert": str(files.cert), "key": str(files.key)}


def test_acl_one_host_cannot_publish_as_another(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path, pki: CertificateAuthority
) -> None:
    host_a = tls_settings(pki.issue(HOST, client=True))
    with (
        tls_fleet(system_bus, netns, tmp_path, pki) as fleet,
        fleet.monitor(**tls_settings(pki.issue("pnpt-fleet", client=True))) as monitor,
    ):
        with fleet.forwarder(**host_a) as forwarder:
            names = fleet.netns.burst(20, prefix="fl")
            monitor.wait_for(links_seen(names))
            assert forwarder.stop() == 0
        assert_whole(monitor)
        with fleet.forwarder(**host_a, host="pnpt-host-b") as impostor:
            fleet.netns.burst(20, prefix="fi")
            assert impostor.wait() == 2
            fleet.broker.stop()
        assert "the MQTT broker refused event" in impostor.log()
        assert "Not authorized" in impostor.log()
        assert {e["host"] for e in monitor.events} == {HOST}
        assert cursor(fleet) == sequences(monitor.events, HOST)[-1]


def test_bad_certificates_are_clear_errors_and_journalling_goes_on(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path, pki: CertificateAuthority
) -> None:
    rogue = CertificateAuthority(tmp_path / "rogue", name="pnpt-rogue-ca")
    trusts_rogue = {**tls_settings(pki.issue(HOST, client=True)), "ca": str(rogue.cert)}
    signed_by_rogue = {**tls_settings(rogue.issue(HOST, client=True)), "ca": str(pki.cert)}
    with tls_fleet(system_bus, netns, tmp_path, pki) as fleet:
        with fleet.forwarder(**trusts_rogue) as forwarder:
            wait_log(
                forwarder, "TLS: the certificate of mqtts://127.0.0.1:8883: self-signed certificate"
            )
        with fleet.forwarder(**signed_by_rogue) as forwarder:
            wait_log(forwarder, "did it refuse our certificate?")
            fleet.netns.burst(50, prefix="fb")
            fleet.broker.stop()
        assert journalled(fleet) >= 150
        assert cursor(fleet) == 0
