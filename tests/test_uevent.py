"""The uevent parser: kernel datagrams parse; anything else is a MalformedUevent saying why."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pnpbroker.errors import MalformedUevent
from pnpbroker.uevent import MAX_UEVENT_SIZE, Uevent, dbus_safe, from_properties, parse, serialize

KERNEL = (
    b"add@/devices/virtual/net/ifb0\0ACTION=add\0DEVPATH=/devices/virtual/net/ifb0\0"
    b"SUBSYSTEM=net\0INTERFACE=ifb0\0IFINDEX=7\0SEQNUM=4242\0"
)


def test_kernel_datagram_parses() -> None:
    event = parse(KERNEL)
    assert (event.action, event.devpath, event.subsystem, event.seqnum) == (
        "add",
        "/devices/virtual/net/ifb0",
        "net",
        4242,
    )
    assert event["INTERFACE"] == "ifb0"
    assert dict(event) == dict(event.properties)
    assert len(event) == 6
    assert event.synth_uuid is None


def test_event_is_read_only() -> None:
    event = parse(KERNEL)
    with pytest.raises(TypeError):
        event.properties["ACTION"] = "remove"  # type: ignore[index]
    with pytest.raises(AttributeError):
        event.action = "remove"  # type: ignore[misc]


def test_synth_uuid() -> None:
    uuid = "3a7c1c84-6f2a-4e1b-9c43-2b1d8c6c2a11"
    event = parse(KERNEL + f"SYNTH_UUID={uuid}\0".encode())
    assert event.synth_uuid == uuid


def test_round_trip_of_a_kernel_datagram() -> None:
    assert serialize(parse(KERNEL)) == KERNEL


def test_from_properties_checks_the_same_keys() -> None:
    event = parse(KERNEL)
    assert from_properties(event.properties) == event
    with pytest.raises(MalformedUevent, match="SEQNUM"):
        from_properties({"ACTION": "add", "DEVPATH": "/d", "SUBSYSTEM": "net"})


def test_undecodable_bytes_survive_and_dbus_safe_replaces_them() -> None:
    event = parse(KERNEL.replace(b"INTERFACE=ifb0", b"NAME=\xff\xfe"))
    assert serialize(event) == KERNEL.replace(b"INTERFACE=ifb0", b"NAME=\xff\xfe")
    assert dbus_safe(event["NAME"]) == "\ufffd\ufffd"
    assert dbus_safe("plain") == "plain"
    assert dbus_safe("gr\u00fcn") == "gr\u00fcn"


def _replace(old: bytes, new: bytes) -> bytes:
    assert old in KERNEL
    return KERNEL.replace(old, new)


MALFORMED = [
    pytest.param(KERNEL + b"X" * MAX_UEVENT_SIZE + b"\0", "oversized", id="oversized"),
    pytest.param(b"libudev\0" + KERNEL, "libudev", id="libudev"),
    pytest.param(KERNEL[:-1], "not NUL-terminated", id="no-nul"),
    pytest.param(b"", "not NUL-terminated", id="empty"),
    pytest.param(_replace(b"add@/devices/virtual/net/ifb0\0", b"hello\0"), "header", id="no-at"),
    pytest.param(_replace(b"add@/devices/virtual/net/ifb0\0", b"@/d\0"), "header", id="no-act"),
    pytest.param(_replace(b"add@/devices/virtual/net/ifb0\0", b"add@\0"), "header", id="no-dev"),
    pytest.param(_replace(b"ACTION=add\0", b""), "missing ACTION", id="missing-action"),
    pytest.param(_replace(b"DEVPATH=/devices/virtual/net/ifb0\0", b""), "DEVPATH", id="no-dp"),
    pytest.param(_replace(b"SUBSYSTEM=net\0", b""), "missing SUBSYSTEM", id="missing-subsys"),
    pytest.param(_replace(b"SEQNUM=4242\0", b""), "missing SEQNUM", id="missing-seqnum"),
    pytest.param(_replace(b"SEQNUM=4242", b"SEQNUM=12a"), "SEQNUM is not a number", id="seq"),
    pytest.param(_replace(b"SEQNUM=4242", b"SEQNUM=\xd9\xa3"), "SEQNUM", id="seq-non-ascii"),
    pytest.param(_replace(b"IFINDEX=7", b"IFINDEX"), "not KEY=VALUE", id="no-equals"),
    pytest.param(_replace(b"IFINDEX=7", b"=7"), "empty key", id="empty-key"),
    pytest.param(_replace(b"ACTION=add", b"ACTION=remove"), "inconsistent", id="action-differs"),
    pytest.param(_replace(b"SUBSYSTEM=net", b"SUBSYSTEM="), "empty", id="empty-subsystem"),
]


@pytest.mark.parametrize(("data", "reason"), MALFORMED)
def test_malformed_is_named(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedUevent, match=reason) as caught:
        parse(data)
    assert caught.value.reason == str(caught.value)


def test_a_key_given_twice_keeps_its_first_value_and_says_so() -> None:
    event = parse(_replace(b"IFINDEX=7", b"INTERFACE=x\0INTERFACE=y"))
    assert event["INTERFACE"] == "ifb0"
    assert event.duplicates == (("INTERFACE", "x"), ("INTERFACE", "y"))
    assert parse(KERNEL).duplicates == ()
    assert parse(serialize(event)) == event


# Hypothesis: generated valid events and random bytes.
_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=40)
_key = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\0="), min_size=1, max_size=16
)
_word = _text.filter(bool)


@st.composite
def uevents(draw: st.DrawFn) -> Uevent:
    action = draw(_word.filter(lambda s: "@" not in s))
    devpath = draw(_word)
    subsystem = draw(_word)
    seqnum = draw(st.integers(min_value=0, max_value=2**64 - 1))
    extra = draw(st.dictionaries(_key, _text, max_size=8))
    props = {k: v for k, v in extra.items() if k not in ("ACTION", "DEVPATH", "SUBSYSTEM")}
    props.update(ACTION=action, DEVPATH=devpath, SUBSYSTEM=subsystem, SEQNUM=str(seqnum))
    return from_properties(props)


@settings(max_examples=400, deadline=None)
@given(uevents())
def test_round_trip(event: Uevent) -> None:
    assert parse(serialize(event)) == event


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_ever_raise_malformed(data: bytes) -> None:
    try:
        event = parse(data)
    except MalformedUevent as exc:
        reason = exc.reason
    else:
        reason = "parsed"
        assert serialize(event) == data
    assert reason


@settings(max_examples=500, deadline=None)
@given(uevents(), st.integers(min_value=0), st.binary(min_size=1, max_size=8))
def test_mutated_kernel_bytes_only_ever_raise_malformed(
    event: Uevent, where: int, junk: bytes
) -> None:
    data = serialize(event)
    at = where % (len(data) + 1)
    mutated = data[:at] + junk + data[at:]
    try:
        parsed = parse(mutated)
    except MalformedUevent:
        return
    assert parsed.seqnum >= 0
