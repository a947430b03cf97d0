"""Fixtures and the `root` marker policy; the logic lives in tests/support."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO_ROOT, require_binaries, require_root
from support.bus import SystemBus
from support.netns import NetNS
from support.signals import Signals


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "bus_includes(*paths): extra policy files for the system_bus fixture"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """`@pytest.mark.root` tests: skipped without root, failed without root under CI."""
    if item.get_closest_marker("root") is not None:
        require_root()


@pytest.fixture
def system_bus(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SystemBus]:
    """A private system-like bus; DBUS_SYSTEM_BUS_ADDRESS points at it for the test."""
    require_binaries(("dbus-daemon", "busctl"))
    marker = request.node.get_closest_marker("bus_includes")
    extra = [Path(p) for p in marker.args] if marker is not None else []
    with SystemBus(extra) as bus:
        for key, value in bus.env().items():
            monkeypatch.setenv(key, value)
        yield bus


@pytest.fixture
def netns() -> Iterator[NetNS]:
    """A fresh network namespace named after this checkout, deleted afterwards."""
    require_binaries(("ip",))
    tag = "".join(c for c in REPO_ROOT.name if c.isalnum())[:16]
    with NetNS(tag=tag) as ns:
        yield ns


@pytest.fixture
def signals(system_bus: SystemBus) -> Iterator[Signals]:
    """The broker's signals on the test's bus, recorded from now on (``wait`` for some)."""
    watcher = Signals(system_bus.address)
    yield watcher
    watcher.close()
