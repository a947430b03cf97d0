"""Every row of the documented option table, in every form the documentation shows.

The table (``| option | config key | default | meaning |``) is read from the documentation
itself, so a row added without cases here fails. Each form goes through the real command line
(``pnpbroker run`` in dry-run mode on an empty stream, which must exit 0) or the real config
file (``-c FILE``), and the value that reaches the broker's ``Config`` is checked.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import REPO_ROOT

from pnpbroker import config
from pnpbroker.commands import build_parser, main
from pnpbroker.commands.run import overrides
from pnpbroker.contract import ExitCode
from pnpbroker.errors import ConfigError
from pnpbroker.rebroadcast import Target
from pnpbroker.sources.helper import DEFAULT_PATH as HELPER_SOCKET

HEADER = "| option | config key | default | meaning |"
M = 1 << 20
LIBUDEV, KERNEL_4 = Target("libudev", (2,)), Target("kernel", (3,))


def documented_rows() -> list[str]:
    """The label of each row (its option, else its config key) from README.md or docs/."""
    for path in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]:
        if not path.is_file():
            continue
        lines = path.read_text().splitlines()
        if HEADER in lines:
            start = lines.index(HEADER) + 2  # past the header and the |---| line
            end = next(i for i, line in enumerate(lines[start:], start) if not line.startswith("|"))
            cells = [line.split("|")[1:3] for line in lines[start:end]]
            return [(option.strip() or key.strip()) for option, key in cells]
    raise AssertionError(f"no option table ({HEADER}) in README.md or docs/")


@dataclass(frozen=True)
class Form:
    """One way of writing a setting, and what the broker's Config then holds."""

    argv: tuple[str, ...] = ()  # on the command line of `pnpbroker run`
    toml: str = ""  # or in the config file
    field: str = ""  # the Config attribute (empty: a command-line-only option)
    value: object = None
    runs: bool = True  # can it run in a dry run on an empty stream?


def cli_form(*argv: str, field: str = "", value: object = None, runs: bool = True) -> Form:
    return Form(argv=argv, field=field, value=value, runs=runs)


def toml_form(text: str, field: str, value: object) -> Form:
    return Form(toml=text, field=field, value=value)


ROWS: dict[str, list[Form]] = {
    "`-c`, `--config PATH`": [
        cli_form("-c", "{config}", field="timeout", value=7.0),
        cli_form("--config", "{config}", field="timeout", value=7.0),
    ],
    "`--state-dir DIR`": [
        cli_form(
            "--state-dir", "/tmp/pnpt-state", field="state_dir", value=Path("/tmp/pnpt-state")
        ),
        toml_form('state_dir = "/tmp/pnpt-state"', "state_dir", Path("/tmp/pnpt-state")),
    ],
    "`-p`, `--hotplug-program PATH`": [
        cli_form("-p", "/bin/true", field="hotplug_program", value="/bin/true"),
        cli_form("--hotplug-program", "/bin/true", field="hotplug_program", value="/bin/true"),
        toml_form('hotplug_program = "/sbin/mdev"', "hotplug_program", "/sbin/mdev"),
    ],
    "`--no-program`": [
        cli_form("--no-program", field="hotplug_program", value=""),
        toml_form('hotplug_program = ""', "hotplug_program", ""),
    ],
    "`-t`, `--timeout S`": [
        cli_form("-t", "30", field="timeout", value=30.0),
        cli_form("--timeout", "0.5", field="timeout", value=0.5),
        toml_form("timeout = 30", "timeout", 30.0),
        toml_form("timeout = 0.5", "timeout", 0.5),
    ],
    "`kill_grace`": [
        toml_form("kill_grace = 5", "kill_grace", 5.0),
        toml_form("kill_grace = 0.5", "kill_grace", 0.5),
    ],
    "`--receive-buffer N`": [
        cli_form("--receive-buffer", "134217728", field="receive_buffer", value=128 * M),
        cli_form("--receive-buffer", "64M", field="receive_buffer", value=64 * M),
        cli_form("--receive-buffer", "128M", field="receive_buffer", value=128 * M),
        toml_form("receive_buffer = 134217728", "receive_buffer", 128 * M),
        toml_form('receive_buffer = "134217728"', "receive_buffer", 128 * M),
        toml_form('receive_buffer = "64M"', "receive_buffer", 64 * M),
        toml_form('receive_buffer = "128M"', "receive_buffer", 128 * M),
    ],
    "`retention_events`": [
        toml_form("retention_events = 100000", "retention_events", 100000),
        toml_form("retention_events = 200000", "retention_events", 200000),
    ],
    "`retention_days`": [
        toml_form("retention_days = 7", "retention_days", 7.0),
        toml_form("retention_days = 1.5", "retention_days", 1.5),
    ],
    "`journal_max_events`": [
        toml_form("journal_max_events = 1000000", "journal_max_events", 1_000_000),
        toml_form('journal_max_events = "1M"', "journal_max_events", 1 << 20),
        toml_form("journal_max_events = 5000", "journal_max_events", 5000),
    ],
    "`journal_sync`": [
        toml_form('journal_sync = "full"', "journal_sync", "full"),
        toml_form('journal_sync = "normal"', "journal_sync", "normal"),
    ],
    "`--bus-address ADDR`": [
        cli_form(
            "--bus-address", "unix:path=/run/pnpt", field="bus_address", value="unix:path=/run/pnpt"
        ),
        toml_form('bus_address = "unix:path=/run/pnpt"', "bus_address", "unix:path=/run/pnpt"),
    ],
    "`--rebroadcast TARGET`": [
        cli_form("--rebroadcast", "libudev", field="rebroadcast", value=(LIBUDEV,)),
        cli_form("--rebroadcast", "kernel:4", field="rebroadcast", value=(KERNEL_4,)),
        cli_form("--rebroadcast", "kernel:0x4", field="rebroadcast", value=(KERNEL_4,)),
        cli_form(
            *("--rebroadcast", "libudev", "--rebroadcast", "kernel:4"),
            field="rebroadcast",
            value=(LIBUDEV, KERNEL_4),
        ),
        toml_form('rebroadcast = ["libudev", "kernel:4"]', "rebroadcast", (LIBUDEV, KERNEL_4)),
        toml_form("rebroadcast = []", "rebroadcast", ()),
    ],
    "`forward_socket`": [
        toml_form(
            'forward_socket = "/run/pnpt/forward.sock"', "forward_socket", "/run/pnpt/forward.sock"
        ),
        toml_form('forward_socket = ""', "forward_socket", ""),
    ],
    "`forward_group`": [
        toml_form('forward_group = "nogroup"', "forward_group", "nogroup"),
        toml_form('forward_group = ""', "forward_group", ""),
    ],
    "`-v`, `--verbose`": [
        cli_form("-v", field="log_level", value="debug"),
        cli_form("--verbose", field="log_level", value="debug"),
        *(
            toml_form(f'log_level = "{v}"', "log_level", v)
            for v in ("debug", "info", "warning", "error")
        ),
    ],
    "`--source SRC`": [
        cli_form("--source", "netlink", runs=False),
        cli_form("--source", "fd:3", runs=False),
        cli_form("--source", "stdin", runs=False),
        cli_form("--source", "{empty}"),
    ],
    "`--output fd:N`": [cli_form("--output", "fd:{pipe}")],
    "`--helper-socket [PATH]`": [
        cli_form("--helper-socket", runs=False),
        cli_form("--helper-socket", "/run/pnpt-helper.sock", runs=False),
    ],
    "`helper_window`": [
        toml_form("helper_window = 1", "helper_window", 1.0),
        toml_form("helper_window = 0.25", "helper_window", 0.25),
    ],
    "`-n`, `--dry-run`": [cli_form("-n"), cli_form("--dry-run")],
    "`mode`": [toml_form(f'mode = "{m}"', "mode", m) for m in ("program", "hotplug.d", "agents")],
    "`hotplug_d`, `agents_dir`, `agent_fallback`": [
        toml_form('hotplug_d = "/etc/hotplug.d"', "hotplug_d", "/etc/hotplug.d"),
        toml_form('agents_dir = "/etc/hotplug"', "agents_dir", "/etc/hotplug"),
        toml_form(
            'agent_fallback = "/etc/hotplug/default.sh"',
            "agent_fallback",
            "/etc/hotplug/default.sh",
        ),
    ],
    "`skip`": [
        toml_form(
            'skip = ["queues", "net/remove", "*/change"]',
            "skip",
            ("queues", "net/remove", "*/change"),
        ),
        toml_form("skip = []", "skip", ()),
    ],
    "`user`, `group`, `limits`": [
        toml_form('user = "nobody"', "user", "nobody"),
        toml_form('user = "65534"', "user", "65534"),
        toml_form('group = "nogroup"', "group", "nogroup"),
        toml_form(
            'limits = { nofile = 1024, as = "512M", cpu = 10, core = 0 }',
            "limits",
            (("as", 512 * M), ("core", 0), ("cpu", 10), ("nofile", 1024)),
        ),
        toml_form('limits = { core = "infinity" }', "limits", (("core", -1),)),
    ],
}

FORMS = [(row, form) for row, forms in ROWS.items() for form in forms]


def test_every_documented_row_has_forms() -> None:
    assert documented_rows() == list(ROWS)


@pytest.fixture
def where(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The placeholders of the forms: a config file, an empty stream, an open pipe."""
    (tmp_path / "timeout.toml").write_text("timeout = 7\n")
    (tmp_path / "empty").write_bytes(b"")
    read_fd, write_fd = os.pipe()
    yield {
        "config": str(tmp_path / "timeout.toml"),
        "empty": str(tmp_path / "empty"),
        "pipe": str(write_fd),
        "dir": str(tmp_path),
    }
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


def arguments(form: Form, where: dict[str, str]) -> list[str]:
    """The command line for ``form``: its own options, or ``-c`` with its TOML."""
    if form.toml:
        path = Path(where["dir"]) / "form.toml"
        path.write_text(form.toml + "\n")
        return ["-c", str(path)]
    return [arg.format(**where) for arg in form.argv]


@pytest.mark.parametrize(("row", "form"), FORMS, ids=[f"{f.argv or f.toml}" for r, f in FORMS])
def test_form_reaches_the_config(row: str, form: Form, where: dict[str, str]) -> None:
    args = build_parser().parse_args(["run", *arguments(form, where)])
    cfg = config.load(args.config, overrides(args))
    if form.field == "limits" and form.value == (("core", -1),):
        assert cfg.limits[0][0] == "core"  # RLIM_INFINITY, whatever the platform's number
    elif form.field:
        assert getattr(cfg, form.field) == form.value
    if "--helper-socket" in form.argv:
        expected = Path(form.argv[1]) if len(form.argv) > 1 else HELPER_SOCKET
        assert args.helper_socket == expected


@pytest.mark.parametrize(
    ("row", "form"),
    [f for f in FORMS if f[1].runs],
    ids=[f"{f.argv or f.toml}" for r, f in FORMS if f.runs],
)
def test_form_runs(row: str, form: Form, where: dict[str, str]) -> None:
    """``pnpbroker run -n --source EMPTY FORM`` exits 0: the form is accepted end to end."""
    argv = ["run", "-n", "--source", where["empty"], *arguments(form, where)]
    assert main(argv) == ExitCode.OK


def test_the_examples_in_the_size_error_are_accepted(tmp_path: Path) -> None:
    """The message for a bad size gives examples: each of them must work, as the CLI and in TOML."""
    with pytest.raises(ConfigError) as refused:
        config.from_mapping({"receive_buffer": "lots"})
    examples = re.findall(r"e\.g\. (\d+) or \"(\w+)\"", str(refused.value))
    assert examples, refused.value
    for plain, suffixed in examples:
        for text in (plain, suffixed):
            cmd = [sys.executable, "-m", "pnpbroker", "run", "--receive-buffer", text]
            empty = tmp_path / "empty"
            empty.write_bytes(b"")
            done = subprocess.run([*cmd, "-n", "--source", str(empty)], capture_output=True,
                                  text=True, timeout=60, check=False)  # fmt: skip
            assert done.returncode == 0, done.stderr
        assert config.from_mapping({"receive_buffer": int(plain)}).receive_buffer == int(plain)
