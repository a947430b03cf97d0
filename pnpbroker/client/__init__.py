"""pnpclient: pnpbroker's devices and device events, gap-free, from any unprivileged program.

A small package that imports nothing of the broker's: the standard library, plus dbus-fast for
the asyncio and thread APIs or PyGObject for the GLib one. It ships as ``pnpbroker.client``
(``pnpbroker monitor`` uses it) and beside the examples as ``examples/pnpclient`` (a symlink to
this directory): copy it into a project with ``cp -rL examples/pnpclient .``.

    async with subscribe(subsystem="usb", devtype="usb_device", enumerate=True) as events:
        async for item in events:
            if isinstance(item, Device):
                ...  # present when we started (or after EventsLost: the list again)
            elif isinstance(item, Event):
                print(item.sequence, item.action, item.devpath)

- :mod:`.aio` (imported here): ``subscribe(...)``, ``devices(...)`` for asyncio;
- :mod:`.threads`: ``Observer(callback, ...)``, a thread that calls back (like pyudev's
  MonitorObserver), and ``list_devices(...)`` for code without a loop;
- :mod:`.glib`: ``GLibSubscription(callback, ...)``, callbacks on the GLib main loop (GTK).

All three run the same logic (:mod:`.protocol`) with the same guarantees: every event after
the starting point exactly once, in sequence order, across broker restarts and reconnections;
with ``enumerate=True`` the devices present first, from the broker's device table, and then
exactly the events after the table's sequence, so the devices you hold are the broker's.
"""

from typing import TYPE_CHECKING, Any

from .model import (
    BUS_NAME,
    ERROR_JOURNAL_GAP,
    INTERFACE,
    OBJECT_PATH,
    BrokerReset,
    CallFailed,
    ClientError,
    ConnectionLost,
    Event,
    EventsLost,
    Filter,
    Item,
    JournalChanged,
    JournalGap,
    Outcome,
    Position,
)
from .protocol import INBOX_MAX
from .table import Device, DeviceTable

if TYPE_CHECKING:
    from .aio import Subscription, devices, subscribe


def __getattr__(name: str) -> Any:
    """The asyncio API is imported when first asked for: the GLib API needs no dbus-fast."""
    if name in ("Subscription", "devices", "subscribe"):
        from . import aio

        return getattr(aio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUS_NAME",
    "ERROR_JOURNAL_GAP",
    "INBOX_MAX",
    "INTERFACE",
    "OBJECT_PATH",
    "BrokerReset",
    "CallFailed",
    "ClientError",
    "ConnectionLost",
    "Device",
    "DeviceTable",
    "Event",
    "EventsLost",
    "Filter",
    "Item",
    "JournalChanged",
    "JournalGap",
    "Outcome",
    "Position",
    "Subscription",
    "devices",
    "subscribe",
]
