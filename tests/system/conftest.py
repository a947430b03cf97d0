"""Fixtures for the tests under a real systemd: one booted machine per route, for the session.

The machine is built once (cached root file system) and booted once per route; each test
starts from the broker enabled and running with no configuration file (``broker`` fixture),
whatever the test before it left.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO_ROOT, require_binaries, require_root
from support.container import Machine, machine

from system.systemtools import documented_commands, reset_broker

NEEDED = ("systemd-nspawn", "debootstrap", "nsenter", "mountpoint", "ip")
WHEELS_INSIDE = "/mnt/wheels"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/system/" in str(item.path):
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session")
def wheels() -> Iterator[Path]:
    """Wheels of pnpbroker and its dependencies, built from this tree (pip wheel, as documented)."""
    require_root()
    require_binaries(NEEDED)
    out = Path(tempfile.mkdtemp(prefix="pnpt-wheels-"))
    out.chmod(0o755)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(out), str(REPO_ROOT)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    yield out
    subprocess.run(["rm", "-rf", str(out)], check=False)


@pytest.fixture(scope="session")
def pip_machine(wheels: Path) -> Iterator[Machine]:
    """A machine where pnpbroker was installed by docs/system.md's pip route, as root."""
    wheel = next(wheels.glob("pnpbroker-*.whl"))
    with machine([(wheels, WHEELS_INSIDE)]) as booted:
        # No network inside: pip takes dbus-fast from the wheels the host built.
        offline = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS_INSIDE}
        for command in documented_commands("`pip` and `pnpbroker install`"):
            command = command.replace("/path/to/pnpbroker", f"{WHEELS_INSIDE}/{wheel.name}")
            booted.run(command, env=offline)
        yield booted


@pytest.fixture
def broker(pip_machine: Machine) -> Machine:
    reset_broker(pip_machine)
    return pip_machine
