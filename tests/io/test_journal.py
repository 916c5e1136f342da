"""The journal records each file version once and commits checkpoints with their frames atomically."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from astrod.io.journal import Journal, Seen, quick_hash
from astrod.io.sqlite import StateCorrupt, is_corrupt, is_disk_problem, move_aside


def test_file_versions_are_queued_once(tmp_path: Path) -> None:
    """A file seen twice with the same size and mtime is queued once; a new version is queued again."""
    journal = Journal(tmp_path / "journal.sqlite")
    frame = tmp_path / "a.fits"
    first = journal.record_seen(frame, size=10, mtime=1.0, hash="h1")
    assert first.seen is Seen.NEW and first.queued
    assert journal.record_seen(frame, size=10, mtime=1.0, hash="h1").seen is Seen.KNOWN
    assert journal.record_seen(frame, size=10, mtime=2.0, hash="h1").seen is Seen.KNOWN  # touched, same content
    journal.set_file(frame, status="rejected", reason="truncated")
    changed = journal.record_seen(frame, size=20, mtime=3.0, hash="h2")
    assert changed.seen is Seen.CHANGED and changed.previous is not None and changed.previous.status == "rejected"
    assert changed.arrival > first.arrival
    record = journal.file(frame)
    assert record is not None and (record.status, record.reason, record.size) == ("queued", None, 20)
    journal.close()


def test_the_same_content_under_another_path_is_a_duplicate(tmp_path: Path) -> None:
    """A renamed, moved or copied file (same content stamp) is recorded as a duplicate of the first path and not
    queued; a file overwritten with that content elsewhere is a duplicate too, and other content is new."""
    journal = Journal(tmp_path / "journal.sqlite")
    a, b, c = (tmp_path / n for n in ("a.fits", "sub/b.fits", "c.fits"))
    journal.record_seen(a, size=10, mtime=1.0, hash="h1")
    journal.set_file(a, status="stacked", kind="light", session="s1")
    moved = journal.record_seen(b, size=10, mtime=5.0, hash="h1")
    assert moved.seen is Seen.DUPLICATE and moved.original == str(a) and not moved.queued
    record = journal.file(b)
    assert record is not None and record.status == "duplicate" and record.kind == "light"
    assert record.reason is not None and str(a) in record.reason
    assert journal.record_seen(c, size=10, mtime=5.0, hash="h1").original == str(a)  # not the duplicate b
    assert journal.record_seen(c, size=10, mtime=6.0, hash="h3").seen is Seen.CHANGED  # c overwritten: new
    assert journal.file(c) is not None and journal.file(c).status == "queued"  # type: ignore[union-attr]
    assert journal.duplicates_of(a) == [str(b)]
    assert journal.record_seen(tmp_path / "d", size=11, mtime=1.0, hash="h1").seen is Seen.NEW  # other size
    journal.close()


def test_requeue_and_reopen_a_session(tmp_path: Path) -> None:
    """Requeueing forgets the checkpoint and queues the session's frames again (calibration rows untouched);
    a close request is remembered until the session closes; a closed session can be reopened."""
    journal = Journal(tmp_path / "journal.sqlite")
    journal.open_session("s1", {"target": "M 31"}, {})
    for name in ("a", "b", "cal"):
        journal.record_seen(tmp_path / name, size=1, mtime=1.0, hash=name)
    journal.commit_checkpoint("s1", checkpoint=tmp_path / "c1.npz", seq=1,
                              frames=[(tmp_path / "a", "stacked", None, {}), (tmp_path / "b", "rejected", "x", {})])
    journal.set_file(tmp_path / "cal", status="calibration")
    journal.request_close("s1", "idle")
    assert journal.session("s1").close_reason == "idle"  # type: ignore[union-attr]
    assert journal.requeue_session("s1") == 2
    session = journal.session("s1")
    assert session is not None and session.checkpoint is None
    assert {Path(r.path).name: r.status for r in journal.files()} == {"a": "queued", "b": "queued",
                                                                      "cal": "calibration"}
    journal.update_session("s1", status="closed")
    assert journal.session("s1").close_reason is None  # type: ignore[union-attr]
    assert journal.reopen_session("s1") == 2
    assert journal.session("s1").status == "open"  # type: ignore[union-attr]
    journal.close()


def test_a_damaged_journal_is_told_apart_from_a_full_disk(tmp_path: Path) -> None:
    """A truncated or garbled journal raises StateCorrupt on opening, and can be moved aside with its WAL."""
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    for i in range(300):
        journal.record_seen(tmp_path / f"f{i:04d}-{'x' * 200}", size=i, mtime=1.0, hash=f"h{i}")
    journal.close()
    data = path.read_bytes()
    assert len(data) > 8 * 4096
    path.write_bytes(data[:4096 * 3 + 100])  # truncated mid-page
    with pytest.raises(StateCorrupt):
        Journal(path)
    aside = move_aside(path)
    assert not path.exists() and aside.exists() and aside.name.startswith("journal.sqlite.corrupt-")
    garbled = bytearray(data)
    garbled[4096 * 4: 4096 * 5] = bytes(range(256)) * 16
    path.write_bytes(bytes(garbled))
    with pytest.raises(StateCorrupt):
        Journal(path)
    assert is_corrupt(sqlite3.DatabaseError("database disk image is malformed"))
    full = sqlite3.OperationalError("database or disk is full")
    assert is_disk_problem(full) and not is_corrupt(full)
    assert is_disk_problem(OSError(28, "No space left on device"))


def test_checkpoint_and_frames_commit_together(tmp_path: Path) -> None:
    """A failure inside the checkpoint transaction leaves neither the new checkpoint nor the frame statuses."""
    journal = Journal(tmp_path / "journal.sqlite")
    journal.open_session("s1", {"object": "M 31"}, {})
    for name in ("a", "b"):
        journal.record_seen(tmp_path / name, size=1, mtime=1.0, hash=None)
    journal.commit_checkpoint("s1", checkpoint=tmp_path / "c1.npz", seq=1,
                              frames=[(tmp_path / "a", "stacked", None, {"fwhm": 2.0})])
    with pytest.raises(TypeError):
        journal.commit_checkpoint("s1", checkpoint=tmp_path / "c2.npz", seq=2,
                                  frames=[(tmp_path / "b", "stacked", None, {"bad": object()})])  # type: ignore[dict-item]
    session = journal.session("s1")
    assert session is not None and session.checkpoint_seq == 1 and session.checkpoint == str(tmp_path / "c1.npz")
    assert [(r.path, r.status) for r in journal.files()] == [(str(tmp_path / "a"), "stacked"),
                                                             (str(tmp_path / "b"), "queued")]
    assert journal.files(session="s1", status=["stacked"])[0].metrics == {"fwhm": 2.0}
    journal.close()


def test_quick_hash_sees_content_changes(tmp_path: Path) -> None:
    """The quick hash changes with the head, the tail and the size of a file."""
    path = tmp_path / "f"
    path.write_bytes(b"a" * 300_000)
    first = quick_hash(path, size=300_000)
    path.write_bytes(b"a" * 299_999 + b"b")
    assert quick_hash(path, size=300_000) != first
    small = tmp_path / "small"  # 64-128 KiB: every byte counts, the middle too
    small.write_bytes(b"a" * 100_000)
    before = quick_hash(small, size=100_000)
    small.write_bytes(b"a" * 70_000 + b"b" + b"a" * 29_999)
    assert quick_hash(small, size=100_000) != before


def test_plate_solutions_are_kept_under_the_frames_content_stamp(tmp_path: Path) -> None:
    """A solve (its solution or the reason it failed) is found again by the frame's content stamp, after the
    journal is closed and opened again; a new version of the file has another stamp; a later solve of the same
    stamp replaces the first."""
    frame = tmp_path / "a.fits"
    frame.write_bytes(b"x" * 100)
    journal = Journal(tmp_path / "j.sqlite")
    journal.record_seen(frame, size=100, mtime=1.0, hash=quick_hash(frame, size=100))
    stamp = journal.frame_stamp(frame)
    assert stamp is not None and journal.frame_stamp(tmp_path / "never.fits") is None
    journal.record_solution(stamp, path=frame, session="s1", result=None, reason="only 6 stars detected")
    journal.record_solution(stamp, path=frame, session="s1", result={"ra": 1.5, "cards": []}, reason=None)
    journal.close()
    again = Journal(tmp_path / "j.sqlite")
    record = again.solution(stamp)
    assert record is not None and record.result == {"ra": 1.5, "cards": []} and record.reason is None
    assert record.path == str(frame) and record.session == "s1"
    frame.write_bytes(b"y" * 120)
    again.record_seen(frame, size=120, mtime=2.0, hash=quick_hash(frame, size=120))
    assert again.frame_stamp(frame) != stamp and again.solution(str(again.frame_stamp(frame))) is None
    again.close()
