"""The device table, fast and without root: the fold, the filters, GetDevices' wire form, the
scan of sysfs (a fake tree and the real /sys), and the sink's mark and readiness with a real
journal. The broker and real clients are tested with real uevents in test_device_table.py and
test_device_clients.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from dbus_fast import Variant
from support.fakes import until
from support.sysfs import make_fake_sysfs

from pnpbroker.bus.wire import DEVICE_FILTER, device_filter, device_row
from pnpbroker.client import Device, DeviceTable, Filter
from pnpbroker.client.model import make_filter
from pnpbroker.client.table import EVENT_KEYS, entry
from pnpbroker.core.table import TURN, DeviceSink
from pnpbroker.journal import Journal, Lost
from pnpbroker.sysfs import read_uevent, scan
from pnpbroker.uevent import from_properties

NET = "/devices/virtual/net"


def keys(action: str, devpath: str, subsystem: str = "net", **extra: str) -> dict[str, str]:
    return {"ACTION": action, "DEVPATH": devpath, "SUBSYSTEM": subsystem, "SEQNUM": "7", **extra}


# ---------------------------------------------------------------------------------------------
# The fold.


def test_an_entry_is_the_event_without_its_own_keys() -> None:
    table = DeviceTable()
    event = keys("add", f"{NET}/a0", INTERFACE="a0", SYNTH_UUID="u", SYNTH_ARG_X="1")
    assert table.apply(3, event)
    device = table.get(f"{NET}/a0")
    assert device is not None
    assert dict(device.properties) == {
        "DEVPATH": f"{NET}/a0",
        "SUBSYSTEM": "net",
        "INTERFACE": "a0",
        "PNP_SEQUENCE": "3",
    }
    assert (device.sequence, table.sequence) == (3, 3)
    assert not EVENT_KEYS & set(device.properties)


def test_each_action_sets_or_drops_the_whole_entry() -> None:
    table = DeviceTable()
    table.apply(1, keys("add", "/devices/pci0/usb1", "usb", DRIVER="usb", PRODUCT="1/2/3"))
    table.apply(2, keys("unbind", "/devices/pci0/usb1", "usb", PRODUCT="1/2/3"))
    entry_after_unbind = table.get("/devices/pci0/usb1")
    assert entry_after_unbind is not None
    assert "DRIVER" not in entry_after_unbind.properties
    table.apply(3, keys("bind", "/devices/pci0/usb1", "usb", DRIVER="usb", PRODUCT="1/2/3"))
    table.apply(4, keys("change", "/devices/pci0/usb1", "usb", DRIVER="usb", PRODUCT="1/2/4"))
    changed = table.get("/devices/pci0/usb1")
    assert changed is not None
    assert (changed.properties["PRODUCT"], changed.sequence) == ("1/2/4", 4)
    assert table.apply(5, keys("remove", "/devices/pci0/usb1", "usb"))
    assert len(table) == 0
    assert not table.apply(6, keys("remove", "/devices/pci0/usb1", "usb"))  # already gone
    assert table.sequence == 6


def test_move_renames_the_device_and_what_is_below_it() -> None:
    table = DeviceTable()
    table.apply(1, keys("add", f"{NET}/a0", INTERFACE="a0"))
    table.apply(2, keys("add", f"{NET}/a0/sub", "thing"))
    table.apply(3, keys("add", f"{NET}/a00", INTERFACE="a00"))  # a prefix, not below
    table.apply(4, keys("move", f"{NET}/b0", INTERFACE="b0", DEVPATH_OLD=f"{NET}/a0"))
    assert [d.devpath for d in table] == [f"{NET}/a00", f"{NET}/b0", f"{NET}/b0/sub"]
    moved = table.get(f"{NET}/b0/sub")
    assert moved is not None
    assert (moved.properties["DEVPATH"], moved.sequence) == (f"{NET}/b0/sub", 4)


def test_modules_drivers_and_queues_are_not_devices() -> None:
    table = DeviceTable()
    assert not table.apply(1, keys("add", "/module/ifb", "module"))
    assert not table.apply(2, keys("add", "/bus/usb/drivers/usbhid", "drivers"))
    assert not table.apply(3, keys("add", f"{NET}/a0/queues/rx-0", "queues"))
    assert (len(table), table.sequence) == (0, 3)


class Recorder:
    """A watcher (what an MQTT sink would be) that writes down what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str, bool]] = []
        self.replacements: list[int] = []

    def changed(self, sequence: int, devpath: str, device: Device | None) -> None:
        self.seen.append((sequence, devpath, device is not None))

    def replaced(self, sequence: int) -> None:
        self.replacements.append(sequence)


def test_watchers_hear_each_change_and_each_replacement() -> None:
    table, watcher = DeviceTable(), Recorder()
    table.watchers.append(watcher)
    table.apply(1, keys("add", f"{NET}/a0"))
    table.apply(2, keys("add", f"{NET}/a0/queues/rx-0", "queues"))  # nothing for this one
    table.apply(3, keys("remove", f"{NET}/a0"))
    table.replace(DeviceTable([entry(f"{NET}/lo", "net", {}, 0)], 9))
    assert watcher.seen == [(1, f"{NET}/a0", True), (3, f"{NET}/a0", False)]
    assert watcher.replacements == [9]
    assert ([d.devpath for d in table], table.sequence) == ([f"{NET}/lo"], 9)


def test_a_kept_table_drops_a_device_that_stops_matching() -> None:
    wanted = make_filter(subsystem="usb", properties={"DRIVER": "usb*"})
    table = DeviceTable(keep=wanted.device)
    assert table.apply(1, keys("add", "/devices/u1", "usb", DRIVER="usb"))
    assert not table.apply(2, keys("add", "/devices/n1", "net"))
    assert table.apply(3, keys("unbind", "/devices/u1", "usb"))  # no DRIVER: out of the view
    assert len(table) == 0
    assert not table.apply(4, keys("change", "/devices/u1", "usb"))  # not in it, still not


# ---------------------------------------------------------------------------------------------
# Filters, and GetDevices' arguments and rows.


def device(devpath: str, subsystem: str, **props: str) -> Device:
    return entry(devpath, subsystem, props, 0)


def test_the_filter_keys_and_their_meaning() -> None:
    usb = device("/devices/p/usb1/1-1", "usb", DEVTYPE="usb_device", PRODUCT="46d/c52b/1")
    iface = device("/devices/p/usb1/1-1/1-1:1.0", "usb", DEVTYPE="usb_interface")
    lo = device(f"{NET}/lo", "net", INTERFACE="lo")
    everything = [usb, iface, lo]

    def chosen(wanted: Filter) -> list[Device]:
        return [d for d in everything if wanted.device(d)]

    assert chosen(make_filter()) == everything
    assert chosen(make_filter(subsystem=["usb", "block"])) == [usb, iface]
    assert chosen(make_filter(devtype="usb_device")) == [usb]
    assert chosen(make_filter(devpath="/devices/p/usb1/1-1")) == [usb, iface]
    assert chosen(make_filter(devpath="/devices/p/usb1/1-")) == []  # a path, not a prefix
    assert chosen(make_filter(properties={"PRODUCT": "46d/*"})) == [usb]
    assert chosen(make_filter(properties={"PRODUCT": "*"})) == [usb]  # absent never matches


def test_get_devices_filter_from_the_wire() -> None:
    options = {
        "subsystem": Variant("as", ["usb"]),
        "devtype": Variant("as", ["usb_device"]),
        "devpath": Variant("s", "/devices/p"),
        "properties": Variant("a{ss}", {"PRODUCT": "46d/*"}),
    }
    wanted = device_filter(options)
    assert wanted == make_filter(None, "usb", "usb_device", "/devices/p", {"PRODUCT": "46d/*"})
    assert {k: v.signature for k, v in options.items()} == DEVICE_FILTER
    assert {k: v.signature for k, v in wanted.options().items()} == DEVICE_FILTER
    assert device_filter({}) == Filter()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": Variant("s", "red")}, "unknown option"),
        ({"subsystem": Variant("s", "usb")}, "subsystem must be as, not s"),
        ({"devpath": Variant("s", "devices/x")}, "devpath must start with /"),
        ({"properties": Variant("a{ss}", {"": "x"})}, "empty key"),
    ],
)
def test_bad_filters_are_value_errors(options: dict[str, Variant], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        device_filter(options)


async def test_the_table_holds_valid_utf8_as_the_bus_carries_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    scans = Scans()
    scans.release.set()
    sink = DeviceSink(journal, scans)
    sink.start()
    await until(lambda: sink.current)
    props = {**keys("add", f"{NET}/x", INTERFACE="x"), "NAME": "caf\udce9"}
    journal.append([from_properties(props)])
    journal.skip_handling(journal.last)
    sink.advance(journal.handled)
    [found] = list(sink.table)
    assert found.properties["NAME"] == "caf\ufffd"
    assert device_row(found) == (f"{NET}/x", "net", found.properties)
    journal.close()


# ---------------------------------------------------------------------------------------------
# Reading sysfs.


def test_scan_reads_each_devices_uevent_file_and_adds_what_events_carry(tmp_path: Path) -> None:
    sysfs = make_fake_sysfs(tmp_path / "sys")
    (sysfs / "devices/virtual/net/lo/uevent").write_text("INTERFACE=lo\nIFINDEX=1\n")
    found = {d.devpath: d for d in scan(sysfs)}
    assert sorted(found) == sorted(
        [
            "/devices/pci0000:00/0000:00:01.1",
            "/devices/pci0000:00/0000:00:01.1/block/vda",
            "/devices/pci0000:00/0000:00:01.1/block/vda/vda1",
            "/devices/pci0000:00/0000:00:03.0",
            "/devices/pci0000:00/0000:00:03.0/virtio2",
            "/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0",
            f"{NET}/lo",
        ]
    )
    assert dict(found[f"{NET}/lo"].properties) == {
        "INTERFACE": "lo",
        "IFINDEX": "1",
        "DEVPATH": f"{NET}/lo",
        "SUBSYSTEM": "net",
        "PNP_SEQUENCE": "0",
    }


def test_scan_of_the_real_sys_is_every_announced_device_with_its_uevent_file() -> None:
    found = scan()
    assert found, "no devices in /sys?"
    for device in found[:: max(len(found) // 50, 1)]:
        on_disk = read_uevent(f"/sys{device.devpath}/uevent")
        if on_disk is None:
            continue  # gone meanwhile (the machine is shared)
        assert {**on_disk, "DEVPATH": device.devpath} == {
            k: v for k, v in device.properties.items() if k not in ("SUBSYSTEM", "PNP_SEQUENCE")
        }
        link = os.path.basename(os.readlink(f"/sys{device.devpath}/subsystem"))
        assert device.subsystem == link


# ---------------------------------------------------------------------------------------------
# The sink: the scan's mark, readiness, folding in turns, rescans after a loss.


def record(journal: Journal, action: str, name: str) -> int:
    props = keys(action, f"{NET}/{name}", INTERFACE=name)
    return journal.append([from_properties(props)])


class Scans:
    """A stand-in for reading sysfs: returns what the test says, when the test says."""

    def __init__(self, *names: str) -> None:
        self.names = list(names)
        self.release = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.count = 0

    def __call__(self) -> list[Device]:
        asyncio.run_coroutine_threadsafe(self.release.wait(), self.loop).result(30)
        self.count += 1
        return [entry(f"{NET}/{n}", "net", {"INTERFACE": n}, 0) for n in self.names]


def names(sink: DeviceSink) -> list[str]:
    return [d.devpath.rsplit("/", 1)[1] for d in sink.table]


async def test_events_before_the_mark_are_in_the_scan_and_those_after_are_folded(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    record(journal, "add", "old")  # journalled before the scan: sysfs already shows it
    scans = Scans("old", "both")
    sink = DeviceSink(journal, scans)
    sink.start()
    record(journal, "add", "both")  # while the scan runs: it may or may not have seen it
    record(journal, "add", "late")
    record(journal, "remove", "old")
    sink.advance(journal.last)
    journal.skip_handling(journal.last)
    sink.advance(journal.handled)
    snapshot = asyncio.ensure_future(sink.snapshot(Filter()))
    await asyncio.sleep(0)
    assert not snapshot.done()  # GetDevices waits for the scan
    scans.release.set()
    sequence, found = await asyncio.wait_for(snapshot, 30)
    assert (sequence, [d.devpath.rsplit("/", 1)[1] for d in found]) == (4, ["both", "late"])
    journal.close()


async def test_the_scanned_table_waits_until_the_events_up_to_the_mark_are_handled(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    record(journal, "add", "a")
    record(journal, "add", "b")  # two events queued, not handled yet (a backlog at start)
    scans = Scans("a", "b")
    scans.release.set()
    sink = DeviceSink(journal, scans)
    sink.start()
    await until(lambda: scans.count == 1)
    await asyncio.sleep(0)
    assert not sink.current
    journal.record_outcome(1, None)
    sink.advance(1)
    assert not sink.current  # the scan shows b: it takes over only once b is handled too
    journal.record_outcome(2, None)
    sink.advance(2)
    assert sink.current
    assert (sink.table.sequence, names(sink)) == (2, ["a", "b"])
    journal.close()


async def test_a_long_backlog_is_folded_in_turns(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    scans = Scans()
    scans.release.set()
    sink = DeviceSink(journal, scans)
    sink.start()
    await until(lambda: sink.current)
    for n in range(TURN + 10):
        record(journal, "add", f"d{n}")
    journal.skip_handling(journal.last)
    sink.advance(journal.handled)
    assert sink.table.sequence == TURN  # the loop gets a turn before the rest
    sequence, found = await sink.snapshot(Filter())  # waits until every handled event is in
    assert (sequence, len(found)) == (journal.last, TURN + 10)
    journal.close()


async def test_a_loss_rescans_and_get_devices_waits_for_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    scans = Scans("a", "gone")
    scans.release.set()
    sink = DeviceSink(journal, scans)
    sink.start()
    await until(lambda: sink.current)
    scans.release.clear()
    scans.names = ["a", "new"]  # "gone" was removed and "new" added while events were lost
    journal.append([Lost("uuid")])  # the loss, in its place in the stream
    journal.skip_handling(journal.last)
    sink.advance(journal.handled)
    assert not sink.current
    snapshot = asyncio.ensure_future(sink.snapshot(Filter()))
    await asyncio.sleep(0.01)
    assert not snapshot.done()
    scans.release.set()
    _, found = await asyncio.wait_for(snapshot, 30)
    assert [d.devpath.rsplit("/", 1)[1] for d in found] == ["a", "new"]
    assert scans.count == 2
    journal.close()


def test_below_is_the_device_and_its_children_only() -> None:
    names = ["/devices/a", "/devices/a-x", "/devices/a/b", "/devices/a/b/c", "/devices/a0", "/d"]
    table = DeviceTable(entry(name, "s", {}, 0) for name in names)
    assert [d.devpath for d in table.below("/devices/a")] == [
        "/devices/a",
        "/devices/a/b",
        "/devices/a/b/c",
    ]
    assert [d.devpath for d in table.below("/devices/a/")] == [
        d.devpath for d in table.below("/devices/a")
    ]
    assert table.below("/devices/nothing") == []
    everything = [d.devpath for d in table]
    for top in ["/devices/a", "/devices/a/b", "/devices", "/d"]:
        assert [d.devpath for d in table.below(top)] == [
            path for path in everything if path == top or path.startswith(top + "/")
        ]


class Broken:
    """A watcher with a bug."""

    def changed(self, sequence: int, devpath: str, device: Device | None) -> None:
        raise RuntimeError("a bug in a sink")

    def replaced(self, sequence: int) -> None:
        pass


async def test_a_fault_in_the_table_is_logged_and_never_stops_the_caller(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    scans = Scans("a")
    scans.release.set()
    sink = DeviceSink(journal, scans)
    sink.start()
    await until(lambda: sink.current)
    sink.table.watchers.append(Broken())
    record(journal, "add", "b")
    journal.skip_handling(journal.last)
    sink.advance(journal.handled)  # the sequencer's call returns
    assert "device table: folding failed" in caplog.text
    sink.table.watchers.clear()
    await until(lambda: sink.current and scans.count == 2)  # read again
    journal.close()
