"""The fleet forwarder under a real systemd: ``pnpbroker-forward.service`` as shipped, set up
by the steps of docs/fleet.md in a machine where pnpbroker came by the pip route
(docs/system.md), beside Debian's mosquitto under its own unit.

Events are real uevents of ifb links in the machine; the subscriber is ``pnpbroker
fleet-monitor`` with a persistent session, in the machine; the ground truth of what the kernel
sent is an independent uevent socket (``KernelListener``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from support.busmonitor import KernelListener
from support.container import Machine, wait_for

from system.fleettools import (
    FORWARD,
    SECRETS,
    Fleet,
    account,
    assert_system_user,
    assert_whole,
    fleet,
    links_arrived,
)
from system.systemtools import Bursts, links, token, unit_property

#: /proc/PID/status lines that hold capabilities.
CAPABILITIES = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


@pytest.fixture(scope="module")
def pip_fleet(pip_machine: Machine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with fleet(pip_machine, tmp_path_factory.mktemp("pki")) as running:
        yield running


def status(booted: Machine, pid: int) -> dict[str, str]:
    text = booted.run(["cat", f"/proc/{pid}/status"]).stdout
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_the_route_made_the_user_and_left_the_forwarder_disabled(pip_fleet: Fleet) -> None:
    assert_system_user(pip_fleet.booted)
    assert pip_fleet.installed_state == "disabled"
    assert unit_property(pip_fleet.booted, FORWARD, "UnitFileState") == "enabled"
    assert unit_property(pip_fleet.booted, FORWARD, "ActiveState") == "active"


def test_the_forwarder_runs_unprivileged(pip_fleet: Fleet) -> None:
    booted = pip_fleet.booted
    _, _, uid, gid, *_ = account(booted, "pnpbroker-forward")
    found = status(booted, pip_fleet.forwarder_pid())
    assert found["Uid"].split() == [uid] * 4  # real, effective, saved, file system
    assert found["Gid"].split() == [gid] * 4
    assert found["Groups"].split() == [gid]  # its own group only (initgroups)
    assert {name: int(found[name], 16) for name in CAPABILITIES} == dict.fromkeys(CAPABILITIES, 0)
    assert found["NoNewPrivs"].strip() == "1"
    assert found["Seccomp"].strip() == "2"  # SystemCallFilter=: a filter is installed
    # The feed it reads: the daemon's socket, for root and the forwarder's group only.
    feed = booted.run(["stat", "-c", "%U %G %a", "/run/pnpbroker/forward.sock"]).stdout.split()
    assert feed == ["root", "pnpbroker-forward", "660"]
    wait_for("the forwarder on the feed", lambda: "broker feed connected" in pip_fleet.journal())
    assert "Permission denied" not in pip_fleet.journal()


def test_the_units_hardening_as_systemd_rates_it(pip_fleet: Fleet, record_property: object) -> None:
    """``systemd-analyze security``'s exposure (0 best, 10 worst): the unit's settings, as
    the running systemd reads them; the test above holds the process to them."""
    rating = pip_fleet.booted.run(
        ["systemd-analyze", "security", "--no-pager", FORWARD], check=False
    ).stdout
    found = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", rating)
    assert found, rating
    record_property("exposure", found[1])  # type: ignore[operator]
    print(f"\n[figures] systemd-analyze security {FORWARD}: {found[1]} {found[2]}")
    # What is left is what it needs: the network (AF_INET*, no IP allow list: the MQTT broker
    # is configurable), AF_UNIX (the feed), the root directory. Each setting that goes adds.
    assert float(found[1]) <= 1.1, rating


def test_link_events_reach_the_subscriber_in_order(pip_fleet: Fleet) -> None:
    names = {f"fe{token()}{i}" for i in range(20)}
    links(pip_fleet.booted, sorted(names))
    links(pip_fleet.booted, sorted(names), "del")
    pip_fleet.monitor.wait("the links' add events", links_arrived(names, "add"))
    pip_fleet.monitor.wait("the links' remove events", links_arrived(names, "remove"))
    last = assert_whole(pip_fleet.monitor)[-1]

    def status() -> re.Match[str] | None:  # systemctl status's "Status:" line
        text = unit_property(pip_fleet.booted, FORWARD, "StatusText")
        found = re.fullmatch(r"forwarded through (\d+), \d+ in flight; (.*)", text)
        return found if found and int(found[1]) >= last else None

    found = wait_for("the status line to follow", status)
    assert found[2] == "MQTT broker connected, feed connected"


def test_restarts_mid_burst_lose_nothing(pip_fleet: Fleet, record_property: object) -> None:
    """``systemctl restart`` of the daemon and of the forwarder, each while a burst is under
    way: every link event the kernel sent reaches the subscriber, in order, once."""
    booted, monitor = pip_fleet.booted, pip_fleet.monitor
    kernel = KernelListener(booted)
    restarted = []
    with Bursts(booted, size=200, prefix="fr") as bursts:
        for unit in ["pnpbroker.service", FORWARD] * 3:
            rounds = bursts.rounds
            wait_for("a burst", lambda: bursts.rounds > rounds)  # noqa: B023
            booted.run(["systemctl", "restart", unit])
            restarted.append(unit)
    sent = [e for e in kernel.close() if e.get("INTERFACE") in bursts.names]
    assert not kernel.overflowed, f"the test's kernel listener overflowed: {kernel.overflowed}"
    wanted = {int(e["SEQNUM"]) for e in sent if e.get("SUBSYSTEM") == "net"}
    missed = 2 * len(bursts.names) - len(wanted)  # an add and a remove for each link
    assert missed == 0, f"the test's kernel listener missed {missed} events"

    def arrived(events: list[dict[str, object]]) -> bool:
        return wanted <= {int(e["properties"]["SEQNUM"]) for e in events}  # type: ignore[index]

    monitor.wait("every burst event at the subscriber", arrived, timeout=600)
    seqs = assert_whole(monitor)
    repeats = [r for r in monitor.reports() if r["report"] == "repeat"]
    figures = {
        "restarts": len(restarted),
        "kernel_events": len(wanted),
        "forwarded": len(seqs),
        "repeats": len(repeats),
    }
    record_property("figures", figures)  # type: ignore[operator]
    print(f"\n[figures] fleet restarts under bursts: {figures}")
    # Clean restarts, the daemon's and the forwarder's, send nothing twice.
    assert repeats == [], booted.journal(
        "-u", FORWARD, "-u", "pnpbroker.service", "-o", "short-precise"
    )


def test_secrets_checked_under_the_unit_and_journalling_goes_on(pip_fleet: Fleet) -> None:
    """A secrets file others could read, another user's, or one the forwarder cannot read
    fails the start (exit 2, no restart loop) with the reason in the journal at priority err;
    the events made meanwhile go out once it is fixed."""
    booted = pip_fleet.booted
    for fault, said in (
        (
            f"chmod 644 {SECRETS}",
            f"is mode 0644: others could read the password; chmod 600 {SECRETS}",
        ),
        (f"chown root: {SECRETS}", f"{SECRETS}: Permission denied"),  # root's, 0600
        (
            f"chown root: {SECRETS} && chmod 644 {SECRETS}",
            f"{SECRETS} belongs to uid 0, not to this user",
        ),
    ):
        # Six starts in a few seconds: more than systemd's StartLimitBurst= allows (5 in 10 s).
        booted.run(f"{fault} && systemctl reset-failed {FORWARD}")
        assert booted.run(["systemctl", "restart", FORWARD], check=False).returncode != 0
        state = booted.run(["systemctl", "status", "--no-pager", "-n", "20", FORWARD], check=False)
        assert unit_property(booted, FORWARD, "ActiveState") == "failed", state.stdout
        assert unit_property(booted, FORWARD, "ExecMainStatus") == "2", state.stdout
        assert unit_property(booted, FORWARD, "NRestarts") == "0"  # RestartPreventExitStatus=
        wait_for("the error in the journal", lambda: said in pip_fleet.journal("-p", "err"))  # noqa: B023
        booted.run(f"chown pnpbroker-forward: {SECRETS} && chmod 600 {SECRETS}")
        names = {f"fs{token()}"}
        links(booted, sorted(names))  # journalled while no forwarder runs
        started = booted.run(["systemctl", "start", FORWARD], check=False)
        assert started.returncode == 0, pip_fleet.journal("-n", "30")
        pip_fleet.monitor.wait("the link made meanwhile", links_arrived(names, "add"))
        links(booted, sorted(names), "del")
    assert_whole(pip_fleet.monitor)


def test_the_forwarder_logs_with_priorities(pip_fleet: Fleet) -> None:
    """The daemon restarting is a warning of the forwarder's; its reconnection is info."""
    booted = pip_fleet.booted
    invocation = unit_property(booted, FORWARD, "InvocationID")
    booted.run(["systemctl", "restart", "pnpbroker.service"])
    selector = f"_SYSTEMD_INVOCATION_ID={invocation}"  # this run of the forwarder only
    wait_for(
        "the forwarder back on the feed",
        lambda: booted.journal(selector, "-o", "cat").count("broker feed connected") >= 2,
    )
    warnings = booted.journal(selector, "-o", "cat", "-p", "warning")
    everything = booted.journal(selector, "-o", "cat")
    assert "the broker's feed closed; waiting for the broker" in warnings
    assert "broker feed connected" in everything
    assert "broker feed connected" not in warnings
    assert re.search(r"connected to mqtts://mqtt\.example\.net:8883 as 'web-17'", everything)
    assert not re.search(r"^<\d>", everything, re.M)  # the prefix became the priority
