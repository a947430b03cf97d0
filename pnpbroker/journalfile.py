"""The journal's SQLite file: schema, identity, durability, and what to do when it is unusable.

:func:`open_file` gives :class:`pnpbroker.journal.Journal` a connection to a checked file:

- **Created afresh** (no file, or an empty one): the schema and a new ``journal_id`` (UUID).
- **Older schema** (version 1): migrated in place; it gets its ``journal_id`` then.
- **Damaged content**: not an SQLite file, cut short, malformed pages, not a journal, or a schema
  from a newer pnpbroker. The file (with its ``-wal`` and ``-shm``) is *moved aside* to
  ``journal.sqlite.corrupt-<UTC time>``, one ERROR line says so, and a fresh journal starts, as
  journald renames a corrupt file to ``.journal~`` and opens a new one. Nothing is deleted.
- **An unusable place**: a file the broker may not read or write, a directory where the file
  should be, a read-only or failing file system. :class:`JournalUnusable`: the broker says so in
  one line and exits 111 before anything runs (a fresh file could not be written there either).

Durability (``journal_sync``). SQLite commits in WAL mode with ``synchronous=NORMAL``: a
process crash loses no commit, a power loss or an OS crash may lose the last ones. With
``"full"`` (the default) nothing reaches a client before it is on disk: the journal's
``synced`` cursor moves only after an fsync of the WAL (:meth:`pnpbroker.journal.Journal.sync`,
one per window the publish queue sends, in a thread), and signals, ``GetEvents`` and
``LastSequence`` stop at it; so a sequence a client has seen survives a power loss. With
``"normal"`` the WAL is synced at checkpoints only, and what a client saw may vanish with the
power, its sequence then given to another event. So under ``"normal"`` a journal left open by an
earlier boot (the ``open_boot`` mark is the boot id of the run that has it open) gets a new
``journal_id``: clients are told instead of misled.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
import uuid
from pathlib import Path

from pnpbroker.errors import BrokerError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
SYNC_MODES = ("full", "normal")
_SCHEMA = """
CREATE TABLE events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    seqnum   INTEGER NOT NULL,
    received REAL NOT NULL,
    uevent   BLOB NOT NULL,
    handler  TEXT,
    lost     TEXT
);
CREATE TABLE cursors (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
INSERT INTO cursors VALUES ('handled', 0), ('published', 0);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
#: Version 1 had no losses in the stream and no identity.
_FROM_1 = """
ALTER TABLE events ADD COLUMN lost TEXT;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_TABLES = {"events", "cursors", "sqlite_sequence"}
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class JournalUnusable(OSError, BrokerError):
    """The journal's file cannot be opened, read or written where it is (exit 111)."""


class JournalDamaged(ValueError, BrokerError):
    """The journal's file holds something this broker cannot use as its journal."""


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def open_file(path: Path, sync: str = "full") -> tuple[sqlite3.Connection, Path | None]:
    """A checked connection to the journal at ``path``, and where a damaged one was moved
    (None if it was usable); JournalUnusable if no journal can be kept there."""
    try:
        return _checked(path, sync), None
    except JournalDamaged as exc:
        aside = move_aside(path)
        log.error(
            "JOURNAL DAMAGED: %s (%s); moved aside to %s, starting a fresh journal",
            path,
            exc,
            aside,
        )
    return _checked(path, sync), aside


def _checked(path: Path, sync: str) -> sqlite3.Connection:
    if path.is_dir():
        raise JournalUnusable(21, f"{path} is a directory, not a journal")
    try:
        db = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise JournalUnusable(5, f"cannot open {path}: {exc}") from None
    try:
        _prepare(db, path, sync)
    except BaseException:
        db.close()
        raise
    return db


def _prepare(db: sqlite3.Connection, path: Path, sync: str) -> None:
    """The schema (made or migrated; looked at before anything is written), WAL mode, a quick
    check, the durability and identity."""
    try:
        version = _version(db, path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA wal_autocheckpoint=0")  # off the loop: pnpbroker.checkpoints
        if version is None:
            _script(db, _SCHEMA)
        elif version == 1:
            log.info("journal %s: schema 1 -> %d", path, SCHEMA_VERSION)
            _script(db, _FROM_1)
        _quick_check(db)
        _mark_open(db, sync)
    except sqlite3.DatabaseError as exc:
        raise _classify(exc, path) from None


def _script(db: sqlite3.Connection, script: str) -> None:
    """Run ``script`` and set the schema version, in one transaction."""
    try:
        db.executescript(f"BEGIN; {script} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
    except BaseException:
        if db.in_transaction:
            db.rollback()
        raise


def _version(db: sqlite3.Connection, path: Path) -> int | None:
    """The schema version, or None for an empty file; JournalDamaged if it is not ours."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables and version == 0:
        return None
    if version > SCHEMA_VERSION:
        raise JournalDamaged(f"schema {version}, written by a newer pnpbroker (this one reads 1-2)")
    if version not in (1, SCHEMA_VERSION) or not tables >= _TABLES:
        raise JournalDamaged(f"not a pnpbroker journal (schema {version}, tables {sorted(tables)})")
    return version


def _quick_check(db: sqlite3.Connection) -> None:
    problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        raise JournalDamaged("; ".join(problems))


def _mark_open(db: sqlite3.Connection, sync: str) -> None:
    """Give the journal its identity (a new one if a boot ended with it open under "normal"),
    then mark it open in this boot: that write is synced whatever ``sync`` says."""
    db.execute("PRAGMA synchronous=FULL")
    meta = dict(db.execute("SELECT key, value FROM meta"))
    booted, now = meta.get("open_boot"), boot_id()
    journal_id = meta.get("journal_id")
    if journal_id and sync == "normal" and booted and booted != now:
        log.warning(
            "the journal was open when an earlier boot ended (journal_sync = normal): its last "
            "events may be lost and their sequences reused; it gets a new JournalId"
        )
        journal_id = None
    with db:
        db.execute("BEGIN")
        if not journal_id:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('journal_id', ?)", (str(uuid.uuid4()),))
        db.execute("INSERT OR REPLACE INTO meta VALUES ('open_boot', ?)", (now,))
    db.execute("PRAGMA synchronous=NORMAL")  # "full" syncs before showing: Journal.sync


def mark_closed(db: sqlite3.Connection) -> None:
    """A clean stop: the journal is no longer open in this boot (synced, as the mark was)."""
    db.execute("PRAGMA synchronous=FULL")
    db.execute("DELETE FROM meta WHERE key='open_boot'")


def _classify(exc: sqlite3.DatabaseError, path: Path) -> BrokerError:
    """Damaged content (moved aside) or an unusable place (exit 111)."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return JournalDamaged(str(exc))
    return JournalUnusable(5, f"cannot use the journal {path}: {exc}")


def move_aside(path: Path) -> Path:
    """Rename the journal and its -wal and -shm to ``NAME.corrupt-<UTC time>``; the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        for suffix in ("-wal", "-shm", ""):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{path}{suffix}").rename(f"{aside}{suffix}")
    except OSError as exc:
        raise JournalUnusable(
            exc.errno or 5, f"cannot move the damaged {path} aside: {exc}"
        ) from None
    return aside
