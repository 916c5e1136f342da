"""The master library's index: a SQLite database beside the masters, and the folder's housekeeping.

One row per master: its grouping key (JSON), kind, path relative to the library folder, source count, hashes
and free-form details. Every write is one transaction, made after the master's file was written atomically,
so a build killed at any moment leaves the index consistent (at worst a master file that is not indexed yet,
which the next build writes again). WAL mode lets readers (the daemon matching frames) work while a build
writes. This module knows nothing about what the keys mean; :mod:`astrod.library` does.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astrod.errors import LibraryError

# A library's own folder of prepared masters, for commands run now and then (`astrod stack`): a set made once
# is mapped by every later run with the same masters (`astrod.io.mapped_masters`, named by the masters'
# content and astrod's version).
PREPARED_FOLDER = ".prepared"

INDEX_NAME = "index.sqlite"
LOCK_NAME = ".build.lock"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS masters (
    key_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    camera TEXT,
    key_json TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    n_frames INTEGER NOT NULL,
    low_n INTEGER NOT NULL,
    source_hash TEXT NOT NULL,
    build_hash TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    created TEXT NOT NULL,
    info_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS masters_kind_camera ON masters (kind, camera);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = ("key_id", "kind", "camera", "key_json", "path", "n_frames", "low_n", "source_hash", "build_hash",
            "content_hash", "created", "info_json")


@dataclass(frozen=True, slots=True)
class IndexRow:
    """One master as the index stores it. ``key`` and ``info`` are JSON objects; ``path`` is POSIX, relative
    to the library folder; ``created`` is ISO 8601 UTC."""

    key_id: str
    kind: str
    camera: str | None
    key: Mapping[str, Any]
    path: str
    n_frames: int
    low_n: bool
    source_hash: str
    build_hash: str
    content_hash: str
    created: str
    info: Mapping[str, Any] = field(default_factory=dict)


def _row(values: tuple[Any, ...]) -> IndexRow:
    d = dict(zip(_COLUMNS, values, strict=True))
    return IndexRow(key_id=d["key_id"], kind=d["kind"], camera=d["camera"], key=json.loads(d["key_json"]),
                    path=d["path"], n_frames=int(d["n_frames"]), low_n=bool(d["low_n"]),
                    source_hash=d["source_hash"], build_hash=d["build_hash"], content_hash=d["content_hash"],
                    created=d["created"], info=json.loads(d["info_json"]))


class MasterIndex:
    """The SQLite index of one library folder. Open with :meth:`open`; use as a context manager.

    Safe to share between threads (calls are serialised); every write is one transaction.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, folder: str | os.PathLike[str], *, create: bool = True) -> MasterIndex:
        """The index of the library in ``folder``; with ``create`` the folder and database are made if
        missing, otherwise a missing index raises LibraryError."""
        root = Path(folder)
        path = root / INDEX_NAME
        if not create and not path.is_file():
            raise LibraryError(f"{root}: no master library index ({INDEX_NAME}); run `astrod library build`")
        try:
            if create:
                root.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as err:
            raise LibraryError(f"{path}: cannot open the library index: {err}") from err
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed master survives a power cut
            db.execute("PRAGMA busy_timeout=30000")
            with _transaction(db):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                found = db.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
                if found is None:
                    db.execute("INSERT INTO meta (name, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif int(found[0]) != SCHEMA_VERSION:
                    raise LibraryError(f"{path}: index schema version {found[0]}, this astrod reads "
                                       f"{SCHEMA_VERSION}")
        except sqlite3.Error as err:
            db.close()
            raise LibraryError(f"{path}: cannot read the library index: {err}") from err
        except LibraryError:
            db.close()
            raise
        return cls(db, path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> MasterIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, params).fetchall())
            except sqlite3.Error as err:
                raise LibraryError(f"{self.path}: index query failed: {err}") from err

    def get(self, key_id: str) -> IndexRow | None:
        found = self._query(f"SELECT {', '.join(_COLUMNS)} FROM masters WHERE key_id = ?", (key_id,))
        return _row(found[0]) if found else None

    def rows(self, *, kind: str | None = None, camera: str | None = None) -> list[IndexRow]:
        """Every row, or those of one ``kind`` and/or ``camera``, ordered by kind then path."""
        where: list[str] = []
        params: list[Any] = []
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if camera is not None:
            where.append("camera = ?")
            params.append(camera)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM masters"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_row(r) for r in self._query(sql + " ORDER BY kind, path", tuple(params))]

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM masters")[0][0])

    def put(self, row: IndexRow) -> None:
        """Insert or replace the row of ``row.key_id`` in one transaction."""
        values = (row.key_id, row.kind, row.camera, json.dumps(dict(row.key), sort_keys=True), row.path,
                  int(row.n_frames), int(row.low_n), row.source_hash, row.build_hash, row.content_hash,
                  row.created, json.dumps(dict(row.info), sort_keys=True))
        with self._lock:
            try:
                with _transaction(self._db):
                    # another key may have owned this path (a key whose name changed): the path wins
                    self._db.execute("DELETE FROM masters WHERE path = ? AND key_id != ?", (row.path, row.key_id))
                    self._db.execute(f"INSERT OR REPLACE INTO masters ({', '.join(_COLUMNS)}) "
                                     f"VALUES ({', '.join('?' * len(_COLUMNS))})", values)
            except sqlite3.Error as err:
                raise LibraryError(f"{self.path}: cannot write the index: {err}") from err

    def remove(self, key_id: str) -> bool:
        """Remove one row; True if it existed."""
        with self._lock:
            try:
                with _transaction(self._db):
                    cur = self._db.execute("DELETE FROM masters WHERE key_id = ?", (key_id,))
            except sqlite3.Error as err:
                raise LibraryError(f"{self.path}: cannot write the index: {err}") from err
        return cur.rowcount > 0

    def data_version(self) -> int:
        """A number that changes when another connection commits (cheap cache invalidation)."""
        return int(self._query("PRAGMA data_version")[0][0])


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@contextlib.contextmanager
def library_lock(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the library's build lock; raises LibraryError at once if another process holds it.

    An advisory ``flock`` on a file in the folder: the kernel drops it when the holder dies, killed or not.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise LibraryError(f"{root}: another library build is running") from err
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left under ``folder``; returns them.

    Call only while holding :func:`library_lock`: a running build's temporaries are not stale.
    """
    removed: list[Path] = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for tmp in sorted(root.rglob(".*.tmp")):
        # the prepared masters' folder is not the build's: a stack may be writing its set there right now
        if tmp.is_file() and PREPARED_FOLDER not in tmp.relative_to(root).parts:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    p = Path(path)
    try:
        with p.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                h.update(chunk)
    except OSError as err:
        raise LibraryError(f"{p}: cannot read: {err.strerror or err}") from err
    return h.hexdigest()


def file_stamp(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(size, mtime_ns) of a file; LibraryError if it cannot be stat'ed."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as err:
        raise LibraryError(f"{p}: cannot stat: {err.strerror or err}") from err
    return st.st_size, st.st_mtime_ns
