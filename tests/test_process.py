"""The process contract: signals, exit codes, reload, dry run, one broker per bus."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.netns import NetNS


def _program(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _wait_for(check: object, what: str, within: float = 30.0) -> None:
    """Poll a file-system condition (another process writes it); the limit only stops a hang."""
    assert callable(check)
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not seen within {within} s")
        time.sleep(0.02)


def _pnpbroker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pnpbroker", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.root
def test_sigterm_finishes_the_running_program(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path
) -> None:
    log, go = tmp_path / "program.log", tmp_path / "go"
    program = _program(
        tmp_path / "hotplug",
        f'echo "start $SEQNUM" >> {log}\n'
        f"while [ ! -e {go} ]; do sleep 0.01; done\n"
        f'echo "end $SEQNUM" >> {log}\n',
    )
    with BrokerProcess(system_bus, tmp_path / "state", ["-p", str(program)], netns=netns) as b:
        netns.add_ifbs(["t0"])
        _wait_for(lambda: log.exists() and "start" in log.read_text(), "the program's start")
        b.send_signal(signal.SIGTERM)
        b.wait_for_state("STOPPING=1")
        assert b.proc is not None
        assert b.proc.poll() is None, "the broker exited while its program ran"
        go.touch()
        assert b.wait() == 0, b.log()
    lines = log.read_text().split("\n")[:-1]
    assert lines[-1].startswith("end ")
    assert lines[-2] == lines[-1].replace("end", "start")


@pytest.mark.root
def test_sighup_reloads_the_program(system_bus: SystemBus, netns: NetNS, tmp_path: Path) -> None:
    log = tmp_path / "program.log"
    first = _program(tmp_path / "first", f'echo "first $DEVPATH" >> {log}\n')
    second = _program(tmp_path / "second", f'echo "second $DEVPATH" >> {log}\n')
    conf = tmp_path / "pnpbroker.toml"
    conf.write_text(f'hotplug_program = "{first}"\n')
    log.touch()
    with BrokerProcess(system_bus, tmp_path / "state", ["-c", str(conf)], netns=netns) as b:
        netns.add_ifbs(["h0"])
        _wait_for(
            lambda: log.exists() and "first /devices/virtual/net/h0\n" in log.read_text(), "h0"
        )
        conf.write_text(f'hotplug_program = "{second}"\n')
        b.send_signal(signal.SIGHUP)
        b.wait_for_state("RELOADING=1")
        b.wait_for_state("READY=1")
        netns.add_ifbs(["h1"])
        _wait_for(lambda: "second /devices/virtual/net/h1\n" in log.read_text(), "h1")
        assert b.stop() == 0, b.log()
    assert "first /devices/virtual/net/h1\n" not in log.read_text()
    assert "configuration reloaded" in b.log()


@pytest.mark.parametrize(
    ("text", "key"),
    [("timeout = 'soon'\n", "timeout"), ("hotplug_progam = '/bin/true'\n", "hotplug_progam")],
)
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    result = _pnpbroker("run", "-c", str(conf), "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 2
    assert re.search(rf"\b{key}\b", result.stderr), result.stderr


@pytest.mark.parametrize(
    "args", [(), ("run", "--no-such-option"), ("run", "-p", "/bin/true", "--no-program"), ("x",)]
)
def test_usage_error_exits_100(args: tuple[str, ...]) -> None:
    result = _pnpbroker(*args)
    assert result.returncode == 100, result.stderr
    assert "usage:" in result.stderr


def _netlink_bound(pid: int) -> bool:
    """True once process ``pid`` holds a uevent netlink socket bound to group 1."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed since the listing: the process is still starting
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    with open(f"/proc/{pid}/net/netlink") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return any(r[1] == "15" and int(r[3], 16) & 1 and r[9] in inodes for r in rows)


@pytest.mark.root
def test_dry_run_prints_command_and_environment(netns: NetNS) -> None:
    argv = [*netns.exec_prefix(), sys.executable, "-m", "pnpbroker", "run", "-n"]
    proc = subprocess.Popen([*argv, "-p", "/sbin/hotplug-dry"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        _wait_for(lambda: _netlink_bound(proc.pid), "the dry run's socket")
        netns.add_ifbs(["d0"])
        for line in proc.stdout:
            if "INTERFACE=d0 " in line and "SUBSYSTEM=net " in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert re.match(r"^\d+: env -i ", line)
    for item in ("ACTION=add", "DEVPATH=/devices/virtual/net/d0", "HOME=/"):
        assert f" {item} " in line
    assert " PATH=/sbin:/bin:/usr/sbin:/usr/bin " in line
    assert line.rstrip().endswith(" /sbin/hotplug-dry net")


@pytest.mark.root
def test_second_broker_exits_111(system_bus: SystemBus, tmp_path: Path) -> None:
    with BrokerProcess(system_bus, tmp_path / "one", ["--no-program"]):
        second = BrokerProcess(system_bus, tmp_path / "two", ["--no-program"])
        try:
            second.start(wait_ready=False)
            assert second.wait(60) == 111
        finally:
            second.close()
    assert "owned by another connection" in second.log()
