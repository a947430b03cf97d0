"""Run commands and Python snippets as the unprivileged user `nobody`.

The bus policy and polkit treat root and everyone else differently, so tests must really be
someone else: a fresh process with nobody's uid and gid and no supplementary groups.

The venv's interpreter may be a symlink into a directory `nobody` cannot enter (pyenv under
/root). Then the system's python3 of the same minor version runs instead, with the venv's
site-packages and the repository on its path, so it imports the same dbus_fast and pnpbroker.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
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


def _nobody_can_run(python: str) -> bool:
    """Whether `nobody` can start `python` (checked by doing it, not by reading modes)."""
    try:
        return run_as_nobody([python, "-c", "pass"], timeout=30).returncode == 0
    except OSError:
        return False


@functools.cache
def python_for_nobody() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The interpreter argv and extra environment that let nobody import the venv's packages."""
    if _nobody_can_run(sys.executable):
        return (sys.executable,), ()
    if not _nobody_can_run(SYSTEM_PYTHON):
        raise RuntimeError(f"user nobody can run neither {sys.executable} nor {SYSTEM_PYTHON}")
    path = os.pathsep.join([str(REPO_ROOT), sysconfig.get_paths()["purelib"]])
    return (SYSTEM_PYTHON,), (("PYTHONPATH", path),)


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
