"""Log priorities for the journal: ``<N>`` on every line, only when stderr is the journal.

The journal itself reading them is tested under a real systemd (tests/system); here, the
prefixes and the JOURNAL_STREAM check, with a real subprocess whose stderr is a file we know.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from pnpbroker.journallog import JournalFormatter, priority, stderr_is_journal

EMIT = (
    "import logging, sys\n"
    "from pnpbroker.commands.run import setup_logging\n"
    "setup_logging('debug')\n"
    "log = logging.getLogger('pnpbroker')\n"
    "log.debug('d'); log.info('i'); log.warning('w'); log.error('e\\nsecond line')\n"
)


def test_levels_map_to_syslog_priorities() -> None:
    levels = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
    assert [priority(level) for level in levels] == [7, 6, 4, 3, 2]
    assert priority(logging.INFO + 5) == 6  # in between: the lower one


def test_every_line_of_a_record_carries_the_priority() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "one\ntwo", None, None)
    assert JournalFormatter("%(message)s").format(record) == "<3>one\n<3>two"


def run_with_stderr_in(path: Path, journal_stream: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    with path.open("w") as stderr:
        subprocess.run([sys.executable, "-c", EMIT], stderr=stderr, env=env, check=True)
    return path.read_text()


def test_prefixes_only_when_stderr_is_the_named_stream(tmp_path: Path) -> None:
    log = tmp_path / "stderr"
    log.touch()
    here = os.stat(log)
    named = run_with_stderr_in(log, f"{here.st_dev}:{here.st_ino}")
    assert named.splitlines() == ["<7>d", "<6>i", "<4>w", "<3>e", "<3>second line"]
    inherited = run_with_stderr_in(log, f"{here.st_dev}:{here.st_ino + 1}")  # another stream
    assert inherited.splitlines()[0] == "pnpbroker: DEBUG: d"
    assert run_with_stderr_in(log, None).splitlines()[2] == "pnpbroker: WARNING: w"


def test_stderr_is_journal_rejects_garbage() -> None:
    assert not stderr_is_journal({"JOURNAL_STREAM": "nonsense"})
    assert not stderr_is_journal({})
