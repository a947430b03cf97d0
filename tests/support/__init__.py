"""The test kit: a private system bus, network namespaces, the broker process, unprivileged
users; shared by the tests and by bench/ (which must not pay for pytest: it is imported only
where a test is skipped or failed).

This module holds the policy for tests that need root: outside CI they are skipped with a
reason, under CI they fail, so a CI runner without root cannot pass by skipping everything.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIRED_BINARIES = ("dbus-daemon", "ip", "busctl")


def in_ci() -> bool:
    """True when the CI environment variable is set to something that does not mean no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test with `reason`, or fail it under CI where every test must really run."""
    import pytest

    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def missing_binaries(names: tuple[str, ...] = REQUIRED_BINARIES) -> list[str]:
    """The programs from `names` not found on PATH."""
    return [name for name in names if shutil.which(name) is None]


def require_binaries(names: tuple[str, ...] = REQUIRED_BINARIES) -> None:
    """Skip or fail (see `skip_or_fail`) when a needed program is missing."""
    missing = missing_binaries(names)
    if missing:
        skip_or_fail(f"needs {', '.join(missing)} (run scripts/setup)")


def require_root() -> None:
    """Skip or fail (see `skip_or_fail`) unless we are root and have the needed programs."""
    if os.geteuid() != 0:
        skip_or_fail("needs root (namespaces, bus policy for root, running as nobody)")
    require_binaries()
