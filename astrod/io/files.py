"""Plain file and folder operations on astrod's own files (a session's state: checkpoints and the
registered-frame cache; its products): made, listed, read, removed. Only ever what astrod made itself; never a
source frame."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def ensure_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_folder(path: Path) -> None:
    """Remove an astrod-owned folder and what is in it (gone already: nothing to do)."""
    shutil.rmtree(path, ignore_errors=True)


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
