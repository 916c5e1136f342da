"""The daemon's status file (``<state>/status.json``), which `astrod status` and the dashboard read.

Written atomically like every file; but when the state disk is full the atomic write (a new file beside the old
one) cannot succeed, and that is exactly when the status must say what is wrong. Then a short status is written
over the old file in place: it needs no new blocks as long as it is no longer than the file it replaces.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from astrod.io.atomic import atomic_write_text

SHORT_KEYS = ("running", "pid", "version", "started_at", "updated_at", "problems", "status_line", "sessions",
              "files", "control_handled")


def write_status(path: Path, status: dict[str, Any]) -> bool:
    """Write ``status``; True when the full status was written, False when only the short one could be."""
    text = json.dumps(status, indent=2, default=str) + "\n"
    try:
        atomic_write_text(path, text)
        return True
    except OSError as err:
        try:
            room = path.stat().st_size
        except OSError:
            raise err from None
        data = _short(status, f"{path}: {err.strerror or err} (short status written in place)", room)
        if data is None:  # not even the essentials fit: keep what there is rather than half a file
            raise err from None
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
        return False


def _short(status: dict[str, Any], why: str, room: int) -> bytes | None:
    """The status's essentials as compact JSON in at most ``room`` bytes (problem texts cut when needed)."""
    short = {k: status[k] for k in SHORT_KEYS if k in status}
    short["status_file_error"] = why
    for keep in (None, 400, 160, 60):
        if keep is not None:
            short = {k: short[k] for k in ("running", "pid", "updated_at", "problems") if k in short}
            short["problems"] = [{**p, "problem": str(p.get("problem", ""))[:keep]} for p in short.get("problems", [])]
        data = json.dumps(short, separators=(",", ":"), default=str).encode("utf-8")
        if len(data) <= room:
            return data
    return None


def read_status_file(path: Path) -> dict[str, Any] | None:
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None
