"""The sources without a broker: stream framing over real pipes and files, what an inherited
descriptor is, the sd_listen_fds protocol, SEQNUM dedup, the helper's datagram, Trigger options."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast import Variant

from pnpbroker.bus.wire import TriggerRequest, trigger_options
from pnpbroker.errors import ConfigError, MalformedUevent
from pnpbroker.helper import datagram
from pnpbroker.sources import Datagram, Item, check
from pnpbroker.sources.fd import listen_fds, open_fd
from pnpbroker.sources.merge import Merged, RecentSeqnums
from pnpbroker.sources.stream import StreamSource
from pnpbroker.uevent import MAX_UEVENT_SIZE, parse, serialize


def record(seqnum: int, name: str = "x") -> bytes:
    devpath = f"/devices/virtual/net/{name}"
    fields = [f"add@{devpath}", "ACTION=add", f"DEVPATH={devpath}", "SUBSYSTEM=net"]
    return "\0".join([*fields, f"SEQNUM={seqnum}"]).encode() + b"\0\0"


def drain(source: StreamSource) -> list[Item]:
    items: list[Item] = []
    while not source.eof:
        items.extend(source.read_batch())
    return items


def from_file(tmp_path: Path, data: bytes) -> list[Item]:
    path = tmp_path / "stream"
    path.write_bytes(data)
    source = StreamSource.open(str(path))
    try:
        return drain(source)
    finally:
        source.close()


def test_records_round_trip_through_a_file(tmp_path: Path) -> None:
    data = record(1) + record(2, "y")
    items = from_file(tmp_path, data)
    events = [check(item) for item in items if isinstance(item, Datagram)]
    assert [e.seqnum for e in events] == [1, 2]
    assert b"".join(serialize(e) + b"\0" for e in events) == data


def test_malformed_records_carry_their_offsets(tmp_path: Path) -> None:
    bad = b"junk\0\0"
    items = from_file(tmp_path, record(1) + bad + b"\0" + record(2))
    wheres = [item.where.rsplit(" ", 1)[1] for item in items if isinstance(item, Datagram)]
    start2 = len(record(1)) + len(bad)
    assert wheres == [str(0), str(len(record(1))), str(start2), str(start2 + 1)]
    ok, junk, stray, ok2 = (item for item in items if isinstance(item, Datagram))
    with pytest.raises(MalformedUevent):
        check(junk)
    with pytest.raises(MalformedUevent):
        check(stray)
    assert check(ok).seqnum == 1
    assert check(ok2).seqnum == 2


def test_an_oversized_record_is_rejected_and_the_next_one_read(tmp_path: Path) -> None:
    huge = b"add@/x\0" + b"A=" + b"v" * (3 * MAX_UEVENT_SIZE) + b"\0\0"
    items = [i for i in from_file(tmp_path, huge + record(7)) if isinstance(i, Datagram)]
    with pytest.raises(MalformedUevent, match="oversized"):
        check(items[0])
    assert check(items[1]).seqnum == 7


def test_an_unterminated_oversized_record_is_cut_while_it_streams_in() -> None:
    read, write = os.pipe()
    source = StreamSource(os.fdopen(read, "rb", buffering=0), "pipe")
    items: list[Item] = []
    os.write(write, b"add@/x\0A=" + b"v" * (MAX_UEVENT_SIZE + 10))
    items += source.read_batch()
    os.write(write, b"v" * 100 + b"\0\0" + record(7))
    os.close(write)
    items += drain(source)
    source.close()
    datagrams = [i for i in items if isinstance(i, Datagram)]
    assert [d.truncated for d in datagrams] == [True, False]
    assert check(datagrams[1]).seqnum == 7


def test_an_unterminated_tail_is_dropped_at_eof(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    items = from_file(tmp_path, record(1) + record(2)[:-1])
    assert [check(i).seqnum for i in items if isinstance(i, Datagram)] == [1]
    assert f"byte {len(record(1))}: record not ended by an empty field" in caplog.text


def test_a_pipe_fed_in_pieces_gives_whole_records() -> None:
    read, write = os.pipe()
    source = StreamSource(os.fdopen(read, "rb", buffering=0), "pipe")
    data = record(1) + record(2)
    seen: list[Item] = []
    for i in range(0, len(data), 7):
        os.write(write, data[i : i + 7])
        seen.extend(source.read_batch())
    assert source.read_batch() == []  # nothing ready: no block, no eof
    os.close(write)
    seen.extend(drain(source))
    source.close()
    assert [check(i).seqnum for i in seen if isinstance(i, Datagram)] == [1, 2]


@pytest.fixture
def stream_socket() -> Iterator[socket.socket]:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield left
    left.close()
    right.close()


def test_open_fd_says_what_the_descriptor_is(stream_socket: socket.socket) -> None:
    with pytest.raises(ConfigError, match="stream socket \\(AF_UNIX\\), not a datagram socket"):
        open_fd(stream_socket.fileno())
    stream_socket.send(b"")  # the descriptor is still ours and open
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with pytest.raises(ConfigError, match="datagram socket of family AF_UNIX, not AF_NETLINK"):
        open_fd(dgram.fileno())
    dgram.close()
    read, write = os.pipe()
    with pytest.raises(ConfigError, match="a pipe, not a socket"):
        open_fd(read)
    os.close(read)
    os.close(write)
    with pytest.raises(ConfigError, match="not an open descriptor"):
        open_fd(write)


def test_listen_fds_only_for_our_pid_and_always_unset() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}
    assert listen_fds(env) == []
    assert env == {}


_PROBE = """
import os, sys
from pnpbroker.sources.fd import listen_fds
os.dup2(int(sys.argv[1]), 3)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
print(listen_fds(), os.get_inheritable(3), "LISTEN_FDS" in os.environ)
"""


def test_listen_fds_for_our_pid_takes_fd_3_away_from_children() -> None:
    """In a child process: fd 3 here is pytest's own."""
    read, write = os.pipe()
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE, str(read)], pass_fds=(read,),
                             capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    finally:
        os.close(read)
        os.close(write)
    assert out.stdout.split() == ["[3]", "False", "False"]


def test_recent_seqnums_forget_the_oldest() -> None:
    window = RecentSeqnums(size=2)
    assert [window.first_time(n) for n in (1, 2, 1, 3, 1)] == [True, True, False, True, True]


def test_merged_takes_each_seqnum_once_and_only_from_root() -> None:
    pipes = [os.pipe() for _ in range(2)]
    sources = [StreamSource(os.fdopen(r, "rb", buffering=0), f"s{i}") for i, (r, _) in
               enumerate(pipes)]  # fmt: skip
    merged = Merged(*sources)
    os.write(pipes[0][1], record(1) + record(2))
    os.write(pipes[1][1], record(2) + record(3))
    items = merged.read_batch()
    assert sorted(check(i).seqnum for i in items if isinstance(i, Datagram)) == [1, 2, 3]
    assert merged.dropped == 1
    forged = Datagram(record(9)[:-1], uid=1000)
    assert merged._fresh([forged, forged]) == [forged, forged]  # never enters the window
    for _, write in pipes:
        os.close(write)
    merged.close()


def test_helper_datagram_is_the_kernel_format_without_helper_only_keys() -> None:
    env = [(b"ACTION", b"add"), (b"DEVPATH", b"/devices/x"), (b"SUBSYSTEM", b"pnpt"),
           (b"SEQNUM", b"5"), (b"HOME", b"/"), (b"PATH", b"/sbin:/bin")]  # fmt: skip
    data = datagram(b"pnpt", env)
    assert data == b"add@/devices/x\0ACTION=add\0DEVPATH=/devices/x\0SUBSYSTEM=pnpt\0SEQNUM=5\0"
    assert parse(data).subsystem == "pnpt"


def test_trigger_options() -> None:
    assert trigger_options({}) == TriggerRequest((), "add")
    opts = {"subsystems": Variant("as", ["net", "block"]), "action": Variant("s", "change")}
    assert trigger_options(opts) == TriggerRequest(("net", "block"), "change")
    uuid = "0f3c1f0e-2a4b-4c5d-8e6f-708192a3b4c5"
    opts = {"devices": Variant("as", ["/devices/virtual/net/lo"]), "uuid": Variant("s", uuid)}
    assert trigger_options(opts) == TriggerRequest((), "add", ("/devices/virtual/net/lo",), uuid)
    with pytest.raises(ValueError, match="unknown option"):
        trigger_options({"bogus": Variant("s", "")})
    for bad in ("/sys/devices/x", "/devices/../../etc", "devices/x"):
        with pytest.raises(ValueError, match="not a devpath"):
            trigger_options({"devices": Variant("as", [bad])})
    with pytest.raises(ValueError, match="subsystems must be as"):
        trigger_options({"subsystems": Variant("s", "net")})
