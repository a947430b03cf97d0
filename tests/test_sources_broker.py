"""Every way in, with the real broker: an inherited netlink socket, a recorded stream, the
kernel-helper bridge, coldplug with --settle, the Trigger method, and resync after an overflow.

The broker is a real subprocess on a private bus; events are real kernel uevents of ifb links
in the test's own network namespace.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest
from support import REPO_ROOT
from support.broker import ActivatedBroker, BrokerProcess
from support.bus import SystemBus
from support.netns import NetNS, netns_uevent_socket
from support.signals import Signal, Signals, net_event

pytestmark = pytest.mark.root

HELPER = str(Path(sys.executable).with_name("pnpbroker-helper"))
SO_RCVBUFFORCE = 33


def links(ns: NetNS, count: int) -> set[str]:
    return set(ns.burst(count, prefix=f"s{secrets.token_hex(2)}"))


def test_inherited_socket_via_listen_fds_carries_the_namespace_events(
    system_bus: SystemBus, signals: Signals, netns: NetNS, tmp_path: Path
) -> None:
    """The broker runs in the host namespace: the ifb events can only come through fd 3."""
    sock = netns_uevent_socket(netns.name)
    broker = ActivatedBroker(system_bus, tmp_path / "state", fd=sock.fileno())
    try:
        _start_activated(broker, sock.fileno())
        sock.close()  # the broker holds the only copy now
        names = links(netns, 5)
        found = signals.wait(net_event("add", names), 5)
        assert {body[4]["INTERFACE"] for _, body in found} == names
        assert "using inherited uevent socket on fd 3" in broker.log()
        assert broker.stop() == 0
    finally:
        broker.close()


def _start_activated(broker: BrokerProcess, fd: int, **kwargs: object) -> BrokerProcess:
    return broker.start(pass_fds=(fd,), **kwargs)  # type: ignore[arg-type]


def test_a_stream_socket_on_fd_3_is_a_configuration_error(
    system_bus: SystemBus, tmp_path: Path
) -> None:
    """Exit 2, like a bad config: the unit (or caller) is wrong and no restart can fix it."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    broker = ActivatedBroker(system_bus, tmp_path / "state", fd=left.fileno())
    try:
        _start_activated(broker, left.fileno(), wait_ready=False)
        assert broker.wait(60) == 2, broker.log()
        assert "fd 3 is a stream socket (AF_UNIX), not a datagram socket" in broker.log()
    finally:
        broker.close()
        left.close()
        right.close()


def test_source_fd_n_names_what_it_got(system_bus: SystemBus, tmp_path: Path) -> None:
    read, write = os.pipe()
    args = ["--no-program", "--source", f"fd:{read}"]
    broker = BrokerProcess(system_bus, tmp_path / "state", args)
    try:
        broker.start(wait_ready=False, pass_fds=(read,))
        assert broker.wait(60) == 2, broker.log()
        assert f"fd {read} is a pipe, not a socket" in broker.log()
    finally:
        broker.close()
        os.close(read)
        os.close(write)


def _record(system_bus: SystemBus, signals: Signals, netns: NetNS, path: Path) -> set[str]:
    """Run a broker with --output into ``path`` while 4 ifb links come; the links' names."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    args = ["--no-program", "--output", f"fd:{fd}"]
    broker = BrokerProcess(system_bus, path.parent / "rec-state", args, netns=netns)
    try:
        broker.start(pass_fds=(fd,))
        names = links(netns, 4)
        signals.wait(net_event("add", names), 4)
        assert broker.stop() == 0, broker.log()
    finally:
        broker.close()
        os.close(fd)
    return names


def test_output_then_source_replays_the_run(
    system_bus: SystemBus, signals: Signals, netns: NetNS, tmp_path: Path
) -> None:
    recording = tmp_path / "run.uevents"
    names = _record(system_bus, signals, netns, recording)
    recorded = [body for body in signals.events()]
    signals.seen.clear()
    args = ["--no-program", "--source", str(recording)]
    replay = BrokerProcess(system_bus, tmp_path / "replay-state", args)
    try:
        replay.start()
        assert replay.wait(60) == 0, replay.log()
    finally:
        replay.close()
    replayed = signals.events()
    # Same events (properties) in the same order; sequences are the replay journal's own.
    assert [b[4] for b in replayed] == [b[4] for b in recorded]
    assert [b[0] for b in replayed] == list(range(1, len(recorded) + 1))
    assert names <= {b[4].get("INTERFACE") for b in replayed}


def _kernel_record(seqnum: int, name: str) -> bytes:
    devpath = f"/devices/virtual/net/{name}"
    fields = [f"add@{devpath}", "ACTION=add", f"DEVPATH={devpath}", "SUBSYSTEM=net"]
    fields += [f"INTERFACE={name}", f"SEQNUM={seqnum}"]
    return "\0".join(fields).encode() + b"\0\0"


def test_stdin_stream_skips_malformed_records_with_their_offsets(
    system_bus: SystemBus, signals: Signals, tmp_path: Path
) -> None:
    good1, good2 = _kernel_record(1, "rec0"), _kernel_record(2, "rec1")
    bad1 = b"no header here\0\0"
    bad2 = b"add@/devices/x\0ACTION=add\0DEVPATH=/devices/x\0SUBSYSTEM=net\0\0"  # no SEQNUM
    stream = good1 + bad1 + bad2 + good2
    path = tmp_path / "in.uevents"
    path.write_bytes(stream)
    args = ["--no-program", "--source", "stdin"]
    broker = BrokerProcess(system_bus, tmp_path / "state", args)
    try:
        with path.open("rb") as stdin:
            broker.start(stdin=stdin)
        assert broker.wait(60) == 0, broker.log()
    finally:
        broker.close()
    assert [b[4]["INTERFACE"] for b in signals.events()] == ["rec0", "rec1"]
    log = broker.log()
    assert f"at stdin byte {len(good1)} " in log
    assert f"at stdin byte {len(good1) + len(bad1)} " in log
    assert "missing SEQNUM" in log


def _helper(env: dict[str, str], socket_path: Path, subsystem: str, user: str = "") -> int:
    """Run pnpbroker-helper exactly as the kernel does: argv[1] and the event's environment."""
    kernel_env = {**env, "HOME": "/", "PATH": "/sbin:/bin:/usr/sbin:/usr/bin"}
    kernel_env["PNPBROKER_HELPER_SOCKET"] = str(socket_path)
    drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if user else []
    argv = [*drop, HELPER, subsystem]
    return subprocess.run(argv, env=kernel_env, timeout=60, check=False).returncode


def _fake_event(name: str) -> dict[str, str]:
    """An event for a device that does not exist, with a SEQNUM no kernel reaches here."""
    seqnum = str(10**15 + secrets.randbelow(10**9))
    devpath = f"/devices/virtual/pnpt/{name}"
    return {"ACTION": "add", "DEVPATH": devpath, "SUBSYSTEM": "pnpt", "SEQNUM": seqnum}


def test_helper_as_root_is_published_and_as_nobody_refused(
    system_bus: SystemBus, signals: Signals, netns: NetNS, tmp_path: Path
) -> None:
    public = Path(tempfile.mkdtemp(prefix="pnpt-helper-"))  # pytest's tmp is root-only
    public.chmod(0o755)
    sock_path = public / "run" / "helper.sock"
    args = ["--no-program", "--helper-socket", str(sock_path)]
    broker = BrokerProcess(system_bus, tmp_path / "state", args, netns=netns)
    try:
        broker.start()
        assert (sock_path.stat().st_mode & 0o777) == 0o600
        refused = _fake_event("nobody1")
        assert _helper(refused, sock_path, "pnpt", user="nobody") == 111  # cannot even connect
        sock_path.chmod(0o666)  # let nobody reach it: now only the credential check stands
        sneaked = _fake_event("nobody2")
        assert _helper(sneaked, sock_path, "pnpt", user="nobody") == 0
        accepted = _fake_event("root")
        assert _helper(accepted, sock_path, "pnpt") == 0
        [(_, body)] = signals.wait(lambda s: s[0] == "Event" and s[1][2] == "pnpt", 1)
        assert body[4] == accepted  # exactly the event's keys: HOME, PATH, the socket dropped
        assert broker.stop() == 0
    finally:
        broker.close()
        shutil.rmtree(public)
    assert [b[3] for b in signals.events() if b[2] == "pnpt"] == [accepted["DEVPATH"]]
    assert "rejected forged datagram at helper socket" in broker.log()
    assert "sender uid 65534 is not root" in broker.log()


def test_same_seqnum_from_netlink_and_helper_is_handled_once(
    system_bus: SystemBus, signals: Signals, netns: NetNS, tmp_path: Path
) -> None:
    sock_path = tmp_path / "helper.sock"
    args = ["--no-program", "--helper-socket", str(sock_path)]
    broker = BrokerProcess(system_bus, tmp_path / "state", args, netns=netns)
    watch = netns_uevent_socket(netns.name)
    try:
        broker.start()
        [first] = links(netns, 1)
        [(_, body)] = signals.wait(net_event("add", {first}), 1)
        # The kernel's helper would have been called with these same keys.
        assert _helper(dict(body[4]), sock_path, "net") == 0
        [second] = links(netns, 1)  # a later event: once it is out, the copy was read too
        signals.wait(net_event("add", {second}), 1)
        assert broker.stop() == 0
    finally:
        broker.close()
        watch.close()
    assert len([s for s in signals.seen if net_event("add", {first})(s)]) == 1


def test_trigger_settle_publishes_exactly_the_namespace_net_devices(
    system_bus: SystemBus, signals: Signals, netns: NetNS, tmp_path: Path
) -> None:
    broker = BrokerProcess(system_bus, tmp_path / "state", netns=netns)
    try:
        broker.start()
        names = links(netns, 6)
        signals.wait(net_event("add", names), 6)
        uuid = str(uuidlib.uuid4())
        argv = [*netns.exec_prefix(), sys.executable, "-m", "pnpbroker", "trigger"]
        argv += ["--subsystem", "net", "--settle", "--timeout", "60", "--uuid", uuid]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        assert (done.returncode, done.stderr) == (0, "")
        tagged = signals.wait(lambda s: s[0] == "Event" and s[1][4].get("SYNTH_UUID") == uuid, 7)
        assert broker.stop() == 0
    finally:
        broker.close()
    assert sorted(b[4]["INTERFACE"] for _, b in tagged) == sorted([*names, "lo"])
    assert {b[1] for _, b in tagged} == {"add"}
    assert len([b for b in signals.events() if b[4].get("SYNTH_UUID") == uuid]) == 7


def test_trigger_settle_times_out_with_a_clear_message(system_bus: SystemBus, netns: NetNS) -> None:
    """No broker on the bus: nothing is ever published, so settling must give up, exit 1."""
    argv = [*netns.exec_prefix(), sys.executable, "-m", "pnpbroker", "trigger"]
    argv += ["--subsystem", "net", "--settle", "--timeout", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert "timed out after 1 s: the broker published 0 of 1 events" in done.stderr


def test_trigger_method_returns_uuid_and_count(
    system_bus: SystemBus, signals: Signals, netns: NetNS, tmp_path: Path
) -> None:
    broker = BrokerProcess(system_bus, tmp_path / "state", netns=netns)
    try:
        broker.start()
        names = links(netns, 3)
        call = ["busctl", f"--address={system_bus.address}", "--json=short", "call"]
        call += ["org.pnp.Broker", "/org/pnp/Broker", "org.pnp.Broker1", "Trigger"]
        call += ["a{sv}", "2", "subsystems", "as", "1", "net", "action", "s", "add"]
        out = subprocess.run(call, capture_output=True, text=True, timeout=60, check=True)
        uuid, count = json.loads(out.stdout)["data"]
        assert count == 4
        signals.wait(net_event("add", {*names, "lo"}, uuid), 4)
        bad = subprocess.run([*call[:-3], "action", "s", "explode"], capture_output=True,
                             text=True, timeout=60, check=False)  # fmt: skip
        assert "unknown action 'explode'" in bad.stderr  # busctl shows the message, not the name
        assert broker.stop() == 0
    finally:
        broker.close()


def test_overflow_resyncs_every_device_under_the_lost_signal_uuid(
    system_bus: SystemBus, signals: Signals, netns: NetNS, tmp_path: Path
) -> None:
    """A stopped broker on the smallest receive buffer overflows for sure; the buffer is made
    big again before it resumes, so the resync itself cannot overflow."""
    sock = netns_uevent_socket(netns.name, rcvbuf=1)  # the kernel rounds up to its minimum
    broker = ActivatedBroker(system_bus, tmp_path / "state", fd=sock.fileno(), netns=netns)
    try:
        _start_activated(broker, sock.fileno())
        broker.send_signal(signal.SIGSTOP)
        names = links(netns, 40)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        broker.send_signal(signal.SIGCONT)
        [(_, lost)] = signals.wait(lambda s: s[0] == "EventsLost", 1)
        uuid = lost[1]
        assert str(uuidlib.UUID(uuid)) == uuid
        found = signals.wait(net_event("add", names, uuid), len(names))
        assert {b[4]["INTERFACE"] for _, b in found} == names
        assert "KERNEL DROPPED UEVENTS" in broker.log()
        assert broker.stop() == 0
    finally:
        broker.close()
        sock.close()


def test_resyncs_into_a_small_buffer_come_to_an_end(
    system_bus: SystemBus, signals: Signals, netns: NetNS, tmp_path: Path
) -> None:
    """The resync re-announces every device into the same small buffer a burst overflowed. It
    waits for the reader as it writes, so it overflows nothing itself: a resync arrives whole
    and no loss follows it. Unpaced, each resync overflowed the buffer again, and the resync for
    that loss too, without end. (Other devices' events leak in from the host and may overflow
    this buffer too; each such loss has its resync, so the test waits for one with no loss.)"""
    sock = netns_uevent_socket(netns.name, rcvbuf=1)  # the kernel rounds up to its minimum
    args = ["--no-program"]
    broker = ActivatedBroker(system_bus, tmp_path / "state", args, fd=sock.fileno(), netns=netns)
    try:
        _start_activated(broker, sock.fileno())
        broker.send_signal(signal.SIGSTOP)
        names = links(netns, 100)  # 300 events: more than the buffer holds
        broker.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 300  # a hang, not a threshold
        while True:
            uuid = _whole_resync(signals, broker, names, deadline - time.monotonic())
            losses = _every_loss_announced(system_bus, signals)
            if losses[-1][1] == uuid:
                break  # the last loss is the one this resync answered: it caused none
        assert broker.stop() == 0
    finally:
        broker.close()
        sock.close()


def _whole_resync(signals: Signals, broker: BrokerProcess, names: set[str], left: float) -> str:
    """The UUID of the last loss, once its resync is over and re-announced all of ``names``."""

    def whole(seen: list[Signal]) -> bool:
        at = max(i for i, (member, _) in enumerate(seen) if member == "EventsLost")
        uuid = seen[at][1][1]
        found = {s[1][4]["INTERFACE"] for s in seen[at:] if net_event("add", names, uuid)(s)}
        return found == names and f"resync {uuid}: asked the kernel" in broker.log()

    signals.wait(lambda s: s[0] == "EventsLost", 1, timeout=max(left, 0))
    seen = signals.wait_until(whole, timeout=max(left, 0))
    return str([body for member, body in seen if member == "EventsLost"][-1][1])


def _every_loss_announced(system_bus: SystemBus, signals: Signals) -> list[list[Any]]:
    """The EventsLost signals once every overflow counted so far has been announced."""
    call = ["busctl", f"--address={system_bus.address}", "--json=short", "get-property"]
    call += ["org.pnp.Broker", "/org/pnp/Broker", "org.pnp.Broker1", "Statistics"]
    got = subprocess.run(call, capture_output=True, text=True, timeout=60, check=True)
    overflows = json.loads(got.stdout)["data"]["overflows"]
    signals.wait(lambda s: s[0] == "EventsLost", overflows)
    return [body for member, body in list(signals.seen) if member == "EventsLost"]


def test_socket_unit_is_shipped() -> None:
    """systemd-analyze verify runs on every installed unit in test_install; make sure ours is."""
    text = (REPO_ROOT / "systemd" / "pnpbroker.socket").read_text()
    for line in ("ListenNetlink=kobject-uevent 1", "ReceiveBuffer=128M", "PassCredentials=yes"):
        assert line in text.splitlines()


def test_a_real_event_giving_a_key_twice_is_taken_counted_and_reported(
    system_bus: SystemBus, signals: Signals, netns: NetNS, tmp_path: Path
) -> None:
    """``add UUID K=V K=W`` written to a uevent file: the kernel sends SYNTH_ARG_K twice."""
    broker = BrokerProcess(system_bus, tmp_path / "state", netns=netns)
    try:
        broker.start()
        names = links(netns, 1)
        signals.wait(net_event("add", names), 1)
        (name,) = names
        uuid = str(uuidlib.uuid4())
        write = f"echo 'add {uuid} K=first K=second' > /sys/class/net/{name}/uevent"
        subprocess.run([*netns.exec_prefix(), "sh", "-c", write], check=True, timeout=60)
        [(_, body)] = signals.wait(net_event("add", names, uuid), 1)
        assert body[4]["SYNTH_ARG_K"] == "first"
        call = ["busctl", f"--address={system_bus.address}", "--json=short", "get-property"]
        call += ["org.pnp.Broker", "/org/pnp/Broker", "org.pnp.Broker1", "Statistics"]
        got = subprocess.run(call, capture_output=True, text=True, timeout=60, check=True)
        stats = json.loads(got.stdout)["data"]
        assert (stats["duplicate_keys"], stats["rejected_malformed"]) == (1, 0)
        assert broker.stop() == 0
    finally:
        broker.close()
    assert "gives a key twice (1 so far): kept the first value, not SYNTH_ARG_K='second'" in (
        broker.log()
    )


def test_a_stalled_output_reader_stalls_nothing_else(
    system_bus: SystemBus, signals: Signals, netns: NetNS, tmp_path: Path
) -> None:
    """--output into a pipe nobody reads: the pipe fills after a few hundred events, yet every
    event of a 1,000-link burst is published and nothing overflows; once the reader reads, it
    gets every event, in order."""
    read, write = os.pipe()
    args = ["--no-program", "--output", f"fd:{write}"]
    broker = BrokerProcess(system_bus, tmp_path / "state", args, netns=netns)
    try:
        broker.start(pass_fds=(write,))
        os.close(write)
        names = links(netns, 1000)
        signals.wait(net_event("add", names), len(names), timeout=120)
        published = [b[0] for b in signals.events()]
        call = ["busctl", f"--address={system_bus.address}", "--json=short", "get-property"]
        call += ["org.pnp.Broker", "/org/pnp/Broker", "org.pnp.Broker1", "Statistics"]
        got = subprocess.run(call, capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(got.stdout)["data"]["overflows"] == 0
        stream = _read_records(read, len(published))
        assert broker.stop() == 0
    finally:
        broker.close()
        os.close(read)
    interfaces = [record.get("INTERFACE") for record in stream]
    assert names <= set(interfaces)
    seqnums = [int(record["SEQNUM"]) for record in stream]
    assert seqnums == sorted(seqnums)
    log = broker.log()
    assert "its reader is not keeping up" in log
    assert "its reader caught up" in log


TERMINATOR = b"\0\0"


def _read_records(fd: int, count: int, timeout: float = 120.0) -> list[dict[str, str]]:
    """``count`` NUL-framed records from ``fd``, each as its KEY=VALUE fields."""
    deadline = time.monotonic() + timeout
    buffer = b""
    while buffer.count(TERMINATOR) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"{buffer.count(TERMINATOR)} of {count} records"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            buffer += os.read(fd, 1 << 16)
    records = buffer.split(TERMINATOR)[:count]
    fields = ([f for f in r.decode().split("\0")[1:] if "=" in f] for r in records)
    return [dict(f.split("=", 1) for f in record) for record in fields]
