"""Plain file and folder operations on astrod's own files (a session's state: checkpoints and the
registered-frame cache; its products): made, listed, read, removed. Only ever what astrod made itself; never a
source frame."""

from __future__ import annotations

import json
import shutil
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
