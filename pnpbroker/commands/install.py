"""``pnpbroker install``: put the data files in place (:mod:`pnpbroker.install`), print them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pnpbroker.contract import ExitCode
from pnpbroker.install import DEFAULT_PREFIX, create_users, install

HELP = "put the bus, polkit and systemd files in place, and create the forwarder's user"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefix", type=Path, default=DEFAULT_PREFIX, help="default: /usr")
    parser.add_argument("--destdir", type=Path, help="stage under this directory (packaging)")
    parser.add_argument(
        "--program",
        type=Path,
        help="pnpbroker executable the units start (default: the one installed with this "
        "Python, else PREFIX/bin/pnpbroker)",
    )


def main(args: argparse.Namespace) -> int:
    """Install, print each path written, then (no ``--destdir``: a live system) create the
    users: 0, 100 (a relative path), 111 (cannot write, systemd-sysusers failed)."""
    try:
        paths = install(args.prefix, args.destdir, program=args.program)
    except ValueError as exc:
        print(f"pnpbroker install: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except OSError as exc:
        print(f"pnpbroker install: {exc}", file=sys.stderr)
        return ExitCode.SYSTEM
    for path in paths:
        print(path)
    return ExitCode.OK if args.destdir else _create_users(paths)


def _create_users(paths: list[Path]) -> int:
    try:
        create_users(paths)
    except FileNotFoundError:
        names = " ".join(str(p) for p in paths if p.parent.name == "sysusers.d")
        print(
            f"pnpbroker install: no systemd-sysusers here; create the users of {names} "
            "yourself if you run pnpbroker forward (docs/fleet.md)",
            file=sys.stderr,
        )
    except OSError as exc:
        print(f"pnpbroker install: {exc}", file=sys.stderr)
        return ExitCode.SYSTEM
    return ExitCode.OK
