"""``pnpbroker forward``'s work: take events from the broker's feed, publish them to MQTT, and
acknowledge to the feed what the MQTT broker acknowledged (the journal's ``forwarded`` cursor).

In order, one QoS 1 PUBLISH per event, at most :attr:`Session.window` unacknowledged. When the
MQTT broker or the network is away, paho keeps what is in flight and sends it again after the
reconnection; the feed is not read meanwhile, so the journal keeps the rest. When the broker
(``pnpbroker run``) restarts, its feed starts again from the cursor: what this process already
handed to paho is not published twice. A stop hands the feed the last acknowledgement,
waiting a little for the feed to come back if the broker is restarting at that moment.
Duplicates remain possible only where an acknowledgement was lost: a crash (of either process
or of the MQTT broker) or a connection cut between a PUBLISH and its PUBACK; (journal id,
sequence) tells them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field

from paho.mqtt.reasoncodes import ReasonCode

from pnpbroker.contract import ExitCode
from pnpbroker.fleet import frames
from pnpbroker.fleet.config import FleetConfig
from pnpbroker.fleet.mqtt import Session
from pnpbroker.notify import report_status, sd_notify

log = logging.getLogger(__name__)

FEED_RETRY_SECONDS = 2.0
#: How long a stop waits for PUBACKs of what is in flight (the rest is sent at the next start),
#: and then for the broker's feed to take the last ack.
STOP_SECONDS = 5.0
#: How long a stop waits for the broker to read the last ack and hang up the feed.
HANG_UP_SECONDS = 2.0
#: Room kept in the MQTT broker's receive window for the status message.
RESERVED = 1
READ_SIZE = 1 << 16


@dataclass(eq=False)
class Pending:
    """A message handed to paho, in order; done once its PUBACK came."""

    journal_id: str
    message: frames.Message
    done: bool = field(default=False)


class Forwarder:
    def __init__(self, cfg: FleetConfig) -> None:
        self.cfg = cfg
        self.base = f"{cfg.prefix}/{cfg.host}/"
        self.mqtt = Session(
            cfg,
            on_ack=self._puback,
            on_refused=self._refused,
            on_connected=self._online,
            will=(self.base + frames.STATUS_TOPIC, frames.OFFLINE),
        )
        self.journal_id = ""
        self.submitted = 0  # the last sequence handed to paho (for journal_id)
        self.acked = 0  # every sequence up to here was acknowledged by the MQTT broker
        self.seen = 0  # the last sequence the feed sent on this connection
        self.written = 0  # the last ack written to this connection of the feed (0: none)
        self.pending: deque[Pending] = deque()
        self.exit_code = ExitCode.OK
        self._stop = asyncio.Event()
        self._drained = asyncio.Event()  # nothing in flight
        self._delivered = asyncio.Event()  # the feed has every ack
        self._ack_soon: asyncio.Handle | None = None
        self._feed: asyncio.StreamWriter | None = None
        self._feed_gone = asyncio.Event()  # no connection to the feed
        self._hanging_up = False

    async def run(self) -> ExitCode:
        tasks = [
            asyncio.create_task(self.mqtt.run(), name="mqtt"),
            asyncio.create_task(self._follow_feed(), name="feed"),
            asyncio.create_task(report_status(self.status_line), name="status"),
        ]
        for task in tasks:
            task.add_done_callback(self._task_ended)
        sd_notify("READY=1")
        await self._stop.wait()
        await self._drain()
        await self._hang_up()
        for task in tasks[1:]:
            task.cancel()
        await self.mqtt.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        return self.exit_code

    def status_line(self) -> str:
        """What ``systemctl status`` shows: how far the MQTT broker acknowledged, what is in
        flight, and whether the MQTT broker and the daemon's feed are there."""
        mqtt = "connected" if self.mqtt.connected.is_set() else "away"
        feed = "connected" if self._feed is not None else "waiting"
        return (
            f"forwarded through {self.acked}, {len(self.pending)} in flight; "
            f"MQTT broker {mqtt}, feed {feed}"
        )

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """No task ends on its own: if one does, stop with 111 for a restart."""
        if task.cancelled() or self._stop.is_set():
            return
        log.error("%s stopped unexpectedly: %r; stopping", task.get_name(), task.exception())
        self.stop(ExitCode.SYSTEM)

    def stop(self, code: ExitCode = ExitCode.OK) -> None:
        self.exit_code = max(self.exit_code, code)
        self._stop.set()

    async def _drain(self) -> None:
        """Wait a little for the PUBACKs of what is in flight, so the cursor follows."""
        if self.pending and self.exit_code != ExitCode.CONFIG and self.mqtt.connected.is_set():
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), STOP_SECONDS)
        self._write_ack()
        if self.written < self.acked and self.exit_code != ExitCode.CONFIG:
            # The feed is away (the broker restarting; what we wrote to the last connection
            # may not have been read): when it is back, it sends again from its cursor and
            # _take writes the ack; without it, the next start sends again.
            self._delivered.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._delivered.wait(), STOP_SECONDS)

    async def _hang_up(self) -> None:
        """Close our half of the feed and read on until the broker closes its own: it reads
        every ack first. (Closing both halves with events unread would reset the connection,
        and the broker would drop the acks still in its socket.)"""
        feed, self._feed = self._feed, None  # no more acks
        self._hanging_up = True
        if feed is None or feed.is_closing():
            return
        with contextlib.suppress(OSError, RuntimeError):
            feed.write_eof()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._feed_gone.wait(), HANG_UP_SECONDS)

    # The feed.
    async def _follow_feed(self) -> None:
        told = False
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.cfg.feed)
            except OSError as exc:
                if not told:
                    log.warning("no broker feed at %s (%s); waiting for it", self.cfg.feed, exc)
                    told = True
                await asyncio.sleep(FEED_RETRY_SECONDS)
                continue
            told = False
            self._feed = writer
            self._feed_gone.clear()
            try:
                await self._take_feed(reader)
            except (ConnectionError, frames.FrameError) as exc:
                log.error("broker feed: %s", exc)
            finally:
                writer.close()
                self.written = 0  # a broker that went may not have read it
                if self._feed is writer:
                    self._feed = None
                self._feed_gone.set()
            if self._hanging_up:
                return
            log.warning("the broker's feed closed; waiting for the broker")

    async def _take_feed(self, reader: asyncio.StreamReader) -> None:
        journal_id = frames.read_hello(await reader.readline())
        if journal_id != self.journal_id:
            if self.journal_id:
                log.warning("the broker's journal is new (%s): sequences start again", journal_id)
            self.journal_id, self.submitted, self.acked = journal_id, 0, 0
        self.seen = self.written = 0
        log.info("broker feed connected (journal %s)", journal_id)
        rest = b""
        while chunk := await reader.read(READ_SIZE):
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                if not self._stop.is_set() and not self.mqtt.has_room(RESERVED):
                    await self.mqtt.wait_room(RESERVED)
                self._take(frames.read(line, self.cfg.host, journal_id))

    def _take(self, message: frames.Message) -> None:
        if message.retain:  # a device's state: no place in the sequence, nothing to ack
            user = [("journal_id", self.journal_id)]
            self.mqtt.publish(self.base + message.topic, message.payload, retain=True, user=user)
            return
        self.seen = message.last
        if message.last <= self.submitted:  # sent again after a broker restart: paho has it
            self._write_ack()
            return
        if self._stop.is_set():  # stopping: only acks now, the rest is for the next start
            return
        if message.first != self.submitted + 1 and self.submitted:
            log.warning("feed jumped from %d to %d", self.submitted, message.first)
        user = [("journal_id", self.journal_id), ("sequence", str(message.last))]
        if message.topic == frames.LOST_TOPIC:
            user.append(("lost", f"{message.first}-{message.last}"))
            log.error(
                "a loss in the stream at %d..%d: reported on %s",
                message.first,
                message.last,
                frames.LOST_TOPIC,
            )
        pending = Pending(self.journal_id, message)
        self.mqtt.publish(self.base + message.topic, message.payload, token=pending, user=user)
        self.pending.append(pending)
        self.submitted = message.last

    # The MQTT broker's answers.
    def _puback(self, pending: Pending) -> None:
        pending.done = True
        moved = False
        while self.pending and self.pending[0].done:
            done = self.pending.popleft()
            if done.journal_id == self.journal_id:
                self.acked, moved = done.message.last, True
        if moved and self._ack_soon is None:  # one write per turn of the loop, not per PUBACK
            self._ack_soon = asyncio.get_running_loop().call_soon(self._write_ack)
        if not self.pending:
            self._drained.set()

    def _write_ack(self) -> None:
        self._ack_soon = None
        through = min(self.acked, self.seen)
        feed = self._feed
        if feed is not None and not feed.is_closing() and through > self.written:
            feed.write(frames.ack(through))
            self.written = through
        if self.written >= self.acked:
            self._delivered.set()

    def _refused(self, pending: Pending, reason: ReasonCode) -> None:
        if self._stop.is_set():  # the first refusal said it
            return
        topic = self.base + pending.message.topic
        log.error(
            "the MQTT broker refused event %d on %s: %s; stopping, the event stays in the "
            "journal (check the broker's ACL: this host may write only below %s)",
            pending.message.last,
            topic,
            reason,
            self.base,
        )
        self.stop(ExitCode.CONFIG)

    def _online(self, session_present: bool) -> None:
        self.mqtt.publish(self.base + frames.STATUS_TOPIC, frames.ONLINE, retain=True)
