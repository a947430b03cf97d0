"""The device table and its fold: one definition for the broker and for every client.

The broker's table (``GetDevices``) and a client's copy are the same fold of the same events,
so a client that takes ``GetDevices``' table and applies the events after its sequence holds
the broker's table. Pure, standard library only.

- ``remove`` drops the devpath; ``move`` drops ``DEVPATH_OLD`` (and renames what was below it,
  as the kernel's rename does in sysfs) and sets ``DEVPATH``; every other action (``add``,
  ``change``, ``bind``, ``unbind``, ``online``, ``offline``) sets the entry;
- an entry's properties are the event's without the keys that describe the event rather than
  the device (``ACTION``, ``SEQNUM``, ``DEVPATH_OLD``, ``SYNTH_UUID``, ``SYNTH_ARG_*``), with
  ``PNP_SEQUENCE`` set to the event's sequence (``0``: read from sysfs, no event since);
- events outside ``/devices/`` (modules, drivers, buses) and of kernel objects that have no
  ``uevent`` file (a net device's ``queues``) are not devices: the fold ignores them.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from sys import intern
from types import MappingProxyType
from typing import Final, Protocol

#: Keys of an event that say something about the event, not about the device.
EVENT_KEYS: Final = frozenset({"ACTION", "SEQNUM", "DEVPATH_OLD", "SYNTH_UUID"})
EVENT_KEY_PREFIX: Final = "SYNTH_ARG_"
#: The key that carries the sequence of the event that last set an entry.
SEQUENCE_KEY: Final = "PNP_SEQUENCE"
DEVICES_ROOT: Final = "/devices/"
#: Subsystems of kernel objects under /devices that send events but are not devices.
NOT_DEVICES: Final = frozenset({"queues"})


@dataclass(frozen=True, slots=True)
class Device:
    """One present device, read-only; ``properties`` include ``DEVPATH``, ``SUBSYSTEM`` and
    ``PNP_SEQUENCE``, and every key of its ``uevent`` file or of its latest event."""

    devpath: str
    subsystem: str
    properties: Mapping[str, str]

    @property
    def sequence(self) -> int:
        """The sequence of the event that set this entry; 0 when it was read from sysfs."""
        value = self.properties.get(SEQUENCE_KEY, "0")
        return int(value) if value.isdigit() else 0

    @property
    def devtype(self) -> str | None:
        return self.properties.get("DEVTYPE")

    @classmethod
    def from_row(cls, row: Iterable[object]) -> Device:
        """From one row of GetDevices: (devpath, subsystem, properties)."""
        devpath, subsystem, props = row
        assert isinstance(props, Mapping)
        return cls(str(devpath), str(subsystem), MappingProxyType(dict(props)))


def is_device(devpath: str, subsystem: str) -> bool:
    """Whether events for ``devpath`` belong in the table."""
    return devpath.startswith(DEVICES_ROOT) and subsystem not in NOT_DEVICES


def entry(devpath: str, subsystem: str, keys: Mapping[str, str], sequence: int) -> Device:
    """An entry from an event's or a ``uevent`` file's keys (the event's own keys dropped)."""
    props = {
        intern(key): value
        for key, value in keys.items()
        if key not in EVENT_KEYS and not key.startswith(EVENT_KEY_PREFIX)
    }
    subsystem = intern(subsystem)
    props.update(DEVPATH=devpath, SUBSYSTEM=subsystem, PNP_SEQUENCE=str(sequence))
    return Device(devpath, subsystem, MappingProxyType(props))


class Watcher(Protocol):
    """Told of each change of a table (an MQTT forwarder keeps retained messages so)."""

    def changed(self, sequence: int, devpath: str, device: Device | None) -> None:
        """The event ``sequence`` set ``devpath``'s entry, or removed it (None)."""

    def replaced(self, sequence: int) -> None:
        """The whole table was replaced (read from sysfs again): iterate it again."""


class DeviceTable:
    """Devices by devpath, and the sequence of the last event folded in.

    ``keep`` narrows the table to the devices it accepts (a client's filter): an event that
    makes a device stop matching removes it.
    """

    def __init__(
        self,
        devices: Iterable[Device] = (),
        sequence: int = 0,
        keep: Callable[[Device], bool] | None = None,
    ) -> None:
        self.keep = keep
        self._entries = {d.devpath: d for d in devices if keep is None or keep(d)}
        self._order: list[Device] | None = None
        self.sequence = sequence
        self.watchers: list[Watcher] = []

    def __iter__(self) -> Iterator[Device]:
        """Every entry, in devpath order (kept until the next change)."""
        if self._order is None:
            self._order = sorted(self._entries.values(), key=lambda d: d.devpath)
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._entries)

    def below(self, top: str) -> list[Device]:
        """The device at ``top`` and those below it, in devpath order (a bisection, not a
        walk of the whole table)."""
        order = list(self)  # sorted, cached
        top = top.rstrip("/")
        start = bisect.bisect_left(order, top, key=lambda d: d.devpath)
        end = bisect.bisect_left(order, top + "0", key=lambda d: d.devpath)  # "0" follows "/"
        return [d for d in order[start:end] if d.devpath == top or d.devpath[len(top)] == "/"]

    def __contains__(self, devpath: object) -> bool:
        return devpath in self._entries

    def get(self, devpath: str) -> Device | None:
        return self._entries.get(devpath)

    def replace(self, other: DeviceTable) -> None:
        """Take ``other``'s entries and sequence; the watchers are told."""
        self._entries, self.sequence = other._entries, other.sequence
        self._order = None
        for watcher in self.watchers:
            watcher.replaced(self.sequence)

    def apply(self, sequence: int, keys: Mapping[str, str]) -> bool:
        """Fold one event in (``keys``: all of its keys, ACTION, DEVPATH and SUBSYSTEM too);
        whether it changed the table."""
        self.sequence = sequence
        devpath, subsystem = keys.get("DEVPATH", ""), keys.get("SUBSYSTEM", "")
        if not is_device(devpath, subsystem):
            return False
        action = keys.get("ACTION", "")
        if action == "remove":
            return self._set(sequence, devpath, None)
        moved = False
        if action == "move" and (old := keys.get("DEVPATH_OLD")):
            moved = self._move(sequence, old, devpath)
        return self._set(sequence, devpath, entry(devpath, subsystem, keys, sequence)) or moved

    def _set(self, sequence: int, devpath: str, device: Device | None) -> bool:
        """Set or drop one entry (dropped too when ``keep`` refuses it); whether it changed."""
        if device is not None and self.keep is not None and not self.keep(device):
            device = None
        if device is None:
            if self._entries.pop(devpath, None) is None:
                return False
        else:
            self._entries[devpath] = device
        self._order = None
        for watcher in self.watchers:
            watcher.changed(sequence, devpath, device)
        return True

    def _move(self, sequence: int, old: str, new: str) -> bool:
        """The device at ``old`` is now at ``new``, and so is everything below it."""
        changed = self._set(sequence, old, None)
        for path in [p for p in self._entries if p.startswith(old + "/")]:
            below = self._entries[path]
            moved = new + path[len(old) :]
            self._set(sequence, path, None)
            self._set(sequence, moved, entry(moved, below.subsystem, below.properties, sequence))
            changed = True
        return changed
