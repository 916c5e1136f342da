"""The capture plans' journal: runs and the frames recorded for them survive reopening."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from astrod.io.plan_journal import PlanJournal

NOW = datetime(2026, 11, 21, 20, 0, tzinfo=UTC)


def test_runs_and_frames_survive_reopening(tmp_path: Path) -> None:
    """A run's done frames, failed frames and finish time read back after the database is closed and opened
    again; a later 'done' replaces a 'failed' for the same frame; another digest is another plan."""
    db = tmp_path / "capture.sqlite"
    journal = PlanJournal(db)
    run = journal.new_run("night", "abc", now=NOW)
    journal.record_frame(run.id, step=0, seq=1, path=tmp_path / "a.fits", status="done", now=NOW)
    journal.record_frame(run.id, step=0, seq=2, path=tmp_path / "b.fits", status="failed", now=NOW)
    journal.close()
    journal = PlanJournal(db)
    try:
        again = journal.latest_run("night", "abc")
        assert again is not None and again.id == run.id and again.stamp == "20261121T200000"
        assert again.finished_at is None
        assert journal.frames(run.id) == {(0, 1): str(tmp_path / "a.fits")}
        assert journal.frames(run.id, status="failed") == {(0, 2): str(tmp_path / "b.fits")}
        journal.record_frame(run.id, step=0, seq=2, path=tmp_path / "b.fits", status="done", now=NOW)
        assert set(journal.frames(run.id)) == {(0, 1), (0, 2)}
        journal.finish_run(run.id, now=NOW)
        finished = journal.latest_run("night", "abc")
        assert finished is not None and finished.finished_at == NOW.isoformat()
        assert journal.latest_run("night", "other") is None
    finally:
        journal.close()
