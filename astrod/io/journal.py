"""The daemon's journal: a SQLite database in the state folder recording every file seen and every session.

A frame's life: ``queued`` (seen, finished) -> ``stacked`` | ``rejected`` | ``calibration`` | ``ignored`` |
``duplicate``. The stacker checkpoint and the rows of the frames it contains are committed together
(:meth:`Journal.commit_checkpoint`), so after a crash a frame is either in the restored stack and marked
stacked, or still queued and stacked again — never lost, never counted twice.

A frame is known by its content as well as its path: a file whose content stamp (`quick_hash` and size) equals
an earlier file's is the same exposure renamed, moved or copied, and is recorded as a ``duplicate`` of the first
path instead of being stacked again. Each recording of a path gets a new ``arrival`` number, so work queued for
an older version of a file that was overwritten since can tell that it is stale.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
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
    info TEXT,
    close_reason TEXT
);
CREATE INDEX IF NOT EXISTS files_hash ON files(hash, size);
CREATE TABLE IF NOT EXISTS solutions (
    stamp TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    session TEXT,
    result TEXT,
    reason TEXT,
    solved_at TEXT NOT NULL
);
"""
# columns added after the first release: (table, column, declaration) for journals made before them
_MIGRATIONS = (("sessions", "close_reason", "TEXT"),)

TERMINAL = ("stacked", "rejected", "calibration", "ignored", "duplicate")


def quick_hash(path: Path, *, size: int) -> str:
    """blake2b over the size, the first and the last 64 KiB: identifies a frame's content in milliseconds
    (the full file would cost a read of 50 MB per 26 MP frame)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(size).encode())
    with path.open("rb") as handle:
        if size <= 131072:  # a small file whole: head and tail would leave part of it out
            h.update(handle.read())
        else:
            h.update(handle.read(65536))
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


class Seen(Enum):
    NEW = "new"  # never seen: queued
    KNOWN = "known"  # this version is already recorded: nothing to do
    CHANGED = "changed"  # the path was recorded with other content (overwritten): the new version is queued
    DUPLICATE = "duplicate"  # the same content as another path (renamed, moved, copied): recorded, not queued


@dataclass(frozen=True, slots=True)
class Sighting:
    """What `Journal.record_seen` made of a file: ``previous`` is the record it replaced (CHANGED), ``original``
    the first path with the same content (DUPLICATE), ``arrival`` the number of this recording."""

    seen: Seen
    arrival: int
    previous: FileRecord | None = None
    original: str | None = None

    @property
    def queued(self) -> bool:
        return self.seen in (Seen.NEW, Seen.CHANGED)


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
    close_reason: str | None = None


class Journal(SqliteStore):
    """Thread-safe: one connection, serialised by a lock (SQLite writes are serial anyway).

    Opening a journal that is not a database, or whose pages fail SQLite's ``quick_check``, raises
    `StateCorrupt`; so does any later statement that meets a corrupt page.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA, migrations=_MIGRATIONS)

    # files -------------------------------------------------------------------------------------------
    def record_seen(self, path: Path, *, size: int, mtime: float, hash: str | None) -> Sighting:
        """Record a finished file: new, a new version of a known path, a duplicate of another path's content,
        or already known (see `Seen`)."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM files WHERE path = ?", (str(path),)).fetchone()
            previous = _file(row) if row is not None else None
            if previous is not None and (previous.size, previous.mtime) == (size, mtime):
                return Sighting(Seen.KNOWN, previous.arrival, previous=previous)
            if previous is not None and hash is not None and previous.hash == hash and previous.size == size:
                db.execute("UPDATE files SET mtime = ? WHERE path = ?", (mtime, str(path)))
                return Sighting(Seen.KNOWN, previous.arrival, previous=previous)  # touched, not changed
            original = None
            if hash is not None:
                first = db.execute(
                    "SELECT path, kind FROM files WHERE hash = ? AND size = ? AND path != ? AND status != 'duplicate' "
                    "ORDER BY arrival LIMIT 1", (hash, size, str(path))).fetchone()
                original = first
            arrival = db.execute("SELECT COALESCE(MAX(arrival), 0) + 1 FROM files").fetchone()[0]
            now = _now()
            status, reason, kind = ("queued", None, None) if original is None else (
                "duplicate", f"{path}: the same exposure as {original[0]} (renamed, moved or copied)", original[1])
            db.execute(
                "INSERT INTO files(path, size, mtime, hash, status, reason, kind, arrival, seen_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET size = excluded.size, "
                "mtime = excluded.mtime, hash = excluded.hash, status = excluded.status, reason = excluded.reason, "
                "kind = excluded.kind, session = NULL, metrics = NULL, arrival = excluded.arrival, "
                "updated_at = excluded.updated_at",
                (str(path), size, mtime, hash, status, reason, kind, arrival, now, now))
            if original is not None:
                return Sighting(Seen.DUPLICATE, arrival, previous=previous, original=str(original[0]))
            return Sighting(Seen.NEW if previous is None else Seen.CHANGED, arrival, previous=previous)

    def duplicates_of(self, path: Path) -> list[str]:
        """The paths recorded as duplicates of ``path``'s content, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT d.path FROM files d JOIN files o ON d.hash = o.hash AND d.size = o.size "
                "WHERE o.path = ? AND d.status = 'duplicate' ORDER BY d.arrival", (str(path),)).fetchall()
        return [str(r[0]) for r in rows]

    def restore_file(self, path: Path, *, size: int, mtime: float, hash: str | None, status: str,
                     reason: str | None, kind: str | None, session: str | None,
                     metrics: Mapping[str, Any] | None) -> None:
        """Insert a file's record as a journal rebuild found it (checkpoints, products); keeps an existing row."""
        now = _now()
        with self._tx() as db:
            arrival = db.execute("SELECT COALESCE(MAX(arrival), 0) + 1 FROM files").fetchone()[0]
            db.execute("INSERT OR IGNORE INTO files(path, size, mtime, hash, status, reason, kind, session, metrics, "
                       "arrival, seen_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (str(path), size, mtime, hash, status, reason, kind, session,
                        json.dumps(dict(metrics)) if metrics is not None else None, arrival, now, now))

    def recent(self, *, status: Sequence[str], limit: int = 20) -> list[FileRecord]:
        """The last ``limit`` files that got one of ``status``, newest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM files WHERE status IN ({','.join('?' * len(status))}) "
                "ORDER BY updated_at DESC, arrival DESC LIMIT ?", (*status, limit)).fetchall()
        return [_file(r) for r in rows]

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
            if status == "closed":
                db.execute("UPDATE sessions SET close_reason = NULL WHERE id = ?", (session_id,))

    def request_close(self, session_id: str, reason: str) -> None:
        """Remember that the session is to close (a restart in the middle of the close closes it again)."""
        with self._tx() as db:
            db.execute("UPDATE sessions SET close_reason = ?, updated_at = ? WHERE id = ? AND status = 'open'",
                       (reason, _now(), session_id))

    def reopen_session(self, session_id: str) -> int:
        """A closed session open again, to be re-stacked from its sources (see `requeue_session`)."""
        with self._tx() as db:
            db.execute("UPDATE sessions SET status = 'open', closed_at = NULL, close_reason = NULL, checkpoint = NULL, "
                       "updated_at = ? WHERE id = ?", (_now(), session_id))
        return self.requeue_session(session_id)

    def requeue_session(self, session_id: str) -> int:
        """Forget the session's checkpoint and queue every frame it held again, in one transaction: the session
        is then stacked anew from its source files (after a lost checkpoint, or a stacked file overwritten).
        Returns the number of frames queued."""
        with self._tx() as db:
            db.execute("UPDATE sessions SET checkpoint = NULL, updated_at = ? WHERE id = ?", (_now(), session_id))
            cur = db.execute("UPDATE files SET status = 'queued', reason = NULL, metrics = NULL, updated_at = ? "
                             "WHERE session = ? AND status IN ('stacked', 'rejected', 'queued')",
                             (_now(), session_id))
            return int(cur.rowcount)

    def restore_session(self, session_id: str, *, key: Mapping[str, Any], status: str, info: Mapping[str, Any],
                        checkpoint: Path | None, seq: int) -> None:
        """Insert a session as a journal rebuild found it; keeps an existing row."""
        now = _now()
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO sessions(id, key, status, opened_at, updated_at, closed_at, checkpoint, "
                       "checkpoint_seq, info) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (session_id, json.dumps(dict(key)), status, now, now, now if status == "closed" else None,
                        str(checkpoint) if checkpoint is not None else None, seq, json.dumps(dict(info))))

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

    # plate solutions -------------------------------------------------------------------------------------
    def record_solution(self, stamp: str, *, path: Path, session: str | None, result: Mapping[str, Any] | None,
                        reason: str | None) -> None:
        """Remember the solve of the frame whose content is ``stamp`` (a newer solve replaces it)."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO solutions(stamp, path, session, result, reason, solved_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       (stamp, str(path), session, json.dumps(dict(result)) if result is not None else None,
                        reason, _now()))

    def solution(self, stamp: str) -> SolutionRecord | None:
        """The journaled solve of the frame whose content is ``stamp``, or None."""
        with self._lock:
            row = self._db.execute("SELECT stamp, path, session, result, reason FROM solutions WHERE stamp = ?",
                                   (stamp,)).fetchone()
        if row is None:
            return None
        return SolutionRecord(stamp=row[0], path=row[1], session=row[2],
                              result=json.loads(row[3]) if row[3] else None, reason=row[4])

    def frame_stamp(self, path: Path) -> str | None:
        """The content stamp of a recorded file (path, size and content hash; its time when unhashed): a
        solve journaled under it belongs to this version of the file. None for a file never recorded."""
        record = self.file(path)
        if record is None:
            return None
        return f"{record.path}|{record.size}|{record.hash or record.mtime}"


@dataclass(frozen=True, slots=True)
class SolutionRecord:
    """A plate solve as journaled: the frame's content stamp, its path, and either the solution (as
    `astrod.pipeline.solving.SolveResult.record` gives it) or the one-line reason it could not be solved."""

    stamp: str
    path: str
    session: str | None
    result: dict[str, Any] | None
    reason: str | None


def _file(row: tuple[Any, ...]) -> FileRecord:
    return FileRecord(path=row[0], size=row[1], mtime=row[2], hash=row[3], status=row[4], reason=row[5], kind=row[6],
                      session=row[7], metrics=json.loads(row[8]) if row[8] else {}, arrival=row[9])


def _session(row: tuple[Any, ...]) -> SessionRecord:
    return SessionRecord(id=row[0], key=json.loads(row[1]), status=row[2], opened_at=row[3], updated_at=row[4],
                         closed_at=row[5], checkpoint=row[6], checkpoint_seq=row[7],
                         info=json.loads(row[8]) if row[8] else {}, close_reason=row[9] if len(row) > 9 else None)
