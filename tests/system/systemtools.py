"""Small helpers for the tests under a real systemd: programs, config, links, unit properties."""

from __future__ import annotations

import os
import re

from support import REPO_ROOT
from support.container import Machine

DOC = REPO_ROOT / "docs" / "system.md"


def documented_commands(heading: str) -> list[str]:
    """The commands of the ``sh`` blocks of section ``## heading`` of docs/system.md, in order
    (comments and blank lines dropped): what the tests run is what a user is told to run."""
    section = DOC.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert blocks, f"no sh block under {heading!r} in {DOC}"
    lines = (line.split("#", 1)[0].strip() for b in blocks for line in b.splitlines())
    return [line for line in lines if line]


def program(booted: Machine, name: str, body: str) -> str:
    """An executable shell script at /usr/local/bin/NAME inside; returns its path."""
    path = f"/usr/local/bin/{name}"
    booted.run(f"cat > {path} && chmod 755 {path}", input=f"#!/bin/sh\n{body}")
    return path


def use_config(booted: Machine, toml: str) -> None:
    booted.run("mkdir -p /etc/pnpbroker && cat > /etc/pnpbroker/pnpbroker.toml", input=toml)


def links(booted: Machine, names: list[str], action: str = "add") -> None:
    """Add (or delete) ifb links in the machine's network namespace: real net uevents."""
    verb = "add" if action == "add" else "del"
    kind = " type ifb" if verb == "add" else ""
    booted.netns(["ip", "-batch", "-"], input="".join(f"link {verb} {n}{kind}\n" for n in names))


def unit_property(booted: Machine, unit: str, name: str) -> str:
    return booted.run(["systemctl", "show", "-P", name, unit]).stdout.strip()


def token() -> str:
    return os.urandom(3).hex()
