"""The table as Markdown, with what a reader needs to trust it: machine, versions, method."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

from bench import tools
from bench.dbusbus import daemon_version
from bench.measures import Config

HEADER = ["figure", "value (median)", "spread (min-max)", "peer/limit", "ratio"]

METHOD = """\
How: real kernel uevents from `ip link add ifbN type ifb` lines fed to `ip -n NS -batch -` in a
fresh network namespace per run (one link add = 3 uevents: the net device and its rx-0/tx-0
queues; every reader counts exactly those device paths, action `add`, and a run that misses one
is refused). Readers run inside the namespace and prove they listen by seeing a probe link first.
*live burst*: events/s from the first line written to ip until the last event reached the reader
(bounded by the kernel's own making rate: its peer is `KIND.kernel`, 3 x links / the time ip
took, in the same runs). *queued burst*: the reader (or broker)
is SIGSTOPped, the burst queues in its socket, then SIGCONT: its own capacity. *steady latency*:
links paced at {rate:.0f} uevents/s, 2 lines per write; from writing the line to the event reaching
the reader's Python code on CLOCK_MONOTONIC, so it includes ip and the kernel making the link (the
netlink listener's figure is that floor). *burst latency*: per SEQNUM, after a minimal netlink
reader running alongside in the same namespace. *D-Bus ceiling*: a bare dbus-fast emitter sends
the same `Event` signals (`tsssa{{ss}}a{{sv}}`, the real keys of those uevents) to a subscriber
on a private dbus-daemon, flow-controlled by a `Peer.Ping` every 128 signals, 2 windows in flight,
SO_SNDBUF 4 MiB; events/s from the first to the last signal received. *spawn limit*: a tight
`os.posix_spawn`+`os.waitpid` loop of `/bin/true net` with a uevent's environment (8 keys).
Ratio = value median / peer-or-limit median.
"""


def num(value: float) -> str:
    """A figure with sensible precision: 12,345 / 123.4 / 1.23 / 0.123."""
    if abs(value) >= 1000 or (value.is_integer() and value != 0):
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    os_name = "?"
    if Path("/etc/os-release").exists():
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    return f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, {os_name}"


def versions(cfg: Config) -> str:
    udevadm = tools.udevadm_version(cfg.udevadm) if cfg.udevadm else "not available"
    gcc = subprocess.run(["gcc", "-dumpversion"], capture_output=True, text=True, check=False)
    parts = [
        f"Python {platform.python_version()}",
        f"dbus-fast {_version('dbus-fast')}",
        f"dbus-daemon {daemon_version()}",
        f"udevadm {udevadm} (Debian udev, unpacked)",
        f"pyudev {tools.pyudev_version() if 'pyudev' not in tools.MISSING else 'not available'}",
        f"gcc {gcc.stdout.strip() or 'not available'}",
    ]
    return ", ".join(parts)


def sizes(cfg: Config) -> str:
    return (
        f"burst {cfg.burst_links} links ({cfg.burst_links * 3} uevents), steady "
        f"{cfg.steady_links} links at {cfg.steady_rate:.0f} uevents/s, ceiling "
        f"{cfg.ceiling_links * 3} signals, spawn loop {cfg.spawn_count}, idle "
        f"{cfg.idle_seconds:.0f} s, storm {cfg.storm_events} events"
    )


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render(rows: list[list[str]], cfg: Config, args: argparse.Namespace, elapsed: float) -> str:
    """RESULTS.md: command, date, machine, versions, repetitions, sizes, the table, the method."""
    command = "python bench/run.py " + " ".join(sys.argv[1:])
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "# pnpbroker benchmarks",
            "",
            f"Command: `{command.strip()}` (as root), {when}, took {elapsed:.0f} s.",
            "",
            f"- Machine: {machine()}",
            f"- Versions: {versions(cfg)}",
            f"- Repetitions: {args.repeat} (value = median, spread = min-max)",
            f"- Sizes: {sizes(cfg)}",
            "",
            table(rows),
            "",
            METHOD.format(rate=cfg.steady_rate),
        ]
    )
