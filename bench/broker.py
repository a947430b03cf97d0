"""The broker's half of each comparison: throughput, latency, the legacy path, idle.

Each ``broker_*`` function runs one repetition and returns named values (keys as in
``bench.figures``), or raises ``BrokerPending`` when the broker cannot be measured here; the
table then says why. ``running_broker`` starts the broker with the test kit, as the tests do:
``python -m pnpbroker run --state-dir DIR --no-program`` inside the namespace, on a private
system-like bus (the project's own policy included), ready when it sends READY=1.
Its Event signals are counted by ``bench.ceiling subscribe``, the same reader as for the ceiling.
The storm and coldplug live in ``bench.storm`` and ``bench.coldplug``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

from support.broker import BrokerProcess
from support.bus import SystemBus
from support.journal import JOURNAL_NAME
from support.netns import NetNS

from bench import events, harness, spawn
from bench.measures import Config, Values, cpu_seconds, idle_usage, ms, subscriber_argv


class BrokerPending(Exception):
    """The broker side of this figure cannot be measured (yet); the reason says why."""


@contextlib.contextmanager
def running_broker(
    ns: NetNS, bus: SystemBus, extra: list[str], state: Path | None = None
) -> Iterator[BrokerProcess]:
    """The broker inside ``ns`` on ``bus``, after READY=1 (the test kit's BrokerProcess, in its
    own process group so that it can be paused), with a fresh state directory unless one is
    given; stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix="pnp-bench-broker-") as tmp:
        broker = BrokerProcess(bus, state or Path(tmp) / "state", extra, netns=ns)
        try:
            broker.start(60.0, start_new_session=True, cwd=harness.REPO)
            yield broker
        finally:
            if broker.proc is not None and broker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(broker.pid, signal.SIGCONT)  # in case it was paused
                broker.stop(60)
            broker.close()


@contextlib.contextmanager
def broker_setup(
    args: tuple[str, ...] = ("--no-program",),
) -> Iterator[tuple[NetNS, str, BrokerProcess]]:
    """A fresh namespace, a private system-like bus and a ready broker in them."""
    with (
        events.netns() as ns,
        SystemBus() as bus,
        running_broker(ns, bus, list(args)) as broker,
    ):
        yield ns, bus.address, broker


def broker_throughput(cfg: Config) -> Values:
    """Events/s kernel -> broker -> D-Bus client: live in a burst, and draining a queued burst.

    Drain: the broker is SIGSTOPped while the burst queues in its netlink socket, then resumed;
    the rate is counted at the subscriber. Compared with the D-Bus ceiling and the netlink peer.
    """
    live, kernel = _broker_burst(cfg, False)
    drain, _ = _broker_burst(cfg, True)
    return {"broker.live": live, "broker.kernel": kernel, "broker.drain": drain}


def _broker_burst(
    cfg: Config, paused: bool, links: int = 0, args: tuple[str, ...] = ("--no-program",)
) -> tuple[float, float]:
    """(events/s at the subscriber, events/s the kernel made) for one burst."""
    links = links or cfg.burst_links
    with broker_setup(args) as (ns, address, proc):
        reader = harness.Reader(subscriber_argv(address, links, ready_on_match=False))
        harness.wait_ready(ns, [reader])
        if paused:
            harness.pause_group(proc.pid)
        sent = events.burst(ns, links)
        resumed = harness.resume_group(proc.pid) if paused else sent.start
        [result] = harness.collect([reader], 300)
    result = harness.checked(result, links)
    kernel = links * events.EVENTS_PER_LINK / (sent.end - sent.start)
    got = harness.drain_rate(result, resumed) if paused else harness.rate(result, sent)
    return got, kernel


REBROADCAST = ("--no-program", "--rebroadcast", "libudev")


def broker_rebroadcast(cfg: Config) -> Values:
    """``--rebroadcast libudev`` against no re-broadcast, with no program, each a fresh broker:

    - a live burst with ``udevadm monitor --udev`` listening (events/s at the D-Bus subscriber;
      the kernel's making rate bounds both);
    - a queued burst with udevadm listening (events/s at udevadm and at the D-Bus subscriber in
      the same run), and with nobody listening on netlink (the broker's own cost): the broker's
      capacity. Besides the rates, the broker's CPU time per event over the drain, which the
      other work on these cores disturbs less than a rate;
    - the legacy path (``-p /bin/true``, as ``broker_legacy``).
    """
    if cfg.udevadm is None:
        raise BrokerPending("no udevadm")
    off = ("--no-program",)
    out: Values = {}
    out["rebroadcast.live"], _, _ = _rebroadcast_burst(cfg, REBROADCAST, True, paused=False)
    out["rebroadcast.live.off"], _, _ = _rebroadcast_burst(cfg, off, False, paused=False)
    dbus, udev, out["rebroadcast.cpu.on"] = _rebroadcast_burst(cfg, REBROADCAST, True)
    out["rebroadcast.dbus"], out["rebroadcast.udevadm"] = dbus, udev
    quiet = _rebroadcast_burst(cfg, REBROADCAST, False)
    out["rebroadcast.quiet"], out["rebroadcast.cpu.quiet"] = quiet[0], quiet[2]
    plain = _rebroadcast_burst(cfg, off, False)
    out["rebroadcast.off"], out["rebroadcast.cpu.off"] = plain[0], plain[2]
    legacy = ("-p", spawn.PROGRAM)
    with_it = (*legacy, *REBROADCAST[1:])
    out["rebroadcast.legacy"], _ = _broker_burst(cfg, True, cfg.legacy_links, with_it)
    out["rebroadcast.legacy.off"], _ = _broker_burst(cfg, True, cfg.legacy_links, legacy)
    return out


def _rebroadcast_burst(
    cfg: Config, args: tuple[str, ...], udevadm: bool, paused: bool = True
) -> tuple[float, float, float]:
    """(D-Bus events/s, udevadm events/s or 0, broker CPU us per event) for one burst."""
    links = cfg.burst_links
    with broker_setup(args) as (ns, address, proc):
        readers = [harness.Reader(subscriber_argv(address, links, ready_on_match=False))]
        if udevadm:
            argv = harness.peer_argv(ns, "udevadm-udev", links, 300)
            readers.append(harness.Reader(argv, cfg.peer_env()))
        harness.wait_ready(ns, readers)
        if paused:
            harness.pause_group(proc.pid)
        before = cpu_seconds(proc.pid)
        sent = events.burst(ns, links)
        resumed = harness.resume_group(proc.pid) if paused else sent.start
        results = harness.collect(readers, 300)
        used = cpu_seconds(proc.pid) - before
    rates = [harness.drain_rate(harness.checked(r, links), resumed) for r in results]
    per_event = used / (links * events.EVENTS_PER_LINK) * 1e6
    return rates[0], rates[1] if udevadm else 0.0, per_event


def broker_latency(cfg: Config) -> Values:
    """p50/p99 kernel -> D-Bus client at the steady rate (vs line send time) and in a burst
    (vs a minimal netlink reader in the namespace, per SEQNUM)."""
    out: Values = {}
    with broker_setup() as (ns, address, _proc):
        links = cfg.steady_links
        reader = harness.Reader(subscriber_argv(address, links, ready_on_match=False))
        harness.wait_ready(ns, [reader])
        sent = events.steady(ns, links, cfg.steady_rate)
        [result] = harness.collect([reader], 300)
    lat = harness.latencies_vs_sent(harness.checked(result, links), sent)
    out["broker.steady.p50"], out["broker.steady.p99"] = ms(lat, 50), ms(lat, 99)
    with broker_setup() as (ns, address, _proc):
        links = cfg.burst_links
        ref = harness.Reader(harness.peer_argv(ns, "netlink", links, 300))
        reader = harness.Reader(subscriber_argv(address, links, ready_on_match=False))
        harness.wait_ready(ns, [ref, reader])
        events.burst(ns, links)
        ref_result, result = harness.collect([ref, reader], 300)
    lat = harness.latencies_vs_reference(
        harness.checked(result, links), harness.checked(ref_result, links)
    )
    out["broker.burst.p50"], out["broker.burst.p99"] = ms(lat, 50), ms(lat, 99)
    return out


def broker_idle(cfg: Config) -> Values:
    """RSS (MB) and CPU (% of a core) of a ready broker with nothing to do, over idle_seconds."""
    with broker_setup() as (_ns, _address, proc):
        before = _journalled(proc.state_dir)
        usage = idle_usage(proc.pid, cfg.idle_seconds)
        arrived = _journalled(proc.state_dir) - before
    return {
        "broker.idle.rss": usage["rss"],
        "broker.idle.cpu": usage["cpu"],
        "broker.idle.events": arrived / cfg.idle_seconds,
    }


def _journalled(state: Path) -> int:
    """The last sequence in the broker's journal (read-only, beside the running broker):
    events from other devices leak into the namespace from the host, and an idle broker
    journals and publishes each."""
    with contextlib.closing(
        sqlite3.connect(f"file:{state / JOURNAL_NAME}?mode=ro", uri=True)
    ) as db:
        return int(db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])


def broker_legacy(cfg: Config) -> Values:
    """Events/s with /bin/true as the legacy program (beside the spawn loop, ``spawn.python``).

    The broker (``-p /bin/true``) is SIGSTOPped while ``legacy_links`` link adds queue in its
    socket, then resumed: events/s from then until the last Event signal reaches the subscriber,
    so every event is read, journalled, run through /bin/true, recorded and published.
    """
    rate, _ = _broker_burst(cfg, True, cfg.legacy_links, ("-p", spawn.PROGRAM))
    return {"broker.legacy": rate}
