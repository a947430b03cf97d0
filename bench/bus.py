"""The D-Bus ceiling: what the bus carries from a bare emitter to the broker's subscriber.

Each emitter sends the Event signals the broker would send for a burst of ifb link adds (the
same bodies: the keys of those real uevents) to ``bench.ceiling subscribe`` on a private
system-like bus; events/s from the first to the last signal the subscriber got:

- ``ceiling.rate``: dbus-fast, unpaced (``bench.ceiling emit``): the ceiling the broker's drain
  is set against;
- ``ceiling.sdbus``: C with sd-bus (``bench/emit_sdbus.c``), for context: the fastest emitter
  of any kind built here (needs gcc and libsystemd-dev);
- ``ceiling10.rate``: dbus-fast again, each event's properties padded to 10 keys (how much the
  size of a signal costs).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from support.bus import SystemBus

from bench import harness, tools
from bench.ceiling import write_bodies
from bench.measures import Config, Values, subscriber_argv

HERE = Path(__file__).resolve().parent


def _rate(links: int, emitter: Callable[[str], list[str]], subscribers: int = 1) -> float:
    """Events/s at the slowest of ``subscribers`` for ``emitter(address)`` (its argv)."""
    with SystemBus() as bus:
        readers = [
            harness.Reader(subscriber_argv(bus.address, links, ready_on_match=True))
            for _ in range(subscribers)
        ]
        harness.wait_ready(None, readers)
        done = subprocess.run(
            emitter(bus.address),
            cwd=harness.REPO,
            env=harness.python_env(),
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"emitter failed: {done.stderr.strip()[-500:]}")
        json.loads(done.stdout)  # it finished and said when
        results = [harness.checked(r, links) for r in harness.collect(readers, 300)]
    return min(_span_rate(result) for result in results)


def _span_rate(result: harness.Result) -> float:
    """Events/s from the first to the last signal a subscriber got."""
    first = min(t for *_, t in result.records)
    last = max(t for *_, t in result.records)
    return len(result.records) / (last - first)


def fanned_ceiling(links: int, subscribers: int) -> float:
    """The dbus-fast ceiling to ``subscribers`` subscribers: events/s at the slowest."""
    return _rate(links, _dbus_fast(links), subscribers)


def _dbus_fast(links: int, ten_keys: bool = False) -> Callable[[str], list[str]]:
    argv = [sys.executable, "-m", "bench.ceiling", "emit", "--links", str(links)]
    argv += ["--ten-keys"] if ten_keys else []
    return lambda address: [*argv, "--address", address]


def dbus_ceiling(cfg: Config) -> Values:
    """The dbus-fast ceiling and, when it can be built, the sd-bus one, in the same round."""
    links = cfg.ceiling_links
    out = {"ceiling.rate": _rate(links, _dbus_fast(links))}
    binary = tools.compile_c(HERE / "emit_sdbus.c", "emit_sdbus", ["-lsystemd"])
    if binary is not None:
        with tempfile.NamedTemporaryFile("w", prefix="pnp-bench-bodies-") as bodies:
            write_bodies(bodies.name, links)
            out["ceiling.sdbus"] = _rate(links, lambda address: [str(binary), address, bodies.name])
    return out


def dbus_ceiling_ten(cfg: Config) -> Values:
    links = cfg.ceiling_links
    return {"ceiling10.rate": _rate(links, _dbus_fast(links, ten_keys=True))}
