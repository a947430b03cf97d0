"""A fake sysfs tree for fast tests of what walks /sys (coldplug, the device table's scan).

The kernel's layout in miniature: device directories with a ``uevent`` file and a ``subsystem``
link, class and bus listings, and the traps a walk must avoid (symlink loops, driver links, a
dangling listing, a kobject without ``uevent``). The real /sys is tested beside it.
"""

from __future__ import annotations

import os
from pathlib import Path


def fake_device(sysfs: Path, devpath: str, subsystem: str | None, kind: str = "class") -> None:
    """Make a device directory; list it under /class/S or /bus/S/devices like the kernel does."""
    path = sysfs / devpath.lstrip("/")
    path.mkdir(parents=True)
    (path / "uevent").write_text("")
    if subsystem is None:
        return
    home = sysfs / kind / subsystem
    home.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(home, path), path / "subsystem")
    listing = home / "devices" if kind == "bus" else home
    listing.mkdir(exist_ok=True)
    os.symlink(os.path.relpath(path, listing), listing / path.name)


def make_fake_sysfs(sysfs: Path) -> Path:
    """A small fake tree: a PCI bus with a NIC, a virtual lo, a block disk, and traps."""
    fake_device(sysfs, "/devices/pci0000:00", None)  # a device without subsystem: no event
    fake_device(sysfs, "/devices/pci0000:00/0000:00:03.0", "pci", kind="bus")
    fake_device(sysfs, "/devices/pci0000:00/0000:00:03.0/virtio2", "virtio", kind="bus")
    fake_device(sysfs, "/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0", "net")
    fake_device(sysfs, "/devices/pci0000:00/0000:00:01.1", "pci", kind="bus")
    fake_device(sysfs, "/devices/pci0000:00/0000:00:01.1/block/vda", "block")
    fake_device(sysfs, "/devices/pci0000:00/0000:00:01.1/block/vda/vda1", "block")
    fake_device(sysfs, "/devices/virtual/net/lo", "net")
    (sysfs / "devices/virtual/net/lo/queues/rx-0").mkdir(parents=True)  # a kobject, no uevent
    # Symlinks the walk must not enter: a loop back up, and a driver link into /bus.
    nic = sysfs / "devices/pci0000:00/0000:00:03.0"
    os.symlink("../..", nic / "loop")
    (sysfs / "bus/pci/drivers/virtio-pci").mkdir(parents=True)
    os.symlink("../../../bus/pci/drivers/virtio-pci", nic / "driver")
    os.symlink("/nonexistent", sysfs / "class/net/dangling")
    return sysfs
