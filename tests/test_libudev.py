"""The wire formats of ``--rebroadcast`` (pnpbroker.libudev) and its targets and configuration.

The hashes and bloom words are held to libudev's own: the socket filter libudev1 builds for a
set of matches is read back from the kernel and its constants compared with ours. A tag filter
is then run for real: datagrams from our encoder, sent to group 2 by root in a namespace, pass
or are dropped by libudev's filter as udevd's would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from support import REPO_ROOT
from support.netns import NetNS, _setns
from support.udev import SYSTEM_PYTHON, Received, pyudev_monitor, require_pyudev

from pnpbroker import config
from pnpbroker.commands import build_parser
from pnpbroker.commands.run import overrides as _overrides
from pnpbroker.errors import ConfigError
from pnpbroker.journal import Journal
from pnpbroker.libudev import (
    HEADER,
    MAGIC,
    SEQUENCE_PROPERTY,
    kernel_datagram,
    libudev_datagram,
    murmurhash2,
    string_hash,
    tag_bloom,
)
from pnpbroker.rebroadcast import (
    TURN,
    Rebroadcaster,
    Target,
    parse_target,
    parse_targets,
    refuse_beside_udevd,
)
from pnpbroker.uevent import from_properties, parse

DISK = from_properties(
    {
        "ACTION": "add",
        "DEVPATH": "/devices/virtual/block/loop7",
        "SUBSYSTEM": "block",
        "MAJOR": "7",
        "MINOR": "7",
        "DEVNAME": "loop7",
        "DEVTYPE": "disk",
        "DISKSEQ": "9",
        "SEQNUM": "4242",
    }
)
T = TypeVar("T")
FIELDS = struct.Struct(">8sIIIIIIII")  # every field big-endian, to read what is on the wire


def header(data: bytes) -> dict[str, int | bytes]:
    names = ("prefix", "magic", "size", "offset", "length", "subsystem", "devtype", "hi", "lo")
    values = dict(zip(names, FIELDS.unpack_from(data), strict=True))
    for host_order in ("size", "offset", "length"):  # sent in host order
        values[host_order] = int.from_bytes(struct.pack(">I", values[host_order]), "little")
    return values


def body(data: bytes) -> list[str]:
    return data[HEADER.size :].decode().split("\0")


def test_kernel_datagram_is_the_event_with_the_sequence_last() -> None:
    data = kernel_datagram(DISK, 17)
    assert data.startswith(b"add@/devices/virtual/block/loop7\0ACTION=add\0")
    assert data.endswith(b"\0PNP_SEQUENCE=17\0")
    again = parse(data)
    assert dict(again) == {**DISK, SEQUENCE_PROPERTY: "17"}
    assert again.seqnum == 4242


def test_libudev_header_as_udevd_lays_it_out() -> None:
    data = libudev_datagram(DISK, 17)
    fields = header(data)
    assert fields["prefix"] == b"libudev\0"
    assert data[8:12] == b"\xfe\xed\xca\xfe"  # network order, what libudev's BPF compares
    assert fields["magic"] == MAGIC
    assert fields["size"] == fields["offset"] == HEADER.size == 40
    assert fields["length"] == len(data) - 40
    assert fields["subsystem"] == string_hash("block")
    assert fields["devtype"] == string_hash("disk")
    assert fields["hi"] == fields["lo"] == 0  # no tags without udev rules
    assert body(data) == [
        "ACTION=add",
        "DEVPATH=/devices/virtual/block/loop7",
        "SUBSYSTEM=block",
        "MAJOR=7",
        "MINOR=7",
        "DEVNAME=/dev/loop7",  # udevd sends the node's path
        "DEVTYPE=disk",
        "DISKSEQ=9",
        "SEQNUM=4242",
        "PNP_SEQUENCE=17",
        "",
    ]


def test_libudev_without_devtype_and_with_tags() -> None:
    event = from_properties(
        {**{k: DISK[k] for k in ("ACTION", "DEVPATH", "SUBSYSTEM", "SEQNUM")}, "TAGS": ":seat:a:"}
    )
    fields = header(libudev_datagram(event, 1))
    assert fields["devtype"] == 0
    bloom = tag_bloom(["seat", "a"])
    assert (fields["hi"], fields["lo"]) == (bloom >> 32, bloom & 0xFFFFFFFF)
    assert bloom == tag_bloom(["seat"]) | tag_bloom(["a"])
    assert bin(tag_bloom(["seat"])).count("1") <= 4


def test_a_sequence_key_in_the_event_is_replaced() -> None:
    event = from_properties({**DISK, SEQUENCE_PROPERTY: "forged"})
    assert body(libudev_datagram(event, 5)).count("PNP_SEQUENCE=5") == 1
    assert dict(parse(kernel_datagram(event, 5)))[SEQUENCE_PROPERTY] == "5"


def test_murmurhash2_reference_values() -> None:
    """Values libudev1 (systemd 252) put in its filter for these strings (as the next test
    reads them back); one string of each length modulo 4."""
    assert [string_hash(s) for s in ("a", "ab", "abc", "abcd", "abcde")] == [
        2456313694,
        446775395,
        324500635,
        646393889,
        1594468574,
    ]
    assert murmurhash2(b"block") == 4026736055
    assert murmurhash2(b"") == 0
    assert tag_bloom(["seat"]) == 34078720 << 32 | 4194305


SUBSYSTEMS = ["a", "ab", "abc", "abcd", "abcde", "block/disk", "usb/usb_interface", "net"]
TAGS = ["seat", "uaccess", "systemd"]


def test_libudevs_own_filter_uses_our_hashes_and_bloom() -> None:
    """libudev1 builds the filter; every constant in it is ours (and nothing else is)."""
    require_pyudev()
    script = REPO_ROOT / "tests" / "clients" / "libudev_filter.py"
    specs = [f"subsystem:{s}" for s in SUBSYSTEMS] + [f"tag:{t}" for t in TAGS]
    done = subprocess.run(
        [SYSTEM_PYTHON, str(script), *specs], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    theirs = set(json.loads(done.stdout))
    ours = {MAGIC}
    for spec in SUBSYSTEMS:
        ours |= {string_hash(part) for part in spec.split("/")}
    for tag in TAGS:
        ours |= {tag_bloom([tag]) >> 32, tag_bloom([tag]) & 0xFFFFFFFF}
    assert theirs == ours


_RELAY = """
import socket, sys
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)
for line in sys.stdin:
    sock.sendto(bytes.fromhex(line), (0, 2))
"""


def _seqnums(got: list[Received]) -> list[int]:
    return [int(e.properties["SEQNUM"]) for e in got]


@pytest.mark.root
def test_libudev_tag_filter_passes_only_tagged_events(netns: NetNS, tmp_path: Path) -> None:
    """pyudev filtered by tag (as nobody), root sending our datagrams to group 2: those whose
    TAGS hold the tag pass libudev's filter, the others do not."""
    client = pyudev_monitor(netns, tmp_path, "tag:seat")
    relay = subprocess.Popen(
        [*netns.exec_prefix(), SYSTEM_PYTHON, "-c", _RELAY], stdin=subprocess.PIPE, text=True
    )
    count = iter(range(1, 1000))

    def send(tags: str | None) -> int:
        seqnum = next(count)
        props = {k: DISK[k] for k in ("ACTION", "DEVPATH", "SUBSYSTEM")} | {"SEQNUM": str(seqnum)}
        if tags is not None:
            props["TAGS"] = tags
        assert relay.stdin is not None
        relay.stdin.write(libudev_datagram(from_properties(props), seqnum).hex() + "\n")
        relay.stdin.flush()
        return seqnum

    try:
        for _ in range(40):  # a tagged probe until one arrives: then the monitor listens
            send(":seat:")
            with contextlib.suppress(TimeoutError):
                client.wait_for(bool, 0.5)
                break
        kept = [send(":uaccess:seat:")]
        dropped = [send(tags) for tags in (":other:", None, "", ":seats:")]
        kept.append(send(":x:seat:"))
        client.wait_for(lambda got: kept[-1] in _seqnums(got))
    finally:
        assert relay.stdin is not None
        relay.stdin.close()
        relay.wait(60)
        client.close()
    got = _seqnums(client.events())
    assert got[-2:] == kept
    assert not set(dropped) & set(got)
    assert all(e.initialized for e in client.events())


def test_targets() -> None:
    assert parse_target("libudev") == Target("libudev", (2,))
    assert parse_target("kernel:4") == Target("kernel", (3,))
    assert parse_target("kernel:0x6") == Target("kernel", (2, 3))
    assert parse_target("kernel:2147483648") == Target("kernel", (32,))
    assert str(parse_target("kernel:0x6")) == "kernel:6"
    assert parse_targets(["kernel:4", "kernel:4", "libudev"]) == (
        Target("kernel", (3,)),
        Target("libudev", (2,)),
    )


@pytest.mark.parametrize(
    ("specs", "why"),
    [
        (["kernel:1"], "group 1"),
        (["kernel:5"], "group 1"),
        (["kernel:0"], "at least one"),
        (["kernel:4294967296"], "at least one"),
        (["kernel:"], "bitmask"),
        (["kernel:four"], "bitmask"),
        (["kernel:-4"], "bitmask"),
        (["kernel:0xg"], "bitmask"),
        (["kernel"], "kernel:GROUPS"),
        (["udev"], "kernel:GROUPS"),
        (["libudev", "kernel:2"], "group 2"),
        (["kernel:6", "kernel:4"], "group 3"),
    ],
)
def test_bad_targets_name_the_key(specs: list[str], why: str) -> None:
    with pytest.raises(ConfigError, match=why) as caught:
        parse_targets(specs)
    assert caught.value.key == "rebroadcast"


def test_config_key_and_option() -> None:
    cfg = config.from_mapping({"rebroadcast": ["libudev", "kernel:4"]})
    assert cfg.rebroadcast == (Target("libudev", (2,)), Target("kernel", (3,)))
    assert config.Config().rebroadcast == ()
    with pytest.raises(ConfigError, match="list of strings"):
        config.from_mapping({"rebroadcast": "libudev"})
    args = build_parser().parse_args(
        ["run", "--rebroadcast", "libudev", "--rebroadcast", "kernel:4"]
    )
    overrides = _overrides(args)
    assert overrides["rebroadcast"] == ["libudev", "kernel:4"]
    assert config.from_mapping(overrides, cfg).rebroadcast == cfg.rebroadcast
    assert "rebroadcast" not in _overrides(build_parser().parse_args(["run"]))


def test_udevd_control_socket_is_refused_a_plain_file_is_not(tmp_path: Path) -> None:
    control = tmp_path / "control"
    refuse_beside_udevd(control)  # absent: no udevd
    control.touch()
    refuse_beside_udevd(control)  # a plain file: the workaround for a plain /dev
    control.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.bind(str(control))
        with pytest.raises(ConfigError, match="udevd runs here"):
            refuse_beside_udevd(control)


def _in_netns(ns: NetNS, make: Callable[[], T]) -> T:
    """``make()`` run by a thread that entered ``ns``: sockets it opens belong to ``ns``."""
    found: list[T | BaseException] = []

    def enter() -> None:
        try:
            _setns(ns.path)
            found.append(make())
        except BaseException as exc:  # handed to the caller below
            found.append(exc)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    if isinstance(found[0], BaseException):
        raise found[0]
    return found[0]


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)
    sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
    sock.bind((0, 0x4))
    return sock


@pytest.mark.root
async def test_a_long_backlog_goes_out_in_turns_in_order(netns: NetNS, tmp_path: Path) -> None:
    """No program: the handled cursor jumps over thousands of events at once; they go out a
    turn at a time (the loop runs in between), all of them, in order, after what was handled
    before the sink started."""
    journal = Journal(tmp_path / "journal.sqlite")
    props = {k: DISK[k] for k in ("ACTION", "DEVPATH", "SUBSYSTEM")}
    journal.append([from_properties({**props, "SEQNUM": "1"})])
    journal.skip_handling(1)  # handled before: not sent
    count = 3 * TURN + 7
    journal.append([from_properties({**props, "SEQNUM": str(n)}) for n in range(2, count + 2)])
    listener = _in_netns(netns, _listener)
    stats: Counter[str] = Counter()
    sink = _in_netns(netns, lambda: Rebroadcaster(parse_targets(["kernel:4"]), journal, stats))
    try:
        journal.skip_handling(journal.last)
        sink.advance(journal.handled)
        sent = [sink.sent_through]  # one turn now, the rest a turn per loop iteration
        for _ in range(8):
            await asyncio.sleep(0)
            sent.append(sink.sent_through)
        listener.settimeout(10)
        got = [parse(listener.recv(8192)) for _ in range(count)]
    finally:
        sink.close()
        listener.close()
        journal.close()
    assert sent[:5] == [1 + TURN, 1 + 2 * TURN, 1 + 3 * TURN, count + 1, count + 1]
    assert [int(e[SEQUENCE_PROPERTY]) for e in got] == list(range(2, count + 2))
    assert [e.seqnum for e in got] == list(range(2, count + 2))
    assert stats["rebroadcast"] == count
