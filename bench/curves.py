"""Cost curves: what the journal's length and the number of subscribers cost the broker.

- ``curve journal``: a broker (no program) whose journal already holds 1,000, 10,000, 100,000
  and 1,000,000 published events (``tests/support/journal.prefill``: as after a long run;
  retention and the cap set above them, so nothing is pruned meanwhile): its drain of a queued
  burst (events/s at a subscriber), the latency of ``GetEvents`` from a random place (100 rows,
  the median of 200 calls in a row from one root connection) and its RSS after the drain. Each
  is set against the same figure at 1,000 events in the same round.
- ``curve subscribers``: a broker with an empty journal and 1, 10 or 100 subscribers
  (processes of ``bench.ceiling subscribe``): its drain of a queued burst at the slowest
  subscriber, beside the dbus-fast ceiling emitter to as many subscribers in the same round
  (the bus daemon copies each signal to every subscriber, so the ceiling falls too), and the
  broker's RSS after the drain.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from support.bus import SystemBus
from support.journal import prefill

from bench import bus as ceiling
from bench import events, harness
from bench.broker import running_broker
from bench.measures import Config, Values, subscriber_argv
from bench.registry import Figure, Measurement
from pnpbroker import names

LENGTHS = (1_000, 10_000, 100_000, 1_000_000)
SUBSCRIBERS = (1, 10, 100)
CALLS, ROWS = 200, 100
#: Retention and the cap above the longest journal: nothing is pruned or capped meanwhile.
ROOMY = "retention_events = 4000000\njournal_max_events = 4000000\n"


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024.0


async def _get_events_ms(address: str, highest: int) -> float:
    """The median latency (ms) of GetEvents(random place, 100 rows), calls one after another."""
    bus = await MessageBus(bus_address=address).connect()
    took = []
    try:
        for _ in range(CALLS):
            after = random.randrange(max(1, highest - ROWS))
            call = Message(
                destination=names.BUS_NAME,
                path=names.OBJECT_PATH,
                interface=names.INTERFACE,
                member="GetEvents",
                signature="tu",
                body=[after, ROWS],
            )
            start = time.monotonic()
            reply = await bus.call(call)
            took.append(time.monotonic() - start)
            if reply is None or reply.message_type != MessageType.METHOD_RETURN:
                raise RuntimeError(f"GetEvents failed: {reply}")
            if len(reply.body[0]) != ROWS:
                raise RuntimeError(f"GetEvents returned {len(reply.body[0])} rows, not {ROWS}")
    finally:
        bus.disconnect()
    return 1000.0 * statistics.median(took)


def _drain(cfg: Config, subscribers: int, journalled: int, tmp: Path) -> tuple[float, float, float]:
    """(events/s at the slowest subscriber, GetEvents ms, RSS MB after) for one broker."""
    links, state = cfg.burst_links, tmp / "state"
    config = tmp / "roomy.toml"
    config.write_text(ROOMY)
    if journalled:
        prefill(state, journalled)
        os.sync()  # on disk, as a long run's journal is: its writeback must not slow the run
    with (
        events.netns() as ns,
        SystemBus() as bus,
        running_broker(ns, bus, ["--no-program", "-c", str(config)], state) as broker,
    ):
        readers = [
            harness.Reader(subscriber_argv(bus.address, links, ready_on_match=False))
            for _ in range(subscribers)
        ]
        harness.wait_ready(ns, readers, limit=120.0)
        harness.pause_group(broker.pid)
        events.burst(ns, links)
        resumed = harness.resume_group(broker.pid)
        results = [harness.checked(r, links) for r in harness.collect(readers, 600)]
        rss = _rss_mb(broker.pid)
        latency = asyncio.run(_get_events_ms(bus.address, journalled)) if journalled else 0.0
    return min(harness.drain_rate(r, resumed) for r in results), latency, rss


def journal_curve(cfg: Config) -> Values:
    out: Values = {}
    for length in LENGTHS:
        with tempfile.TemporaryDirectory(prefix="pnp-bench-curve-") as tmp:
            rate, latency, rss = _drain(cfg, 1, length, Path(tmp))
        out |= {f"curve.j{length}.drain": rate, f"curve.j{length}.get": latency}
        out[f"curve.j{length}.rss"] = rss
    return out


def subscriber_curve(cfg: Config) -> Values:
    out: Values = {}
    for count in SUBSCRIBERS:
        with tempfile.TemporaryDirectory(prefix="pnp-bench-curve-") as tmp:
            rate, _, rss = _drain(cfg, count, 0, Path(tmp))
        out |= {f"curve.s{count}.drain": rate, f"curve.s{count}.rss": rss}
        out[f"curve.s{count}.ceiling"] = ceiling.fanned_ceiling(cfg.burst_links, count)
    return out


def _journal_figures() -> tuple[Figure, ...]:
    out = []
    for length in LENGTHS:
        base = None if length == LENGTHS[0] else LENGTHS[0]
        for what, label, unit in (
            ("drain", "drain, queued burst", "ev/s"),
            ("get", "GetEvents (100 rows) latency p50", "ms"),
            ("rss", "RSS after the drain", "MB"),
        ):
            versus = f"curve.j{base}.{what}" if base else None
            text = f"journal of {length:,} events: broker {label}"
            out.append(Figure(f"curve.j{length}.{what}", text, unit, versus))
    return tuple(out)


def _subscriber_figures() -> tuple[Figure, ...]:
    out = []
    for count in SUBSCRIBERS:
        out += [
            Figure(f"curve.s{count}.ceiling", f"{count} subscribers: dbus-fast ceiling", "ev/s"),
            Figure(
                f"curve.s{count}.drain",
                f"{count} subscribers: broker drain, slowest subscriber",
                "ev/s",
                f"curve.s{count}.ceiling",
            ),
            Figure(
                f"curve.s{count}.rss",
                f"{count} subscribers: broker RSS after the drain",
                "MB",
                None if count == 1 else "curve.s1.rss",
            ),
        ]
    return tuple(out)


MEASUREMENTS = (
    Measurement("curve journal", journal_curve, _journal_figures()),
    Measurement("curve subscribers", subscriber_curve, _subscriber_figures()),
)
