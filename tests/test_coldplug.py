"""Coldplug: the walk over sysfs, and real kernel re-sends caused by writing to uevent files.

The pure tests use a fake sysfs tree built in tmp_path (real /sys cannot be made); the root
tests write to real uevent files inside a network namespace and listen on a real
NETLINK_KOBJECT_UEVENT socket opened in that namespace.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from support.netns import NetNS, Uevent, collect_uevents, netns_uevent_socket
from support.sysfs import make_fake_sysfs

from pnpbroker.coldplug import Device, InvalidTrigger, trigger, walk
from pnpbroker.commands.trigger import add_arguments as add_trigger_arguments
from pnpbroker.commands.trigger import main as run_trigger
from pnpbroker.errors import BrokerError
from pnpbroker.resync import Pace, trigger_in_thread

# ---------------------------------------------------------------------------------------------
# A fake sysfs: directories, uevent files and the same relative symlinks the kernel makes.


@pytest.fixture
def fake_sysfs(tmp_path: Path) -> Path:
    return make_fake_sysfs(tmp_path / "fake-sys")


FAKE_ORDER = [
    "/devices/pci0000:00/0000:00:01.1",
    "/devices/pci0000:00/0000:00:01.1/block/vda",
    "/devices/pci0000:00/0000:00:01.1/block/vda/vda1",
    "/devices/pci0000:00/0000:00:03.0",
    "/devices/pci0000:00/0000:00:03.0/virtio2",
    "/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0",
    "/devices/virtual/net/lo",
]


def test_walk_is_preorder_sorted_and_skips_devices_without_subsystem(fake_sysfs: Path) -> None:
    devices = list(walk(fake_sysfs))
    assert [d.devpath for d in devices] == FAKE_ORDER
    assert devices[0] == Device(
        fake_sysfs / "devices/pci0000:00/0000:00:01.1", FAKE_ORDER[0], "pci"
    )
    assert [d.subsystem for d in devices] == [
        "pci",
        "block",
        "block",
        "pci",
        "virtio",
        "net",
        "net",
    ]


@pytest.mark.parametrize(
    "subsystems", [["net"], ["block"], ["pci", "net"], ["net", "pci", "net"], ["virtio"]]
)
def test_walk_by_subsystem_matches_filtering_the_full_walk(
    fake_sysfs: Path, subsystems: list[str]
) -> None:
    full = [d for d in walk(fake_sysfs) if d.subsystem in subsystems]
    assert list(walk(fake_sysfs, subsystems)) == full
    assert full  # the parametrization names subsystems the fake tree has


def test_walk_of_an_unknown_subsystem_is_empty(fake_sysfs: Path) -> None:
    assert list(walk(fake_sysfs, ["nosuchsubsystem"])) == []


def test_trigger_writes_action_and_uuid_in_order(fake_sysfs: Path) -> None:
    seen: list[int] = []
    result = trigger(walk(fake_sysfs, ["net"]), "change", progress=seen.append)
    assert [d.devpath for d in result.devices] == FAKE_ORDER[-2:]
    assert result.written == 2
    assert result.failed == ()
    assert seen == [1, 2]
    assert str(uuid.UUID(result.uuid)) == result.uuid
    for device in result.devices:
        assert (device.syspath / "uevent").read_bytes() == f"change {result.uuid}".encode()
    assert (fake_sysfs / "devices/pci0000:00/0000:00:01.1/uevent").read_text() == ""


async def test_a_paced_trigger_waits_for_the_reader_after_every_so_many_writes(
    fake_sysfs: Path,
) -> None:
    """The resync's pace: after each ``every`` writes the walk waits, on the loop, until the
    reader has caught up; it writes nothing more meanwhile."""
    written_at_each_wait: list[int] = []

    async def caught_up() -> None:
        written = [d for d in walk(fake_sysfs) if (d.syspath / "uevent").read_text()]
        written_at_each_wait.append(len(written))

    result = await trigger_in_thread((), "add", sysfs=fake_sysfs, pace=Pace(2, caught_up))
    assert result.written == len(FAKE_ORDER) == 7
    assert written_at_each_wait == [2, 4, 6]


def test_trigger_collects_refused_writes_and_goes_on(fake_sysfs: Path, tmp_path: Path) -> None:
    gone = Device(tmp_path / "gone", "/devices/gone", "net")
    lo = next(d for d in walk(fake_sysfs) if d.devpath.endswith("/lo"))
    result = trigger([gone, lo], uuid="0f3c1f0e-2a4b-4c5d-8e6f-708192a3b4c5")
    assert result.written == 1
    assert [(f.device, f.errno) for f in result.failed] == [(gone, 2)]
    assert (lo.syspath / "uevent").read_text() == "add 0f3c1f0e-2a4b-4c5d-8e6f-708192a3b4c5"


def test_dry_run_returns_the_devices_and_writes_nothing(fake_sysfs: Path) -> None:
    result = trigger(walk(fake_sysfs), dry_run=True)
    assert [d.devpath for d in result.devices] == FAKE_ORDER
    assert result.written == 0
    assert result.dry_run
    assert all((d.syspath / "uevent").read_text() == "" for d in result.devices)


@pytest.mark.parametrize(
    ("action", "uid"),
    [("plug", None), ("ADD", None), ("", None), ("add", "not-a-uuid"), ("add", "0F3C" * 8)],
)
def test_invalid_trigger_raises_before_writing(
    fake_sysfs: Path, action: str, uid: str | None
) -> None:
    with pytest.raises(InvalidTrigger) as info:
        trigger(walk(fake_sysfs), action, uid)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, BrokerError)
    assert all((d.syspath / "uevent").read_text() == "" for d in walk(fake_sysfs))


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_trigger_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_dry_run_prints_devpaths_quietly_off_a_terminal(
    fake_sysfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_trigger(_args("--sysfs", str(fake_sysfs), "-s", "block", "-s", "net", "-n"))
    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    assert out.split() == FAKE_ORDER[1:3] + FAKE_ORDER[-2:]


def test_cli_rejects_a_bad_action_with_the_usage_code(
    fake_sysfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_trigger(_args("--sysfs", str(fake_sysfs), "--action", "plug")) == 100
    assert "unknown action 'plug'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Real sysfs and real kernel uevents.


def test_walk_of_the_real_sys_puts_parents_first_and_lists_agree() -> None:
    devices = list(walk())
    index = {d.devpath: i for i, d in enumerate(devices)}
    assert len(index) == len(devices)
    with_parent = 0
    for i, device in enumerate(devices):
        parents = [p for p in PurePosixPath(device.devpath).parents if str(p) in index]
        with_parent += bool(parents)
        assert all(index[str(p)] < i for p in parents), device.devpath
    assert with_parent  # the tree really nests devices, so the order was tested
    for subsystem in sorted({d.subsystem for d in devices}):
        expected = [d for d in devices if d.subsystem == subsystem]
        assert list(walk(subsystems=[subsystem])) == expected, subsystem


# Run inside the namespace by `ip netns exec`, so /sys is that namespace's view of sysfs.
CHILD = """
import json, os, sys
from pnpbroker.coldplug import trigger, walk
spec = json.loads(sys.argv[1])
devices = list(walk(subsystems=spec["subsystems"]))
full = [d for d in walk() if d.subsystem in spec["subsystems"]]
if spec["only"]:
    devices = [d for d in devices if os.path.basename(d.devpath) in spec["only"]]
result = trigger(devices, spec["action"], dry_run=spec["dry_run"])
print(json.dumps({
    "uuid": result.uuid,
    "written": result.written,
    "failed": [str(f) for f in result.failed],
    "devpaths": [d.devpath for d in result.devices],
    "full_walk_agrees": full == list(walk(subsystems=spec["subsystems"])),
}))
"""


def _trigger_in(
    ns: NetNS, action: str = "add", dry_run: bool = False, only: list[str] | None = None
) -> dict[str, Any]:
    """Walk /sys and trigger the net devices inside `ns`; what the child's TriggerResult said."""
    spec = {"subsystems": ["net"], "action": action, "dry_run": dry_run, "only": only}
    argv = [*ns.exec_prefix(), sys.executable, "-c", CHILD, json.dumps(spec)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["failed"] == []
    assert result["full_walk_agrees"]
    return result


def _events_until_marker(ns: NetNS, sock: socket.socket) -> list[Uevent]:
    """Every uevent on `sock` up to a `change` of lo that this triggers after the rest."""
    marker: str = _trigger_in(ns, "change", only=["lo"])["uuid"]
    seen: list[Uevent] = []

    def record(event: Uevent) -> bool:
        seen.append(event)
        return event.get("SYNTH_UUID") == marker

    collect_uevents(sock, record, 1)
    assert seen[-1]["DEVPATH"] == "/devices/virtual/net/lo"
    assert seen[-1]["ACTION"] == "change"
    return seen[:-1]


@pytest.mark.root
def test_trigger_net_in_a_netns_resends_exactly_its_net_devices(netns: NetNS) -> None:
    names = sorted([f"ifb{i}" for i in range(20)] + ["lo"])
    netns.add_ifbs([n for n in names if n != "lo"])
    with netns_uevent_socket(netns.name) as sock:
        result = _trigger_in(netns)
        events = _events_until_marker(netns, sock)
    assert result["devpaths"] == [f"/devices/virtual/net/{n}" for n in names]
    assert result["written"] == len(names)
    net = [e for e in events if e.get("SUBSYSTEM") == "net"]
    assert [e.get("SYNTH_UUID") for e in net] == [result["uuid"]] * len(names)
    assert [e["ACTION"] for e in net] == ["add"] * len(names)
    assert [e["INTERFACE"] for e in net] == names  # in the order written
    assert [e["DEVPATH"] for e in net] == result["devpaths"]


@pytest.mark.root
def test_dry_run_in_a_netns_makes_no_event(netns: NetNS) -> None:
    netns.add_ifbs(["ifb0", "ifb1", "ifb2"])
    with netns_uevent_socket(netns.name) as sock:
        result = _trigger_in(netns, dry_run=True)
        events = _events_until_marker(netns, sock)
    assert result["written"] == 0
    assert [p.rsplit("/", 1)[1] for p in result["devpaths"]] == ["ifb0", "ifb1", "ifb2", "lo"]
    assert [e for e in events if e.get("SYNTH_UUID") == result["uuid"]] == []
    assert [e for e in events if e.get("SUBSYSTEM") == "net"] == []
