"""The fleet forwarder (docs/fleet.md) beside a bare MQTT publisher, on one mosquitto.

``fleet(cfg)``, in a fresh namespace with a private bus, a mosquitto (Debian's) on the
namespace's loopback, the broker with its feed socket and ``pnpbroker forward``:

- *forwarding rate*: the forwarder is SIGSTOPped while a burst is journalled, then resumed;
  events/s at an MQTT subscriber from then until the last of them arrived. Beside it, in the same
  run and against the same mosquitto and subscriber: a bare publisher with the same client
  library (paho-mqtt), QoS 1 and in-flight window (the server's Receive Maximum), publishing as
  many ready-made messages of the same mean size as fast as paho takes them (its own thread);
- *latency*: kernel to fleet subscriber at the steady rate, from the moment each link's ``ip``
  line was written (as ``broker latency`` does for the D-Bus client);
- *sizes*: the mean payload, and the mean PUBLISH on the wire (fixed header, topic, packet id,
  user properties, payload), which docs/fleet.md's 10,000-host estimate is made from.

``python -m bench.fleet subscribe|publish ...`` are the two MQTT helpers (``bench.peers``
protocol for the subscriber: READY once it saw the probe link, then one JSON line of records).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench import events, harness
from bench.measures import Config, Values, ms
from pnpbroker.fleet.mqtt import UserProperties

if TYPE_CHECKING:
    from support.broker import BrokerProcess
    from support.netns import NetNS

TOPIC = "pnpbroker/+/events/#"
PORT = 1883


@dataclass
class Rig:
    ns: NetNS
    tmp: Path
    broker: BrokerProcess
    forwarder: BrokerProcess


@contextlib.contextmanager
def rig() -> Iterator[Rig]:
    from support.broker import BrokerProcess
    from support.bus import SystemBus
    from support.fleet import write_toml
    from support.mosquitto import Mosquitto

    with (
        tempfile.TemporaryDirectory(prefix="pnp-bench-fleet-") as name,
        events.netns() as ns,
        SystemBus() as bus,
    ):
        tmp = Path(name)
        feed = tmp / "feed.sock"
        conf = write_toml(tmp / "broker.toml", {"forward_socket": str(feed)})
        fwd = write_toml(
            tmp / "forward.toml",
            {"broker": "127.0.0.1", "port": PORT, "host": "bench", "feed": str(feed)},
        )
        broker = BrokerProcess(bus, tmp / "state", ["--no-program", "-c", str(conf)], netns=ns)
        forwarder = BrokerProcess(None, tmp, ["-c", str(fwd)], netns=ns, command="forward")
        with Mosquitto(tmp / "mosquitto", netns=ns, port=PORT), broker:
            forwarder.start(60.0, start_new_session=True, cwd=harness.REPO)
            try:
                yield Rig(ns, tmp, broker, forwarder)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(forwarder.pid, signal.SIGCONT)
                forwarder.stop(60)
                forwarder.close()


def _subscriber(rig: Rig, links: int, sizes: Path) -> harness.Reader:
    argv = [sys.executable, "-m", "bench.fleet", "subscribe", "--links", str(links)]
    return harness.Reader(rig.ns.exec_argv([*argv, "--sizes", str(sizes)]))


def _journalled(rig: Rig, at_least: int, timeout: float = 120.0) -> None:
    """Until the broker's journal holds ``at_least`` rows (the burst is all in)."""
    deadline = time.monotonic() + timeout
    path = rig.tmp / "state" / "journal.sqlite"
    while time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(path)) as db:
            if db.execute("SELECT COUNT(*) FROM events").fetchone()[0] >= at_least:
                return
        time.sleep(0.05)
    raise TimeoutError(f"the journal did not reach {at_least} events")


def fleet(cfg: Config) -> Values:
    links = cfg.burst_links
    with rig() as r:
        sizes = r.tmp / "sizes.json"
        reader = _subscriber(r, links, sizes)
        harness.wait_ready(r.ns, [reader])
        harness.pause_group(r.forwarder.pid)
        events.burst(r.ns, links)
        _journalled(r, links * events.EVENTS_PER_LINK)
        resumed = harness.resume_group(r.forwarder.pid)
        [result] = harness.collect([reader], 300)
        drain = harness.drain_rate(harness.checked(result, links), resumed)
        measured = json.loads(sizes.read_text())
        bare = _bare(r, links, int(measured["payload"]))
        latency = _latency(r, cfg)
    return {
        "fleet.drain": drain,
        "fleet.bare": bare,
        "fleet.steady.p50": ms(latency, 50),
        "fleet.steady.p99": ms(latency, 99),
        "fleet.payload": measured["payload"],
        "fleet.wire": measured["wire"],
    }


def _bare(rig: Rig, links: int, size: int) -> float:
    reader = _subscriber(rig, links, rig.tmp / "bare-sizes.json")
    harness.wait_ready(rig.ns, [reader])
    argv = [sys.executable, "-m", "bench.fleet", "publish", "--links", str(links)]
    publisher = harness.Reader(rig.ns.exec_argv([*argv, "--size", str(size)]))
    started = float(publisher.lines.get(timeout=60))
    [result] = harness.collect([reader], 300)
    publisher.proc.wait(60)
    return harness.drain_rate(harness.checked(result, links), started)


def _latency(rig: Rig, cfg: Config) -> list[float]:
    rig.ns.ip("link", "del", "group", str(events.GROUP), check=False)
    links = cfg.steady_links
    reader = _subscriber(rig, links, rig.tmp / "steady-sizes.json")
    harness.wait_ready(rig.ns, [reader])
    sent = events.steady(rig.ns, links, cfg.steady_rate)
    [result] = harness.collect([reader], 300)
    return harness.latencies_vs_sent(harness.checked(result, links), sent)


# The helpers, run as ``python -m bench.fleet ...`` inside the namespace.
def _client(client_id: str) -> paho.Client:
    return paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)


def subscribe(links: int, sizes: Path, timeout: float) -> None:
    """Records (sequence, action, devpath, arrival) of our links' events; READY on the probe."""
    expected = events.expected_devpaths(links)
    records: list[tuple[int, str, str, float]] = []
    seen: set[str] = set()
    payload_bytes = wire_bytes = 0
    done = threading.Event()
    ready = False

    def message(client: Any, userdata: Any, msg: Any) -> None:
        nonlocal ready, payload_bytes, wire_bytes
        now = time.monotonic()
        data = json.loads(msg.payload)
        devpath = data.get("devpath", "")
        if devpath == events.PROBE_DEVPATH and not ready:
            ready = True
            print("READY", flush=True)
        if devpath in expected and devpath not in seen and data.get("action") == "add":
            seen.add(devpath)
            records.append((int(data["sequence"]), data["action"], devpath, now))
            payload_bytes += len(msg.payload)
            wire_bytes += _wire(msg)
            if len(seen) == len(expected):
                done.set()

    client = _client(f"bench-sub-{os.getpid()}")
    client.on_message = message
    client.on_connect = lambda c, u, f, r, p: c.subscribe(TOPIC, qos=1)
    client.connect("127.0.0.1", PORT)
    client.loop_start()
    done.wait(timeout)
    client.loop_stop()
    count = max(len(records), 1)
    sizes.write_text(json.dumps({"payload": payload_bytes / count, "wire": wire_bytes / count}))
    print(json.dumps({"records": records, "complete": done.is_set()}), flush=True)


def _wire(msg: Any) -> int:
    """A QoS 1 PUBLISH's bytes: fixed header (2-4), topic (2 + n), packet id (2), properties
    (their length, then each user property: 1 + 2 + key + 2 + value), payload."""
    props = getattr(getattr(msg, "properties", None), "UserProperty", []) or []
    prop_bytes = sum(5 + len(k.encode()) + len(v.encode()) for k, v in props)
    body = 2 + len(msg.topic.encode()) + 2 + 1 + prop_bytes + len(msg.payload)
    return body + (2 if body < 128 else 3 if body < 16384 else 4)


def publish(links: int, size: int) -> None:
    """The bare publisher: ready-made QoS 1 messages of ``size`` bytes with the same user
    properties (packed as the forwarder packs them), as fast as paho sends them (its own network
    thread) within the server's Receive Maximum; prints its start (CLOCK_MONOTONIC) first."""
    client = _client(f"bench-bare-{os.getpid()}")
    client.max_inflight_messages_set(_receive_maximum())
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.connect("127.0.0.1", PORT)
    client.loop_start()
    connected.wait(30)
    messages = []
    journal_id = str(uuid.uuid4())
    for i, devpath in enumerate(sorted(events.expected_devpaths(links))):
        body = {"sequence": i + 1, "journal_id": journal_id, "action": "add", "devpath": devpath}
        body["pad"] = "x" * max(0, size - len(json.dumps(body)) - 10)
        props = UserProperties([("journal_id", journal_id), ("sequence", str(i + 1))])
        messages.append((json.dumps(body).encode(), props))
    print(time.monotonic(), flush=True)
    topic = "pnpbroker/bare/events/net/add"
    infos = [client.publish(topic, m, qos=1, properties=p) for m, p in messages]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def _receive_maximum() -> int:
    """The server's Receive Maximum (what the forwarder's window is bounded by)."""
    found: list[int] = []
    probe = _client(f"bench-probe-{os.getpid()}")
    probe.on_connect = lambda c, u, f, r, props: found.append(
        getattr(props, "ReceiveMaximum", None) or 65535
    )
    probe.connect("127.0.0.1", PORT)
    while not found:
        probe.loop(0.1)
    probe.disconnect()
    return found[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("subscribe", "publish"))
    parser.add_argument("--links", type=int, required=True)
    parser.add_argument("--sizes", type=Path)
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    if args.mode == "subscribe":
        subscribe(args.links, args.sizes, args.timeout)
    else:
        publish(args.links, args.size)


if __name__ == "__main__":
    main()
