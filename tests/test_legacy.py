"""The legacy modes: hotplug.d, agents, the skip list, user/group and limits, with real programs.

The first tests drive the handlers directly with a constructed event (the programs are real
shell scripts run by the real runner). The root tests run the broker as a subprocess in a
network namespace, make real net-device uevents with ifb links, and read the Event signals
from the bus as a client would.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Variant
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.collector import SignalCollector
from support.netns import NetNS

from pnpbroker import config
from pnpbroker.errors import ConfigError
from pnpbroker.legacy import ProgramRunner, make_mode, planned
from pnpbroker.legacy.modes import AgentMode, SkipList
from pnpbroker.uevent import Uevent, from_properties

NOBODY = 65534


def script(path: Path, body: str) -> Path:
    """An executable shell script at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def event(subsystem: str = "net", action: str = "add", seqnum: int = 7) -> Uevent:
    return from_properties(
        {
            "ACTION": action,
            "DEVPATH": f"/devices/virtual/{subsystem}/x0",
            "SUBSYSTEM": subsystem,
            "SEQNUM": str(seqnum),
        }
    )


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory `nobody` can reach (tmp_path's parents are 0700) and write into."""
    path = Path(tempfile.mkdtemp(prefix="pnpt-legacy-"))
    path.chmod(0o755)
    (path / "out").mkdir(mode=0o777)
    (path / "out").chmod(0o777)
    yield path
    shutil.rmtree(path)


async def handle(cfg: config.Config, ev: Uevent) -> dict[str, Any]:
    """Run the configured mode for one event with a real runner; the outcome as journalled."""
    runner = ProgramRunner(timeout=30)
    try:
        mode = make_mode(cfg, runner)
        assert mode is not None
        outcome = await mode.run(ev, 1)
        return outcome.to_json() if outcome is not None else {}
    finally:
        runner.close()


# ---------------------------------------------------------------------------------------------
# Configuration: every error names its key.


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"mode": "udev"}, "mode"),
        ({"skip": "net"}, "skip"),
        ({"skip": ["net/"]}, "skip"),
        ({"limits": {"files": 3}}, "limits.files"),
        ({"limits": {"nofile": -1}}, "limits.nofile"),
        ({"limits": 5}, "limits"),
        ({"user": "no-such-user-here"}, "user"),
        ({"group": "no-such-group-here"}, "group"),
        ({"hotplug_d": "etc/hotplug.d"}, "hotplug_d"),
        ({"agent_fallback": "fallback"}, "agent_fallback"),
    ],
)
def test_bad_legacy_keys_are_named(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.from_mapping(data)
    assert caught.value.key == key


def test_legacy_keys_convert() -> None:
    cfg = config.from_mapping(
        {"mode": "agents", "skip": ["block", "*/change"], "limits": {"nofile": 64, "as": "1G"}}
    )
    assert cfg.mode == "agents"
    assert cfg.skip == ("block", "*/change")
    assert cfg.limits == (("as", 1 << 30), ("nofile", 64))


def test_skip_patterns_match_subsystem_and_action() -> None:
    nothing = AgentMode("/nonexistent", "", ProgramRunner())
    skipper = SkipList(nothing, ["block", "net/remove", "*/change"])
    assert skipper.skips(event("block", "add"))
    assert skipper.skips(event("net", "remove"))
    assert skipper.skips(event("usb", "change"))
    assert not skipper.skips(event("net", "add"))
    assert not skipper.skips(event("usb", "remove"))


# ---------------------------------------------------------------------------------------------
# The handlers with real programs and a constructed event.


def hotplug_d_tree(root: Path, log: Path) -> None:
    """net/ has three scripts (the middle one fails) and two that must not run; default/ one."""
    line = f'echo "$(basename "$0") $1 $ACTION $SEQNUM" >> {log}'
    script(root / "net" / "20-fails.hotplug", f"{line}\nexit 3")
    script(root / "net" / "10-first.hotplug", line)
    script(root / "net" / "30-last.hotplug", line)
    script(root / "net" / "40-notes.txt", line)  # not *.hotplug
    script(root / "net" / "50-off.hotplug", line).chmod(0o644)  # not executable
    script(root / "default" / "05-default.hotplug", line)
    script(root / "block" / "10-block.hotplug", line)


async def test_hotplug_d_runs_all_in_order_past_a_failure(tmp_path: Path) -> None:
    log = tmp_path / "log"
    hotplug_d_tree(tmp_path / "hotplug.d", log)
    cfg = config.Config(mode="hotplug.d", hotplug_d=str(tmp_path / "hotplug.d"))
    handler = await handle(cfg, event("net", "add", 7))
    names = ["10-first", "20-fails", "30-last", "05-default"]
    assert log.read_text().splitlines() == [f"{n}.hotplug net add 7" for n in names]
    assert [os.path.basename(run["program"]) for run in handler["runs"]] == [
        f"{n}.hotplug" for n in names
    ]
    assert [run["status"] for run in handler["runs"]] == [0, 3, 0, 0]
    assert handler["status"] == 3
    assert handler["program"] == str(tmp_path / "hotplug.d")


@pytest.mark.root
async def test_hotplug_d_runs_only_trusted_scripts_and_says_once_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hidden script, one owned by nobody, one writable by its group, and a link owned by
    nobody to a good script: none runs, each is named once in the log with its reason."""
    log = tmp_path / "log"
    net = tmp_path / "hotplug.d" / "net"
    line = f'echo "$(basename "$0")" >> {log}'
    good = script(net / "10-good.hotplug", line)
    script(net / ".20-hidden.hotplug", line)
    os.chown(script(net / "30-nobody.hotplug", line), NOBODY, NOBODY)
    script(net / "40-group.hotplug", line).chmod(0o775)
    (net / "50-link.hotplug").symlink_to(good)
    os.lchown(net / "50-link.hotplug", NOBODY, NOBODY)
    cfg = config.Config(mode="hotplug.d", hotplug_d=str(tmp_path / "hotplug.d"))
    with caplog.at_level(logging.WARNING, logger="pnpbroker.legacy.modes"):
        runner = ProgramRunner(timeout=30)
        try:
            mode = make_mode(cfg, runner)
            assert mode is not None
            outcomes = [await mode.run(event("net", "add", n), n) for n in (1, 2)]
        finally:
            runner.close()
    assert log.read_text().splitlines() == ["10-good.hotplug"] * 2
    assert [len(o.runs or ()) for o in outcomes if o is not None] == [1, 1]
    warnings = sorted(r.getMessage() for r in caplog.records)
    assert warnings == [
        f"hotplug.d: not running {net}/.20-hidden.hotplug: a hidden file",
        f"hotplug.d: not running {net}/30-nobody.hotplug: owned by uid {NOBODY}, not root",
        f"hotplug.d: not running {net}/40-group.hotplug: writable by group or others",
        f"hotplug.d: not running {net}/50-link.hotplug: owned by uid {NOBODY}, not root",
    ]


async def test_hotplug_d_subsystem_cannot_leave_the_directory(tmp_path: Path) -> None:
    log = tmp_path / "log"
    hotplug_d_tree(tmp_path / "hotplug.d", log)
    cfg = config.Config(mode="hotplug.d", hotplug_d=str(tmp_path / "hotplug.d" / "net"))
    handler = await handle(cfg, event("..", "add", 8))
    assert handler["runs"] == []
    assert handler["status"] == 0
    assert not log.exists()


async def test_agent_then_fallback_then_nothing(tmp_path: Path) -> None:
    log = tmp_path / "log"
    agents = tmp_path / "hotplug"
    script(agents / "net.agent", f'echo "agent $1 $ACTION" >> {log}')
    fallback = script(tmp_path / "fallback", f'echo "fallback $1 $ACTION" >> {log}')
    cfg = config.Config(mode="agents", agents_dir=str(agents), agent_fallback=str(fallback))
    assert (await handle(cfg, event("net")))["program"] == str(agents / "net.agent")
    assert (await handle(cfg, event("usb")))["program"] == str(fallback)
    assert await handle(cfg.replace(agent_fallback=""), event("usb")) == {}
    assert log.read_text().splitlines() == ["agent net add", "fallback usb add"]


async def test_limits_and_working_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    prog = script(tmp_path / "prog", f'echo "$(ulimit -n) $(ulimit -c) $(pwd)" > {out}')
    cfg = config.from_mapping({"hotplug_program": str(prog), "limits": {"nofile": 64, "core": 0}})
    handler = await handle(cfg, event())
    assert handler["status"] == 0
    assert out.read_text().split() == ["64", "0", "/"]


async def test_fork_path_reports_a_program_that_cannot_start(tmp_path: Path) -> None:
    cfg = config.from_mapping(
        {"hotplug_program": str(tmp_path / "missing"), "limits": {"nofile": 64}}
    )
    handler = await handle(cfg, event())
    assert handler["status"] == -1
    assert "No such file" in handler["error"]


def test_dry_run_plans_what_each_mode_runs(tmp_path: Path) -> None:
    hotplug_d_tree(tmp_path / "hotplug.d", tmp_path / "log")
    script(tmp_path / "hotplug" / "net.agent", "exit 0")
    cfg = config.Config(
        hotplug_program="/sbin/x",
        hotplug_d=str(tmp_path / "hotplug.d"),
        agents_dir=str(tmp_path / "hotplug"),
        skip=("usb",),
    )
    net, usb = event("net"), event("usb")
    assert planned(cfg, net) == [["/sbin/x", "net"]]
    assert planned(cfg, usb) == []
    scripts = planned(cfg.replace(mode="hotplug.d"), net)
    assert [os.path.basename(argv[0]) for argv in scripts] == [
        "10-first.hotplug",
        "20-fails.hotplug",
        "30-last.hotplug",
        "05-default.hotplug",
    ]
    assert planned(cfg.replace(mode="agents"), net) == [[f"{tmp_path}/hotplug/net.agent", "net"]]
    assert planned(cfg.replace(mode="agents", skip=()), usb) == []


@pytest.mark.root
async def test_runs_as_nobody(public_dir: Path) -> None:
    out = public_dir / "out" / "ids"
    prog = script(public_dir / "prog", f'echo "$(id -u) $(id -g) $(id -G) $(pwd)" > {out}')
    cfg = config.from_mapping({"hotplug_program": str(prog), "user": "nobody"})
    handler = await handle(cfg, event())
    assert handler["status"] == 0, handler
    uid, gid, *groups, cwd = out.read_text().split()
    assert (int(uid), cwd) == (NOBODY, "/")
    assert [int(g) for g in groups] == [int(gid)]  # nobody's own groups only; root's are gone


# ---------------------------------------------------------------------------------------------
# The broker end to end: real uevents, Event signals read from the bus.


def plain(value: Any) -> Any:
    """A signal argument with every Variant unwrapped."""
    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


Body = tuple[Any, ...]  # (sequence, action, subsystem, devpath, properties, handler)


async def wait_for_event(signals: SignalCollector, done: Callable[[Body], bool]) -> list[Body]:
    """Every Event signal up to the first one satisfying ``done``, Variants unwrapped."""

    def events() -> list[Body]:
        return [tuple(plain(message.body)) for message in signals.members("Event")]

    await signals.wait_for(lambda _: any(done(ev) for ev in events()), timeout=60)
    found = events()
    last = next(i for i, ev in enumerate(found) if done(ev))
    return found[: last + 1]


def removed(interface: str) -> Callable[[Body], bool]:
    return lambda ev: ev[1:3] == ("remove", "net") and ev[4].get("INTERFACE") == interface


def in_netns(events: list[Body], interface: str) -> list[Body]:
    """This test's events: those of its link and its queues."""
    return [ev for ev in events if ev[3].startswith(f"/devices/virtual/net/{interface}")]


def start_broker(bus: SystemBus, netns: NetNS, where: Path, toml: str) -> BrokerProcess:
    (where / "pnpbroker.toml").write_text(toml)
    args = ["-c", str(where / "pnpbroker.toml")]
    return BrokerProcess(bus, where / "state", args, netns=netns)


CLASSIC_AGENT = """
# A net.agent as linux-hotplug shipped them: dispatch on $ACTION, $1 is the subsystem.
case "$ACTION" in
add|register)      echo "up $1 $INTERFACE $DEVPATH $SUBSYSTEM $SEQNUM $(pwd)" >> {log} ;;
remove|unregister) echo "down $1 $INTERFACE $DEVPATH $SUBSYSTEM $SEQNUM" >> {log} ;;
*)                 exit 0 ;;
esac
"""


@pytest.mark.root
async def test_classic_agent_and_fallback(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    log, fallback_log = tmp_path / "agent.log", tmp_path / "fallback.log"
    script(tmp_path / "hotplug" / "net.agent", CLASSIC_AGENT.format(log=log))
    fallback = script(tmp_path / "fallback", f'echo "$1 $ACTION $DEVPATH" >> {fallback_log}')
    toml = f'mode = "agents"\nagents_dir = "{tmp_path}/hotplug"\nagent_fallback = "{fallback}"\n'
    with start_broker(system_bus, netns, tmp_path, toml) as broker:
        async with SignalCollector(system_bus.address) as signals:
            netns.add_ifbs(["pnpag0"])
            netns.del_ifbs(["pnpag0"])
            events = in_netns(await wait_for_event(signals, removed("pnpag0")), "pnpag0")
        assert broker.stop() == 0, broker.log()
    net = [ev for ev in events if ev[2] == "net"]
    assert [ev[1] for ev in net] == ["add", "remove"]
    assert {ev[5]["program"] for ev in net} == {str(tmp_path / "hotplug" / "net.agent")}
    assert all(ev[5]["status"] == 0 for ev in events)
    add, remove = (ev[4] for ev in net)
    assert log.read_text().splitlines() == [
        f"up net pnpag0 {add['DEVPATH']} net {add['SEQNUM']} /",
        f"down net pnpag0 {remove['DEVPATH']} net {remove['SEQNUM']}",
    ]
    queues = [ev for ev in events if ev[2] == "queues"]
    assert queues
    assert {ev[5]["program"] for ev in queues} == {str(fallback)}
    fallback_lines = fallback_log.read_text().splitlines()
    assert [f"queues {ev[1]} {ev[3]}" for ev in queues] == [
        line for line in fallback_lines if "/pnpag0/" in line
    ]


@pytest.mark.root
async def test_hotplug_d_skip_and_limits_through_the_broker(
    system_bus: SystemBus, netns: NetNS, public_dir: Path
) -> None:
    out = public_dir / "out"
    line = f'echo "$(basename "$0") $1 $ACTION $(id -u) $(ulimit -n)" >> {out}/log'
    root = public_dir / "hotplug.d"
    script(root / "net" / "10-first.hotplug", line)
    script(root / "net" / "20-fails.hotplug", f"{line}\nexit 3")
    script(root / "default" / "90-last.hotplug", line)
    toml = (
        f'mode = "hotplug.d"\nhotplug_d = "{root}"\nskip = ["queues", "net/remove"]\n'
        'user = "nobody"\nlimits = { nofile = 77 }\n'
    )
    with start_broker(system_bus, netns, public_dir, toml) as broker:
        async with SignalCollector(system_bus.address) as signals:
            netns.add_ifbs(["pnphd0"])
            netns.del_ifbs(["pnphd0"])
            events = in_netns(await wait_for_event(signals, removed("pnphd0")), "pnphd0")
        assert broker.stop() == 0, broker.log()
    handlers = {(ev[1], ev[2], ev[3].rsplit("/", 1)[-1]): ev[5] for ev in events}
    add = handlers.pop(("add", "net", "pnphd0"))
    assert [os.path.basename(run["program"]) for run in add["runs"]] == [
        "10-first.hotplug",
        "20-fails.hotplug",
        "90-last.hotplug",
    ]
    assert ([run["status"] for run in add["runs"]], add["status"]) == ([0, 3, 0], 3)
    assert handlers  # the remove and the queues events: all skipped, all published
    assert all(handler == {"skipped": True} for handler in handlers.values())
    # Other devices' events leak in from the host (the default handler runs for them too):
    # only the net ones are this test's.
    ours = [line for line in (out / "log").read_text().splitlines() if line.split()[1] == "net"]
    assert ours == [
        f"{name}.hotplug net add {NOBODY} 77" for name in ("10-first", "20-fails", "90-last")
    ]
