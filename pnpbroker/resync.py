"""Coldplug from inside the broker: the D-Bus Trigger method and recovery after lost events.

When the kernel drops uevents (ENOBUFS), nobody can say which devices changed, so the broker
asks the kernel to re-announce every device, tagged with a fresh SYNTH_UUID that the EventsLost
signal names. Resyncs are coalesced: at most one in flight and one queued; an overflow while one
runs is covered by the queued one (it starts after the current walk, so it also covers devices
the current walk already passed). The walk and the writes run in a thread, paced (:class:`Pace`):
after as many writes as the socket's buffer surely holds, it waits until the loop's reader has
drained the socket. Unpaced, a walk outruns the reader and overflows a small buffer again, and
the resync for that overflow overflows it too, without end.
While the journal is at its cap the resync is *held* (its events would be dropped too): the
request gets its UUID at once, and the walk starts on :meth:`Resync.release`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid as uuidlib
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pnpbroker import coldplug
from pnpbroker.coldplug import Device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pace:
    """How a trigger keeps within what the reader takes: after every ``every`` writes, the walk
    waits until ``caught_up()`` (run on the loop: the reader has drained its source)."""

    every: int
    caught_up: Callable[[], Coroutine[Any, Any, None]]


async def trigger_in_thread(
    subsystems: Sequence[str],
    action: str,
    uuid: str | None = None,
    sysfs: Path = Path("/sys"),
    devices: Sequence[str] | None = None,
    pace: Pace | None = None,
) -> coldplug.TriggerResult:
    """Write ``action uuid`` to every device of ``subsystems`` (all when empty), or to exactly
    the ``devices`` (devpaths; those gone are left out), without blocking the loop; at the
    ``pace``, if given. InvalidTrigger (nothing written) for a bad action or uuid."""
    uuid = uuid or str(uuidlib.uuid4())
    coldplug.check(action, uuid)
    wanted = list(subsystems)
    loop = asyncio.get_running_loop()

    def paced(done: int) -> None:
        if pace is not None and done % pace.every == 0:
            asyncio.run_coroutine_threadsafe(pace.caught_up(), loop).result()

    def run() -> coldplug.TriggerResult:
        if devices is None:
            found: Iterable[coldplug.Device] = coldplug.walk(sysfs, wanted)
        else:
            found = _existing(sysfs, devices, wanted)
        return coldplug.trigger(found, action, uuid, progress=paced)

    return await asyncio.to_thread(run)


def _existing(sysfs: Path, devpaths: Sequence[str], subsystems: Sequence[str]) -> list[Device]:
    """The devices at ``devpaths`` that still exist (and are of ``subsystems``, if given)."""
    found = []
    for devpath in devpaths:
        try:
            device = coldplug.find(sysfs, devpath)
        except coldplug.NoSuchDevice as exc:
            log.info("trigger: %s", exc)
            continue
        if not subsystems or device.subsystem in subsystems:
            found.append(device)
    return found


class Resync:
    """Re-triggers every device after a loss; see the module docstring for the coalescing."""

    def __init__(self, sysfs: Path = Path("/sys"), pace: Pace | None = None) -> None:
        self.sysfs = sysfs
        self.pace = pace
        self.count = 0
        self._running: asyncio.Task[None] | None = None
        self._queued: str | None = None
        self._held = False

    @property
    def busy(self) -> bool:
        """A resync runs, or one waits to."""
        return self._running is not None or self._queued is not None

    def hold(self) -> None:
        """Start nothing new until :meth:`release` (requests meanwhile share one UUID)."""
        self._held = True

    def release(self) -> None:
        """Start what was requested while held (after the running one, if any)."""
        self._held = False
        if self._running is None and self._queued is not None:
            uuid, self._queued = self._queued, None
            self._start(uuid)

    def request(self) -> str:
        """Ask for a resync; returns the SYNTH_UUID that will carry it."""
        if self._running is None and not self._held:
            uuid = str(uuidlib.uuid4())
            self._start(uuid)
            return uuid
        if self._queued is None:
            self._queued = str(uuidlib.uuid4())
        return self._queued

    def _start(self, uuid: str) -> None:
        self.count += 1
        self._running = asyncio.get_running_loop().create_task(self._run(uuid), name="resync")

    async def _run(self, uuid: str) -> None:
        try:
            result = await trigger_in_thread((), "add", uuid, self.sysfs, pace=self.pace)
        except Exception:
            log.exception("resync %s failed", uuid)
        else:
            log.warning(
                "resync %s: asked the kernel to re-send %d devices (%d refused)",
                uuid,
                result.written,
                len(result.failed),
            )
        self._running = None
        if self._queued is not None and not self._held:
            uuid, self._queued = self._queued, None
            self._start(uuid)
