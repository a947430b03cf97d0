"""``pip install`` of the wheel, with no checkout: ``pnpbroker install`` finds its data files.

The wheel is built from this tree and installed into a fresh virtualenv outside it; the
installed ``pnpbroker install`` then runs from a directory far from the checkout. pip takes
dbus-fast from its cache or PyPI. (The whole route, with systemd running what it installed, is
tested in a machine: tests/system.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO_ROOT

from pnpbroker.install import COMPLETION_DIR, MAN_DIR
from pnpbroker.manpage import pages

FILES = {
    "dbus/org.pnp.Broker.conf": "usr/share/dbus-1/system.d/org.pnp.Broker.conf",
    "dbus/org.pnp.Broker.service": "usr/share/dbus-1/system-services/org.pnp.Broker.service",
    "dbus/org.pnp.Broker1.xml": "usr/share/dbus-1/interfaces/org.pnp.Broker1.xml",
    "polkit/org.pnp.Broker.policy": "usr/share/polkit-1/actions/org.pnp.Broker.policy",
    "systemd/pnpbroker.service": "usr/lib/systemd/system/pnpbroker.service",
    "systemd/pnpbroker.socket": "usr/lib/systemd/system/pnpbroker.socket",
    "systemd/pnpbroker-forward.service": "usr/lib/systemd/system/pnpbroker-forward.service",
    "systemd/pnpbroker.sysusers": "usr/lib/sysusers.d/pnpbroker.conf",
}


def run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the wheel of this tree installed (no checkout on its path)."""
    where = tmp_path_factory.mktemp("wheel")
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", "dist", str(REPO_ROOT)],
        where,
    )
    [wheel] = (where / "dist").glob("pnpbroker-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", "venv"], where)
    python = where / "venv" / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    run([*pip, str(wheel)], where)
    return where / "venv"


def test_the_wheel_carries_the_data_files(venv: Path) -> None:
    code = "from pnpbroker.install import default_source; print(default_source())"
    source = Path(run([str(venv / "bin" / "python"), "-c", code], venv).strip())
    assert source.is_relative_to(venv)  # the installed copies, not the checkout
    for name in FILES:
        assert (source / name).read_text() == (REPO_ROOT / name).read_text()


def test_installed_program_installs_units_that_start_it(venv: Path, tmp_path: Path) -> None:
    program = venv / "bin" / "pnpbroker"
    out = run([str(program), "install", "--destdir", str(tmp_path / "root")], tmp_path)
    written = {str(Path(line).relative_to(tmp_path / "root")) for line in out.split()}
    generated = {f"usr/{MAN_DIR}/{name}" for name in pages()} | {f"usr/{COMPLETION_DIR}/pnpbroker"}
    assert written == set(FILES.values()) | generated  # the pages from the installed parser
    unit = (tmp_path / "root" / FILES["systemd/pnpbroker.service"]).read_text()
    assert f"ExecStart={program} run\n" in unit
    forward = (tmp_path / "root" / FILES["systemd/pnpbroker-forward.service"]).read_text()
    assert f"ExecStart={program} forward\n" in forward
    activation = (tmp_path / "root" / FILES["dbus/org.pnp.Broker.service"]).read_text()
    assert f"Exec={program} run\n" in activation
    policy = (tmp_path / "root" / FILES["dbus/org.pnp.Broker.conf"]).read_text()
    assert policy == (REPO_ROOT / "dbus/org.pnp.Broker.conf").read_text()
