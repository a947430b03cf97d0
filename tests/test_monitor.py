"""``pnpbroker monitor`` as a user runs it: a subprocess reading from the real broker."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.netns import NetNS

TIMEOUT = 60.0
LINE = re.compile(r"^ *(\d+) (\S+) +(/\S+) \((\S+)\) (.+)$")


class Monitor:
    """``python -m pnpbroker monitor ARGS`` with its output read line by line."""

    def __init__(self, bus: SystemBus, *args: str, tty: bool = False) -> None:
        env = {**os.environ, **bus.env()}
        env.pop("NO_COLOR", None)
        argv = [sys.executable, "-m", "pnpbroker", "monitor", *args]
        self._pty = -1
        stdout: int = subprocess.PIPE
        if tty:
            self._pty, stdout = pty.openpty()
        self.proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, env=env)
        if tty:
            os.close(stdout)
        self.fd = self._pty if tty else self.proc.stdout.fileno()  # type: ignore[union-attr]
        self._buffer = b""

    def lines(self) -> Iterator[str]:
        """Output lines as they come; TimeoutError only to stop a hang."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                yield line.decode().rstrip("\r")
            ready, _, _ = select.select([self.fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise TimeoutError(f"monitor printed nothing more; stderr: {self.stderr()}")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError(f"monitor exited {self.proc.wait()}: {self.stderr()}")
            self._buffer += chunk

    def read_until(self, done: Callable[[list[str]], bool]) -> list[str]:
        got: list[str] = []
        for line in self.lines():
            got.append(line)
            if done(got):
                return got
        raise AssertionError("unreachable")

    def wait_listening(self) -> str:
        """The monitor's one line on stderr saying it is subscribed."""
        assert self.proc.stderr is not None
        ready, _, _ = select.select([self.proc.stderr], [], [], TIMEOUT)
        assert ready, "the monitor never said it listens"
        return self.proc.stderr.readline().decode()

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        self._read_to_the_end()  # a monitor blocked on a full pipe would never see the signal
        code = self.proc.wait(TIMEOUT)
        self.close()
        return code

    def _read_to_the_end(self) -> None:
        """Its output until it closes it (EOF, or EIO from a pty); TimeoutError on a hang."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            ready, _, _ = select.select([self.fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise TimeoutError(f"monitor did not stop; stderr: {self.stderr()}")
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the pty's other side is closed
                return
            if not chunk:
                return
            self._buffer += chunk

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        if self._pty >= 0:
            os.close(self._pty)
            self._pty = -1


def mentions_all(
    names: set[str], field: Callable[[str], str | None]
) -> Callable[[list[str]], bool]:
    return lambda lines: names <= {field(line) for line in lines}


def devname(line: str) -> str | None:
    match = LINE.match(line)
    return match.group(3).rsplit("/", 1)[-1] if match and match.group(4) == "net" else None


def json_name(line: str) -> str | None:
    record = json.loads(line)
    return str(record["properties"].get("INTERFACE")) if record.get("subsystem") == "net" else None


@pytest.fixture
def broker(system_bus: SystemBus, netns: NetNS, tmp_path: Path) -> Iterator[BrokerProcess]:
    with BrokerProcess(system_bus, tmp_path / "state", netns=netns) as running:
        yield running


@pytest.mark.root
@pytest.mark.usefixtures("broker")
def test_formats_replayed(system_bus: SystemBus, netns: NetNS) -> None:
    """--since 0 replays; the text line, --property and --json all describe the same events."""
    links = {f"m{i}" for i in range(3)}
    netns.add_ifbs(sorted(links))
    netns.del_ifbs(["m0"])
    text = Monitor(system_bus, "--since", "0")
    lines = text.read_until(mentions_all(links, devname))
    assert text.stop() == 0
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    sequences = [int(m.group(1)) for m in parsed if m]
    assert sequences == list(range(1, len(sequences) + 1))
    assert all(m.group(5) == "-" for m in parsed if m)  # no program ran
    assert "\033[" not in "".join(lines)  # no colour into a pipe

    js = Monitor(system_bus, "--json", "--since", "0")
    records = [json.loads(x) for x in js.read_until(mentions_all(links, json_name))]
    assert js.stop(signal.SIGTERM) == 0
    assert [r["sequence"] for r in records] == sequences
    net = [r for r in records if r["subsystem"] == "net"]
    assert all(r["seqnum"] == int(r["properties"]["SEQNUM"]) for r in records)
    assert all(r["handler"] is None and r["devpath"].startswith("/devices/") for r in net)

    props = Monitor(system_bus, "--property", "--since", "0")
    out = props.read_until(lambda got: "INTERFACE=m2" in got and got[-1] == "")
    assert props.stop() == 0
    header = next(i for i, x in enumerate(out) if devname(x) == "m2")
    keys = dict(x.split("=", 1) for x in out[header + 1 : -1])
    assert keys["ACTION"] == "add"
    assert keys["SUBSYSTEM"] == "net"
    assert keys["SEQNUM"].isdigit()


@pytest.mark.root
@pytest.mark.usefixtures("broker")
def test_filters_and_since(system_bus: SystemBus, netns: NetNS) -> None:
    netns.add_ifbs(["s0", "s1"])
    netns.del_ifbs(["s0"])
    removes = Monitor(system_bus, "--json", "--since", "0", "-s", "net", "-a", "remove")
    (removed,) = [json.loads(x) for x in removes.read_until(lambda got: len(got) == 1)]
    assert removes.stop() == 0
    assert (removed["action"], removed["properties"]["INTERFACE"]) == ("remove", "s0")

    since = Monitor(system_bus, "--json", "--since", str(removed["sequence"] - 1))
    (first,) = [json.loads(x) for x in since.read_until(lambda got: len(got) == 1)]
    assert since.stop() == 0
    assert first == removed


@pytest.mark.root
@pytest.mark.usefixtures("broker")
def test_live_colour_on_a_terminal(system_bus: SystemBus, netns: NetNS) -> None:
    """Without --since the monitor starts from now; on a terminal the action is coloured."""
    live = Monitor(system_bus, "--subsystem", "net", tty=True)
    try:
        assert "listening for events after" in live.wait_listening()
        netns.add_ifbs(["c0"])
        lines = live.read_until(lambda got: any("c0" in x for x in got))
    finally:
        code = live.stop()
    assert code == 0
    assert "\033[32madd" in lines[-1]


@pytest.mark.root
@pytest.mark.usefixtures("broker")
def test_control_characters_of_device_names_never_reach_the_terminal(
    system_bus: SystemBus, netns: NetNS
) -> None:
    """The kernel refuses only '/', ':' and white space in a network interface's name, so a
    real device can be named with an ESC sequence, or a C1 control (U+009B, a one-character CSI
    for some terminals): text shows them as escapes, JSON as \\u escapes that decode back."""
    esc, c1 = "e\x1b[2Jx", "c\u009b7m"
    netns.add_ifbs([esc, c1])
    text = Monitor(system_bus, "--since", "0", "--property")
    out = text.read_until(lambda got: {"INTERFACE=e\\x1b[2Jx", "INTERFACE=c\\x9b7m"} <= set(got))
    assert text.stop() == 0
    joined = "\n".join(out)
    assert "\x1b" not in joined
    assert "\u009b" not in joined
    assert any(line.endswith("/devices/virtual/net/e\\x1b[2Jx (net) -") for line in out), out

    js = Monitor(system_bus, "--json", "--since", "0")
    lines = js.read_until(mentions_all({esc, c1}, json_name))
    assert js.stop() == 0
    raw = "\n".join(lines)
    assert "\x1b" not in raw
    assert "\u009b" not in raw
    names = {json.loads(line)["properties"].get("INTERFACE") for line in lines}
    assert {esc, c1} <= names
