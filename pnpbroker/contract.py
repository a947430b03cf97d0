"""The process contract, in one place: exit codes and signals (as mdevd documents its own).

``docs/reference.md`` ("Process contract") is the table for people; ``--help`` prints
:func:`exit_codes_text`; tests/test_docs.py holds the three equal.
"""

from __future__ import annotations

import signal
from enum import IntEnum
from typing import Final


class ExitCode(IntEnum):
    """How every ``pnpbroker`` command ends."""

    OK = 0
    FAILED = 1
    CONFIG = 2
    USAGE = 100
    SYSTEM = 111


#: What each exit code means (``--help`` and the reference say this).
MEANINGS: Final[dict[ExitCode, str]] = {
    ExitCode.OK: "clean stop (SIGTERM, SIGINT, or the end of a stream source)",
    ExitCode.FAILED: "the command could not do its job: trigger --settle or settle timed out, "
    "the broker refused (polkit) or is not running, info found no such device, monitor cannot "
    "deliver the events asked for",
    ExitCode.CONFIG: "bad configuration (the message names the key), or a handed-over fd that is "
    "not a uevent datagram socket",
    ExitCode.USAGE: "usage error",
    ExitCode.SYSTEM: "a system call failed (socket, a journal it cannot use, bus unreachable), "
    "another broker owns org.pnp.Broker, or a background task stopped (the log says which); the "
    "service manager restarts the broker",
}

#: Signals that stop the broker (and ``monitor``): finish the running program, publish what is
#: handled, exit 0.
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
#: Signals that make the broker re-read its configuration (a bad file keeps the running one).
RELOAD_SIGNALS: Final = (signal.SIGHUP,)


def exit_codes_text() -> str:
    """The exit codes in one paragraph, for ``--help``."""
    codes = "; ".join(f"{int(code)} {text}" for code, text in MEANINGS.items())
    return f"Exit codes: {codes}."
