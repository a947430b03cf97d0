"""The bus keeper against a hostile bus: a name the policy refuses, a daemon whose
authentication fails, an address where no bus (or something else) listens. Each time the broker
logs, retries with backoff, holds at most one connection, and goes on running programs; once
the bus is usable it takes the name and becomes ready. A bus address that cannot even be parsed
is a bad configuration (exit 2), found before anything runs."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.coreclient import write_program
from support.netns import NetNS

pytestmark = pytest.mark.root

#: How long the policy refuses the name (the issue's figure: longer than any backoff step).
REFUSED_SECONDS = 60.0


def wait_for_log(broker: BrokerProcess, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in broker.log():
        assert broker.running(), broker.log()
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{broker.log()}"
        time.sleep(0.1)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for_lines(path: Path, text: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while path.read_text().count(text) < count:
        assert time.monotonic() < deadline, f"{count} x {text!r} not in {path.read_text()!r}"
        time.sleep(0.1)


@pytest.fixture
def refusing_bus() -> Iterator[SystemBus]:
    """A system-like bus without our policy file: root may not own org.pnp.Broker."""
    with SystemBus(policy=False) as bus:
        yield bus


def test_a_name_refused_for_a_minute_is_retried_then_taken(
    refusing_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    bus = refusing_bus
    ran = tmp_path / "ran.log"
    program = write_program(tmp_path, ran)
    broker = BrokerProcess(bus, tmp_path / "state", ["-p", str(program)], netns=netns)
    try:
        broker.start(wait_ready=False)
        wait_for_log(broker, "not allowed to own")
        netns.add_ifbs(["refused0"])
        deadline = time.monotonic() + REFUSED_SECONDS
        most = 0
        while time.monotonic() < deadline:
            assert broker.running(), broker.log()
            most = max(most, bus.connections_of(broker.pid))
            time.sleep(1)
        assert most <= 1, f"{most} connections held while the name was refused"
        wait_for_lines(ran, "end", 3)  # the programs ran meanwhile: net and its two queues
        assert not bus.name_has_owner("org.pnp.Broker")
        bus.policy = True
        bus.reload()
        broker.wait_for_state("READY=1", 60)
        assert bus.name_has_owner("org.pnp.Broker")
        log = broker.log()
        # Loud, not a flood: the first refusal, and a reminder now and then.
        assert 1 <= log.count("not allowed to own") <= 4, log
        assert broker.stop() == 0, broker.log()
    finally:
        broker.close()


def test_authentication_failures_are_retried_until_a_real_bus_answers(
    netns: NetNS, tmp_path: Path
) -> None:
    """A daemon that offers only DBUS_COOKIE_SHA1 rejects dbus-fast's EXTERNAL; then the same
    address gets a daemon that accepts it."""
    with SystemBus(auth="DBUS_COOKIE_SHA1") as bus:
        broker = BrokerProcess(bus, tmp_path / "state", ["--no-program"], netns=netns)
        try:
            broker.start(wait_ready=False)
            wait_for_log(broker, "authentication")
            fds = open_fds(broker.pid)
            time.sleep(8)  # a few backoff steps
            assert broker.running(), broker.log()
            assert open_fds(broker.pid) <= fds + 1, "the failed connections leaked"
            bus.crash()
            bus.auth = "EXTERNAL"
            bus.start()
            broker.wait_for_state("READY=1", 60)
            assert bus.name_has_owner("org.pnp.Broker")
            assert broker.stop() == 0, broker.log()
        finally:
            broker.close()


@contextmanager
def not_a_bus(path: Path) -> Iterator[None]:
    """A Unix socket that accepts and answers garbage, as a wrong address might lead to."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        server.close()
        path.unlink()


def test_an_address_with_no_bus_or_not_a_bus_is_retried(netns: NetNS, tmp_path: Path) -> None:
    bus = SystemBus()
    broker = BrokerProcess(bus, tmp_path / "state", ["--no-program"], netns=netns)
    try:
        broker.start(wait_ready=False)  # nothing at the address yet: it vanished
        wait_for_log(broker, "unreachable")
        with not_a_bus(bus.socket_path):
            fds = open_fds(broker.pid)
            time.sleep(8)
            assert broker.running(), broker.log()
            assert open_fds(broker.pid) <= fds + 1, "the failed connections leaked"
        bus.start()
        broker.wait_for_state("READY=1", 60)
        assert broker.stop() == 0, broker.log()
    finally:
        broker.close()
        bus.stop()


@pytest.mark.parametrize("where", ["option", "environment"])
def test_an_address_that_does_not_parse_is_a_bad_configuration(where: str, tmp_path: Path) -> None:
    garbage = "this is not an address"
    args = ["--no-program", *(["--bus-address", garbage] if where == "option" else [])]
    env = {"DBUS_SYSTEM_BUS_ADDRESS": garbage} if where == "environment" else {}
    broker = BrokerProcess(None, tmp_path / "state", args, env=env)
    try:
        broker.start(wait_ready=False)
        assert broker.wait(60) == 2, broker.log()
    finally:
        broker.close()
    lines = broker.log().strip().splitlines()
    assert len(lines) == 1, lines
    assert "bus_address" in lines[0]
    assert "Traceback" not in broker.log()
