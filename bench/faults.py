"""What the broker's answers to faults cost, each beside the same run without them.

- ``broker load``: latency at the steady rate of a broker whose journal holds 50,000 events,
  while 32 connections as ``nobody`` (4 processes of 8) call GetEvents from random places in a
  loop (tests/clients/journal_reader.py), beside the same broker with no readers; also the
  GetEvents calls served per second meanwhile.
- ``broker sync``: ``journal_sync = "full"`` (the default: an fsync of the WAL before each window
  is shown to clients) beside ``"normal"``: events/s of a queued burst with ``/bin/true`` as the
  program and with none, and the latency at the steady rate.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from support.broker import BrokerProcess
from support.bus import SystemBus
from support.journal import prefill

from bench import events, harness, spawn
from bench.broker import _broker_burst
from bench.measures import Config, Values, ms, subscriber_argv

JOURNALLED = 50_000
PROCESSES, PER_PROCESS = 4, 8
READER = harness.REPO / "tests" / "clients" / "journal_reader.py"
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@contextlib.contextmanager
def readers(address: str, count: int) -> Iterator[dict[str, float]]:
    """``count`` reader processes as nobody, each with PER_PROCESS connections; yields a dict
    that gets, when they stop, the rows they received per second while all were running."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(harness.REPO)}
    env["DBUS_SYSTEM_BUS_ADDRESS"] = address
    argv = [*NOBODY, sys.executable, str(READER), str(PER_PROCESS), str(JOURNALLED)]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd="/")
        for _ in range(count)
    ]
    served: dict[str, float] = {}
    rate = 0.0
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "READY":
                raise RuntimeError("a journal reader did not start")
        yield served
    finally:
        for proc in procs:
            proc.terminate()
            out, _ = proc.communicate(timeout=60)
            if out.strip():
                total = json.loads(out.strip().splitlines()[-1])
                rate += total["rows"] / total["seconds"]
    if procs:
        served["rows"] = rate


def _steady_latency(
    cfg: Config, loaded: bool, args: tuple[str, ...] = ()
) -> tuple[list[float], float]:
    """Latencies (s) of a steady run, and journal rows/s served to the readers meanwhile."""
    links = cfg.steady_links
    with (
        tempfile.TemporaryDirectory(prefix="pnp-bench-load-") as tmp,
        events.netns() as ns,
        SystemBus() as bus,
    ):
        state = Path(tmp) / "state"
        prefill(state, JOURNALLED)
        broker = BrokerProcess(bus, state, ["--no-program", *args], netns=ns)
        try:
            broker.start(60.0, start_new_session=True, cwd=harness.REPO)
            with readers(bus.address, PROCESSES if loaded else 0) as served:
                reader = harness.Reader(subscriber_argv(bus.address, links, ready_on_match=False))
                harness.wait_ready(ns, [reader])
                sent = events.steady(ns, links, cfg.steady_rate)
                [result] = harness.collect([reader], 300)
        finally:
            broker.stop(60)
            broker.close()
    latencies = harness.latencies_vs_sent(harness.checked(result, links), sent)
    return latencies, served.get("rows", 0.0)


def broker_load(cfg: Config) -> Values:
    quiet, _ = _steady_latency(cfg, False)
    loaded, rows = _steady_latency(cfg, True)
    return {
        "load.quiet.p50": ms(quiet, 50),
        "load.quiet.p99": ms(quiet, 99),
        "load.busy.p50": ms(loaded, 50),
        "load.busy.p99": ms(loaded, 99),
        "load.rows": rows,
    }


def broker_sync(cfg: Config) -> Values:
    out: Values = {}
    with tempfile.TemporaryDirectory(prefix="pnp-bench-sync-") as tmp:
        normal = Path(tmp) / "normal.toml"
        normal.write_text('journal_sync = "normal"\n')
        legacy = ("-p", spawn.PROGRAM)
        for name, sync in (("full", ()), ("normal", ("-c", str(normal)))):
            out[f"sync.{name}.legacy"], _ = _broker_burst(
                cfg, True, cfg.legacy_links, (*legacy, *sync)
            )
            out[f"sync.{name}.none"], _ = _broker_burst(cfg, True, 0, ("--no-program", *sync))
            latencies, _ = _steady_latency(cfg, False, sync)
            out[f"sync.{name}.p50"], out[f"sync.{name}.p99"] = ms(latencies, 50), ms(latencies, 99)
    return out
