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
on a private system-like dbus-daemon (the test kit's), unpaced: each message built and
marshalled by dbus-fast and written at once with a plain non-blocking send, EAGAIN = wait for
writable, no round trips; events/s from the first to the last signal received. Beside it, for
context, the same emitter in C with sd-bus (`bench/emit_sdbus.c`). *spawn
limit*: a tight
`os.posix_spawn`+`os.waitpid` loop of `/bin/true net` with a uevent's environment (8 keys) and
the broker's spawn attributes (stdin /dev/null, stdout/stderr to a pipe, own process group).
*legacy*: the broker with `-p /bin/true`, SIGSTOPped while {legacy} link adds queue, then
resumed: events/s until the last signal. *storm*: {storm} `change <uuid>` writes into one ifb
link's `uevent` file in the broker's namespace (real kernel uevents, as fast as Python writes
them) while the program (`bench/sleep5ms.c`: C, `nanosleep` 5 ms) runs for each event, serially;
overflows = the broker's `Statistics["overflows"]`; lost = storm events never signalled + gaps +
repeats in the published sequence; peak RSS = VmHWM; drain = first write to last signal, beside
N / spawns/s of the same 5 ms program in the Python spawn loop. It runs once (about 10 minutes);
the two *idle* measurements (RSS and CPU over {idle:.0f} s, 3 times) run alongside it: they count
only the idle process's own CPU time and memory. *coldplug*: inside a fresh namespace with a
broker (no program), `pnpbroker trigger --settle` timed as a command (interpreter start
included) beside `udevadm trigger --dry-run` (enumeration only) and a `sh` loop writing `add`
into every uevent file (the floor: no walk order, no uuid, no settle). *rebroadcast*: brokers
with no program, `--rebroadcast libudev` or not, a fresh one per case: live and queued bursts
with `udevadm monitor --udev --property` listening (its rate beside the D-Bus subscriber's, same
run), a queued burst with nobody on netlink; the broker's CPU per event over the drain (schedstat);
then the legacy path (`-p /bin/true`) with and without.
The machine is shared: other sessions ran their test suites on these 2 cores during the run, so
spreads are wide; prefer the ratios (value and peer measured in the same run).
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
        f"{cfg.idle_seconds:.0f} s, legacy {cfg.legacy_links} links, "
        f"storm {cfg.storm_events} events"
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
            METHOD.format(
                rate=cfg.steady_rate,
                legacy=cfg.legacy_links,
                storm=cfg.storm_events,
                idle=cfg.idle_seconds,
            ),
        ]
    )


def daemon_version() -> str:
    out = subprocess.run(["dbus-daemon", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0].rsplit(" ", 1)[-1] if out.stdout else "?"
