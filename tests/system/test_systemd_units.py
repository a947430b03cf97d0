"""The shipped units under a real systemd (PID 1 of a booted Debian 12 machine).

pnpbroker is installed the way docs/system.md tells a user (pip into a virtualenv, then
``pnpbroker install`` and ``systemctl enable --now``); events are real uevents of ifb links made
in the machine's own network namespace; what clients get is read with ``busctl monitor``
inside, as root would.
"""

from __future__ import annotations

import subprocess
import time

from support.busmonitor import BusMonitor, Event, KernelListener
from support.container import SHARED, Machine, wait_for

from system.systemtools import Bursts, links, program, token, unit_property, use_config

EVENT_SIGNALS = "type='signal',interface='org.pnp.Broker1',member='Event'"


def net_events(events: list[Event], names: set[str], action: str = "add") -> list[Event]:
    return [
        e
        for e in events
        if e.subsystem == "net" and e.action == action and e.properties.get("INTERFACE") in names
    ]


def journal_has(booted: Machine, text: str, *args: str) -> bool:
    return text in booted.journal("-u", "pnpbroker", "-o", "cat", *args)


def test_the_documented_route_leaves_the_broker_running(broker: Machine) -> None:
    assert unit_property(broker, "pnpbroker.service", "ActiveState") == "active"
    assert unit_property(broker, "pnpbroker.socket", "ActiveState") == "active"
    exec_start = unit_property(broker, "pnpbroker.service", "ExecStart")
    assert "path=/opt/pnpbroker/bin/pnpbroker" in exec_start  # what pip installed
    assert unit_property(broker, "pnpbroker.service", "Type") == "notify"
    assert unit_property(broker, "pnpbroker.service", "BusName") == "org.pnp.Broker"
    # The socket systemd made is what the broker reads (not a netlink socket of its own).
    assert journal_has(broker, "using inherited uevent socket on fd 3")
    broker.run(["busctl", "status", "org.pnp.Broker"])


def test_socket_activation_delivers_events_to_busctl_monitor(broker: Machine) -> None:
    """With the service stopped, the socket holds the events and starts the service."""
    broker.run(["systemctl", "stop", "pnpbroker.service"])
    names = {f"sa{token()}{i}" for i in range(3)}
    with BusMonitor(broker, "org.pnp.Broker") as monitor:
        links(broker, sorted(names))
        events = monitor.wait("the links' add events", lambda ev: len(net_events(ev, names)) == 3)
    assert unit_property(broker, "pnpbroker.service", "ActiveState") == "active"
    assert "pnpbroker.socket" in unit_property(broker, "pnpbroker.service", "TriggeredBy")
    sequences = [e.sequence for e in events]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
    links(broker, sorted(names), "del")


def restart_ready_seconds(booted: Machine) -> float:
    """From the start job leaving "inactive" to "active" (READY=1), by systemd's own clock."""
    start = int(unit_property(booted, "pnpbroker.service", "InactiveExitTimestampMonotonic"))
    ready = int(unit_property(booted, "pnpbroker.service", "ActiveEnterTimestampMonotonic"))
    return (ready - start) / 1e6


def test_ten_restarts_during_bursts_lose_nothing(broker: Machine, record_property: object) -> None:
    """Every link event the kernel sent is published once, in a gap-free sequence."""
    kernel = KernelListener(broker)
    ready: list[float] = []
    with BusMonitor(broker, "--match", EVENT_SIGNALS) as monitor:
        with Bursts(broker) as bursts:
            for _ in range(10):
                rounds = bursts.rounds  # each restart lands while a burst is under way
                wait_for("a burst", lambda: bursts.rounds > rounds)  # noqa: B023
                broker.run(["systemctl", "restart", "pnpbroker.service"])
                ready.append(restart_ready_seconds(broker))
        sent = [e for e in kernel.close() if e.get("INTERFACE") in bursts.names]
        # The ground truth is the test's own: if it is short, the test failed, not the broker.
        assert not kernel.overflowed, f"the test's kernel listener overflowed: {kernel.overflowed}"
        wanted = {int(e["SEQNUM"]) for e in sent if e.get("SUBSYSTEM") == "net"}
        missed = 2 * len(bursts.names) - len(wanted)  # an add and a remove for each link
        assert missed == 0, f"the test's kernel listener missed {missed} events"

        def published(events: list[Event]) -> bool:
            return wanted <= {int(e.properties["SEQNUM"]) for e in events}

        events = monitor.wait("every burst event published", published, timeout=600)
    sequences = [e.sequence for e in events]
    repeats = len(sequences) - len(set(sequences))
    first = sequences[0]
    gaps = sorted(set(range(first, max(sequences) + 1)) - set(sequences))
    lost = wanted - {int(e.properties["SEQNUM"]) for e in events}
    figures = {
        "restarts": len(ready),
        "kernel_events": len(wanted),
        "lost": len(lost),
        "repeats": repeats,
        "gaps": len(gaps),
        "ready_seconds": sorted(ready),
    }
    record_property("figures", figures)  # type: ignore[operator]
    print(f"\n[figures] restarts under bursts: {figures}")
    assert (len(ready), len(lost), repeats, gaps) == (10, 0, 0, [])
    assert len(journal_has_starts(broker)) >= 10


def journal_has_starts(booted: Machine) -> list[str]:
    return [
        line
        for line in booted.journal("-u", "pnpbroker", "-o", "cat").splitlines()
        if line.startswith("Started pnpbroker.service")
    ]


def test_reload_rereads_the_configuration(broker: Machine) -> None:
    mark = token()
    prog = program(broker, f"pnpt-reload-{mark}", f'echo "$INTERFACE" >> {SHARED}/{mark}.log\n')
    pid = unit_property(broker, "pnpbroker.service", "MainPID")
    use_config(broker, f'hotplug_program = "{prog}"\n')
    broker.run(["systemctl", "reload", "pnpbroker.service"])
    wait_for("the reload", lambda: journal_has(broker, f"configuration reloaded; program: {prog}"))
    assert unit_property(broker, "pnpbroker.service", "MainPID") == pid  # no restart
    name = f"rl{mark}"
    links(broker, [name])
    log = broker.shared / f"{mark}.log"
    wait_for("the new program to run", lambda: log.exists() and name in log.read_text())
    links(broker, [name], "del")


def test_stop_lets_the_running_program_finish(broker: Machine) -> None:
    mark = token()
    log, release = f"{SHARED}/{mark}.log", f"{SHARED}/{mark}.release"
    body = (
        f'[ "$INTERFACE" = st{mark} ] || exit 0\n'
        f"echo started >> {log}\n"
        f"while [ ! -e {release} ]; do sleep 0.05; done\n"
        f"echo finished >> {log}\n"
    )
    use_config(broker, f'hotplug_program = "{program(broker, f"pnpt-stop-{mark}", body)}"\n')
    broker.run(["systemctl", "restart", "pnpbroker.service"])
    with BusMonitor(broker, "--match", EVENT_SIGNALS) as monitor:
        links(broker, [f"st{mark}"])
        host_log = broker.shared / f"{mark}.log"
        wait_for("the program to start", lambda: host_log.exists())
        stop = subprocess.Popen(broker.command(["systemctl", "stop", "pnpbroker.service"]))
        try:
            wait_for(
                "the stop to wait for the program",
                lambda: unit_property(broker, "pnpbroker.service", "ActiveState") == "deactivating",
            )
            (broker.shared / f"{mark}.release").touch()
            assert stop.wait(120) == 0
        finally:
            stop.kill() if stop.poll() is None else None
        [event] = monitor.wait(
            "the event's signal", lambda ev: len(net_events(ev, {f"st{mark}"})) == 1
        )
    assert host_log.read_text().split() == ["started", "finished"]
    assert (event.handler["status"], event.handler["signal"]) == (0, 0)
    assert unit_property(broker, "pnpbroker.service", "ExecMainStatus") == "0"
    links(broker, [f"st{mark}"], "del")


def test_dbus_activation_goes_through_the_alias(broker: Machine) -> None:
    """A method call starts an enabled broker; with the broker disabled, no caller can."""
    get_version = [
        "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
        "busctl", "get-property", "org.pnp.Broker", "/org/pnp/Broker", "org.pnp.Broker1",
        "Version",
    ]  # fmt: skip
    # The socket would start the broker on any uevent (the host's leak in): stop it too.
    broker.run(["systemctl", "stop", "pnpbroker.socket", "pnpbroker.service"])
    assert broker.run(get_version).stdout.startswith("s ")
    assert unit_property(broker, "pnpbroker.service", "ActiveState") == "active"
    bus_log = broker.journal("-u", "dbus", "-o", "cat")
    assert "unit='dbus-org.pnp.Broker.service'" in bus_log

    broker.run(["systemctl", "disable", "--now", "pnpbroker.service", "pnpbroker.socket"])
    refused = broker.run(get_version, check=False)
    assert refused.returncode != 0
    assert "dbus-org.pnp.Broker.service" in refused.stderr
    assert unit_property(broker, "pnpbroker.service", "ActiveState") == "inactive"


def test_start_returns_ready_and_status_shows_the_queue(
    broker: Machine, record_property: object
) -> None:
    broker.run(["systemctl", "stop", "pnpbroker.socket", "pnpbroker.service"])
    started = time.monotonic()
    broker.run(["systemctl", "start", "pnpbroker.socket", "pnpbroker.service"])
    wall = time.monotonic() - started
    # No waiting: once `systemctl start` returned, the name is owned and the status is set.
    broker.run(["busctl", "status", "org.pnp.Broker"])
    assert "events handled" in unit_property(broker, "pnpbroker.service", "StatusText")
    ready = restart_ready_seconds(broker)
    record_property("start_to_ready_seconds", ready)  # type: ignore[operator]
    print(f"\n[figures] systemctl start -> ready: {ready:.3f} s (wall {wall:.3f} s)")
    names = [f"ss{token()}{i}" for i in range(5)]
    links(broker, names)

    def status() -> str | None:
        text = broker.run(["systemctl", "status", "--no-pager", "pnpbroker.service"]).stdout
        line = next((x for x in text.splitlines() if x.strip().startswith("Status:")), "")
        handled = int(line.split('"')[1].split()[0]) if "events handled" in line else 0
        return line if handled >= 15 else None  # 3 uevents per link

    assert " queued, " in wait_for("the status line to count the events", status)
    links(broker, names, "del")


def test_journal_priorities(broker: Machine) -> None:
    mark = token()
    body = f'echo "out-{mark}"\necho "err-{mark}" >&2\nexit 3\n'
    name = f"jp{mark}"
    body = f'[ "$INTERFACE" = {name} ] || exit 0\n' + body
    use_config(broker, f'hotplug_program = "{program(broker, f"pnpt-prio-{mark}", body)}"\n')
    broker.run(["systemctl", "restart", "pnpbroker.service"])
    links(broker, [name])
    wait_for("the program's exit in the journal", lambda: journal_has(broker, "with status 3"))
    warnings = broker.journal("-u", "pnpbroker", "-p", "warning", "-o", "cat")
    everything = broker.journal("-u", "pnpbroker", "-o", "cat")
    assert f"err-{mark}" in warnings  # the program's stderr: a warning
    assert "exited with status 3" in warnings
    assert f"out-{mark}" in everything  # its stdout: info
    assert f"out-{mark}" not in warnings
    assert "on the bus as org.pnp.Broker" in everything
    assert "on the bus as org.pnp.Broker" not in warnings
    assert "<4>" not in everything  # the prefix became the priority, not text
    links(broker, [name], "del")
