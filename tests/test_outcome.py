"""The outcome of an event, from the legacy stage to a client: one type, two explicit encodings.

The server side (``pnpbroker.outcome`` to JSON for the journal, ``pnpbroker.bus.wire`` to
``a{sv}``) and the client's decoding (``pnpbroker.client``, a separate file that imports nothing
of ours) are held together here: every shape an outcome can take goes through the journal's JSON,
through the bytes dbus-fast puts on the socket, and back through the client.
"""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from dbus_fast import Message, Variant
from dbus_fast._private.unmarshaller import Unmarshaller  # the library's own reader, for the test

from pnpbroker import client, names
from pnpbroker.bus import wire
from pnpbroker.journal import Record
from pnpbroker.outcome import SKIPPED, Outcome, combine
from pnpbroker.uevent import from_properties

RUN = Outcome("/sbin/hotplug", 0, 0, False, 0.012)
FAILED = Outcome("/etc/hotplug.d/net/20-fails.hotplug", 3, 0, False, 0.004)
KILLED = Outcome("/sbin/slow", -1, 9, True, 5.5)
MISSING = Outcome("/sbin/absent", -1, error="cannot run: No such file or directory")
UNDECODABLE = Outcome("/sbin/caf\udce9", 0, 0, False, 0.1)

SHAPES: dict[str, Outcome | None] = {
    "nothing ran": None,
    "skipped": SKIPPED,
    "one run": RUN,
    "killed after its timeout": KILLED,
    "abandoned: it could not be killed": Outcome(
        "/sbin/stuck", -1, 0, True, 11.0, abandoned_pid=77
    ),
    "could not start": MISSING,
    "several runs": combine("/etc/hotplug.d", (RUN, FAILED, KILLED)),
    "several runs, one abandoned": combine(
        "/etc/hotplug.d", (RUN, Outcome("/d/stuck", -1, 0, True, 11.0, abandoned_pid=77))
    ),
    "no scripts": combine("/etc/hotplug.d", ()),
    "the stage failed": Outcome(status=-1, error="handler failed: boom"),
}

EVENT = from_properties(
    {"ACTION": "add", "DEVPATH": "/devices/virtual/net/o0", "SUBSYSTEM": "net", "SEQNUM": "9"}
)


def through_the_wire(outcome: Outcome | None) -> client.Event:
    """Journal it (JSON text), read it back, send it as an Event signal, decode as a client."""
    stored = json.dumps(outcome.to_json() if outcome else {})
    journalled = Outcome.from_json(json.loads(stored))
    assert journalled == outcome
    body = wire.event_body(Record(42, EVENT, journalled))
    msg = Message.new_signal(
        names.OBJECT_PATH, names.INTERFACE, "Event", wire.EVENT_SIGNATURE, body
    )
    msg.serial = 1
    stream = io.BytesIO(bytes(msg._marshall(False)))
    received = Unmarshaller(stream).unmarshall()  # type: ignore[arg-type]
    assert received is not None
    assert received.signature == wire.EVENT_SIGNATURE
    return client.Event.from_body(received.body)


def same(decoded: client.Outcome, sent: Outcome) -> None:
    fields = ("program", "status", "signal", "timed_out", "duration", "skipped", "error")
    for field in (*fields, "abandoned_pid"):
        assert getattr(decoded, field) == getattr(sent, field), field
    assert len(decoded.runs) == len(sent.runs or ())
    for got, want in zip(decoded.runs, sent.runs or (), strict=True):
        same(got, want)


@pytest.mark.parametrize("name", SHAPES)
def test_the_client_decodes_what_the_server_encodes(name: str) -> None:
    sent = SHAPES[name]
    event = through_the_wire(sent)
    assert event.sequence == 42
    if sent is None:
        assert event.handler is None
        return
    assert event.handler is not None
    same(event.handler, sent)
    assert dict(event.handler.raw) == sent.to_json()


def test_undecodable_bytes_reach_the_client_replaced() -> None:
    event = through_the_wire(UNDECODABLE)
    assert event.handler is not None
    assert event.handler.program == "/sbin/caf\ufffd"


def test_every_field_has_a_written_signature() -> None:
    """A field added to Outcome without a D-Bus type fails here, not at the first event."""
    assert {f.name for f in dataclasses.fields(Outcome)} == set(wire.OUTCOME_SIGNATURES)
    variants = wire.outcome_variants(combine("/d", (MISSING, KILLED)))
    signatures = {key: v.signature for key, v in variants.items()}
    assert signatures == {
        "program": "s",
        "status": "i",
        "signal": "i",
        "timed_out": "b",
        "duration": "d",
        "runs": "aa{sv}",
    }
    runs = variants["runs"].value
    assert {key: v.signature for key, v in runs[0].items()}["error"] == "s"
    assert all(isinstance(v, Variant) for run in runs for v in run.values())


def test_optional_keys_are_left_out_and_skipped_stands_alone() -> None:
    assert "error" not in RUN.to_json()
    assert "runs" not in RUN.to_json()
    assert SKIPPED.to_json() == {"skipped": True}
    assert wire.outcome_variants(None) == {}
    assert combine("/d", ()).to_json()["runs"] == []


def test_outcomes_journalled_by_earlier_versions_still_read() -> None:
    """Rows written before the typed outcome (dicts built in several places) keep their meaning."""
    old = {
        '{"status": -1, "signal": 0, "timed_out": false, "error": "handler failed: x"}': Outcome(
            status=-1, error="handler failed: x"
        ),
        '{"skipped": true}': SKIPPED,
        "{}": None,
        '{"program": "/d", "status": 0, "signal": 0, "timed_out": false, "duration": 0, '
        '"runs": []}': Outcome("/d", runs=()),
    }
    for text, outcome in old.items():
        assert Outcome.from_json(json.loads(text)) == outcome, text
