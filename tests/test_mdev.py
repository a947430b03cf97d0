"""busybox mdev, a real /sbin/hotplug program, makes device nodes under the broker.

The broker's program is a wrapper that runs ``busybox mdev`` in a private mount namespace where
a test-owned tmpfs is bind-mounted over /dev: mdev works on "/dev" as always, the machine's /dev
is untouched, and the test reads the nodes from the tmpfs. The events are real kernel uevents
for real devices (mem zero/full, loop0), caused by writing ``add UUID`` / ``remove UUID`` to
their uevent files. Such events reach every listener on the machine, so the test keeps only
those carrying its own SYNTH_UUID.
"""

from __future__ import annotations

import os
import shlex
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import require_binaries
from support.bus import SystemBus
from support.collector import SignalCollector
from support.mounts import tmpfs
from support.netns import NetNS
from test_legacy import script, start_broker, wait_for_event

SYS = Path("/sys")
DEVICES = ["/devices/virtual/mem/zero", "/devices/virtual/mem/full", "/devices/virtual/block/loop0"]

WRAPPER = """
# The broker's hotplug program: busybox mdev with {dev} as its /dev, in a private namespace.
exec unshare --mount --propagation private /bin/sh -c '
mount --bind "$0" /dev || exit 111
/bin/busybox mdev "$@"
rc=$?
if [ -n "$SYNTH_UUID" ]; then
    node=$(stat -c "%F %Hr:%Lr" "/dev/$DEVNAME" 2>/dev/null || echo absent)
    echo "$SYNTH_UUID $SEQNUM $ACTION $DEVNAME $node" >> "$0/../mdev.log"
fi
exit $rc' {dev} "$@"
"""


@pytest.fixture
def tmpfs_dev(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs for mdev's /dev, mounted for this test only."""
    require_binaries(("busybox", "unshare", "mount", "umount", "stat"))
    with tmpfs(tmp_path / "dev", "mode=755", "pnpt-mdev") as dev:
        yield dev


def numbers(devpath: str) -> str:
    """``MAJOR:MINOR`` as the kernel states it in /sys/DEVPATH/dev."""
    return (SYS / devpath.lstrip("/") / "dev").read_text().strip()


@pytest.mark.root
async def test_mdev_makes_the_right_nodes_in_order(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path, tmpfs_dev: Path
) -> None:
    if not all((SYS / d.lstrip("/") / "dev").exists() for d in DEVICES):
        pytest.skip("needs /dev/zero, /dev/full and loop0 in sysfs")
    wrapper = script(tmp_path / "hotplug", WRAPPER.format(dev=shlex.quote(str(tmpfs_dev))))
    mine = str(uuid.uuid4())
    writes = [(d, "add") for d in DEVICES] + [(DEVICES[-1], "remove")]
    toml = f'hotplug_program = "{wrapper}"\n'
    with start_broker(system_bus, netns, tmp_path, toml) as broker:
        async with SignalCollector(system_bus.address) as signals:
            for devpath, action in writes:
                (SYS / devpath.lstrip("/") / "uevent").write_text(f"{action} {mine}")
            events = await wait_for_event(
                signals, lambda ev: ev[4].get("SYNTH_UUID") == mine and ev[1] == "remove"
            )
        assert broker.stop() == 0, broker.log()
    events = [ev for ev in events if ev[4].get("SYNTH_UUID") == mine]
    assert [(ev[3], ev[1]) for ev in events] == writes
    assert all(ev[5]["program"] == str(wrapper) and ev[5]["status"] == 0 for ev in events)

    # What mdev left after each event, in the order the broker ran it.
    lines = [line.split(" ", 4) for line in (tmp_path / "mdev.log").read_text().splitlines()]
    lines = [line for line in lines if line[0] == mine]
    assert [int(line[1]) for line in lines] == [int(ev[4]["SEQNUM"]) for ev in events]
    assert [line[2:] for line in lines] == [
        ["add", "zero", f"character special file {numbers(DEVICES[0])}"],
        ["add", "full", f"character special file {numbers(DEVICES[1])}"],
        ["add", "loop0", f"block special file {numbers(DEVICES[2])}"],
        ["remove", "loop0", "absent"],
    ]

    # And the tmpfs itself: the char nodes are there with the kernel's numbers, loop0 is gone.
    for name, devpath in (("zero", DEVICES[0]), ("full", DEVICES[1])):
        node = os.stat(tmpfs_dev / name)
        assert stat.S_ISCHR(node.st_mode)
        assert f"{os.major(node.st_rdev)}:{os.minor(node.st_rdev)}" == numbers(devpath)
    assert not (tmpfs_dev / "loop0").exists()
