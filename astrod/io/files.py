"""Plain file and folder operations. astrod's own files (a session's state: checkpoints and the registered-frame
cache; its products; scratch folders; logs) are made, listed, read and removed here; the watched folders are
only listed, and a source frame is never changed, moved or removed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any


def ensure_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def writable_folder(path: Path) -> bool:
    """Make ``path`` (and its parents) unless it is there; whether this process can write into it."""
    try:
        ensure_folder(path)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def remove_folder(path: Path) -> None:
    """Remove an astrod-owned folder and what is in it (gone already: nothing to do)."""
    shutil.rmtree(path, ignore_errors=True)


def file_version(path: Path) -> tuple[int, int]:
    """(size, modification time in ns) of a file: what changes when it is written again."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def remove_file(path: Path) -> None:
    path.unlink(missing_ok=True)


def subfolders(path: Path) -> list[Path]:
    """The folders in ``path``, sorted (none when it is missing)."""
    return sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def files_matching(folder: Path, pattern: str, *, recursive: bool = False) -> list[Path]:
    """Files in ``folder`` (and below it, when ``recursive``) whose names match ``pattern``, sorted."""
    if not folder.is_dir():
        return []
    return sorted(folder.rglob(pattern) if recursive else folder.glob(pattern))


def read_json(path: Path) -> Any:
    """The JSON document in ``path``; OSError or ValueError when it cannot be read."""
    return json.loads(path.read_text(encoding="utf-8"))


def walk_files(folder: Path, *, keep: Callable[[Path], bool], exclude: Path | None = None) -> list[Path]:
    """Every file below ``folder`` that ``keep`` accepts, sorted; hidden files and folders (a leading dot) and
    the folder ``exclude`` (with what is below it) are left out, and symlinked folders are not followed."""
    excluded = exclude.resolve() if exclude is not None else None
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        here = Path(root).resolve()
        if excluded is not None and (here == excluded or excluded in here.parents):
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != excluded)
        found.extend(here / name for name in files if not name.startswith(".") and keep(here / name))
    return sorted(found)


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path``; OSError or UnicodeDecodeError when it cannot be read."""
    return path.read_text(encoding="utf-8")


def read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def read_tail(path: Path, chars: int) -> str:
    """The last ``chars`` characters of a text file (undecodable bytes replaced; empty when unreadable)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def move_file(source: Path, target: Path) -> None:
    """Move a file astrod made (a demo frame being published) onto ``target`` in one step, its folder made first."""
    ensure_folder(target.parent)
    os.replace(source, target)


def install_executable(source: Path, target: Path) -> Path:
    """Copy a program into place and make it executable."""
    shutil.copyfile(source, target)
    target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return target


@contextlib.contextmanager
def appending(path: Path) -> Iterator[IO[bytes]]:
    """``path`` open for appending bytes (a child process's log)."""
    with path.open("ab") as handle:
        yield handle


@contextlib.contextmanager
def scratch_folder(prefix: str, *, parent: Path | None = None) -> Iterator[Path]:
    """A new empty folder (in ``parent``, or the system's temporary folder), removed with what is in it at the
    end."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir=parent) as folder:
        yield Path(folder)


def new_folder(prefix: str) -> Path:
    """A new empty folder in the system's temporary folder that stays (the caller says where it is)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def files_oldest_first(folders: Iterable[Path], *, keep: Callable[[Path], bool]) -> list[Path]:
    """Every file below the ``folders`` that ``keep`` accepts, oldest modification first; hidden folders are
    left out and symlinked folders are not followed (a symlink loop cannot trap the walk). Paths are not
    resolved. A missing folder, and a file that vanishes meanwhile, are left out."""
    found: list[tuple[float, Path]] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                path = Path(dirpath) / name
                if keep(path):
                    try:
                        found.append((path.lstat().st_mtime, path))
                    except OSError:
                        continue
    return [p for _, p in sorted(found)]


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A regular file in a folder: its path there, the path it resolves to, its size and modification time."""

    path: Path
    real: Path
    size: int
    mtime_ns: int


def folder_files(folder: Path) -> list[FileInfo]:
    """The regular files in ``folder`` (not below it), sorted by name; those that vanish or cannot be read
    meanwhile are left out; none when the folder cannot be listed."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    files: list[FileInfo] = []
    for entry in entries:
        try:
            st = entry.stat()
            real = entry.resolve()
        except (OSError, RuntimeError):
            continue
        if stat.S_ISREG(st.st_mode):
            files.append(FileInfo(path=entry, real=real, size=st.st_size, mtime_ns=st.st_mtime_ns))
    return files


def open_for_reading(path: Path) -> tuple[IO[bytes], int]:
    """``path`` open for reading bytes, with its size at opening; OSError when it cannot be opened."""
    handle = path.open("rb")
    try:
        return handle, os.fstat(handle.fileno()).st_size
    except OSError:
        handle.close()
        raise


def package_bytes(package: str, *parts: str) -> bytes:
    """The bytes of a data file shipped inside an astrod package (the dashboard's page, its script)."""
    return resources.files(package).joinpath(*parts).read_bytes()
