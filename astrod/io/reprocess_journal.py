"""The reprocess journal: which sessions of an archive have their products written, and from what (SQLite,
``<output>/.astrod-reprocess/journal.sqlite``).

A session is recorded after its products are written, with the digest of what made them (each frame's content
stamp, the masters, the settings: `astrod.pipeline.reprocess.session_digest`). A run skips a session whose
digest is recorded and whose products are there; an interrupted run therefore continues with the sessions it
had not finished, and a changed frame makes only its own session's digest differ.

A product made of several sessions (a target's composites of a night, a target's project in a filter) is
recorded under its key with the digest of its sessions' digests once they are all recorded and it is rebuilt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from astrod.io.journal import quick_hash
from astrod.io.sqlite import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    output TEXT NOT NULL,
    stacked INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    finished_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS combined (
    key TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    finished_at TEXT NOT NULL
);
"""
STATE_FOLDER = ".astrod-reprocess"
JOURNAL_NAME = "journal.sqlite"


@dataclass(frozen=True, slots=True)
class DoneSession:
    id: str
    digest: str
    output: str
    stacked: int
    rejected: int
    finished_at: str


class ReprocessJournal(SqliteStore):
    """Thread-safe: one connection serialised by a lock."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)

    def session(self, sid: str) -> DoneSession | None:
        with self._lock:
            row = self._db.execute("SELECT id, digest, output, stacked, rejected, finished_at FROM sessions "
                                   "WHERE id = ?", (sid,)).fetchone()
        return DoneSession(*row) if row else None

    def record_session(self, sid: str, *, digest: str, output: Path, stacked: int, rejected: int,
                       now: datetime) -> None:
        """The session's products are written, made from what ``digest`` says."""
        with self._tx() as db:
            db.execute("INSERT INTO sessions(id, digest, output, stacked, rejected, finished_at) "
                       "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET digest = excluded.digest, "
                       "output = excluded.output, stacked = excluded.stacked, rejected = excluded.rejected, "
                       "finished_at = excluded.finished_at",
                       (sid, digest, str(output), stacked, rejected, now.isoformat()))

    def combined(self, key: str) -> str | None:
        """The digest a product of several sessions was last rebuilt from (None: never)."""
        with self._lock:
            row = self._db.execute("SELECT digest FROM combined WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def record_combined(self, key: str, *, digest: str, now: datetime) -> None:
        """The product ``key`` is rebuilt from the sessions ``digest`` says."""
        with self._tx() as db:
            db.execute("INSERT INTO combined(key, digest, finished_at) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
                       "SET digest = excluded.digest, finished_at = excluded.finished_at",
                       (key, digest, now.isoformat()))


def content_stamp(path: Path) -> str:
    """A frame file's content stamp: its size and the journal's quick hash (head and tail, as the daemon's)."""
    size = path.stat().st_size
    return f"{size}:{quick_hash(path, size=size)}"


def folder_stamp(folder: Path | None) -> str:
    """A digest of the master files in a library folder (names, sizes, modification times): changes when a
    master is added, rebuilt or removed. ``""`` for no library."""
    if folder is None or not folder.is_dir():
        return ""
    h = hashlib.blake2b(digest_size=16)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".fits", ".fit")):
        st = path.stat()
        h.update(f"{path.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
