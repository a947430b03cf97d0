"""Log lines with their priority for the journal, when standard error is the journal.

systemd connects a service's stderr to journald and says so in ``JOURNAL_STREAM`` (the device
and inode of that stream, see systemd.exec(5)). journald reads a ``<N>`` prefix on each line as
the syslog priority of that line (``SyslogLevelPrefix=``, on by default), so
``journalctl -p warning`` shows warnings and errors only. This is chosen over the journal's
native socket because it needs no second channel and no protocol of our own, keeps the order
of lines with the programs' output, and falls back to plain lines anywhere else (a terminal, a
test's log file), where the prefix is never written.
"""

from __future__ import annotations

import logging
import os

#: syslog priorities (sd-daemon.h: SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG).
PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6}
DEBUG_PRIORITY = 7


def stderr_is_journal(environ: dict[str, str] | None = None) -> bool:
    """True when ``$JOURNAL_STREAM`` names the file our fd 2 is (not merely inherited)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        stat = os.fstat(2)
    except OSError:
        return False
    return (
        device.isdigit()
        and inode.isdigit()
        and (stat.st_dev, stat.st_ino)
        == (
            int(device),
            int(inode),
        )
    )


def priority(level: int) -> int:
    """The syslog priority of a logging level (levels in between round down to the next)."""
    for threshold, value in PRIORITIES.items():
        if level >= threshold:
            return value
    return DEBUG_PRIORITY


class JournalFormatter(logging.Formatter):
    """Every line of a record (a traceback too) starts with the record's ``<N>`` priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))
