"""Atomic writes: readers see the old file or the whole new one, never a partial file or a stray temp."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from astrod.io.atomic import atomic_write, atomic_write_bytes, atomic_write_text, folder_problem


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


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for a test; the old one comes back afterwards."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                         ids=["umask022", "umask077", "umask002"])
def test_new_files_get_the_usual_permissions(tmp_path: Path, umask: Callable[[int], None], mask: int,
                                             expected: int) -> None:
    """A new file is created 0666 minus the umask, like open() would: 0644 under umask 022, not mkstemp's 0600."""
    umask(mask)
    target = tmp_path / "stack.fits"
    atomic_write_bytes(target, b"data")
    with atomic_write(tmp_path / "frames.csv", "w") as handle:
        handle.write("path\n")
    assert stat.S_IMODE(target.stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "frames.csv").stat().st_mode) == expected


def test_replacing_a_file_keeps_its_mode(tmp_path: Path, umask: Callable[[int], None]) -> None:
    """Rewriting an existing file keeps the mode its owner gave it, whatever the umask."""
    umask(0o022)
    target = tmp_path / "session.json"
    atomic_write_text(target, "one")
    target.chmod(0o640)
    atomic_write_text(target, "two")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    umask(0o077)
    target.chmod(0o664)
    atomic_write_text(target, "three")
    assert stat.S_IMODE(target.stat().st_mode) == 0o664
    assert target.read_text() == "three"


def test_folder_problem_creates_or_explains(tmp_path: Path) -> None:
    """A missing folder is created and usable (None); one that cannot be created (a file in its path) comes
    back as a one-line reason."""
    assert folder_problem(tmp_path / "a" / "b") is None and (tmp_path / "a" / "b").is_dir()
    assert folder_problem(tmp_path / "a", write=False) is None
    (tmp_path / "file").write_text("x")
    reason = folder_problem(tmp_path / "file" / "stacks")
    assert reason is not None and reason.startswith("cannot create it: ") and "\n" not in reason
