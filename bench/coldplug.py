"""Coldplug of a tree of 5,000+ devices: ``pnpbroker trigger --settle`` beside a shell loop.

In a fresh namespace, ``coldplug_links`` ifb links are made first (each is one device with a
``uevent`` file under /sys/devices; its two queues make events when it is made but have no
``uevent`` file), so that /sys holds more than 5,000 devices (the namespace's links, ``lo`` and
the host's other devices); a broker (no program)
runs in it on a private bus. Then, each timed from its launch:

- ``udevadm trigger --dry-run``: how fast udevadm enumerates the same devices (writes nothing);
- the floor: ``sh`` writing ``add <uuid>`` into every ``uevent`` file under /sys/devices, then
  waiting for the events: done when a minimal netlink listener in the namespace (started before,
  ``python -m bench.coldplug listen``) has received one event with that uuid per successful write.
  No walk order, no settle through a broker: the kernel's own work plus the cheapest writer;
- ``pnpbroker trigger --settle``: walk, write ``add <uuid>`` to each device, and wait until the
  broker has published every event the kernel sent back; timed as the command a user types
  (the interpreter's start included). ``devices`` is its own count (``trigger --dry-run``).

The settle runs first, the floor second (the floor's events also reach the broker).
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import subprocess
import sys
import time
import uuid as uuidlib

from support.bus import SystemBus
from support.netns import NetNS

from bench import events, harness
from bench.broker import running_broker
from bench.harness import REPO, python_env
from bench.measures import Config, Values
from bench.peers import NETLINK_KOBJECT_UEVENT, SO_RCVBUFFORCE

#: The floor: every uevent file written once, counting the writes the kernel took.
SHELL_FLOOR = (
    'n=0; for f in $(find /sys/devices -name uevent); do echo "add $1" > "$f" 2>/dev/null'
    " && n=$((n+1)); done; echo $n"
)
TRIGGER = [sys.executable, "-m", "pnpbroker", "trigger"]
#: Seconds without a floor event, after the shell ended, that mean no more will come.
QUIET = 2.0


def _timed(argv: list[str]) -> tuple[float, str]:
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=python_env())
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:6]} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return elapsed, done.stdout


def make_tree(ns: NetNS, links: int) -> None:
    """``links`` ifb links in ``ns`` (group 7: removed with the namespace's other links)."""
    proc = subprocess.Popen(["ip", "-n", ns.name, "-batch", "-"], stdin=subprocess.PIPE)
    proc.communicate("".join(events.add_line(i) for i in range(links)).encode())
    if proc.returncode != 0:
        raise RuntimeError(f"ip -batch failed: exit {proc.returncode}")


def shell_floor(ns: NetNS) -> tuple[float, int]:
    """(seconds from the shell's launch to the last event of its writes, files written)."""
    uuid = str(uuidlib.uuid4())
    argv = [sys.executable, "-m", "bench.coldplug", "listen", "--uuid", uuid]
    listener = subprocess.Popen(
        ns.exec_argv(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=python_env(),
    )
    assert listener.stdin is not None
    assert listener.stdout is not None
    try:
        if listener.stdout.readline().strip() != "READY":
            raise RuntimeError("the floor's listener did not start")
        start = time.monotonic()
        _, out = _timed(ns.exec_argv(["sh", "-c", SHELL_FLOOR, "sh", uuid]))
        written = int(out.split()[-1])
        listener.stdin.write(f"{written}\n")
        listener.stdin.close()
        got = json.loads(listener.stdout.readline())
    finally:
        listener.kill()
        listener.wait()
    if got["seen"] < written * 0.9:
        raise RuntimeError(f"the floor's listener saw {got['seen']} of {written} events")
    return got["last"] - start, written


def coldplug(cfg: Config) -> Values:
    """Devices/s and seconds of the shell floor and of ``trigger --settle`` over one tree."""
    out: Values = {}
    with (
        events.netns() as ns,
        SystemBus() as bus,
        running_broker(ns, bus, ["--no-program"]) as proc,
    ):
        make_tree(ns, cfg.coldplug_links)
        if cfg.udevadm is not None:
            argv = [str(cfg.udevadm), "trigger", "--dry-run", "--verbose", "--action=add"]
            took, listed = _timed(ns.exec_argv(argv))
            out["coldplug.udevadm"] = len(listed.splitlines()) / took
        _, listed = _timed(ns.exec_argv([*TRIGGER, "--dry-run"]))
        devices = len(listed.split())
        argv = [*TRIGGER, "--settle", "--timeout", "120", "--bus-address", bus.address]
        settle, _ = _timed(ns.exec_argv(argv))
        harness.pause_group(proc.pid)  # the floor has no broker: its events wait in its socket
        try:
            floor, written = shell_floor(ns)
        finally:
            harness.resume_group(proc.pid)
    out.update(
        {
            "coldplug.devices": float(devices),
            "broker.coldplug": devices / settle,
            "broker.coldplug.time": settle,
            "coldplug.shell": written / floor,
            "coldplug.shell.time": floor,
            "coldplug.files": float(written),
        }
    )
    return out


def listen(uuid: str) -> None:
    """In the namespace: READY once listening; each event carrying ``SYNTH_UUID=uuid`` counted
    as it comes. Once N (a line on stdin: the writes the kernel took) have come, or the socket
    was quiet for QUIET seconds after that line (the kernel sends no event for some devices,
    e.g. those its uevent filter drops, although the write succeeds), one JSON line
    ``{"seen": n, "last": t}`` (t on CLOCK_MONOTONIC, when the last one was read)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 128 * 1024 * 1024)
    sock.bind((0, 1))
    print("READY", flush=True)
    mark = f"SYNTH_UUID={uuid}".encode()
    wanted: int | None = None
    seen, last = 0, 0.0
    while wanted is None or seen < wanted:
        watched = [sock] if wanted is not None else [sock, sys.stdin]
        ready, _, _ = select.select(watched, [], [], QUIET if wanted is not None else 600.0)
        if not ready:
            break
        if sys.stdin in ready:
            wanted = int(sys.stdin.readline())
        if sock in ready:
            data, (pid, _groups) = sock.recvfrom(1 << 16)
            if pid == 0 and mark in data.split(b"\0"):
                seen, last = seen + 1, time.monotonic()
    print(json.dumps({"seen": seen, "last": last}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["listen"])
    parser.add_argument("--uuid", required=True)
    listen(parser.parse_args().uuid)


if __name__ == "__main__":
    main()
