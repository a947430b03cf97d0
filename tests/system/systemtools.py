"""Small helpers for the tests under a real systemd: programs, config, links, unit properties."""

from __future__ import annotations

import os
import re
import threading

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


def reset_broker(booted: Machine) -> None:
    """The broker as the route leaves it: enabled, running, socket-activated, no config file."""
    booted.run(
        "rm -rf /etc/pnpbroker /etc/polkit-1/rules.d/50-pnpbroker.rules; "
        "systemctl reset-failed pnpbroker.service pnpbroker.socket; "
        "systemctl enable --quiet pnpbroker.socket pnpbroker.service; "
        "systemctl start pnpbroker.socket pnpbroker.service"
    )


class Bursts:
    """Link add/delete bursts in the machine, in a thread, until stopped; names are recorded."""

    def __init__(self, booted: Machine, size: int = 300, prefix: str = "rb") -> None:
        self.booted = booted
        self.size = size
        self.prefix = prefix
        self.names: set[str] = set()
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bursts")

    def _run(self) -> None:
        group = 7  # one netlink request deletes them all: a burst of removes too
        while not self._stop.is_set():
            batch = [f"{self.prefix}{self.rounds}x{i}" for i in range(self.size)]
            adds = "".join(f"link add {name} group {group} type ifb\n" for name in batch)
            self.booted.netns(["ip", "-batch", "-"], input=adds)
            self.booted.netns(["ip", "link", "del", "group", str(group)])
            self.names.update(batch)
            self.rounds += 1

    def __enter__(self) -> Bursts:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(300)
