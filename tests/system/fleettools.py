"""The fleet in a machine, set up as docs/fleet.md says: Debian's mosquitto under its own unit,
the daemon's feed, ``pnpbroker-forward.service`` enabled, ``pnpbroker fleet-monitor`` as the
persistent-session subscriber (a transient unit writing its ``--json`` lines to the shared
directory).

What the docs leave to the fleet's administrator the tests do first: the certificates (a CA
made with openssl on the host), the MQTT broker's name (``mqtt.example.net`` in /etc/hosts),
and the machine's host name (``web-17``, the docs' example host).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support import REPO_ROOT
from support.container import SHARED, Machine, wait_for
from support.docsteps import Step, documented_steps
from support.mosquitto import CertificateAuthority

from system.systemtools import reset_broker, unit_property

DOC = REPO_ROOT / "docs" / "fleet.md"
HOST = "web-17"
MQTT_NAME = "mqtt.example.net"
MONITOR = "fleet-monitor"
FORWARD = "pnpbroker-forward.service"
SECRETS = "/etc/pnpbroker/forward.secrets"
Line = dict[str, Any]


def take(booted: Machine, steps: list[Step]) -> None:
    """Each step as a user would: a file's content added to it, a script run with ``sh -e``."""
    for step in steps:
        if step.path:
            booted.run(f'mkdir -p "$(dirname {step.path})" && cat >> {step.path}', input=step.text)
        else:
            booted.run(["sh", "-e", "-c", step.text])


def put(booted: Machine, path: str, content: str, mode: str = "644") -> None:
    booted.run(f"mkdir -p $(dirname {path}) && cat > {path} && chmod {mode} {path}", input=content)


def give_certificates(booted: Machine, ca_dir: Path) -> None:
    """The fleet CA's files where docs/fleet.md says they are: the server's for mosquitto
    (owned by it), the host's and the monitor's in /etc/pnpbroker (root's until the docs' steps
    give the host's key to the forwarder)."""
    ca = CertificateAuthority(ca_dir)
    server = ca.issue(MQTT_NAME)
    host = ca.issue(HOST, client=True)
    monitor = ca.issue(MONITOR, client=True)
    files = {
        "/etc/mosquitto/ca.pem": (ca.cert, "644"),
        "/etc/mosquitto/server.pem": (server.cert, "644"),
        "/etc/mosquitto/server.key": (server.key, "600"),
        "/etc/pnpbroker/fleet-ca.pem": (ca.cert, "644"),
        f"/etc/pnpbroker/{HOST}.pem": (host.cert, "644"),
        f"/etc/pnpbroker/{HOST}.key": (host.key, "600"),
        f"/etc/pnpbroker/{MONITOR}.pem": (monitor.cert, "644"),
        f"/etc/pnpbroker/{MONITOR}.key": (monitor.key, "600"),
    }
    for path, (source, mode) in files.items():
        put(booted, path, source.read_text(), mode)
    booted.run(["chown", "mosquitto:", "/etc/mosquitto/server.key"])


class MonitorUnit:
    """``pnpbroker fleet-monitor --json`` in the machine as a transient ``Type=notify`` unit:
    ``systemd-run`` returns once it is subscribed (READY=1)."""

    def __init__(self, booted: Machine, program: str) -> None:
        self.booted = booted
        self.unit = f"pnpt-fleet-monitor-{secrets.token_hex(4)}"
        self.output = booted.shared / f"{self.unit}.jsonl"
        argv = [program, "fleet-monitor", "-c", f"/etc/pnpbroker/{MONITOR}.toml", "--json"]
        booted.run([
            "systemd-run", f"--unit={self.unit}", "--quiet", "-p", "Type=notify",
            "-p", f"StandardOutput=file:{SHARED / self.output.name}",
            "-p", "StandardError=journal", *argv,
        ])  # fmt: skip

    def lines(self) -> list[Line]:
        if not self.output.exists():
            return []
        text = self.output.read_text().split("\n")[:-1]  # the last may be half written
        return [json.loads(line) for line in text if line.strip()]

    def events(self) -> list[Line]:
        return [line for line in self.lines() if "report" not in line]

    def reports(self) -> list[Line]:
        return [line for line in self.lines() if "report" in line]

    def wait(self, what: str, done: Callable[[list[Line]], bool], timeout: float = 300) -> None:
        wait_for(what, lambda: done(self.events()), timeout)

    def stop(self) -> None:
        self.booted.run(["systemctl", "stop", self.unit], check=False)


@dataclass
class Fleet:
    booted: Machine
    program: str
    monitor: MonitorUnit
    #: The forwarder unit's state as the route left it, before the docs' steps.
    installed_state: str

    def forwarder_pid(self) -> int:
        return int(unit_property(self.booted, FORWARD, "MainPID"))

    def journal(self, *args: str) -> str:
        """The forwarder's journal (its lines only: ``-o cat``)."""
        return self.booted.journal("-u", FORWARD, "-o", "cat", *args)


def program_of(booted: Machine) -> str:
    """The pnpbroker the route installed: the one the forwarder's unit starts."""
    found = re.search(r"path=(\S+)", unit_property(booted, FORWARD, "ExecStart"))
    assert found, "no ExecStart in the forwarder's unit"
    return found[1]


@contextlib.contextmanager
def fleet(booted: Machine, ca_dir: Path) -> Iterator[Fleet]:
    """The docs' fleet set up in ``booted`` (the broker reset first); undone afterwards."""
    reset_broker(booted)
    state = unit_property(booted, FORWARD, "UnitFileState")
    booted.run(f"hostname {HOST} && echo '127.0.0.1 {MQTT_NAME}' >> /etc/hosts")
    give_certificates(booted, ca_dir)
    take(booted, documented_steps(DOC, "The MQTT broker"))
    take(booted, documented_steps(DOC, "A fleet monitor"))
    program = program_of(booted)
    monitor = MonitorUnit(booted, program)
    try:
        take(booted, documented_steps(DOC, "Each host"))
        yield Fleet(booted, program, monitor, state)
    finally:
        monitor.stop()
        booted.run(
            f"systemctl disable --now {FORWARD}; systemctl reset-failed {FORWARD}; "
            "systemctl stop mosquitto; rm -f /etc/mosquitto/conf.d/pnpbroker.conf; "
            f"hostname pnpt; sed -i '/{MQTT_NAME}/d' /etc/hosts",
            check=False,
        )
        reset_broker(booted)
        booted.run(["systemctl", "restart", "pnpbroker.service"])


def account(booted: Machine, name: str) -> list[str]:
    return booted.run(["getent", "passwd", name]).stdout.strip().split(":")


def assert_system_user(booted: Machine) -> None:
    """pnpbroker-forward made by systemd-sysusers from the installed file: a system user
    with its own group, no login, no home."""
    booted.run(["test", "-s", "/usr/lib/sysusers.d/pnpbroker.conf"])
    _, _, uid, gid, _, home, shell = account(booted, "pnpbroker-forward")
    group = booted.run(["getent", "group", "pnpbroker-forward"]).stdout.split(":")
    assert int(uid) < 1000
    assert group[2] == gid
    assert (home, shell) == ("/", "/usr/sbin/nologin")


def host_sequences(events: list[Line]) -> list[int]:
    return [int(e["sequence"]) for e in events if e["host"] == HOST]


def assert_whole(monitor: MonitorUnit) -> list[int]:
    """The host's sequence arrived in order, each once, with nothing missing; returns it."""
    seqs = host_sequences(monitor.events())
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "out of order or missing"
    bad = [r for r in monitor.reports() if r["report"] in ("gap", "lost", "late")]
    assert not bad, bad
    return seqs


def links_arrived(names: set[str], action: str) -> Callable[[list[Line]], bool]:
    def check(events: list[Line]) -> bool:
        got = {
            e["properties"].get("INTERFACE")
            for e in events
            if e["subsystem"] == "net" and e["action"] == action
        }
        return names <= got

    return check
