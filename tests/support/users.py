"""Run commands and Python snippets as the unprivileged user `nobody`.

The bus policy and polkit treat root and everyone else differently, so tests must really be
someone else: a fresh process with nobody's uid and gid and no supplementary groups.

The venv's interpreter may be a symlink into a directory `nobody` cannot enter (pyenv under
/root), or the checkout itself may be out of nobody's reach (a CI clone in a private directory).
Then the system's python3 of the same minor version runs instead, with the venv's site-packages
and the repository on its path, or with a world-readable staged copy of them.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from support import REPO_ROOT

USER = "nobody"
GROUP = "nogroup"
SYSTEM_PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"


def base_env(bus_address: str | None = None) -> dict[str, str]:
    """A small clean environment; `bus_address` becomes DBUS_SYSTEM_BUS_ADDRESS."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": "/"}
    if bus_address is not None:
        env["DBUS_SYSTEM_BUS_ADDRESS"] = bus_address
    return env


def subprocess_kwargs(
    bus_address: str | None = None, env: Mapping[str, str] | None = None, cwd: str = "/"
) -> dict[str, Any]:
    """Keyword arguments for subprocess.run/Popen that make the child `nobody`."""
    return {
        "user": USER,
        "group": GROUP,
        "extra_groups": [],
        "env": {**base_env(bus_address), **(env or {})},
        "cwd": cwd,
    }


def run_as_nobody(
    argv: Sequence[str],
    *,
    bus_address: str | None = None,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    cwd: str = "/",
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` as nobody and return the finished process with text stdout/stderr."""
    return subprocess.run(
        list(argv),
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **subprocess_kwargs(bus_address, env, cwd),
    )


def _nobody_can_import(argv: tuple[str, ...], extra: tuple[tuple[str, str], ...]) -> bool:
    """Whether `nobody` can start this interpreter and import our packages (by doing it)."""
    code = "import dbus_fast, pnpbroker"
    try:
        done = run_as_nobody([*argv, "-c", code], env=dict(extra), timeout=30)
    except OSError:
        return False
    return done.returncode == 0


#: What the staged copy leaves out of site-packages: big, and never needed by nobody.
_NOT_STAGED = ("*.pyc", "__pycache__", "mypy*", "ruff*", "hypothesis*", "pyroute2*", "pip*")


def _staged_copy() -> Path:
    """A world-readable copy of the checkout's code and site-packages, for a checkout nobody
    cannot enter (a CI clone in a private directory). Removed when the test run ends."""
    root = Path(tempfile.mkdtemp(prefix="pnpt-nobody-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    ignore = shutil.ignore_patterns(*_NOT_STAGED)
    for name in ("pnpbroker", "examples", "tests"):
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, root / name, ignore=ignore)
    shutil.copy(REPO_ROOT / "pyproject.toml", root)
    shutil.copytree(sysconfig.get_paths()["purelib"], root / "site", ignore=ignore)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def _pythonpath(*paths: Path) -> tuple[tuple[str, str], ...]:
    return (("PYTHONPATH", os.pathsep.join(str(p) for p in paths)),)


@functools.cache
def _nobody_python() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...], Path]:
    """Interpreter argv, extra environment and checkout directory that work for nobody.

    In order: the venv's own interpreter; the system's python3 of the same version with the
    checkout and the venv's site-packages on its path; the same with a staged copy of them.
    """
    if _nobody_can_import((sys.executable,), ()):
        return (sys.executable,), (), REPO_ROOT
    checkout = _pythonpath(REPO_ROOT, Path(sysconfig.get_paths()["purelib"]))
    if _nobody_can_import((SYSTEM_PYTHON,), checkout):
        return (SYSTEM_PYTHON,), checkout, REPO_ROOT
    root = _staged_copy()
    staged = _pythonpath(root, root / "site")
    if _nobody_can_import((SYSTEM_PYTHON,), staged):
        return (SYSTEM_PYTHON,), staged, root
    raise RuntimeError(
        f"user nobody can import our packages with neither {sys.executable} nor {SYSTEM_PYTHON}"
    )


def python_for_nobody() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The interpreter argv and extra environment that let nobody import the venv's packages."""
    argv, extra, _ = _nobody_python()
    return argv, extra


def checkout_for_nobody() -> Path:
    """The checkout as nobody can read it: the repository itself, or a staged copy of it."""
    return _nobody_python()[2]


def python_as_nobody(
    code: str,
    *args: str,
    bus_address: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str = "/",
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run the Python source `code` as nobody (`sys.argv[1:]` is `args`); returns its output."""
    argv, extra = python_for_nobody()
    return run_as_nobody(
        [*argv, "-c", code, *args],
        bus_address=bus_address,
        env={**dict(extra), **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )


def python_argv_for_nobody() -> tuple[list[str], dict[str, str]]:
    """For a long-running client: the interpreter argv and env to pass with subprocess_kwargs."""
    argv, extra = python_for_nobody()
    return list(argv), dict(extra)


async def run_as_nobody_async(
    argv: Sequence[str],
    *,
    bus_address: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str = "/",
    timeout: float = 60.0,  # noqa: ASYNC109 - the child is killed when it runs out
) -> subprocess.CompletedProcess[str]:
    """`run_as_nobody` for async tests: the loop keeps serving bus connections meanwhile."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **subprocess_kwargs(bus_address, env, cwd),
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
        returncode = await process.wait()
    return subprocess.CompletedProcess(list(argv), returncode, out.decode(), err.decode())


async def python_as_nobody_async(
    code: str,
    *args: str,
    bus_address: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str = "/",
    timeout: float = 60.0,  # noqa: ASYNC109 - the child is killed when it runs out
) -> subprocess.CompletedProcess[str]:
    """`python_as_nobody` for async tests."""
    argv, extra = python_for_nobody()
    return await run_as_nobody_async(
        [*argv, "-c", code, *args],
        bus_address=bus_address,
        env={**dict(extra), **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )
