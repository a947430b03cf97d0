"""The Debian package: built by ``scripts/deb``, installed with ``apt install ./pnpbroker_*.deb``
into a fresh Debian 12 machine, and the broker runs under systemd afterwards.

The package is built from this tree once per content (cached beside the root file system,
named by the hash of the files that go into it), and installed by the commands docs/system.md
gives, in a machine of its own (no pip route there).
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO_ROOT
from support.busmonitor import BusMonitor
from support.container import CACHE, Machine, machine

from pnpbroker import __version__
from system.fleettools import FORWARD, assert_system_user, assert_whole, fleet, links_arrived
from system.systemtools import documented_commands, links, token, unit_property

DEB_INSIDE = "/mnt/deb"


def tree_hash() -> str:
    """The hash of every file scripts/deb puts into the build (tracked and new ones)."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, check=True, capture_output=True,
    ).stdout.split(b"\0")  # fmt: skip
    digest = hashlib.sha256()
    for name in sorted(n for n in names if n):
        path = REPO_ROOT / name.decode()
        if path.is_file():
            digest.update(name + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def deb() -> Path:
    """pnpbroker_VERSION_ARCH.deb built from this tree by the documented command."""
    out = CACHE / f"deb-{tree_hash()}"
    found = sorted(out.glob("pnpbroker_*.deb"))
    if not found:
        subprocess.run([str(REPO_ROOT / "scripts" / "deb"), str(out)], check=True, timeout=1800)
        found = sorted(out.glob("pnpbroker_*.deb"))
    [package] = found
    return package


@pytest.fixture(scope="module")
def deb_machine(deb: Path) -> Iterator[Machine]:
    """A fresh machine where the package was installed as docs/system.md says."""
    with machine([(deb.parent, DEB_INSIDE)]) as booted:
        for command in documented_commands("The Debian package")[1:]:  # [0] builds it
            booted.run(f"cd {DEB_INSIDE} && {command}", env={"DEBIAN_FRONTEND": "noninteractive"})
        yield booted


def test_the_package_is_versioned_as_the_project(deb: Path, record_property: object) -> None:
    assert deb.name.startswith(f"pnpbroker_{__version__}_")
    changelog = (REPO_ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"pnpbroker ({__version__})")
    size = deb.stat().st_size
    record_property("deb_bytes", size)  # type: ignore[operator]
    print(f"\n[figures] {deb.name}: {size} bytes")


def test_apt_install_leaves_the_broker_running(deb_machine: Machine) -> None:
    for unit in ("pnpbroker.service", "pnpbroker.socket"):
        assert unit_property(deb_machine, unit, "ActiveState") == "active"
        assert unit_property(deb_machine, unit, "UnitFileState") == "enabled"
    assert "path=/usr/bin/pnpbroker" in unit_property(deb_machine, "pnpbroker.service", "ExecStart")
    # Enabled means the D-Bus activation alias is there too.
    deb_machine.run(["test", "-L", "/etc/systemd/system/dbus-org.pnp.Broker.service"])
    name = f"db{token()}"
    with BusMonitor(deb_machine, "org.pnp.Broker") as monitor:
        links(deb_machine, [name])
        monitor.wait(
            "the link's event",
            lambda ev: any(e.properties.get("INTERFACE") == name for e in ev),
        )
    helper = deb_machine.run(["pnpbroker-helper"], check=False)
    assert helper.returncode == 100  # installed and runnable: usage error without argv[1]


def test_the_package_has_the_manual_and_the_completion_and_a_user_reads_the_table(
    deb_machine: Machine,
) -> None:
    for path in ("/usr/share/man/man8/pnpbroker.8.gz", "/usr/share/man/man8/pnpbroker-info.8.gz",
                 "/usr/share/bash-completion/completions/pnpbroker"):  # fmt: skip
        deb_machine.run(["test", "-s", path])
    loaded = deb_machine.run(
        "bash -c '. /usr/share/bash-completion/completions/pnpbroker && complete -p pnpbroker'"
    )
    assert loaded.stdout.strip() == "complete -F _pnpbroker pnpbroker"
    entry = deb_machine.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                             "pnpbroker", "info", "/sys/class/net/lo"])  # fmt: skip
    assert entry.stdout.splitlines()[:3] == ["P: /devices/virtual/net/lo", "M: lo", "U: net"]


def test_the_package_ships_the_forwarder_disabled_with_its_user(deb_machine: Machine) -> None:
    """apt install ran systemd-sysusers on the shipped file (dh_installsysusers' postinst)."""
    assert_system_user(deb_machine)
    assert unit_property(deb_machine, FORWARD, "UnitFileState") == "disabled"
    assert unit_property(deb_machine, FORWARD, "ActiveState") == "inactive"
    assert "path=/usr/bin/pnpbroker" in unit_property(deb_machine, FORWARD, "ExecStart")


def test_the_fleet_set_up_as_documented_runs_from_the_package(
    deb_machine: Machine, tmp_path: Path
) -> None:
    """docs/fleet.md's steps on the package's files: link events reach the subscriber."""
    with fleet(deb_machine, tmp_path) as running:
        assert running.program == "/usr/bin/pnpbroker"
        names = {f"fd{token()}{i}" for i in range(10)}
        links(deb_machine, sorted(names))
        links(deb_machine, sorted(names), "del")
        running.monitor.wait("the links' add events", links_arrived(names, "add"))
        running.monitor.wait("the links' remove events", links_arrived(names, "remove"))
        assert_whole(running.monitor)


def test_apt_remove_stops_the_broker(deb_machine: Machine) -> None:
    deb_machine.run(["apt-get", "remove", "-y", "-qq", "pnpbroker"])
    for unit in ("pnpbroker.service", "pnpbroker.socket"):
        assert unit_property(deb_machine, unit, "ActiveState") in ("inactive", "")
    assert deb_machine.run(["test", "-e", "/usr/bin/pnpbroker"], check=False).returncode != 0
