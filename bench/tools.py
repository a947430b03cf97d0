"""The peers' tools, fetched into bench/.cache (gitignored) without installing anything system-wide.

``udevadm`` comes from Debian's ``udev`` package, downloaded and unpacked with ``dpkg -x``: the
package itself is never installed, because its scripts would start udevd, which renames network
interfaces. pyudev is installed with pip into ``.cache/pylib`` (not into the project's venv).
Each getter returns None, with the reason kept in ``MISSING``, when the tool cannot be had.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.harness import CACHE, REPO, python_env

MISSING: dict[str, str] = {}


def _fail(tool: str, why: str) -> None:
    MISSING[tool] = why


def udevadm() -> Path | None:
    """Path to ``udevadm`` unpacked from Debian's udev package (where scripts/setup puts it)."""
    root = REPO / ".cache" / "udev"
    binary = root / "root" / "bin" / "udevadm"
    if binary.exists():
        return binary
    root.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(["apt-get", "download", "udev"], cwd=root, capture_output=True, text=True)
    debs = sorted(root.glob("udev_*.deb"))
    if got.returncode != 0 or not debs:
        _fail("udevadm", f"apt-get download udev failed: {got.stderr.strip()[-200:]}")
        return None
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(root / "root")], check=True)
    return binary if binary.exists() else None


def udevadm_version(path: Path) -> str:
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "?"


def pyudev_ready() -> bool:
    """True if pyudev imports in a bench subprocess (installing it into .cache/pylib if needed)."""
    probe = [sys.executable, "-c", "import pyudev; pyudev.Context()"]
    if subprocess.run(probe, env=python_env(), capture_output=True).returncode == 0:
        return True
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    got = subprocess.run(
        [*pip, "--target", str(CACHE / "pylib"), "pyudev"], capture_output=True, text=True
    )
    if got.returncode != 0:
        _fail("pyudev", f"pip install pyudev failed: {got.stderr.strip()[-200:]}")
        return False
    if subprocess.run(probe, env=python_env(), capture_output=True).returncode != 0:
        _fail("pyudev", "pyudev installed but does not load (libudev.so.1 missing?)")
        return False
    return True


def pyudev_version() -> str:
    code = "import pyudev; print(pyudev.__version__)"
    out = subprocess.run([sys.executable, "-c", code], env=python_env(), capture_output=True)
    return out.stdout.decode().strip() or "?"


def compile_c(source: Path, name: str, libs: Sequence[str] = ()) -> Path | None:
    """Compile ``source`` with gcc -O2 (linked with ``libs``) into .cache; None if there is
    no gcc."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        _fail(name, "no C compiler")
        return None
    out = CACHE / name
    if not out.exists() or out.stat().st_mtime < source.stat().st_mtime:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([gcc, "-O2", "-o", str(out), str(source), *libs], check=True)
    return out
