"""Atomic file writes: every file astrod writes goes through here.

A reader (or a crash) sees either the old file or the complete new one, never half of it:
write to a temporary name in the same folder, fsync, ``os.replace``, fsync the folder.

New files get the mode ``open()`` would give them (0666 less the umask: 0644 under umask 022), not mkstemp's
0600, so the observer's own account can read what the daemon's account wrote; a replaced file keeps its mode.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # some file systems do not allow opening folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it, which races with
    files other threads create meanwhile); the set-and-restore fallback is for kernels without the field."""
    try:
        with Path("/proc/self/status").open(encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _new_mode(target: Path) -> int:
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:  # not there yet (or unreadable): what open() would create
        return 0o666 & ~_umask()


@contextlib.contextmanager
def _temporary_beside(target: Path) -> Iterator[tuple[int, Path]]:
    """A new temporary file beside ``target`` (its descriptor and path) with the mode a new ``target`` gets;
    on a clean exit it replaces ``target``, on an exception it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    file_mode = _new_mode(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, file_mode)
        yield fd, tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write supports modes 'wb' and 'w', not {mode!r}")
    with _temporary_beside(Path(path)) as (fd, _), \
            os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary file's path beside ``path``, for a library that only writes to a file name (opening it with
    "wb" keeps the file's mode); on a clean exit it replaces ``path`` atomically, as `atomic_write` does. On an
    exception the temporary file is removed and ``path`` is left as it was."""
    with _temporary_beside(Path(path)) as (fd, tmp):
        os.close(fd)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def folder_problem(path: str | os.PathLike[str], *, write: bool = True) -> str | None:
    """Create the folder if it is missing; None when this process can use it (create files in it when
    ``write``, else list and read it), otherwise why not, for a one-line message."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"cannot create it: {err.strerror or err}"
    need = os.R_OK | os.X_OK | (os.W_OK if write else 0)
    if os.access(folder, need):
        return None
    if write and os.statvfs(folder).f_flag & os.ST_RDONLY:  # access() is false there even for root
        return "read-only file system"
    return "no write permission" if write else "no read permission"
