"""The reprocess journal remembers which sessions were written from what; content and library stamps change
exactly when the files do."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from astrod.io.reprocess_journal import ReprocessJournal, content_stamp, folder_stamp


def test_journal_records_and_replaces_sessions(tmp_path: Path) -> None:
    """A recorded session is found again after reopening; recording it anew replaces its digest."""
    path = tmp_path / "j.sqlite"
    journal = ReprocessJournal(path)
    assert journal.session("s1") is None
    journal.record_session("s1", digest="d1", output=tmp_path / "o", stacked=3, rejected=1,
                           now=datetime(2026, 1, 1, tzinfo=UTC))
    journal.close()
    journal = ReprocessJournal(path)
    record = journal.session("s1")
    assert record is not None and (record.digest, record.stacked, record.rejected) == ("d1", 3, 1)
    journal.record_session("s1", digest="d2", output=tmp_path / "o", stacked=4, rejected=0,
                           now=datetime(2026, 1, 2, tzinfo=UTC))
    record = journal.session("s1")
    assert record is not None and record.digest == "d2"
    journal.close()


def test_journal_records_combined_products(tmp_path: Path) -> None:
    """A product of several sessions is unknown until recorded, found again after reopening, and replaced."""
    path = tmp_path / "j.sqlite"
    journal = ReprocessJournal(path)
    assert journal.combined("composites /o/n/t") is None
    journal.record_combined("composites /o/n/t", digest="g1", now=datetime(2026, 1, 1, tzinfo=UTC))
    journal.close()
    journal = ReprocessJournal(path)
    assert journal.combined("composites /o/n/t") == "g1" and journal.combined("project /o/t/L") is None
    journal.record_combined("composites /o/n/t", digest="g2", now=datetime(2026, 1, 2, tzinfo=UTC))
    assert journal.combined("composites /o/n/t") == "g2"
    journal.close()


def test_stamps_change_with_content(tmp_path: Path) -> None:
    """Another content (same size) changes a frame's stamp; a new master file changes the library's stamp."""
    frame = tmp_path / "f.fits"
    frame.write_bytes(b"a" * 1000)
    before = content_stamp(frame)
    frame.write_bytes(b"b" * 1000)
    assert content_stamp(frame) != before
    lib = tmp_path / "lib"
    assert folder_stamp(lib) == "" and folder_stamp(None) == ""
    (lib / "masters").mkdir(parents=True)
    (lib / "masters" / "bias.fits").write_bytes(b"x")
    one = folder_stamp(lib)
    assert one != "" and folder_stamp(lib) == one
    (lib / "masters" / "dark.fits").write_bytes(b"y")
    assert folder_stamp(lib) != one
