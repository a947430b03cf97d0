"""A tmpfs mounted for one test: an empty /dev as early boot has it, a small disk that fills."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def tmpfs(where: Path, options: str, source: str = "tmpfs") -> Iterator[Path]:
    """Make ``where`` and mount a tmpfs there with ``options`` (e.g. ``size=24m``); unmount
    it (lazily: a test's process may still hold it) afterwards."""
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, source, str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=True)
