"""The fleet feed: a sink that serves handled events, from the ``forwarded`` cursor, to one
``pnpbroker forward`` on a local socket (docs/fleet.md).

The broker only reads and writes a unix socket here: no network, no TLS, no MQTT. At most
``WINDOW`` events are written and not yet acknowledged, so a stalled forwarder (or its stalled
MQTT broker) costs a bounded buffer and nothing else: the journal keeps the rest, the cursor
stays where the MQTT broker's last acknowledgement put it. Writes never wait.

The device table's state goes the same way, retained and outside the sequence: every device
when a forwarder connects and when the table is read from sysfs again, then each change as the
table makes it (a watcher of :class:`~pnpbroker.client.table.DeviceTable`). A device removed
while no forwarder was connected is cleared when its ``remove`` event is sent again from the
cursor, if it is still gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import stat
from pathlib import Path

from pnpbroker.client.table import Device, DeviceTable
from pnpbroker.errors import ConfigError
from pnpbroker.fleet import frames
from pnpbroker.journal import Entry, Journal, Lost

log = logging.getLogger(__name__)

#: Events written to the forwarder and not yet acknowledged, at most.
WINDOW = 1024
PAGE = 256
#: An ack line is short; anything longer is not the forwarder.
MAX_LINE = 64
SYNC_RETRY_SECONDS = 1.0


class Feed:
    """Sink of the pipeline: listens on ``path``; one forwarder at a time."""

    def __init__(self, path: Path, group: str, journal: Journal) -> None:
        self.path = path
        self.gid = _group_id(group) if group else -1
        self.journal = journal
        journal.holds_for_forwarder = True
        self.through = journal.handled
        self.sent = journal.forwarded
        self.table: DeviceTable | None = None
        self._snapshot_at = 0  # the table's sequence when the devices were last sent whole
        self._sent_devices: set[str] = set()
        self._server: asyncio.base_events.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._again: asyncio.Handle | None = None
        self._syncing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind the socket (a stale one from a crash is replaced), mode 0600, or 0660 with the
        group."""
        if not self.path.parent.is_dir():
            # 0755 whatever the umask (the unit's is 0077): the forwarder, another user, must
            # reach the socket; the socket's own mode is what guards it.
            self.path.parent.mkdir(parents=True)
            self.path.parent.chmod(0o755)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_LINE)
        finally:
            os.umask(old)
        if self.gid >= 0:
            os.chown(self.path, -1, self.gid)
            self.path.chmod(0o660)
        log.info("fleet feed on %s, from sequence %d", self.path, self.journal.forwarded + 1)

    def watch(self, table: DeviceTable) -> None:
        """Send ``table``'s devices (retained) to the forwarder too."""
        self.table = table
        table.watchers.append(self)

    # The table's Watcher protocol.
    def changed(self, sequence: int, devpath: str, device: Device | None) -> None:
        if (writer := self._open_writer()) is None:
            return
        if device is None:
            self._sent_devices.discard(devpath)
            writer.write(frames.gone(devpath))
        else:
            self._sent_devices.add(devpath)
            writer.write(frames.device(device, self.journal.journal_id))

    def replaced(self, sequence: int) -> None:
        if (writer := self._open_writer()) is not None:
            self._send_devices(writer)

    def _open_writer(self) -> asyncio.StreamWriter | None:
        """The forwarder's connection, unless it is going (asyncio warns of each write then)."""
        writer = self._writer
        return None if writer is None or writer.is_closing() else writer

    def _send_devices(self, writer: asyncio.StreamWriter) -> None:
        """Every device, and a clear for those sent before that are gone."""
        if self.table is None:
            return
        now = {device.devpath for device in self.table}
        lines = [frames.gone(devpath) for devpath in sorted(self._sent_devices - now)]
        lines += [frames.device(device, self.journal.journal_id) for device in self.table]
        writer.write(b"".join(lines))
        self._sent_devices, self._snapshot_at = now, self.table.sequence

    # The Sink protocol.
    def advance(self, through: int) -> None:
        self.through = max(self.through, through)
        if self._again is None:
            self._send_some()

    # The forwarder's connection.
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            log.error("fleet feed: a second forwarder connected; refusing it")
            writer.close()
            return
        self._writer, self.sent = writer, self.journal.forwarded
        log.info("fleet forwarder connected; sending from sequence %d", self.sent + 1)
        writer.write(frames.hello(self.journal.journal_id))
        self._sent_devices = set()
        self._send_devices(writer)
        self._send_some()
        try:
            while line := await reader.readline():
                self._acked(frames.read_ack(line))
        except (ValueError, ConnectionError) as exc:  # FrameError, an overlong line, a reset
            log.error("fleet feed: dropping the forwarder: %s", exc)
        finally:
            self._writer = None
            writer.close()
            log.info("fleet forwarder gone; forwarded through %d", self.journal.forwarded)

    def _acked(self, sequence: int) -> None:
        if not self.journal.forwarded <= sequence <= self.sent:
            raise frames.FrameError(f"ack {sequence} outside {self.journal.forwarded}..{self.sent}")
        self.journal.mark_forwarded(sequence)
        if self._again is None:
            self._send_some()

    def _send_some(self) -> None:
        """Write what the window allows, a page at a time; the rest after the loop had a turn."""
        self._again = None
        if (writer := self._open_writer()) is None:
            return
        room = WINDOW - (self.sent - self.journal.forwarded)
        through = self._on_disk()
        if room <= 0 or self.sent >= through:
            return
        records = self.journal.between(self.sent, through, min(PAGE, room))
        first = records[0].sequence if records else through + 1
        if first > self.sent + 1:  # retention took them before the forwarder did
            writer.write(frames.lost(self.sent + 1, first - 1, frames.RETENTION))
            self.sent = first - 1
        writer.write(b"".join(map(self._lines, records)))
        if records:
            self.sent = records[-1].sequence
        if self.sent < through:
            self._again = asyncio.get_running_loop().call_soon(self._send_some)

    def _on_disk(self) -> int:
        """How far the feed may go: what is handled and on disk (``journal_sync``), as for the
        bus: an event the journal could lose at a power cut never reaches the fleet. Syncs
        when it must, in the background."""
        journal = self.journal
        if journal.synced < self.through and self._syncing is None:
            self._syncing = asyncio.get_running_loop().create_task(self._sync(), name="feed sync")
        return min(self.through, journal.synced)

    async def _sync(self) -> None:
        try:
            await self.journal.sync()
        except OSError as exc:
            log.error("fleet feed: cannot sync the journal: %s; trying again", exc)
            await asyncio.sleep(SYNC_RETRY_SECONDS)
        finally:
            self._syncing = None
        if self._again is None:
            self._send_some()

    def _lines(self, entry: Entry) -> bytes:
        """An event's line (a loss in the stream: a ``lost`` line at its place); for a
        ``remove`` from before the devices were last sent whole, a clear of that device if it is
        still gone (later ones were cleared as they happened)."""
        if isinstance(entry, Lost):
            return frames.lost(entry.sequence, entry.sequence, frames.STREAM, entry.resync_uuid)
        record = entry
        line = frames.event(record, self.journal.journal_id)
        event, table = record.event, self.table
        if (
            table is not None
            and event.action == "remove"
            and record.sequence <= self._snapshot_at
            and event.devpath not in table
        ):
            line += frames.gone(event.devpath)
        return line

    def close(self) -> None:
        if self._again is not None:
            self._again.cancel()
        if self._syncing is not None:
            self._syncing.cancel()
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError("forward_group", f"no such group: {name!r}") from None
