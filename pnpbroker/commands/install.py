"""``pnpbroker install``: put the data files in place (:mod:`pnpbroker.install`), print them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pnpbroker.contract import ExitCode
from pnpbroker.install import DEFAULT_PREFIX, install

HELP = "put the bus, polkit and systemd files in place"


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
    """Install, print each path written: 0, 100 (a relative path), 111 (cannot write)."""
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
    return ExitCode.OK
