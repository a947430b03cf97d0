"""The man pages and the bash completion, made from the parser, as man and bash take them.

Each page is rendered by ``man -l`` with warnings on (groff complains about bad roff), and
names every option its command has; the completion script is loaded by bash, registers
itself, and completes commands, options, choices and paths. ``pnpbroker install`` writes both
(test_install checks where).
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest
from support import require_binaries

from pnpbroker import completion, manpage
from pnpbroker.commands import COMMANDS, build_parser, subcommand_parsers
from pnpbroker.install import COMPLETION_DIR, MAN_DIR, install

PAGES = manpage.pages()


def test_one_page_per_command_and_one_for_pnpbroker() -> None:
    assert set(PAGES) == {"pnpbroker.8"} | {f"pnpbroker-{name}.8" for name in COMMANDS}


@pytest.mark.parametrize("name", sorted(PAGES))
def test_each_page_renders_without_warnings(name: str, tmp_path: Path) -> None:
    require_binaries(("man",))
    page = tmp_path / name
    page.write_text(PAGES[name])
    done = subprocess.run(
        ["man", "--warnings", "-l", str(page)],
        capture_output=True, text=True, timeout=60, check=False,
        env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "SEE ALSO"):
        assert f"\n{heading}\n" in done.stdout, heading
    assert "111" in done.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_page_names_every_option_of_its_command(name: str) -> None:
    page = PAGES[f"pnpbroker-{name}.8"].replace("\\-", "-")
    parser = subcommand_parsers(build_parser())[name]
    for action in parser._actions:
        if action.help != argparse.SUPPRESS:
            for option in action.option_strings:
                assert option in page, option


def bash(script: Path, words: list[str]) -> list[str]:
    """What the completion offers for ``words`` (the last one is being typed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    code = (
        f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
        f'_pnpbroker; printf "%s\\n" "${{COMPREPLY[@]}}"'
    )
    done = subprocess.run(["bash", "-c", code], capture_output=True, text=True, check=True)
    return [line for line in done.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "pnpbroker"
    path.write_text(completion.script())
    return path


def test_bash_loads_the_completion(script: Path) -> None:
    done = subprocess.run(
        ["bash", "-c", f"source {script} && complete -p pnpbroker"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "complete -F _pnpbroker pnpbroker"


def test_bash_completes_commands_options_choices_and_paths(script: Path, tmp_path: Path) -> None:
    assert set(bash(script, ["pnpbroker", ""])) >= set(COMMANDS)
    assert bash(script, ["pnpbroker", "mon"]) == ["monitor"]
    assert bash(script, ["pnpbroker", "control", ""]) == ["pause", "resume", "reload", "status"]
    assert bash(script, ["pnpbroker", "trigger", "--sysname"]) == ["--sysname-match"]
    assert "--enumerate" in bash(script, ["pnpbroker", "monitor", "--"])
    (tmp_path / "pnp.toml").write_text("")
    assert bash(script, ["pnpbroker", "run", "--config", f"{tmp_path}/pnp"]) == [
        f"{tmp_path}/pnp.toml"
    ]
    assert bash(script, ["pnpbroker", "settle", "--timeout", ""]) == []  # a number: no guess
    assert "net" in bash(script, ["pnpbroker", "monitor", "-s", "ne"])


def test_install_writes_the_pages_and_the_completion(tmp_path: Path) -> None:
    written = {str(p.relative_to(tmp_path)) for p in install(destdir=tmp_path)}
    assert {f"usr/{MAN_DIR}/{name}" for name in PAGES} <= written
    assert f"usr/{COMPLETION_DIR}/pnpbroker" in written
    assert (tmp_path / f"usr/{COMPLETION_DIR}/pnpbroker").read_text() == completion.script()
