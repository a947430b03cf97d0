"""The peer and limit measurements: each runs once and returns named values for the table.

Throughput is measured two ways, because the kernel itself makes ifb uevents only so fast:
``live`` (events/s while the reader keeps up with a burst: bounded by the kernel's rate) and
``drain`` (the reader is SIGSTOPped, the whole burst queues in its socket buffer, then SIGCONT:
events/s it works through its backlog, i.e. its own capacity). Latency at a steady rate is from
writing the ``ip`` line that makes a link to each of its events reaching the reader's Python code,
so it includes ip's parsing and the kernel's link creation (the netlink listener's figure is that
floor). Latency in a burst is against a minimal netlink reader running alongside (per SEQNUM).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from support.bus import SystemBus

from bench import events, harness, spawn
from bench.events import EVENTS_PER_LINK

Values = dict[str, float]


@dataclass(frozen=True)
class Config:
    """Sizes of one run (``--quick`` makes them small)."""

    burst_links: int = 3000
    steady_links: int = 1000
    steady_rate: float = 2000.0
    ceiling_links: int = 5000
    spawn_count: int = 3000
    idle_seconds: float = 60.0
    legacy_links: int = 1000
    storm_events: int = 100_000
    device_count: int = 10_000
    device_calls: int = 20
    burst_events: int = 10_000
    udevadm: Path | None = None

    def peer_env(self) -> dict[str, str]:
        return {"BENCH_UDEVADM": str(self.udevadm)} if self.udevadm else {}


def ms(seconds: list[float], q: float) -> float:
    return harness.percentile(seconds, q) * 1000.0


def reader_throughput(cfg: Config, kind: str) -> Values:
    """Live and drain events/s of one peer over a burst; also the kernel's own making rate."""
    links = cfg.burst_links
    out: Values = {}
    with events.netns() as ns:
        reader = harness.Reader(harness.peer_argv(ns, kind, links, 120), cfg.peer_env())
        harness.wait_ready(ns, [reader])
        sent = events.burst(ns, links)
        [result] = harness.collect([reader], 180)
        out[f"{kind}.live"] = harness.rate(harness.checked(result, links), sent)
        out[f"{kind}.kernel"] = links * EVENTS_PER_LINK / (sent.end - sent.start)
    with events.netns() as ns:
        reader = harness.Reader(harness.peer_argv(ns, kind, links, 120), cfg.peer_env())
        harness.wait_ready(ns, [reader])
        reader.pause()
        events.burst(ns, links)
        resumed = reader.resume()
        [result] = harness.collect([reader], 180)
        out[f"{kind}.drain"] = harness.drain_rate(harness.checked(result, links), resumed)
    return out


def reader_latency(cfg: Config, kind: str) -> Values:
    """p50/p99 at a steady rate (vs the line's send time) and in a burst (vs a netlink reader)."""
    out: Values = {}
    with events.netns() as ns:
        links = cfg.steady_links
        reader = harness.Reader(harness.peer_argv(ns, kind, links, 120), cfg.peer_env())
        harness.wait_ready(ns, [reader])
        sent = events.steady(ns, links, cfg.steady_rate)
        [result] = harness.collect([reader], 180)
        lat = harness.latencies_vs_sent(harness.checked(result, links), sent)
        out[f"{kind}.steady.p50"], out[f"{kind}.steady.p99"] = ms(lat, 50), ms(lat, 99)
    if kind == "netlink":
        return out
    with events.netns() as ns:
        links = cfg.burst_links
        ref = harness.Reader(harness.peer_argv(ns, "netlink", links, 120))
        reader = harness.Reader(harness.peer_argv(ns, kind, links, 120), cfg.peer_env())
        harness.wait_ready(ns, [ref, reader])
        events.burst(ns, links)
        ref_result, result = harness.collect([ref, reader], 180)
        lat = harness.latencies_vs_reference(
            harness.checked(result, links), harness.checked(ref_result, links)
        )
        out[f"{kind}.burst.p50"], out[f"{kind}.burst.p99"] = ms(lat, 50), ms(lat, 99)
    return out


def subscriber_argv(address: str, links: int, ready_on_match: bool) -> list[str]:
    """The D-Bus Event counter (``bench.ceiling subscribe``) for ``links`` link adds."""
    argv = [sys.executable, "-m", "bench.ceiling", "subscribe", "--address", address]
    argv += ["--links", str(links)]
    return argv + (["--ready-on-match"] if ready_on_match else [])


def spawn_limit(cfg: Config) -> Values:
    """Spawns/s of the Python posix_spawn+waitpid loop, and of the C loop if it can be built."""
    out = {"spawn.python": spawn.python_loop(cfg.spawn_count)}
    c_rate = spawn.c_loop(cfg.spawn_count)
    if c_rate is not None:
        out["spawn.c"] = c_rate
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time process ``pid`` has run so far, all threads, to the nanosecond (schedstat)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks) / 1e9


def idle_usage(pid: int, seconds: float) -> Values:
    """RSS (MB, at the end) and CPU (% of one core) of process ``pid`` over ``seconds``."""
    tick = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    before, start = cpu(), time.monotonic()
    time.sleep(seconds)
    used, elapsed = cpu() - before, time.monotonic() - start
    rss_kb = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return {"rss": rss_kb / 1024.0, "cpu": 100.0 * used / elapsed}


def idle_subscriber(cfg: Config) -> Values:
    """The idle reference: a dbus-fast process connected to a bus with a match, doing nothing."""
    with SystemBus() as bus:
        reader = harness.Reader(subscriber_argv(bus.address, 1, ready_on_match=True))
        try:
            harness.wait_ready(None, [reader])
            usage = idle_usage(reader.proc.pid, cfg.idle_seconds)
        finally:
            reader.stop()
    return {"idle.client.rss": usage["rss"], "idle.client.cpu": usage["cpu"]}
