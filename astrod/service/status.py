"""The parts of the daemon's status (``status.json``, the dashboard's API): values in, plain dicts out."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from astrod import __version__
from astrod.io.journal import Journal
from astrod.io.status_file import write_status
from astrod.library.masters import MasterLibrary
from astrod.service.problems import Problems
from astrod.service.sessions import SessionWorker

log = structlog.get_logger()


def file_counts(counts: dict[str, int], workers: list[SessionWorker]) -> dict[str, int]:
    """The journal's counts by status, with frames through their session since its last checkpoint counted as
    what they became (the journal still has them queued)."""
    files = dict(counts)
    for worker in workers:
        for outcome, _, _ in worker.uncheckpointed().values():
            files["queued"] = files.get("queued", 0) - 1
            files[outcome] = files.get(outcome, 0) + 1
    if files.get("queued", 0) <= 0:
        files.pop("queued", None)
    return files


def session_entry(w: SessionWorker) -> dict[str, Any]:
    return {"id": w.id, "label": w.label, "target": w.key.target, "filter": w.key.filter,
            "night": w.key.night.isoformat(), "stacked": w.stats.stacked, "rejected": w.stats.rejected,
            "total_exposure_s": w.stats.exposure, "queue": w.queue_length, "last_frame": w.stats.last_metrics,
            "rejections": w.stats.rejections, "output": str(w.paths.output), "closing": w.closing,
            "problems": w.problems}


def closed_sessions(journal: Journal, *, last: int = 50) -> list[dict[str, Any]]:
    return [{"id": s.id, "label": s.info.get("label"), "output": s.info.get("output"), "closed_at": s.closed_at,
             **s.info.get("stats", {})} for s in journal.sessions(status="closed")][-last:]


def library_summary(path: Path, library: MasterLibrary | None) -> dict[str, Any]:
    summary: dict[str, Any] = {"path": str(path)}
    if library is not None:
        counts: dict[str, int] = {}
        for record in library.records():
            counts[record.kind.value] = counts.get(record.kind.value, 0) + 1
        summary["masters"] = counts
    return summary


def problem_entries(problems: Problems) -> list[dict[str, str]]:
    return [{"where": p.key, "problem": p.text, "since": p.since} for p in problems.current()]


def recent_rejections(journal: Journal, *, limit: int = 20) -> list[dict[str, Any]]:
    """The files rejected (or found to be duplicates) lately, newest first, with the reason: named, not only
    counted."""
    return [{"path": r.path, "status": r.status, "reason": r.reason}
            for r in journal.recent(status=["rejected", "duplicate"], limit=limit)]


class StatusProgress:
    """A long job's progress (a library build) as the status shows it: ``get`` and ``put`` are the owner's
    (the daemon's) progress value, which the dashboard renders as a bar."""

    def __init__(self, get: Callable[[], dict[str, Any]], put: Callable[[dict[str, Any] | None], None]) -> None:
        self._get = get
        self._put = put

    def start(self, stage: str, total: int) -> None:
        self._put({"what": f"library {stage}", "done": 0, "total": total})

    def advance(self, item: str = "", n: int = 1) -> None:
        p = self._get()
        if p:
            self._put({**p, "done": p["done"] + n, "item": item})

    def finish(self) -> None:
        self._put(None)


def short_status(problems: Problems, *, running: bool, starting: bool, line: str, started_at: datetime,
                 now: datetime) -> dict[str, Any]:
    """The status when the journal cannot be read (or is not open yet): who, since when, and what is wrong."""
    return {"running": running, "pid": os.getpid(), "version": __version__, "started_at": started_at.isoformat(),
            "updated_at": now.isoformat(), "starting": starting, "sessions": [], "files": {},
            "problems": problem_entries(problems), "errors": problems.history(), "status_line": line}


def write_status_quietly(path: Path, status: dict[str, Any]) -> None:
    """Write the status file; a failure is logged, never raised (the daemon goes on without it)."""
    try:
        write_status(path, status)
    except OSError as err:
        log.error("status_write_failed", path=str(path), reason=str(err))
