"""The capture plans' journal: which frames of which plan run were taken (SQLite, ``<state>/capture.sqlite``).

A run is one execution of a plan, identified by the plan's name and a digest of its steps. A frame is recorded
after its file is complete in the capture folder, so after a crash a run resumes at the first frame without a
record (and the runner checks whether that frame's file already exists before taking it again).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from astrod.io.sqlite import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    plan TEXT NOT NULL,
    digest TEXT NOT NULL,
    stamp TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE TABLE IF NOT EXISTS frames (
    run INTEGER NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    path TEXT NOT NULL,
    status TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (run, step, seq)
);
"""


@dataclass(frozen=True, slots=True)
class PlanRun:
    id: int
    plan: str
    digest: str
    stamp: str
    started_at: str
    finished_at: str | None


class PlanJournal(SqliteStore):
    """Thread-safe: one connection serialised by a lock."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)

    def latest_run(self, plan: str, digest: str) -> PlanRun | None:
        """The most recent run of this plan with these steps, finished or not."""
        with self._lock:
            row = self._db.execute("SELECT id, plan, digest, stamp, started_at, finished_at FROM runs "
                                   "WHERE plan = ? AND digest = ? ORDER BY id DESC LIMIT 1", (plan, digest)).fetchone()
        return PlanRun(*row) if row else None

    def new_run(self, plan: str, digest: str, *, now: datetime) -> PlanRun:
        stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
        with self._tx() as db:
            cur = db.execute("INSERT INTO runs(plan, digest, stamp, started_at) VALUES (?, ?, ?, ?)",
                             (plan, digest, stamp, now.isoformat()))
            run_id = int(cur.lastrowid or 0)
        return PlanRun(run_id, plan, digest, stamp, now.isoformat(), None)

    def finish_run(self, run_id: int, *, now: datetime) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET finished_at = ? WHERE id = ?", (now.isoformat(), run_id))

    def record_frame(self, run_id: int, *, step: int, seq: int, path: Path, status: str, now: datetime) -> None:
        """Record a frame of a run as ``done`` or ``failed`` (a later ``done`` replaces a ``failed``)."""
        with self._tx() as db:
            db.execute("INSERT INTO frames(run, step, seq, path, status, at) VALUES (?, ?, ?, ?, ?, ?) "
                       "ON CONFLICT(run, step, seq) DO UPDATE SET path = excluded.path, status = excluded.status, "
                       "at = excluded.at", (run_id, step, seq, str(path), status, now.isoformat()))

    def frames(self, run_id: int, *, status: str | None = "done") -> dict[tuple[int, int], str]:
        """(step, seq) -> path of the run's frames with that status (None: any)."""
        sql = "SELECT step, seq, path FROM frames WHERE run = ?"
        args: tuple[object, ...] = (run_id,)
        if status is not None:
            sql += " AND status = ?"
            args = (run_id, status)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return {(int(r[0]), int(r[1])): str(r[2]) for r in rows}
