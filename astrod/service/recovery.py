"""A damaged journal is moved aside and rebuilt from what the daemon wrote elsewhere.

The open sessions come back from their newest readable checkpoint (each one carries the session's id, key and
label, and the frames table of every frame it holds); the closed sessions from their products (``session.json``
and ``frames.csv``). A file recorded so keeps its status, and its current size, time and content stamp, so the
start-up scan does not queue it again. Frames that were queued but not yet in any checkpoint are not in the
rebuilt journal: the scan finds them as new and they are stacked then — once, as after a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from astrod.io.checkpoint import load_checkpoint
from astrod.io.files import files_matching, read_json, subfolders
from astrod.io.journal import Journal, quick_hash
from astrod.io.previews import read_frames_table
from astrod.io.sqlite import StateCorrupt, move_aside
from astrod.pipeline.outputs import FRAMES, SESSION

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Rebuilt:
    moved_to: Path
    open_sessions: int
    closed_sessions: int
    files: int


def open_journal(path: Path, *, sessions_dir: Path, output: Path, force_rebuild: bool = False
                 ) -> tuple[Journal, Rebuilt | None]:
    """The journal at ``path``; when it is damaged (or ``force_rebuild``: the running daemon met a damaged page
    that the opening check may not see), moved aside and rebuilt (see the module docstring)."""
    try:
        journal = Journal(path)
    except StateCorrupt as err:
        log.error("journal_damaged", path=str(path), reason=str(err))
    else:
        if not force_rebuild:
            return journal, None
        journal.close()
    moved = move_aside(path)
    journal = Journal(path)
    counts = [0, 0, 0]
    for folder in subfolders(sessions_dir):
        counts[2] += _restore_open(journal, folder)
        counts[0] += journal.session(folder.name) is not None
    for summary in files_matching(output, SESSION, recursive=True):
        n = _restore_closed(journal, summary)
        if n is not None:
            counts[1] += 1
            counts[2] += n
    rebuilt = Rebuilt(moved_to=moved, open_sessions=counts[0], closed_sessions=counts[1], files=counts[2])
    log.warning("journal_rebuilt", moved_to=str(moved), open_sessions=rebuilt.open_sessions,
                closed_sessions=rebuilt.closed_sessions, files=rebuilt.files)
    return journal, rebuilt


def _restore_open(journal: Journal, folder: Path) -> int:
    """The session of a state folder from its newest readable checkpoint; the number of files recorded."""
    for checkpoint in reversed(files_matching(folder, "checkpoint-*.npz")):
        try:
            _, meta = load_checkpoint(checkpoint)
            session = meta["extra"]["session"]
            rows = list(meta["rows"])
            seq = int(checkpoint.stem.split("-")[1])
        except Exception as err:  # damaged too, or from before checkpoints named their session: try the next
            log.warning("checkpoint_unusable_for_rebuild", path=str(checkpoint), reason=str(err).splitlines()[0])
            continue
        journal.restore_session(str(session["id"]), key=session["key"], status="open", info=session["info"],
                                checkpoint=checkpoint, seq=seq)
        return sum(_restore_file(journal, row, session=str(session["id"])) for row in rows)
    return 0


def _restore_closed(journal: Journal, summary_path: Path) -> int | None:
    try:
        summary = read_json(summary_path)
        sid = str(summary["session"])
        rows: list[dict[str, Any]] = list(read_frames_table(summary_path.with_name(FRAMES)))
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("product_unusable_for_rebuild", path=str(summary_path), reason=str(err))
        return None
    info = {"label": summary.get("label", sid), "output": str(summary_path.parent),
            "stats": {"stacked": summary.get("stacked", 0), "rejected": summary.get("rejected", 0),
                      "exposure": summary.get("total_exposure_s", 0.0)}}
    journal.restore_session(sid, key=summary.get("key", {}), status="closed", info=info, checkpoint=None, seq=0)
    return sum(_restore_file(journal, row, session=sid) for row in rows)


def _restore_file(journal: Journal, row: dict[str, Any], *, session: str) -> int:
    path = Path(str(row.get("path") or ""))
    if not str(path) or str(path) == ".":
        return 0
    try:
        st = path.stat()
        size, mtime, digest = st.st_size, st.st_mtime, quick_hash(path, size=st.st_size)
    except OSError:  # gone since: recorded with an impossible stamp, so a file put back there is new
        size, mtime, digest = -1, 0.0, None
    metrics = {k: v for k, v in row.items() if k not in ("path", "status", "reason") and v not in (None, "")}
    journal.restore_file(path, size=size, mtime=mtime, hash=digest, status=str(row.get("status") or "rejected"),
                         reason=(row.get("reason") or None), kind="light", session=session, metrics=metrics)
    return 1
