"""The device table: GetDevices on a table of 10,000 devices, its memory, the start-up scan, and
enumerate-then-subscribe under a 10,000-event burst.

A fresh namespace gets enough ifb links for the broker's table (the host's devices, which every
namespace's sysfs shows, plus the namespace's net devices) to hold ``device_count`` devices;
then a broker (no program) starts in it on a private bus.

- start: from launching the broker to its first GetDevices answer (the answer waits for the
  scan), beside launching it to READY=1 (which does not wait for the table); the scan alone
  (``pnpbroker.sysfs.scan`` in a process in the namespace) beside libudev's enumeration of the
  same sysfs with every device's properties (pyudev);
- GetDevices, all devices: the call's latency from a dbus-fast client (median of ``calls``),
  beside the ceiling: a bare dbus-fast service (``python -m bench.devices serve``) that owns
  ``org.pnp.Broker`` once the broker has stopped and returns the same rows; and GetDevices
  with a filter that selects one device;
- memory: the table built from the same scan, measured with tracemalloc (bytes held by the
  entries), beside the text the entries are made of (the ``uevent`` files and devpaths);
- burst: a client (``pnpclient.subscribe(enumerate=True)``, net devices) starts while a burst of
  ``burst_events`` uevents (link adds, then deletes) runs; once a marker link's event arrived,
  its devices are compared with the broker's table and with the kernel's interfaces: the
  figure is the number of devices that differ (0 is right).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface, dbus_method
from support.bus import SystemBus
from support.netns import NetNS

from bench import events
from bench.broker import running_broker
from bench.harness import REPO, python_env
from bench.measures import Config, Values
from pnpbroker.client import Event, devices, subscribe

BROKER = "org.pnp.Broker"
SCAN = "import json, time; from pnpbroker.sysfs import scan; t = time.monotonic(); d = scan(); "
SCAN += "print(json.dumps([time.monotonic() - t, len(d)]))"
PYUDEV = (
    "import json, time, pyudev; t = time.monotonic(); "
    "d = [dict(x.properties) for x in pyudev.Context().list_devices()]; "
    "print(json.dumps([time.monotonic() - t, len(d)]))"
)


def _in_ns(ns: NetNS, code: str) -> tuple[float, int]:
    argv = ns.exec_argv([sys.executable, "-c", code])
    done = subprocess.run(argv, capture_output=True, text=True, env=python_env(), cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip()[-300:])
    took, count = json.loads(done.stdout)
    return float(took), int(count)


def _fill(ns: NetNS, wanted: int) -> int:
    """Links until the namespace's sysfs shows ``wanted`` devices; how many links."""
    _, present = _in_ns(ns, SCAN)
    links = max(wanted - present, 0)
    if links:
        ns.burst(links, prefix="t")
    return links


async def _latency(call: Callable[[], Awaitable[Any]], calls: int) -> float:
    """Median seconds of ``calls`` awaits of ``call()``."""
    took = []
    for _ in range(calls):
        start = time.monotonic()
        await call()
        took.append(time.monotonic() - start)
    return statistics.median(took)


async def _get_devices(bus: MessageBus, wanted: dict[str, Variant]) -> list[Any]:
    msg = Message(
        destination=BROKER,
        path="/org/pnp/Broker",
        interface="org.pnp.Broker1",
        member="GetDevices",
        signature="a{sv}",
        body=[wanted],
    )
    reply = await bus.call(msg)
    assert reply is not None
    if reply.message_type is MessageType.ERROR:
        raise RuntimeError(reply.body)
    return list(reply.body)


async def _first(address: str) -> tuple[float, list[Any]]:
    """Call GetDevices at once: when it answered (monotonic), and the answer."""
    bus = await MessageBus(bus_address=address).connect()
    try:
        answer = await _get_devices(bus, {})
        return time.monotonic(), answer
    finally:
        bus.disconnect()


async def _calls(address: str, rows: list[Any], calls: int) -> Values:
    """Latency (ms) of GetDevices for every device and for one, and the table's size."""
    one = {"devpath": Variant("s", rows[len(rows) // 2][0])}
    bus = await MessageBus(bus_address=address).connect()
    try:
        everything = await _latency(lambda: _get_devices(bus, {}), calls)
        single = await _latency(lambda: _get_devices(bus, one), calls)
    finally:
        bus.disconnect()
    return {
        "devices.get": everything * 1000,
        "devices.get.one": single * 1000,
        "devices.table": float(len(rows)),
    }


async def _ceiling_calls(address: str, calls: int) -> float:
    bus = await MessageBus(bus_address=address).connect()
    try:
        return await _latency(lambda: _get_devices(bus, {}), calls) * 1000
    finally:
        bus.disconnect()


def _memory(ns: NetNS) -> Values:
    """The table's bytes (tracemalloc) beside the text it is made of."""
    code = (
        "import json, os, tracemalloc\n"
        "from pnpbroker.sysfs import scan\n"
        "from pnpbroker.client.table import DeviceTable\n"
        "tracemalloc.start()\n"
        "table = DeviceTable(scan())\n"
        "held = tracemalloc.get_traced_memory()[0]\n"
        "text = sum(len(d.devpath) + sum(len(k) + len(v) + 2 for k, v in d.properties.items())\n"
        "           for d in table)\n"
        "print(json.dumps([held, text, len(table)]))\n"
    )
    argv = ns.exec_argv([sys.executable, "-c", code])
    done = subprocess.run(argv, capture_output=True, text=True, env=python_env(), cwd=REPO)
    held, text, count = json.loads(done.stdout)
    return {
        "devices.memory": held / 1e6,
        "devices.text": text / 1e6,
        "devices.per_device": held / count,
    }


async def _burst(ns: NetNS, address: str, burst_events: int) -> Values:
    """Differences between an enumerate-then-subscribe client, the broker and the kernel."""
    loop = asyncio.get_running_loop()
    links = burst_events // (2 * events.EVENTS_PER_LINK)
    making = loop.run_in_executor(None, lambda: _make_and_delete(ns, links))
    async with subscribe(subsystem="net", enumerate=True, address=address) as client:
        await making
        marker = f"mk{int(time.monotonic() * 1000) % 100000}"
        await loop.run_in_executor(None, lambda: ns.add_ifbs([marker]))
        async with asyncio.timeout(120):
            async for item in client:
                if isinstance(item, Event) and item.properties.get("INTERFACE") == marker:
                    break
        assert client.devices is not None
        view = {d.devpath for d in client.devices}
    _, table = await devices(subsystem="net", address=address)
    broker = {d.devpath for d in table}
    kernel = {f"{events.NET_DIR}{name}" for name in _interfaces(ns)}
    return {
        "devices.burst.vs_broker": float(len(view ^ broker)),
        "devices.burst.vs_kernel": float(len(view ^ kernel)),
    }


def _make_and_delete(ns: NetNS, links: int) -> None:
    ns.burst(links, prefix="b")
    ns.del_group(ns.last_group)


def _interfaces(ns: NetNS) -> set[str]:
    out = subprocess.run(
        ["ip", "-n", ns.name, "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def devices_table(cfg: Config) -> Values:
    """One repetition: start, GetDevices, memory, burst; see the module docstring."""
    out: Values = {}
    with events.netns() as ns, SystemBus() as bus:
        out["devices.links"] = float(_fill(ns, cfg.device_count))
        out["devices.scan"], _ = _in_ns(ns, SCAN)
        out["devices.pyudev"], _ = _in_ns(ns, PYUDEV)
        rows_file = Path(bus.directory) / "rows.json"
        launched = time.monotonic()
        with running_broker(ns, bus, ["--no-program"]):
            out["devices.ready"] = time.monotonic() - launched
            answered, answer = asyncio.run(_first(bus.address))
            out["devices.start"] = answered - launched
            rows_file.write_text(json.dumps(answer))
            out |= asyncio.run(_calls(bus.address, answer[1], cfg.device_calls))
            out |= _memory(ns)
            out |= asyncio.run(_burst(ns, bus.address, cfg.burst_events))
        with _Ceiling(bus, rows_file):
            out["devices.ceiling"] = asyncio.run(_ceiling_calls(bus.address, cfg.device_calls))
    return out


class _Ceiling:
    """Runs ``python -m bench.devices serve ROWS`` until closed."""

    def __init__(self, bus: SystemBus, rows: Path) -> None:
        argv = [sys.executable, "-m", "bench.devices", "serve", str(rows)]
        env = python_env(bus.env())
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, cwd=REPO)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"READY":
            raise RuntimeError("the ceiling service did not start")

    def __enter__(self) -> _Ceiling:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class _Rows(ServiceInterface):
    """GetDevices returning fixed rows: dbus-fast's own cost of the same answer."""

    def __init__(self, sequence: int, rows: list[Any]) -> None:
        super().__init__("org.pnp.Broker1")
        self.answer = [sequence, rows]

    @dbus_method()
    async def GetDevices(
        self, filter: Annotated[dict[str, Variant], DBusSignature("a{sv}")]
    ) -> Annotated[list[Any], DBusSignature("ta(ssa{ss})")]:
        return self.answer


async def _serve(sequence: int, found: list[Any]) -> None:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    bus.export("/org/pnp/Broker", _Rows(sequence, found))
    await bus.request_name(BROKER)
    print("READY", flush=True)
    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the GetDevices ceiling service")
    parser.add_argument("mode", choices=["serve"])
    parser.add_argument("rows", type=Path)
    args = parser.parse_args()
    tracemalloc.stop()
    asyncio.run(_serve(*json.loads(args.rows.read_text())))
