"""Atomic writes: readers see the old file or the whole new one, never a partial file or a stray temp."""

from __future__ import annotations

from pathlib import Path

import pytest

from astrod.io.atomic import atomic_write, atomic_write_bytes, atomic_write_text


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    """An exception inside the block leaves the previous content and removes the temporary file."""
    target = tmp_path / "state.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as handle:
        handle.write("half of the new")
        raise RuntimeError("crash in the middle")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_write_creates_folders_and_replaces(tmp_path: Path) -> None:
    """The folder is created; a second write replaces the first."""
    target = tmp_path / "a" / "b" / "blob.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["blob.bin"]


def test_rejects_append_mode(tmp_path: Path) -> None:
    """Append cannot be atomic by replacement, so it is refused."""
    with pytest.raises(ValueError, match="modes"), atomic_write(tmp_path / "x", "ab"):
        pass
