"""``--rebroadcast``: real libudev clients see each handled event once, in order, after its program.

The broker runs in the test's network namespace with ``-p`` a program that marks each event's
SEQNUM in a directory as its last act; the clients run there too (netlink multicast stays in
its namespace) and check the mark the moment an event arrives. Host events leak into the
namespace, so the test's own links are compared with the broker's journal (GetEvents), and the
order of everything a client got with the broker's sequence (``PNP_SEQUENCE``).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.broker import BrokerProcess
from support.bus import SystemBus
from support.collector import connect, disconnect
from support.coreclient import call, statistics
from support.netns import NetNS
from support.udev import (
    AS_NOBODY,
    Client,
    Received,
    marking_program,
    pyudev_monitor,
    subscribe,
    udevadm_monitor,
    zero_standin,
)
from support.users import python_as_nobody

LINKS = ["r0", "r1", "r2", "r3"]
TARGETS = ("--rebroadcast", "libudev", "--rebroadcast", "kernel:4")
Key = tuple[int, int, str, str]


@pytest.fixture
def marks() -> Iterator[Path]:
    """A directory the program writes and `nobody` can read (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="pnpt-marks-"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@pytest.fixture
def broker(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path, marks: Path
) -> Iterator[BrokerProcess]:
    program = marking_program(tmp_path, marks)
    args = ["-p", str(program), *TARGETS]
    with BrokerProcess(system_bus, tmp_path / "state", args, netns=netns) as running:
        yield running
        # Stopped, not killed: a killed broker leaves its running program behind, to write
        # a mark after the marks directory was emptied. SIGTERM waits for that program.
        assert running.stop() == 0, running.log()


def ours(subsystems: tuple[str, ...]) -> Callable[[str, str], bool]:
    """The test's links' events (host events leak into the namespace), in ``subsystems``."""
    paths = {f"/devices/virtual/net/{n}" for n in LINKS}
    paths |= {f"{p}/queues/{q}-0" for p in paths for q in ("rx", "tx")}

    def check(devpath: str, subsystem: str) -> bool:
        return devpath in paths and subsystem in subsystems

    return check


async def _journal(address: str) -> list[tuple[Key, str]]:
    bus = await connect(address)
    rows: list[list[object]] = []
    try:
        while page := (await call(bus, "GetEvents", "tu", [len(rows), 0]))[0]:
            rows += page
    finally:
        await disconnect(bus)
    return [
        ((int(seq), int(props["SEQNUM"]), str(action), str(devpath)), str(subsystem))  # type: ignore[call-overload,index]
        for seq, action, subsystem, devpath, props, _handler in rows
    ]


def journal(bus: SystemBus) -> list[tuple[Key, str]]:
    """(key, subsystem) of every event the broker handled, in its order."""
    return asyncio.run(_journal(bus.address))


def exercise(ns: NetNS, client: Client, wanted: Callable[[str, str], bool], count: int) -> None:
    """Make the test's events, then a sentinel link: once the client has the sentinel, any
    repeat of an earlier event would have come before it."""
    subscribe(ns, client)
    ns.add_ifbs(LINKS)
    ns.del_ifbs(LINKS)
    ns.add_ifbs(["sentinel"])
    client.wait_for(
        lambda got: (
            sum(wanted(e.properties["DEVPATH"], e.properties["SUBSYSTEM"]) for e in got) >= count
            and any(e.properties.get("INTERFACE") == "sentinel" for e in got)
        )
    )


def check_received(
    bus: SystemBus, got: list[Received], wanted: Callable[[str, str], bool]
) -> list[Received]:
    """Every wanted event exactly once, in the broker's order, each after its program."""
    expected = [key for key, subsystem in journal(bus) if wanted(key[3], subsystem)]
    mine = [e for e in got if wanted(e.properties["DEVPATH"], e.properties["SUBSYSTEM"])]
    assert [e.key for e in mine] == expected
    assert all(e.marked for e in mine), [e.key for e in mine if not e.marked]
    sequences = [e.key[0] for e in got]
    assert sequences == sorted(set(sequences)), "out of order or repeated"
    return mine


@pytest.mark.root
def test_udevadm_monitor_udev(
    broker: BrokerProcess, system_bus: SystemBus, netns: NetNS, marks: Path
) -> None:
    """``udevadm monitor --udev --property`` (Debian's) shows every event, as udevd's."""
    wanted = ours(("net", "queues"))
    client = udevadm_monitor(netns, marks)
    try:
        exercise(netns, client, wanted, 6 * len(LINKS))
    finally:
        client.close()
    mine = check_received(system_bus, client.events(), wanted)
    assert len(mine) == 6 * len(LINKS)
    first = mine[0].properties
    assert first["INTERFACE"] == "r0"
    assert {"ACTION", "DEVPATH", "SUBSYSTEM", "SEQNUM", "PNP_SEQUENCE", "IFINDEX"} <= set(first)


@pytest.mark.root
def test_pyudev_udev_monitor_with_subsystem_filter(
    broker: BrokerProcess, system_bus: SystemBus, netns: NetNS, marks: Path
) -> None:
    """pyudev (libudev1) as nobody, filtered on ``net``: its kernel socket filter matches our
    subsystem hash (else nothing would pass), and every device is initialized."""
    wanted = ours(("net",))
    client = pyudev_monitor(netns, marks, "subsystem:net")
    try:
        exercise(netns, client, wanted, 2 * len(LINKS))
    finally:
        client.close()
    got = client.events()
    mine = check_received(system_bus, got, wanted)
    assert len(mine) == 2 * len(LINKS)
    assert {e.properties["SUBSYSTEM"] for e in got} == {"net"}
    assert all(e.initialized for e in got)


@pytest.mark.root
def test_libudev_zero_standin_on_kernel_4(
    broker: BrokerProcess, system_bus: SystemBus, netns: NetNS, marks: Path
) -> None:
    """The kernel format on mask 4, read as libudev-zero reads it, as nobody."""
    wanted = ours(("net", "queues"))
    client = zero_standin(netns, marks)
    try:
        exercise(netns, client, wanted, 6 * len(LINKS))
    finally:
        client.close()
    mine = check_received(system_bus, client.events(), wanted)
    assert len(mine) == 6 * len(LINKS)
    assert mine[0].properties["SYSPATH"] == "/sys/devices/virtual/net/r0"


@pytest.mark.root
def test_broker_never_reads_back_what_it_sends(
    broker: BrokerProcess, system_bus: SystemBus, netns: NetNS, marks: Path
) -> None:
    """Its source is group 1 only: nothing it re-broadcasts comes back as forged or received;
    each handled event went out twice (libudev, kernel:4)."""
    client = zero_standin(netns, marks)
    try:
        exercise(netns, client, ours(("net", "queues")), 6 * len(LINKS))
    finally:
        client.close()

    async def stats() -> dict[str, int]:
        bus = await connect(system_bus.address)
        try:
            return await statistics(bus)
        finally:
            await disconnect(bus)

    numbers = asyncio.run(stats())
    assert numbers["rejected_forged"] == 0
    assert numbers["rebroadcast_failed"] == 0
    assert numbers["rebroadcast"] == 2 * numbers["handled"]


@pytest.mark.root
def test_no_program_mode_rebroadcasts_every_event_in_order(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path, marks: Path
) -> None:
    """With no program the backlog is marked handled a page at a time; each event still goes
    out once, in order."""
    wanted = ours(("net", "queues"))
    args = ["--no-program", "--rebroadcast", "kernel:4"]
    with BrokerProcess(system_bus, tmp_path / "state", args, netns=netns):
        client = zero_standin(netns, marks)
        try:
            exercise(netns, client, wanted, 6 * len(LINKS))
        finally:
            client.close()
        got = client.events()
        expected = [key for key, subsystem in journal(system_bus) if wanted(key[3], subsystem)]
    assert [e.key for e in got if wanted(e.properties["DEVPATH"], e.properties["SUBSYSTEM"])] == (
        expected
    )
    sequences = [e.key[0] for e in got]
    assert sequences == sorted(set(sequences))


@pytest.mark.root
def test_reload_turns_rebroadcast_on(
    system_bus: SystemBus, netns: NetNS, tmp_path: Path, marks: Path
) -> None:
    """SIGHUP with ``rebroadcast`` added to the file: from then on events go out."""
    conf = tmp_path / "pnpbroker.toml"
    conf.write_text('hotplug_program = ""\n')
    args = ["-c", str(conf)]
    with BrokerProcess(system_bus, tmp_path / "state", args, netns=netns) as broker:
        client = zero_standin(netns, marks)
        try:
            with pytest.raises(TimeoutError):
                subscribe(netns, client, tries=2)
            conf.write_text('hotplug_program = ""\nrebroadcast = ["kernel:4"]\n')
            broker.send_signal(signal.SIGHUP)
            broker.wait_for_state("READY=1")
            subscribe(netns, client)
        finally:
            client.close()
    assert "re-broadcasting handled events to kernel:4" in broker.log()


_SEND_AS = """
import socket, sys
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)
try:
    sock.sendto(b"libudev\\0", (0, 2))
except PermissionError:
    print("EPERM")
"""


@pytest.mark.root
def test_only_privileged_senders_reach_udev_monitors(netns: NetNS) -> None:
    """What libudev relies on besides the uid check: the kernel lets only CAP_NET_ADMIN send to
    a NETLINK_KOBJECT_UEVENT multicast group (no NL_CFG_F_NONROOT_SEND)."""
    argv = [*netns.exec_prefix(), *AS_NOBODY, "/usr/bin/python3", "-c", _SEND_AS]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "EPERM"


_OPEN_AS_NOBODY = """
import tempfile
from collections import Counter
from pathlib import Path
from pnpbroker.errors import RebroadcastError
from pnpbroker.journal import Journal
from pnpbroker.rebroadcast import Rebroadcaster, parse_targets
with tempfile.TemporaryDirectory() as tmp:
    journal = Journal(Path(tmp) / "journal.sqlite")
    try:
        Rebroadcaster(parse_targets(["kernel:4"]), journal, Counter())
    except RebroadcastError as exc:
        print(exc)
    journal.close()
"""


@pytest.mark.root
def test_without_cap_net_admin_the_socket_is_refused_clearly() -> None:
    """Connecting to a uevent group needs CAP_NET_ADMIN: refused at start, with the reason
    (the broker exits 111 on it, like any failed system call)."""
    done = python_as_nobody(_OPEN_AS_NOBODY)
    assert done.returncode == 0, done.stderr
    assert "socket for group 3: Operation not permitted" in done.stdout
    assert "needs CAP_NET_ADMIN" in done.stdout


_DEV_AS_TMPFS = """
set -e
mount -t tmpfs -o mode=755 tmpfs /dev
mount -t tmpfs -o mode=755 tmpfs /run
if [ "$1" = control ]; then mkdir /run/udev && : > /run/udev/control; fi
shift
exec "$@"
"""


def _in_plain_dev(netns: NetNS, control: bool, argv: list[str]) -> list[str]:
    """``argv`` in a private mount namespace whose /dev is a plain tmpfs (a busybox system
    without devtmpfs) and whose /run has ``/run/udev/control`` only if ``control``."""
    script = ["sh", "-c", _DEV_AS_TMPFS, "sh", "control" if control else "none"]
    return ["unshare", "--mount", "--propagation", "private", *script, *argv]


@pytest.mark.root
@pytest.mark.parametrize("control", [False, True], ids=["no-control", "control"])
def test_plain_dev_needs_run_udev_control(
    broker: BrokerProcess, netns: NetNS, marks: Path, control: bool
) -> None:
    """libudev (systemd 252) subscribes a "udev" monitor only if /run/udev/control exists or
    /dev is devtmpfs: on a plain /dev it says so and gets nothing (docs/libudev.md)."""
    from support.udev import require_udevadm

    argv = _in_plain_dev(netns, control, [str(require_udevadm()), "monitor", "--udev", "-p"])
    client = Client(netns, argv, marks, udevadm=True, env={"SYSTEMD_LOG_LEVEL": "debug"})
    if control:
        subscribe(netns, client)
        err = client.close()
    else:
        with pytest.raises(TimeoutError):
            subscribe(netns, client, tries=3)
        err = client.close()
        assert client.events() == []
    disabled = "The udev service seems not to be active, disabling the monitor"
    assert (disabled in err) != control, err


_UDEVD_RUNS = """
set -e
mount -t tmpfs -o mode=755 tmpfs /run
mkdir /run/udev
/usr/bin/python3 -c 'import socket as s; s.socket(s.AF_UNIX).bind("/run/udev/control")'
exec "$@"
"""


@pytest.mark.root
def test_refuses_libudev_where_udevd_runs(tmp_path: Path) -> None:
    """With udevd's control socket at /run/udev/control (a private /run here), ``libudev`` is a
    configuration error (exit 2), saying why; ``kernel:4`` is not affected."""
    broker = [sys.executable, "-m", "pnpbroker", "run", "--state-dir", str(tmp_path / "s")]
    broker += ["--no-program", "--source", "stdin", "--bus-address", "unix:path=/nonexistent"]
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _UDEVD_RUNS, "sh"]
    refused = subprocess.run(
        [*wrap, *broker, "--rebroadcast", "libudev"],
        capture_output=True,
        text=True,
        timeout=60,
        input="",
    )
    assert refused.returncode == 2, refused.stderr
    assert "/run/udev/control is a socket" in refused.stderr
    fine = subprocess.run(
        [*wrap, *broker, "--rebroadcast", "kernel:4"],
        capture_output=True,
        text=True,
        timeout=60,
        input="",  # a pipe at its end: the broker finishes at once
    )
    assert fine.returncode == 0, fine.stderr


class _BesideUdevd(BrokerProcess):
    """The broker in a private mount namespace where udevd's control socket exists."""

    def argv(self) -> list[str]:
        wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _UDEVD_RUNS, "sh"]
        return [*wrap, *super().argv()]


@pytest.mark.root
def test_reload_to_libudev_where_udevd_runs_keeps_the_running_config(
    system_bus: SystemBus, tmp_path: Path
) -> None:
    """SIGHUP with ``libudev`` beside udevd: refused, logged, the broker runs on (and says
    READY again); a later reload to ``kernel:4`` takes effect."""
    conf = tmp_path / "pnpbroker.toml"
    conf.write_text('hotplug_program = ""\n')
    broker = _BesideUdevd(system_bus, tmp_path / "state", ["-c", str(conf)])
    with broker:
        conf.write_text('hotplug_program = ""\nrebroadcast = ["libudev"]\n')
        broker.send_signal(signal.SIGHUP)
        broker.wait_for_state("READY=1")
        assert "reload failed" in broker.log()
        assert "/run/udev/control is a socket" in broker.log()
        conf.write_text('hotplug_program = ""\nrebroadcast = ["kernel:4"]\n')
        broker.send_signal(signal.SIGHUP)
        broker.wait_for_state("READY=1")
        assert broker.proc is not None
        assert broker.proc.poll() is None
        assert broker.stop() == 0
    assert "re-broadcasting handled events to kernel:4" in broker.log()
