"""Coldplug: ask the kernel to re-send the uevents of devices that already exist.

Modelled on skarnet's mdevd-coldplug and `udevadm trigger`: nothing here invents an event.
Writing `ACTION UUID` into a device's `uevent` file makes the kernel emit a real uevent for
that device, carrying `SYNTH_UUID=<uuid>`, so a listener (the broker, or `--settle`) can tell
which events this run caused and count them. A library: ``pnpbroker trigger``
(:mod:`pnpbroker.commands.trigger`) parses the arguments and prints.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pnpbroker.errors import BrokerError

ACTIONS = ("add", "remove", "change", "move", "online", "offline", "bind", "unbind")
"""The actions the kernel accepts in a `uevent` write (lib/kobject_uevent.c)."""

Progress = Callable[[int], None]
"""Called with the number of devices handled so far (written or failed)."""


class InvalidTrigger(ValueError, BrokerError):
    """An action or uuid the kernel would reject in a `uevent` write."""


class NoSuchDevice(FileNotFoundError, BrokerError):
    """A path that names no device the kernel announces."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path


@dataclass(frozen=True)
class Device:
    """A device directory in sysfs: one that has a `uevent` file and a subsystem."""

    syspath: Path
    devpath: str
    subsystem: str


@dataclass(frozen=True)
class Failure:
    """A device whose `uevent` file refused the write; not fatal to the run."""

    device: Device
    errno: int

    def __str__(self) -> str:
        return f"{self.device.devpath}: {os.strerror(self.errno)}"


@dataclass(frozen=True)
class TriggerResult:
    """What a trigger did: `settle` waits for `written` events carrying SYNTH_UUID=`uuid`."""

    action: str
    uuid: str
    dry_run: bool
    devices: tuple[Device, ...]
    failed: tuple[Failure, ...]

    @property
    def written(self) -> int:
        """Writes the kernel accepted; each one is an event with this uuid (0 in a dry run)."""
        return 0 if self.dry_run else len(self.devices) - len(self.failed)

    @property
    def message(self) -> bytes:
        """The bytes written into each `uevent` file."""
        return f"{self.action} {self.uuid}".encode()


def walk(sysfs: Path = Path("/sys"), subsystems: Sequence[str] = ()) -> Iterator[Device]:
    """Yield the devices under `sysfs`, parents before their children, in a stable order.

    Without `subsystems`, a pre-order walk of /sys/devices (symlinks not followed). With them,
    the class and bus listings of those subsystems, resolved into /sys/devices: cheaper, and the
    same answer. Both see only the net devices of the network namespace that mounted `sysfs`.
    """
    if subsystems:
        yield from _listed(sysfs, subsystems)
    else:
        yield from _preorder(sysfs, sysfs / "devices")


def _device(sysfs: Path, path: str, prefix: int) -> Device | None:
    """The device at `path` (`prefix` characters of it are `sysfs`), or None if it is not one.

    A device without a subsystem (/sys/devices/platform itself, say) accepts the write but the
    kernel sends no event for it, so triggering it would only spoil the count `settle` waits for.
    """
    try:
        subsystem = os.path.basename(os.readlink(f"{path}/subsystem"))
    except OSError:
        return None  # no subsystem link: not a device, or a device the kernel never announces
    if not os.path.isfile(f"{path}/uevent"):
        return None
    return Device(Path(path), path[prefix:], subsystem)


def _preorder(sysfs: Path, top: Path) -> Iterator[Device]:
    """Depth first, each directory before what it holds, names sorted; never enters a symlink."""
    prefix = len(str(sysfs))
    for path in _dirs(str(top)):
        device = _device(sysfs, path, prefix)
        if device is not None:
            yield device


def _dirs(top: str) -> Iterator[str]:
    """`top` and every directory below it, in sorted pre-order; one scandir(3) per directory."""
    yield top
    try:
        with os.scandir(top) as it:
            names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except OSError:
        return  # vanished while walking (a device unplugged): nothing below it to trigger
    for name in names:
        yield from _dirs(f"{top}/{name}")


def _listed(sysfs: Path, subsystems: Sequence[str]) -> Iterator[Device]:
    """The devices listed under /sys/class/S and /sys/bus/S/devices, deduplicated and ordered."""
    devices: dict[str, Device] = {}
    root = sysfs.resolve()
    for subsystem in dict.fromkeys(subsystems):
        for listing in (sysfs / "class" / subsystem, sysfs / "bus" / subsystem / "devices"):
            for link in _entries(listing):
                target = (listing / link).resolve()
                if not target.is_relative_to(root / "devices"):
                    continue  # not a device directory (a stray file or a dangling link)
                path = sysfs / target.relative_to(root)
                device = _device(sysfs, str(path), len(str(sysfs)))
                if device is not None and device.subsystem == subsystem:
                    devices.setdefault(device.devpath, device)
    yield from sorted(devices.values(), key=lambda d: d.devpath.split("/"))


def _entries(listing: Path) -> list[str]:
    """Names in a class or bus listing; none when the subsystem does not exist here."""
    try:
        return sorted(os.listdir(listing))
    except FileNotFoundError:
        return []


def find(sysfs: Path, path: str) -> Device:
    """The device ``path`` names, as ``udevadm`` takes it: a devpath (``/devices/...``), a sysfs
    path (``/sys/class/net/lo`` too: links are followed) or a device node (``/dev/sda``)."""
    real_sysfs = os.path.realpath(sysfs)
    if path.startswith("/dev/"):
        target = _node_target(sysfs, path)
    elif path.startswith(("/sys/", str(sysfs) + "/")):
        target = os.path.realpath(str(sysfs) + path.removeprefix("/sys").removeprefix(str(sysfs)))
    else:
        target = os.path.realpath(str(sysfs) + path)
    if not target.startswith(real_sysfs + "/devices/"):
        raise NoSuchDevice(path, "not a device directory in sysfs")
    devpath = target[len(real_sysfs) :]
    device = _device(sysfs, f"{sysfs}{devpath}", len(str(sysfs)))
    if device is None:
        raise NoSuchDevice(path, "no such device (no uevent file or no subsystem)")
    return device


def _node_target(sysfs: Path, node: str) -> str:
    """``/sys/dev/block|char/MAJOR:MINOR`` of a device node, resolved."""
    try:
        info = os.stat(node)
    except OSError as exc:
        raise NoSuchDevice(node, exc.strerror or "cannot stat") from None
    if not (stat.S_ISBLK(info.st_mode) or stat.S_ISCHR(info.st_mode)):
        raise NoSuchDevice(node, "not a device node")
    kind = "block" if stat.S_ISBLK(info.st_mode) else "char"
    numbers = f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"
    return os.path.realpath(sysfs / "dev" / kind / numbers)


@dataclass(frozen=True)
class Match:
    """udevadm trigger's matches: the device's name (its last devpath component) matches any of
    ``sysnames`` (globs); each of ``attrs`` (name, glob or None: only present) matches its
    sysfs attribute (trailing white space dropped); it is, or is below, one of ``parents``."""

    sysnames: tuple[str, ...] = ()
    attrs: tuple[tuple[str, str | None], ...] = ()
    parents: tuple[str, ...] = ()

    def __call__(self, device: Device) -> bool:
        name = device.devpath.rsplit("/", 1)[-1]
        if self.sysnames and not any(fnmatch.fnmatchcase(name, g) for g in self.sysnames):
            return False
        if self.parents and not any(_below(device.devpath, p) for p in self.parents):
            return False
        return all(_attr_matches(device.syspath, name, glob) for name, glob in self.attrs)


def _below(devpath: str, parent: str) -> bool:
    parent = parent.rstrip("/")
    return devpath == parent or devpath.startswith(parent + "/")


def read_attribute(syspath: Path, name: str) -> str | None:
    """A sysfs attribute's value without trailing white space; None if it cannot be read."""
    if name.startswith("/") or ".." in name.split("/"):
        return None
    try:
        with open(syspath / name, "rb") as file:
            data = file.read(4096)
    except OSError:
        return None
    return data.decode("utf-8", "replace").rstrip()


def _attr_matches(syspath: Path, name: str, glob: str | None) -> bool:
    value = read_attribute(syspath, name)
    if value is None:
        return False
    return glob is None or fnmatch.fnmatchcase(value, glob)


def check(action: str, uuid: str) -> None:
    """Raise InvalidTrigger unless the kernel would accept `action` and `uuid`."""
    if action not in ACTIONS:
        raise InvalidTrigger(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    try:
        canonical = str(uuidlib.UUID(uuid))
    except ValueError:
        raise InvalidTrigger(f"not a uuid: {uuid!r}") from None
    if canonical != uuid:  # kernel wants 36 characters; lower case keeps SYNTH_UUID comparable
        raise InvalidTrigger(f"uuid must be in canonical form: {uuid!r}")


def trigger(
    devices: Iterable[Device],
    action: str = "add",
    uuid: str | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> TriggerResult:
    """Write `ACTION UUID` into each device's `uevent` file, in order, so the kernel re-sends.

    A refused write is recorded with its errno and the run goes on. `dry_run` writes nothing
    and returns the devices it would have written to.
    """
    uuid = str(uuidlib.uuid4()) if uuid is None else uuid
    check(action, uuid)
    message = f"{action} {uuid}".encode()
    done: list[Device] = []
    failed: list[Failure] = []
    for device in devices:
        done.append(device)
        code = 0 if dry_run else _write(device.syspath / "uevent", message)
        if code:
            failed.append(Failure(device, code))
        if progress is not None:
            progress(len(done))
    return TriggerResult(action, uuid, dry_run, tuple(done), tuple(failed))


def _write(path: Path, message: bytes) -> int:
    """Write `message` to `path` in one write(2); 0 on success, else the errno."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        return e.errno or errno.EIO
    try:
        os.write(fd, message)
    except OSError as e:
        return e.errno or errno.EIO
    finally:
        os.close(fd)
    return 0
