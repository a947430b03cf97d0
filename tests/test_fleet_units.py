"""The fleet's pure parts and the broker's feed, without root: frames, the sequence tracker,
the secrets file check, retention beside the ``forwarded`` cursor, and the feed socket driven by
a forwarder stand-in (a real unix socket, a real journal)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from support.fakes import uevent

from pnpbroker.client.table import Device
from pnpbroker.core.feed import WINDOW, Feed
from pnpbroker.errors import ConfigError
from pnpbroker.fleet import frames
from pnpbroker.fleet.config import from_mapping, read_secrets
from pnpbroker.fleet.tracker import Report, Tracker
from pnpbroker.journal import Journal, Record
from pnpbroker.outcome import Outcome
from pnpbroker.uevent import from_properties


def test_event_frame_carries_the_payload_and_the_topic() -> None:
    event = from_properties(
        {"ACTION": "add", "DEVPATH": "/devices/x", "SUBSYSTEM": "usb+#/", "SEQNUM": "7",
         "NAME": "caf\udce9"}
    )  # fmt: skip
    record = Record(3, event, Outcome(program="/sbin/hotplug"), 1700000000.25)
    message = frames.read(frames.event(record, "jid"), "host-1", "jid")
    assert (message.first, message.last) == (3, 3)
    assert message.topic == "events/usb___/add"  # a level: no wildcard, no separator
    payload = json.loads(message.payload)
    assert payload == {
        "host": "host-1", "sequence": 3, "journal_id": "jid", "action": "add",
        "subsystem": "usb+#/", "devpath": "/devices/x",
        "properties": {"ACTION": "add", "DEVPATH": "/devices/x", "SUBSYSTEM": "usb+#/",
                       "SEQNUM": "7", "NAME": "caf\ufffd"},
        "outcome": Outcome(program="/sbin/hotplug").to_json(), "time": 1700000000.25,
    }  # fmt: skip


def test_lost_frame_becomes_a_loss_message() -> None:
    message = frames.read(frames.lost(5, 9, frames.RETENTION), "h", "jid")
    assert (message.first, message.last, message.topic) == (5, 9, frames.LOST_TOPIC)
    assert json.loads(message.payload) == {
        "host": "h", "journal_id": "jid", "first": 5, "last": 9, "kind": "retention",
        "resync_uuid": "",
    }  # fmt: skip
    message = frames.read(frames.lost(7, 7, frames.STREAM, "u-1"), "h", "jid")
    assert json.loads(message.payload)["resync_uuid"] == "u-1"


@pytest.mark.parametrize("line", [b"", b"event x y z\n", b"lost 1\n", b"ack 3\n", b"hello 1 j\n"])
def test_other_lines_are_frame_errors(line: bytes) -> None:
    with pytest.raises(frames.FrameError):
        frames.read(line, "h", "j")


def test_tracker_reports_gaps_repeats_losses_and_new_journals() -> None:
    tracker = Tracker()
    assert tracker.take("a", "j1", 1, 1) == (True, [])
    assert tracker.take("a", "j1", 2, 2) == (True, [])
    new, reports = tracker.take("a", "j1", 2, 2)
    assert not new
    assert [(r.kind, r.first, r.last) for r in reports] == [("repeat", 2, 2)]
    new, reports = tracker.take("a", "j1", 5, 5)
    assert new
    assert [(r.kind, r.first, r.last) for r in reports] == [("gap", 3, 4)]
    new, reports = tracker.take("a", "j1", 3, 3)  # reordered, not lost
    assert new
    assert [(r.kind, r.first, r.last) for r in reports] == [("late", 3, 3)]
    _, reports = tracker.take("a", "j1", 6, 9, lost=True)
    assert [(r.kind, r.first, r.last) for r in reports] == [("lost", 6, 9)]
    assert tracker.take("b", "k", 40, 40) == (True, [])  # another host: its own sequence
    _, reports = tracker.take("a", "j2", 1, 1)
    assert [r.kind for r in reports] == ["journal"]
    assert str(Report("gap", "a", "j1", 3, 4)) == "a: GAP: not arrived 3..4 (journal j1)"


def test_secrets_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "secrets.toml"
    path.write_text('username = "u"\npassword = "p"\n')
    path.chmod(0o640)
    with pytest.raises(ConfigError, match=r"mode 0640: others could read the password; chmod 600"):
        read_secrets(str(path))
    path.chmod(0o600)
    assert (read_secrets(str(path)).username, read_secrets(str(path)).password) == ("u", "p")
    path.write_text('username = "u"\ntoken = "t"\n')
    with pytest.raises(ConfigError, match="username and password only"):
        read_secrets(str(path))


def test_config_keys_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        from_mapping({"brokr": "x"})
    with pytest.raises(ConfigError, match="one non-empty topic level"):
        from_mapping({"host": "a/b"})
    cfg = from_mapping({"broker": "m", "ca": "/ca.pem"})
    assert (cfg.mqtt_port, cfg.mqtt_client_id) == (8883, cfg.host)


def journal_with(tmp_path: Path, count: int) -> Journal:
    journal = Journal(tmp_path / "j.sqlite", max_events=100, max_age=60)
    journal.append([uevent(n) for n in range(count)])
    journal.skip_handling(journal.last)
    journal.mark_published(journal.last)
    return journal


def test_retention_by_age_waits_for_the_forwarder_by_count_does_not(tmp_path: Path) -> None:
    journal = journal_with(tmp_path, 30)
    journal.holds_for_forwarder = True
    journal.mark_forwarded(5)
    journal._db.execute("UPDATE events SET received = ?", (time.time() - 3600,))
    journal.prune()
    assert journal.oldest == 6  # old, but not forwarded: kept (it is within the count)
    journal.max_events = 3
    journal.prune()
    assert journal.oldest == 28  # the count limit takes them anyway: a reported loss


async def _forwarder(path: Path, acks: list[int]) -> tuple[str, list[bytes]]:
    """A forwarder stand-in: reads until the feed goes quiet, acknowledging ``acks``."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    journal_id = frames.read_hello(await reader.readline())
    lines: list[bytes] = []
    for ack in acks:
        writer.write(frames.ack(ack))
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(), 0.5)
        except TimeoutError:
            break
        if not line:  # the feed hung up
            break
        lines.append(line)
    writer.close()
    return journal_id, lines


async def test_feed_sends_from_the_cursor_within_its_window(tmp_path: Path) -> None:
    journal = journal_with(tmp_path, WINDOW + 10)
    journal.mark_forwarded(4)
    feed = Feed(tmp_path / "feed.sock", "", journal)
    await feed.start()
    try:
        assert (tmp_path / "feed.sock").stat().st_mode & 0o777 == 0o600
        journal_id, lines = await _forwarder(tmp_path / "feed.sock", [])
        assert journal_id == journal.journal_id
        sent = [frames.read(line, "h", journal_id).last for line in lines]
        assert sent == list(range(5, 5 + WINDOW))  # from the cursor, a window and no more
        _, lines = await _forwarder(tmp_path / "feed.sock", [10])  # a new connection
        assert frames.read(lines[0], "h", "").first == 5  # again from the cursor
        assert journal.forwarded == 10
    finally:
        feed.close()


async def test_feed_makes_its_directory_reachable_whatever_the_umask(tmp_path: Path) -> None:
    """pnpbroker.service runs with UMask=0077; the forwarder, another user, must still reach
    the socket in the directory the daemon makes (/run/pnpbroker): 0755, the socket guards."""
    journal = journal_with(tmp_path, 1)
    path = tmp_path / "run" / "pnpbroker" / "feed.sock"
    old = os.umask(0o077)
    try:
        feed = Feed(path, "", journal)
        await feed.start()
    finally:
        os.umask(old)
    try:
        assert path.parent.stat().st_mode & 0o777 == 0o755
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        feed.close()


async def test_feed_reports_what_retention_took_and_refuses_bad_acks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = journal_with(tmp_path, 30)
    journal.holds_for_forwarder = True
    journal.max_events = 5
    journal.prune()  # the forwarder never took 1..25
    feed = Feed(tmp_path / "feed.sock", "", journal)
    await feed.start()
    try:
        _, lines = await _forwarder(tmp_path / "feed.sock", [])
        assert lines[0] == frames.lost(1, 25, frames.RETENTION)
        assert [frames.read(line, "h", "").last for line in lines[1:]] == list(range(26, 31))
        await _forwarder(tmp_path / "feed.sock", [99])  # never sent: the feed hangs up
        assert journal.forwarded == 0
        assert "dropping the forwarder: ack 99 outside 0..30" in caplog.text
    finally:
        feed.close()


def test_device_frames_are_retained_messages_outside_the_sequence() -> None:
    entry = Device("/devices/pci0000:00/usb1/1-2", "usb", {"PRODUCT": "781/5581/100"})
    message = frames.read(frames.device(entry, "jid"), "h", "jid")
    assert (message.first, message.last, message.retain) == (0, 0, True)
    assert message.topic == "devices/devices/pci0000:00/usb1/1-2"
    assert json.loads(message.payload) == {
        "host": "h", "sequence": 0, "journal_id": "jid", "devpath": entry.devpath,
        "subsystem": "usb", "properties": {"PRODUCT": "781/5581/100"},
    }  # fmt: skip
    cleared = frames.read(frames.gone(entry.devpath), "h", "jid")
    assert (cleared.topic, cleared.payload, cleared.retain) == (message.topic, b"", True)


@pytest.mark.parametrize("pairs", [[("journal_id", "j")], [("sequence", "4711"), ("k", "é" * 200)]])
def test_user_properties_are_packed_as_paho_packs_them(pairs: list[tuple[str, str]]) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from pnpbroker.fleet.mqtt import UserProperties

    theirs = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    theirs.UserProperty = pairs
    assert UserProperties(pairs).pack() == theirs.pack()  # type: ignore[no-untyped-call]


class FakeSession:
    """Stands in for the MQTT session (paho and a server): records what is published; the
    test acknowledges with ``puback``."""

    def __init__(self, cfg: object, **callbacks: Any) -> None:
        self.on_ack = callbacks["on_ack"]
        self.published: list[tuple[str, bytes, Any]] = []
        self.window = 100

    def publish(self, topic: str, payload: bytes, *, token: Any = None, **_: object) -> None:
        self.published.append((topic, payload, token))

    def has_room(self, reserve: int = 0) -> bool:
        return True

    def puback(self, index: int) -> None:
        self.on_ack(self.published[index][2])


class FakeFeed:
    """The forwarder's end of the feed socket: what it writes."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.lines.append(data)

    def is_closing(self) -> bool:
        return False


def _event_line(sequence: int) -> bytes:
    return frames.event(Record(sequence, uevent(sequence), None, 0.0), "j1")


async def test_forwarder_acks_contiguous_pubacks_and_skips_what_paho_has(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pnpbroker.fleet import forwarder as module

    monkeypatch.setattr(module, "Session", FakeSession)
    fwd = module.Forwarder(from_mapping({"broker": "m", "host": "h"}))
    session, feed = fwd.mqtt, FakeFeed()
    assert isinstance(session, FakeSession)
    fwd._feed = feed  # type: ignore[assignment]
    fwd.journal_id = "j1"
    for n in (1, 2, 3):
        fwd._take(frames.read(_event_line(n), "h", "j1"))
    assert [t for t, _, _ in session.published] == ["pnpbroker/h/events/net/add"] * 3
    session.puback(1)  # sequence 2 first: the cursor may not pass 1 yet
    await asyncio.sleep(0)
    assert feed.lines == []
    session.puback(0)
    await asyncio.sleep(0)
    assert feed.lines == [frames.ack(2)]
    fwd.seen = fwd.written = 0  # the broker restarted: it sends from its (older) cursor
    for n in (1, 2, 3):
        fwd._take(frames.read(_event_line(n), "h", "j1"))
    assert len(session.published) == 3  # nothing twice
    assert feed.lines[-1] == frames.ack(2)
    session.puback(2)
    await asyncio.sleep(0)
    assert feed.lines[-1] == frames.ack(3)


async def test_a_stop_hands_the_last_ack_to_a_feed_that_comes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PUBACKs came while the broker was restarting (no feed): the stop waits for the feed
    to send again from its cursor, writes the ack, and publishes nothing new meanwhile."""
    from pnpbroker.fleet import forwarder as module

    monkeypatch.setattr(module, "Session", FakeSession)
    fwd = module.Forwarder(from_mapping({"broker": "m", "host": "h"}))
    session = fwd.mqtt
    assert isinstance(session, FakeSession)
    fwd.journal_id = "j1"
    for n in (1, 2, 3):
        fwd._take(frames.read(_event_line(n), "h", "j1"))
    session.puback(0)
    session.puback(1)
    session.puback(2)
    await asyncio.sleep(0)  # no feed: the ack waits
    assert (fwd.acked, fwd.written) == (3, 0)
    fwd.stop()
    drain = asyncio.create_task(fwd._drain())
    await asyncio.sleep(0.01)
    assert not drain.done()
    feed = FakeFeed()
    fwd._feed, fwd.seen, fwd.written = feed, 0, 0  # type: ignore[assignment]  # the broker back
    for n in (1, 2, 3, 4):  # from its cursor, and a new event
        fwd._take(frames.read(_event_line(n), "h", "j1"))
    await asyncio.wait_for(drain, 1)
    assert feed.lines[-1] == frames.ack(3)
    assert len(session.published) == 3  # 4 is left for the next start


async def test_a_stop_without_a_feed_gives_up_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pnpbroker.fleet import forwarder as module

    monkeypatch.setattr(module, "Session", FakeSession)
    monkeypatch.setattr(module, "STOP_SECONDS", 0.05)
    fwd = module.Forwarder(from_mapping({"broker": "m", "host": "h"}))
    fwd.journal_id, fwd.acked = "j1", 3
    fwd.stop()
    await asyncio.wait_for(fwd._drain(), 5)
    assert fwd.written == 0  # the next start sends 1..3 again: duplicates, said in the docs


class AckingSession(FakeSession):
    """A FakeSession whose server acknowledges each PUBLISH at once, connected throughout."""

    def __init__(self, cfg: object, **callbacks: Any) -> None:
        super().__init__(cfg, **callbacks)
        self.connected, self.closed = asyncio.Event(), asyncio.Event()
        self.connected.set()

    async def run(self) -> None:
        await self.closed.wait()

    async def close(self) -> None:
        self.closed.set()

    def publish(self, topic: str, payload: bytes, *, token: Any = None, **_: object) -> None:
        super().publish(topic, payload, token=token)
        if token is not None:
            asyncio.get_running_loop().call_soon(self.on_ack, token)


async def test_a_stop_with_events_unread_still_delivers_every_ack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker stand-in on a real unix socket writes more events after each ack, as the
    daemon does, and reads acks until the forwarder hangs up: the forwarder's last ack arrives
    although events were left unread (a plain close resets the connection: the stand-in's next
    write fails, asyncio stops reading, and the acks still in the socket are lost)."""
    from pnpbroker.fleet import forwarder as module

    monkeypatch.setattr(module, "Session", AckingSession)
    path = tmp_path / "feed.sock"
    acks: list[int] = []
    ends: list[str] = []
    done = asyncio.Event()
    lines = [_event_line(n) for n in range(1, 100001)]

    async def devices(writer: asyncio.StreamWriter) -> None:
        """The device table's changes, written as they happen (a burst of links)."""
        device = frames.device(Device("/devices/virtual/net/x", "net", {}), "j1")
        while not writer.is_closing():
            writer.write(device * 200)
            await asyncio.sleep(0.001)

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """As the daemon's feed: more events after each ack, while the connection lasts."""
        writer.write(frames.hello("j1") + b"".join(lines[:2000]))
        sent, changes = 2000, asyncio.create_task(devices(writer))
        try:
            while line := await reader.readline():
                acks.append(frames.read_ack(line))
                if not writer.is_closing():
                    writer.write(b"".join(lines[sent : sent + 500]))
                    sent += 500
            ends.append("end of file")
        except ConnectionError as exc:
            ends.append(repr(exc))
        writer.close()
        await changes
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        done.set()

    server = await asyncio.start_unix_server(broker, path)
    fwd = module.Forwarder(from_mapping({"broker": "m", "host": "h", "feed": str(path)}))
    running = asyncio.create_task(fwd.run())
    await asyncio.sleep(0.2)  # it publishes some, the rest waits in the socket
    fwd.stop()
    assert await asyncio.wait_for(running, 10) == 0
    await asyncio.wait_for(done.wait(), 10)
    server.close()
    await server.wait_closed()
    assert fwd.acked > 0
    assert acks[-1:] == [fwd.acked]
    assert ends == ["end of file"]  # a hang-up, not a reset
