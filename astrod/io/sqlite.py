"""A small base for astrod's SQLite stores (the journal, the capture-plan journal), and what their failures mean.

A store's failures are of two kinds the daemon treats differently: a *corrupt* file (not a database, a garbled
page) is moved aside and rebuilt, while a *disk* problem (full, read-only, I/O error) is waited out — the file is
fine and will be usable again when space returns.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from astrod.errors import AstrodError

_CORRUPT = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_DISK = frozenset({"SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_BUSY",
                   "SQLITE_LOCKED", "SQLITE_PERM"})


class StateCorrupt(AstrodError):
    """A state file (the journal) is not a database or fails its integrity check."""


def _codes(err: BaseException) -> str:
    """The primary result code's name: SQLITE_IOERR_WRITE -> SQLITE_IOERR."""
    name = str(getattr(err, "sqlite_errorname", "") or "")
    return "_".join(name.split("_")[:2])


def is_corrupt(err: BaseException) -> bool:
    """Whether ``err`` says the database file itself is damaged (rebuild it), not its disk."""
    if isinstance(err, StateCorrupt):
        return True
    if not isinstance(err, sqlite3.DatabaseError):
        return False
    if _codes(err) in _CORRUPT:
        return True
    text = str(err).lower()
    return "malformed" in text or "not a database" in text


def is_disk_problem(err: BaseException) -> bool:
    """Whether ``err`` is the state disk failing (full, read-only, I/O, permissions): wait and retry."""
    if isinstance(err, OSError):
        return True
    if not isinstance(err, sqlite3.DatabaseError) or is_corrupt(err):
        return False
    if _codes(err) in _DISK:
        return True
    text = str(err).lower()
    return any(word in text for word in ("disk", "full", "readonly", "read-only", "unable to open", "locked"))


def move_aside(path: Path) -> Path:
    """Rename a damaged database (and its WAL and shared-memory files) to ``<name>.corrupt-<time>``; returns
    the new name of the main file. Nothing is deleted: the user may want to look at it."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, target.with_name(target.name + suffix))
    return target


class SqliteStore:
    """One connection shared by threads and serialised by a lock (SQLite writes are serial anyway); WAL so that
    readers in other processes (`astrod status`, tests) never block the daemon; FULL sync so that a committed
    transaction survives a power cut.

    ``check`` runs SQLite's ``quick_check`` on opening (a few ms for a night's journal): a damaged file raises
    `StateCorrupt` at once instead of failing the first statement that meets the bad page.
    """

    def __init__(self, path: Path, schema: str, *, migrations: Sequence[tuple[str, str, str]] = (),
                 check: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            if check:
                result = self._db.execute("PRAGMA quick_check").fetchall()
                if result != [("ok",)]:
                    raise StateCorrupt(f"{path}: damaged database: "
                                       + "; ".join(str(r[0]) for r in result[:3]))
            self._db.executescript(schema)
            for table, column, declaration in migrations:
                columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        except sqlite3.DatabaseError as err:
            self._db.close()
            if is_corrupt(err):
                raise StateCorrupt(f"{path}: damaged database: {err}") from err
            raise
        except StateCorrupt:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # a failed COMMIT (disk full) may already have rolled back: the original error is what matters
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
