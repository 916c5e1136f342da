"""The daemon's journal: a SQLite database in the state folder recording every file seen and every session.

A frame's life: ``queued`` (seen, finished) -> ``stacked`` | ``rejected`` | ``calibration`` | ``ignored``.
The stacker checkpoint and the rows of the frames it contains are committed together
(:meth:`Journal.commit_checkpoint`), so after a crash a frame is either in the restored stack and marked
stacked, or still queued and stacked again — never lost, never counted twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from astrod.io.sqlite import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    hash TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    kind TEXT,
    session TEXT,
    metrics TEXT,
    arrival INTEGER NOT NULL,
    seen_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_session ON files(session, status);
CREATE INDEX IF NOT EXISTS files_status ON files(status);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    closed_at TEXT,
    checkpoint TEXT,
    checkpoint_seq INTEGER NOT NULL DEFAULT 0,
    info TEXT
);
"""

TERMINAL = ("stacked", "rejected", "calibration", "ignored")


def quick_hash(path: Path, *, size: int) -> str:
    """blake2b over the size, the first and the last 64 KiB: identifies a frame's content in milliseconds
    (the full file would cost a read of 50 MB per 26 MP frame)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(size).encode())
    with path.open("rb") as handle:
        h.update(handle.read(65536))
        if size > 131072:
            handle.seek(size - 65536)
            h.update(handle.read(65536))
    return h.hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class FileRecord:
    path: str
    size: int
    mtime: float
    hash: str | None
    status: str
    reason: str | None
    kind: str | None
    session: str | None
    metrics: dict[str, Any]
    arrival: int


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    key: dict[str, Any]
    status: str
    opened_at: str
    updated_at: str
    closed_at: str | None
    checkpoint: str | None
    checkpoint_seq: int
    info: dict[str, Any]


class Journal(SqliteStore):
    """Thread-safe: one connection, serialised by a lock (SQLite writes are serial anyway)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)

    # files -------------------------------------------------------------------------------------------
    def record_seen(self, path: Path, *, size: int, mtime: float, hash: str | None) -> bool:
        """Record a finished file; True when it is new or a new version (then it is queued), False if known."""
        with self._tx() as db:
            row = db.execute("SELECT size, mtime, hash FROM files WHERE path = ?", (str(path),)).fetchone()
            if row is not None and (row[0], row[1]) == (size, mtime):
                return False
            if row is not None and hash is not None and row[2] == hash and row[0] == size:
                db.execute("UPDATE files SET mtime = ? WHERE path = ?", (mtime, str(path)))
                return False  # touched, not changed
            arrival = db.execute("SELECT COALESCE(MAX(arrival), 0) + 1 FROM files").fetchone()[0]
            now = _now()
            db.execute(
                "INSERT INTO files(path, size, mtime, hash, status, arrival, seen_at, updated_at) "
                "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?) ON CONFLICT(path) DO UPDATE SET size = excluded.size, "
                "mtime = excluded.mtime, hash = excluded.hash, status = 'queued', reason = NULL, session = NULL, "
                "metrics = NULL, arrival = excluded.arrival, updated_at = excluded.updated_at",
                (str(path), size, mtime, hash, arrival, now, now))
            return True

    def set_file(self, path: Path, *, status: str, reason: str | None = None, kind: str | None = None,
                 session: str | None = None, metrics: Mapping[str, Any] | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE files SET status = ?, reason = ?, kind = COALESCE(?, kind), session = COALESCE(?, session), "
                "metrics = COALESCE(?, metrics), updated_at = ? WHERE path = ?",
                (status, reason, kind, session, json.dumps(dict(metrics)) if metrics is not None else None,
                 _now(), str(path)))

    def file(self, path: Path) -> FileRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM files WHERE path = ?", (str(path),)).fetchone()
        return _file(row) if row else None

    def files(self, *, session: str | None = None, status: Sequence[str] | None = None) -> list[FileRecord]:
        sql = "SELECT * FROM files WHERE 1 = 1"
        args: list[Any] = []
        if session is not None:
            sql += " AND session = ?"
            args.append(session)
        if status:
            sql += f" AND status IN ({','.join('?' * len(status))})"
            args.extend(status)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY arrival", args).fetchall()
        return [_file(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM files GROUP BY status").fetchall()
        return {str(s): int(n) for s, n in rows}

    # sessions ----------------------------------------------------------------------------------------
    def open_session(self, session_id: str, key: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        now = _now()
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO sessions(id, key, status, opened_at, updated_at, info) "
                       "VALUES (?, ?, 'open', ?, ?, ?)", (session_id, json.dumps(dict(key)), now, now,
                                                          json.dumps(dict(info))))

    def session(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return _session(row) if row else None

    def sessions(self, *, status: str | None = None) -> list[SessionRecord]:
        sql, args = "SELECT * FROM sessions", []
        if status is not None:
            sql += " WHERE status = ?"
            args.append(status)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY opened_at", args).fetchall()
        return [_session(r) for r in rows]

    def update_session(self, session_id: str, *, status: str | None = None, info: Mapping[str, Any] | None = None
                       ) -> None:
        with self._tx() as db:
            closed = _now() if status == "closed" else None
            db.execute("UPDATE sessions SET status = COALESCE(?, status), info = COALESCE(?, info), "
                       "closed_at = COALESCE(?, closed_at), updated_at = ? WHERE id = ?",
                       (status, json.dumps(dict(info)) if info is not None else None, closed, _now(), session_id))

    def commit_checkpoint(self, session_id: str, *, checkpoint: Path, seq: int,
                          frames: Sequence[tuple[Path, str, str | None, Mapping[str, Any]]],
                          info: Mapping[str, Any] | None = None) -> None:
        """In one transaction: the session's new checkpoint and the final status of the frames it covers
        (path, status 'stacked'|'rejected', reason, metrics)."""
        now = _now()
        with self._tx() as db:
            db.execute("UPDATE sessions SET checkpoint = ?, checkpoint_seq = ?, info = COALESCE(?, info), "
                       "updated_at = ? WHERE id = ?",
                       (str(checkpoint), seq, json.dumps(dict(info)) if info is not None else None, now,
                        session_id))
            db.executemany(
                "UPDATE files SET status = ?, reason = ?, session = ?, metrics = ?, updated_at = ? WHERE path = ?",
                [(status, reason, session_id, json.dumps(dict(metrics)), now, str(path))
                 for path, status, reason, metrics in frames])


def _file(row: tuple[Any, ...]) -> FileRecord:
    return FileRecord(path=row[0], size=row[1], mtime=row[2], hash=row[3], status=row[4], reason=row[5], kind=row[6],
                      session=row[7], metrics=json.loads(row[8]) if row[8] else {}, arrival=row[9])


def _session(row: tuple[Any, ...]) -> SessionRecord:
    return SessionRecord(id=row[0], key=json.loads(row[1]), status=row[2], opened_at=row[3], updated_at=row[4],
                         closed_at=row[5], checkpoint=row[6], checkpoint_seq=row[7],
                         info=json.loads(row[8]) if row[8] else {})
