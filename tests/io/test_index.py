"""The library index (SQLite): rows survive reopening, writes are whole transactions, the build lock excludes."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from astrod.errors import LibraryError
from astrod.io.index import (
    INDEX_NAME,
    PREPARED_FOLDER,
    IndexRow,
    MasterIndex,
    file_digest,
    library_lock,
    remove_stale_temporaries,
)


def row(key_id: str, *, kind: str = "dark", camera: str | None = "ASI", path: str | None = None,
        n: int = 5) -> IndexRow:
    return IndexRow(key_id=key_id, kind=kind, camera=camera, key={"kind": kind, "exposure": 60.0},
                    path=path or f"masters/{kind}/{key_id}.fits", n_frames=n, low_n=n < 5, source_hash="s" * 64,
                    build_hash="b" * 64, content_hash="c" * 64, created="2024-10-05T12:00:00+00:00",
                    info={"sources": ["a.fits", "b.fits"], "temperature_mean": -9.8})


def test_rows_round_trip_and_survive_reopening(tmp_path: Path) -> None:
    """A row put is read back equal, also from a new connection; rows filter by kind and camera."""
    with MasterIndex.open(tmp_path) as index:
        index.put(row("k1"))
        index.put(row("k2", kind="bias", camera="Other"))
        assert index.get("k1") == row("k1")
    with MasterIndex.open(tmp_path, create=False) as index:
        assert index.count() == 2
        assert [r.key_id for r in index.rows(kind="dark")] == ["k1"]
        assert [r.key_id for r in index.rows(camera="Other")] == ["k2"]
        assert index.get("missing") is None
        assert index.remove("k1") and not index.remove("k1")
        assert index.count() == 1


def test_put_replaces_the_row_of_a_key_and_of_a_path(tmp_path: Path) -> None:
    """Putting a key again replaces its row; a row taking another key's path replaces that row too."""
    with MasterIndex.open(tmp_path) as index:
        index.put(row("k1", n=3))
        index.put(row("k1", n=7))
        assert index.get("k1") is not None and index.get("k1").n_frames == 7  # type: ignore[union-attr]
        index.put(row("k2", path="masters/dark/k1.fits"))
        assert [r.key_id for r in index.rows()] == ["k2"]


def test_wal_mode_and_missing_index(tmp_path: Path) -> None:
    """The database is in WAL mode; opening without create where there is no index raises LibraryError."""
    with pytest.raises(LibraryError, match="library build"):
        MasterIndex.open(tmp_path / "none", create=False)
    MasterIndex.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / INDEX_NAME)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_another_schema_version_is_refused(tmp_path: Path) -> None:
    """An index written by an incompatible schema is not read (LibraryError naming the file)."""
    MasterIndex.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / INDEX_NAME)
    db.execute("UPDATE meta SET value='99' WHERE name='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(LibraryError, match="schema version 99"):
        MasterIndex.open(tmp_path)


def test_data_version_changes_when_another_connection_commits(tmp_path: Path) -> None:
    """A reader notices another writer's commit through data_version (how the library refreshes its cache)."""
    with MasterIndex.open(tmp_path) as reader, MasterIndex.open(tmp_path) as writer:
        before = reader.data_version()
        writer.put(row("k1"))
        assert reader.data_version() != before
        assert reader.get("k1") is not None


def test_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    """While the build lock is held, taking it again fails at once; after release it can be taken."""
    with library_lock(tmp_path), pytest.raises(LibraryError, match="another library build"), library_lock(tmp_path):
        pass
    with library_lock(tmp_path):
        pass


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    """Temporary files of interrupted atomic writes are removed; real files stay."""
    (tmp_path / "masters" / "dark").mkdir(parents=True)
    stale = tmp_path / "masters" / "dark" / ".m.fits.abc123.tmp"
    stale.write_bytes(b"partial")
    keep = tmp_path / "masters" / "dark" / "m.fits"
    keep.write_bytes(b"whole")
    writing = tmp_path / PREPARED_FOLDER / "prepared-abc" / ".offset.f32.def456.tmp"  # a stack's, in progress
    writing.parent.mkdir(parents=True)
    writing.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert keep.exists() and not stale.exists() and writing.exists()


def test_file_digest_is_sha256(tmp_path: Path) -> None:
    """file_digest is the SHA-256 of the bytes."""
    data = bytes(range(256)) * 5000
    (tmp_path / "f").write_bytes(data)
    assert file_digest(tmp_path / "f") == hashlib.sha256(data).hexdigest()
