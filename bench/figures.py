"""Every figure the table shows, grouped by the measurement that yields it.

A ``Measurement`` runs once per repetition and returns values by key; each ``Figure`` names one
key and, in ``versus``, the peer or limit it is set against. ``once`` runs it in the first round
only (the storm: ~10 minutes by itself); ``alongside`` names a measurement to run it beside, in a
thread, all its repetitions back to back (the idle figures, which count only the idle process's
own CPU time and memory, are measured while the storm runs instead of taking minutes of their own).
"""

from __future__ import annotations

from bench import broker, bus, coldplug, curves, devices, faults, fleet, measures, storm
from bench.measures import Config, Values
from bench.registry import Figure, Measurement


def _reader(kind: str, label: str) -> Measurement:
    """A peer reader's figures: throughput live and queued, latency steady and in a burst."""

    def run(cfg: Config) -> Values:
        return measures.reader_throughput(cfg, kind) | measures.reader_latency(cfg, kind)

    ref = kind != "netlink"  # the netlink listener is the others' reference
    figures = [
        Figure(f"{kind}.live", f"{label}: events/s, live burst", "ev/s", f"{kind}.kernel"),
        Figure(
            f"{kind}.drain", f"{label}: events/s, queued burst", "ev/s", _if(ref, "netlink.drain")
        ),
    ]
    for q in (50, 99):
        versus = _if(ref, f"netlink.steady.p{q}")
        figures.append(
            Figure(f"{kind}.steady.p{q}", f"{label}: latency p{q}, steady", "ms", versus)
        )
    if ref:
        figures += [
            Figure(f"{kind}.burst.p{q}", f"{label}: latency p{q}, burst", "ms") for q in (50, 99)
        ]
    else:
        figures.insert(0, Figure("netlink.kernel", "kernel: ifb uevents made/s in a burst", "ev/s"))
    return Measurement(kind, run, tuple(figures))


def _if(condition: bool, key: str) -> str | None:
    return key if condition else None


BROKER_THROUGHPUT = (
    Figure("broker.live", "broker -> D-Bus client: events/s, live burst", "ev/s", "broker.kernel"),
    Figure(
        "broker.drain", "broker -> D-Bus client: events/s, queued burst", "ev/s", "ceiling.rate"
    ),
    Figure(
        "broker.drain", "broker -> D-Bus client: events/s, queued burst", "ev/s", "ceiling.sdbus"
    ),
    Figure(
        "broker.drain", "broker -> D-Bus client: events/s, queued burst", "ev/s", "netlink.drain"
    ),
)
BROKER_LATENCY = tuple(
    Figure(f"broker.{mode}.p{q}", f"broker: latency p{q}, {mode}{extra}", "ms", versus)
    for mode, extra in (("steady", ""), ("burst", " (after netlink)"))
    for q in (50, 99)
    for versus in ([f"netlink.steady.p{q}"] if mode == "steady" else [None])
)

BROKER_REBROADCAST = (
    Figure(
        "rebroadcast.live",
        "broker -> D-Bus client, --rebroadcast libudev + udevadm: events/s, live burst",
        "ev/s",
        "rebroadcast.live.off",
    ),
    Figure("rebroadcast.live.off", "broker -> D-Bus client, no --rebroadcast: ev/s, live", "ev/s"),
    Figure(
        "rebroadcast.udevadm",
        "--rebroadcast libudev -> udevadm monitor --udev: events/s, queued burst",
        "ev/s",
        "rebroadcast.dbus",
    ),
    Figure(
        "rebroadcast.dbus",
        "broker -> D-Bus client, same run (udevadm listening): events/s, queued burst",
        "ev/s",
        "rebroadcast.off",
    ),
    Figure(
        "rebroadcast.quiet",
        "broker -> D-Bus client, --rebroadcast libudev, no netlink listener: events/s",
        "ev/s",
        "rebroadcast.off",
    ),
    Figure("rebroadcast.off", "broker -> D-Bus client, no --rebroadcast: events/s", "ev/s"),
    Figure(
        "rebroadcast.cpu.on",
        "broker CPU per event, --rebroadcast libudev, udevadm listening",
        "us",
        "rebroadcast.cpu.off",
    ),
    Figure(
        "rebroadcast.cpu.quiet",
        "broker CPU per event, --rebroadcast libudev, no netlink listener",
        "us",
        "rebroadcast.cpu.off",
    ),
    Figure("rebroadcast.cpu.off", "broker CPU per event, no --rebroadcast", "us"),
    Figure(
        "rebroadcast.legacy",
        "broker with /bin/true and --rebroadcast libudev: events/s",
        "ev/s",
        "rebroadcast.legacy.off",
    ),
    Figure("rebroadcast.legacy.off", "broker with /bin/true, no --rebroadcast: events/s", "ev/s"),
)

FLEET = (
    Figure(
        "fleet.drain",
        "pnpbroker forward -> MQTT subscriber: events/s, queued burst",
        "ev/s",
        "fleet.bare",
    ),
    Figure("fleet.bare", "bare paho publisher, QoS 1, same window and size: msg/s", "ev/s"),
    Figure(
        "fleet.steady.p50",
        "kernel -> fleet subscriber: latency p50, steady",
        "ms",
        "broker.steady.p50",
    ),
    Figure(
        "fleet.steady.p99",
        "kernel -> fleet subscriber: latency p99, steady",
        "ms",
        "broker.steady.p99",
    ),
    Figure("fleet.payload", "fleet: mean payload of an event message", "B"),
    Figure("fleet.wire", "fleet: mean PUBLISH on the wire (topic, properties, payload)", "B"),
)

MEASUREMENTS: tuple[Measurement, ...] = (
    _reader("netlink", "netlink listener (Python)"),
    _reader("udevadm", "udevadm monitor --kernel"),
    _reader("pyudev", "pyudev kernel monitor"),
    Measurement(
        "ceiling",
        bus.dbus_ceiling,
        (
            Figure(
                "ceiling.rate", "D-Bus ceiling: bare dbus-fast emitter, unpaced -> client", "ev/s"
            ),
            Figure(
                "ceiling.sdbus",
                "D-Bus: C sd-bus emitter -> same client (context)",
                "ev/s",
                "ceiling.rate",
            ),
        ),
    ),
    Measurement(
        "ceiling10",
        bus.dbus_ceiling_ten,
        (Figure("ceiling10.rate", "D-Bus ceiling, 10-key properties", "ev/s", "ceiling.rate"),),
    ),
    Measurement("broker throughput", broker.broker_throughput, BROKER_THROUGHPUT),
    Measurement("broker latency", broker.broker_latency, BROKER_LATENCY),
    Measurement("broker rebroadcast", broker.broker_rebroadcast, BROKER_REBROADCAST),
    Measurement(
        "broker load",
        faults.broker_load,
        tuple(
            Figure(
                f"load.busy.p{q}",
                f"broker: latency p{q}, steady, 32 nobody connections looping GetEvents over "
                "50,000 journalled events",
                "ms",
                f"load.quiet.p{q}",
            )
            for q in (50, 99)
        )
        + tuple(
            Figure(
                f"load.quiet.p{q}", f"broker: latency p{q}, steady, same journal, no readers", "ms"
            )
            for q in (50, 99)
        )
        + (Figure("load.rows", "journal rows served to those readers meanwhile", "rows/s"),),
    ),
    Measurement(
        "broker sync",
        faults.broker_sync,
        (
            Figure(
                "sync.full.legacy",
                'broker with /bin/true, journal_sync = "full" (default): events/s',
                "ev/s",
                "sync.normal.legacy",
            ),
            Figure("sync.normal.legacy", 'broker with /bin/true, journal_sync = "normal"', "ev/s"),
            Figure(
                "sync.full.none",
                'broker, no program, journal_sync = "full": events/s, queued burst',
                "ev/s",
                "sync.normal.none",
            ),
            Figure("sync.normal.none", 'broker, no program, journal_sync = "normal"', "ev/s"),
            *(
                Figure(
                    f"sync.full.p{q}",
                    f'broker: latency p{q}, steady, journal_sync = "full"',
                    "ms",
                    f"sync.normal.p{q}",
                )
                for q in (50, 99)
            ),
            *(
                Figure(f"sync.normal.p{q}", f'broker: latency p{q}, steady, "normal"', "ms")
                for q in (50, 99)
            ),
        ),
    ),
    Measurement(
        "spawn",
        measures.spawn_limit,
        (
            Figure("spawn.python", "spawn limit: Python posix_spawn+waitpid /bin/true", "/s"),
            Figure("spawn.c", "spawn loop in C (context)", "/s", "spawn.python"),
        ),
    ),
    Measurement(
        "broker legacy",
        broker.broker_legacy,
        (Figure("broker.legacy", "broker with /bin/true: events/s", "ev/s", "spawn.python"),),
    ),
    Measurement(
        "broker storm",
        storm.broker_storm,
        (
            Figure("storm.floor", "storm floor: N / spawns/s of the 5 ms program", "s"),
            Figure("broker.storm.drain", "storm: time to drain", "s", "storm.floor"),
            Figure("broker.storm.overflows", "storm: kernel overflows (Statistics)", "n"),
            Figure("broker.storm.lost", "storm: events lost (not published, gaps, repeats)", "n"),
            Figure("broker.storm.rss", "storm: broker peak RSS (VmHWM)", "MB"),
        ),
        once=True,
    ),
    Measurement(
        "idle client",
        measures.idle_subscriber,
        (
            Figure("idle.client.rss", "idle dbus-fast client with a match: RSS", "MB"),
            Figure("idle.client.cpu", "idle dbus-fast client: CPU", "%"),
        ),
        alongside="broker storm",
    ),
    Measurement(
        "broker idle",
        broker.broker_idle,
        (
            Figure("broker.idle.rss", "idle broker: RSS", "MB", "idle.client.rss"),
            Figure("broker.idle.cpu", "idle broker: CPU", "%"),
            Figure("broker.idle.events", "idle broker: events leaked in from the host", "ev/s"),
        ),
        alongside="broker storm",
    ),
    Measurement("fleet", fleet.fleet, FLEET),
    Measurement(
        "coldplug",
        coldplug.coldplug,
        (
            Figure("coldplug.devices", "devices in /sys (pnpbroker trigger --dry-run)", "n"),
            Figure("coldplug.udevadm", "udevadm trigger --dry-run: devices/s", "dev/s"),
            Figure("coldplug.shell", "shell loop `echo add >` every uevent file: files/s", "/s"),
            Figure(
                "broker.coldplug",
                "pnpbroker trigger --settle: devices/s",
                "dev/s",
                "coldplug.shell",
            ),
            Figure(
                "broker.coldplug.time",
                "pnpbroker trigger --settle: time to settle",
                "s",
                "coldplug.shell.time",
            ),
        ),
    ),
    Measurement(
        "devices",
        devices.devices_table,
        (
            Figure("devices.table", "device table: devices (GetDevices rows)", "n"),
            Figure("devices.ready", "broker start: launch to READY=1, that table in sysfs", "s"),
            Figure(
                "devices.start",
                "broker start: launch to the first GetDevices answer",
                "s",
                "devices.ready",
            ),
            Figure("devices.pyudev", "libudev enumerate + properties (pyudev), same sysfs", "s"),
            Figure("devices.scan", "the table's scan of sysfs alone", "s", "devices.pyudev"),
            Figure("devices.ceiling", "ceiling: bare dbus-fast returning the same rows", "ms"),
            Figure("devices.get", "GetDevices, every device: latency", "ms", "devices.ceiling"),
            Figure("devices.get.one", "GetDevices, one device (devpath filter): latency", "ms"),
            Figure("devices.text", "the table's text (uevent keys, devpaths)", "MB"),
            Figure("devices.memory", "the table's memory (tracemalloc)", "MB", "devices.text"),
            Figure("devices.per_device", "the table's memory per device", "B"),
            Figure(
                "devices.burst.vs_broker",
                "enumerate+subscribe amid a burst: its devices that differ from the broker's",
                "n",
            ),
            Figure(
                "devices.burst.vs_kernel",
                "enumerate+subscribe amid a burst: its devices that differ from the kernel's",
                "n",
            ),
        ),
    ),
    *curves.MEASUREMENTS,
)
