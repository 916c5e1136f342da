"""The journal records each file version once and commits checkpoints with their frames atomically."""

from __future__ import annotations

from pathlib import Path

import pytest

from astrod.io.journal import Journal, quick_hash


def test_file_versions_are_queued_once(tmp_path: Path) -> None:
    """A file seen twice with the same size and mtime is queued once; a new version is queued again."""
    journal = Journal(tmp_path / "journal.sqlite")
    frame = tmp_path / "a.fits"
    assert journal.record_seen(frame, size=10, mtime=1.0, hash="h1")
    assert not journal.record_seen(frame, size=10, mtime=1.0, hash="h1")
    assert not journal.record_seen(frame, size=10, mtime=2.0, hash="h1")  # touched, same content
    journal.set_file(frame, status="rejected", reason="truncated")
    assert journal.record_seen(frame, size=20, mtime=3.0, hash="h2")
    record = journal.file(frame)
    assert record is not None and (record.status, record.reason, record.size) == ("queued", None, 20)
    journal.close()


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
