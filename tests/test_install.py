"""`pnpbroker install`: the data files land where dbus, polkit and systemd look, and they load."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO_ROOT, require_binaries
from support.bus import SystemBus

from pnpbroker.commands import main
from pnpbroker.install import DataFilesMissing, install

REQUIRED = {
    "usr/share/dbus-1/system.d/org.pnp.Broker.conf": "dbus/org.pnp.Broker.conf",
    "usr/share/dbus-1/system-services/org.pnp.Broker.service": "dbus/org.pnp.Broker.service",
    "usr/share/polkit-1/actions/org.pnp.Broker.policy": "polkit/org.pnp.Broker.policy",
    "usr/lib/systemd/system/pnpbroker.service": "systemd/pnpbroker.service",
    "usr/lib/systemd/system/pnpbroker-forward.service": "systemd/pnpbroker-forward.service",
    "usr/lib/sysusers.d/pnpbroker.conf": "systemd/pnpbroker.sysusers",
}
DIRECTORIES = {
    "usr/share/dbus-1/system.d",
    "usr/share/dbus-1/system-services",
    "usr/share/dbus-1/interfaces",
    "usr/share/polkit-1/actions",
    "usr/lib/systemd/system",
    "usr/lib/sysusers.d",
    "usr/share/man/man8",
    "usr/share/bash-completion/completions",
}


def relative(paths: list[Path], root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in paths}


def test_installs_into_destdir_unchanged_for_usr(tmp_path: Path) -> None:
    paths = install(destdir=tmp_path, program=Path("/usr/bin/pnpbroker"))
    names = relative(paths, tmp_path)
    assert set(REQUIRED) <= names
    assert {str(Path(name).parent) for name in names} <= DIRECTORIES
    for name, source in REQUIRED.items():
        assert (tmp_path / name).read_text() == (REPO_ROOT / source).read_text()
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_prefix_and_program_are_written_into_the_units(tmp_path: Path) -> None:
    paths = install(Path("/usr/local"), tmp_path, program=Path("/opt/pnp/bin/pnpbroker"))
    assert all(name.startswith("usr/local/") for name in relative(paths, tmp_path))
    activation = tmp_path / "usr/local/share/dbus-1/system-services/org.pnp.Broker.service"
    assert "Exec=/opt/pnp/bin/pnpbroker run\n" in activation.read_text()
    unit = (tmp_path / "usr/local/lib/systemd/system/pnpbroker.service").read_text()
    assert "ExecStart=/opt/pnp/bin/pnpbroker run\n" in unit
    assert "/usr/bin/pnpbroker" not in unit


def test_program_defaults_to_the_installed_one(tmp_path: Path) -> None:
    """The tests run from .venv, where `pnpbroker` is installed beside the interpreter."""
    install(Path("/opt/pnp"), tmp_path)
    unit = (tmp_path / "opt/pnp/lib/systemd/system/pnpbroker.service").read_text()
    installed = Path(sys.executable).parent / "pnpbroker"
    assert f"ExecStart={installed} run\n" in unit


def test_bad_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="absolute"):
        install(Path("usr"), tmp_path)
    with pytest.raises(DataFilesMissing, match=r"org\.pnp\.Broker\.policy"):
        install(destdir=tmp_path / "out", source=tmp_path)
    assert not (tmp_path / "out").exists()


def test_command_prints_paths_and_uses_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["install", "--destdir", str(tmp_path)]) == 0
    files = {str(p) for p in tmp_path.rglob("*") if p.is_file()}
    assert set(capsys.readouterr().out.split()) == files
    assert main(["install", "--prefix", "relative"]) == 100
    with pytest.raises(SystemExit) as caught:
        main(["install", "--no-such-option"])
    assert caught.value.code == 100


def test_installed_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """`verify` wants ExecStart= to exist, so the units are installed to start /bin/true."""
    require_binaries(("systemd-analyze",))
    paths = install(destdir=tmp_path, program=Path("/bin/true"))
    units = [str(p) for p in paths if p.parent.name == "system" and p.suffix != ".xml"]
    result = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_sysusers_file_makes_the_forwarders_user(tmp_path: Path) -> None:
    """The real systemd-sysusers, on a root of its own, creates the system user and group."""
    require_binaries(("systemd-sysusers",))
    [conf] = [p for p in install(destdir=tmp_path) if p.parent.name == "sysusers.d"]
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    result = subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(conf)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [user] = [line.split(":") for line in (root / "etc/passwd").read_text().splitlines()
              if line.startswith("pnpbroker-forward:")]  # fmt: skip
    [group] = [line.split(":") for line in (root / "etc/group").read_text().splitlines()
               if line.startswith("pnpbroker-forward:")]  # fmt: skip
    assert int(user[2]) < 1000
    assert user[3] == group[2]
    assert user[6] == "/usr/sbin/nologin"


def test_command_without_destdir_creates_the_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a live system ``pnpbroker install`` runs systemd-sysusers on the file it put in
    place; without systemd-sysusers it says what to do and succeeds; a failure is exit 111.
    (The live run, in a machine booted with systemd: tests/system/test_systemd_fleet.py.)
    Here a PATH of scripts stands in for systemd-sysusers, and the prefix is under tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "argv"
    fake = bin_dir / "systemd-sysusers"
    prefix = tmp_path / "usr"
    monkeypatch.setenv("PATH", str(bin_dir))
    fake.write_text(f'#!/bin/sh\necho "$@" > {log}\n')
    fake.chmod(0o755)
    assert main(["install", "--prefix", str(prefix)]) == 0
    assert log.read_text().split() == [str(prefix / "lib/sysusers.d/pnpbroker.conf")]
    fake.write_text("#!/bin/sh\necho bad line >&2\nexit 1\n")
    capsys.readouterr()
    assert main(["install", "--prefix", str(prefix)]) == 111
    assert "systemd-sysusers failed: bad line" in capsys.readouterr().err
    fake.unlink()
    assert main(["install", "--prefix", str(prefix)]) == 0
    assert "no systemd-sysusers here" in capsys.readouterr().err


def test_bus_daemon_accepts_the_activation_file(tmp_path: Path) -> None:
    """A bus reading the installed system-services directory lists org.pnp.Broker."""
    require_binaries(("dbus-daemon", "busctl"))
    install(destdir=tmp_path)
    services = tmp_path / "usr/share/dbus-1/system-services"
    fragment = tmp_path / "servicedir.conf"
    fragment.write_text(
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
        f"<busconfig><servicedir>{services}</servicedir></busconfig>\n"
    )
    with SystemBus([fragment]) as bus:
        out = subprocess.run(
            ["busctl", f"--address={bus.address}", "call", "org.freedesktop.DBus",
             "/org/freedesktop/DBus", "org.freedesktop.DBus", "ListActivatableNames"],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
        assert '"org.pnp.Broker"' in out.split(), bus.log()
