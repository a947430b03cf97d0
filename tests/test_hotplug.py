"""The legacy program runner: argv, exact environment, stdin, output, exit, signals, timeout."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
from pathlib import Path

import pytest

from pnpbroker.legacy.modes import ProgramMode
from pnpbroker.legacy.runner import KERNEL_ENV, ProgramRunner
from pnpbroker.outcome import describe
from pnpbroker.uevent import from_properties

EVENT = from_properties(
    {
        "ACTION": "add",
        "DEVPATH": "/devices/virtual/net/ifb0",
        "SUBSYSTEM": "net",
        "SEQNUM": "77",
        "INTERFACE": "ifb0",
        "ODD": "with space and 'quote'",
    }
)


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def runner() -> ProgramRunner:
    return ProgramRunner(timeout=30.0, grace=5.0)


async def test_argv_environment_and_stdin(
    tmp_path: Path, runner: ProgramRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEAK_CHECK", "must not reach the program")
    out = tmp_path / "out"
    # /proc/$$/environ is what the shell was started with, before it adds anything of its own.
    program = _script(
        tmp_path,
        "show",
        f'printf "%s\\n" "$0" "$@" > {out}.argv\n'
        f"cat /proc/$$/environ > {out}.env\n"
        f"readlink /proc/$$/fd/0 > {out}.stdin\n"
        f"cat > {out}.read\n",
    )
    mode = ProgramMode(program, runner)
    result = await mode.run(EVENT, 5)
    runner.close()
    assert result.status == 0
    assert (tmp_path / "out.argv").read_text().splitlines() == [program, "net"]
    env = (tmp_path / "out.env").read_bytes().split(b"\0")[:-1]
    got = dict(item.decode().split("=", 1) for item in env)
    assert len(got) == len(env), "a key appears twice"
    assert got == {**dict(EVENT.properties), **KERNEL_ENV}
    # stdin reads as end of file, like /dev/null, but is an empty pipe: nothing needed in /dev.
    assert (tmp_path / "out.stdin").read_text().startswith("pipe:")
    assert (tmp_path / "out.read").read_bytes() == b""


async def test_env_program_sees_exactly_the_event(
    runner: ProgramRunner, caplog: pytest.LogCaptureFixture
) -> None:
    """`env` itself as the program: argv[1] (the subsystem) names what env runs, here env again."""
    event = from_properties({**EVENT.properties, "SUBSYSTEM": "/usr/bin/env"})
    with caplog.at_level(logging.INFO, logger="pnpbroker.legacy.runner"):
        result = await ProgramMode("/usr/bin/env", runner).run(event, 9)
    runner.close()
    assert result.status == 0
    prefix = "event 9: env: "
    messages = [r.getMessage() for r in caplog.records]
    lines = [m.removeprefix(prefix) for m in messages if m.startswith(prefix)]
    expected = {**dict(event.properties), **KERNEL_ENV}
    assert sorted(lines) == sorted(f"{k}={v}" for k, v in expected.items())


async def test_output_is_logged_with_the_event_label(
    tmp_path: Path, runner: ProgramRunner, caplog: pytest.LogCaptureFixture
) -> None:
    program = _script(tmp_path, "talk", 'echo "to stdout"\necho "to stderr" >&2\nprintf tail\n')
    with caplog.at_level(logging.INFO, logger="pnpbroker.legacy.runner"):
        outcome = await runner.run([program, "net"], {}, "event 42")
    runner.close()
    assert outcome.ok
    seen = {(r.levelno, r.getMessage()) for r in caplog.records}
    assert (logging.INFO, "event 42: talk: to stdout") in seen
    assert (logging.WARNING, "event 42: talk: to stderr") in seen
    assert (logging.INFO, "event 42: talk: tail") in seen


async def test_nonzero_exit_and_signal_death(tmp_path: Path, runner: ProgramRunner) -> None:
    failing = await runner.run([_script(tmp_path, "fail", "exit 3\n"), "net"], {}, "event 1")
    assert (failing.status, failing.signal, failing.timed_out) == (3, 0, False)
    assert failing.to_json()["status"] == 3
    crashing = await runner.run([_script(tmp_path, "crash", "kill -SEGV $$\n"), "x"], {}, "e 2")
    runner.close()
    assert (crashing.status, crashing.signal, crashing.timed_out) == (-1, signal.SIGSEGV, False)
    assert describe(crashing) == f"killed by signal {int(signal.SIGSEGV)}"


async def test_missing_program_is_reported(tmp_path: Path, runner: ProgramRunner) -> None:
    outcome = await runner.run([str(tmp_path / "absent"), "net"], {}, "event 1")
    runner.close()
    assert outcome.status == -1
    assert "cannot run" in outcome.error
    assert outcome.to_json()["error"] == outcome.error


async def test_timeout_term_then_next_proceeds(tmp_path: Path) -> None:
    """A program that exits on SIGTERM: timed out, its own exit status, then the next one runs."""
    runner = ProgramRunner(timeout=0.3, grace=30.0)
    marker = tmp_path / "term"
    program = _script(tmp_path, "slow", f"trap 'echo t > {marker}; exit 4' TERM\nsleep 60 & wait\n")
    outcome = await runner.run([program, "net"], {}, "event 1")
    assert outcome.timed_out
    assert (outcome.status, outcome.signal) == (4, 0)
    assert marker.exists()
    after = await runner.run([_script(tmp_path, "quick", "exit 0\n"), "net"], {}, "event 2")
    runner.close()
    assert after.ok
    assert not after.timed_out


async def test_hanging_program_trapping_term_is_killed(tmp_path: Path) -> None:
    runner = ProgramRunner(timeout=0.3, grace=0.3)
    pidfile = tmp_path / "pids"
    # The shell and its child ignore SIGTERM; only SIGKILL to the process group ends them.
    program = _script(tmp_path, "hang", f"trap '' TERM\nsleep 60 &\necho $$ $! > {pidfile}\nwait\n")
    outcome = await runner.run([program, "net"], {}, "event 1")
    assert outcome.timed_out
    assert (outcome.status, outcome.signal) == (-1, signal.SIGKILL)
    shell, child = (int(p) for p in pidfile.read_text().split())
    for pid in (shell, child):
        await _gone(pid)
    after = await runner.run([_script(tmp_path, "quick", "exit 0\n"), "net"], {}, "event 2")
    runner.close()
    assert after.ok


async def test_without_pidfd_programs_are_waited_for_with_sigchld(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """pidfd_open failing as it does before Linux 5.3 (ENOSYS), simulated at the runner's seam
    (the real kernel refusal, through seccomp, is tests/test_program_faults.py): exits, signal
    deaths and timeouts are all seen, and no child is left unreaped."""
    runner = ProgramRunner(timeout=0.3, grace=0.3)

    def no_pidfd(pid: int) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented (simulated)")

    runner.children.pidfd_open = no_pidfd
    with caplog.at_level(logging.WARNING):
        ok = await runner.run([_script(tmp_path, "ok", "exit 0\n"), "net"], {}, "event 1")
        fail = await runner.run([_script(tmp_path, "fail", "exit 3\n"), "net"], {}, "event 2")
        slow = await runner.run([_script(tmp_path, "slow", "exec sleep 30\n"), "n"], {}, "e 3")
    runner.close()
    assert (ok.status, fail.status) == (0, 3)
    assert (slow.timed_out, slow.signal) == (True, signal.SIGTERM)
    assert "pidfd_open failed (ENOSYS): waiting for programs with SIGCHLD" in caplog.text
    assert runner.children.watched == []  # every one reaped


async def _gone(pid: int) -> None:
    """Wait (bounded) until ``pid`` is dead: a killed process takes a moment to exit."""
    async with asyncio.timeout(10):
        while _alive(pid):  # noqa: ASYNC110 - nothing to wait on for a process not our child
            await asyncio.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
