"""Light-curve files: the CSV (one comment line, a header line, one line per frame) and its plot, written
atomically (a reader never sees half a file; a rewrite after each frame replaces the whole)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from astrod.io.atomic import atomic_write_bytes, atomic_write_text
from astrod.io.previews import frames_table_text


def lightcurve_text(comment: str, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV text: ``comment`` (one line, starting with '#'), the header line, the rows (None/NaN empty)."""
    line = " ".join(comment.split())
    if not line.startswith("#"):
        line = "# " + line
    return line + "\n" + frames_table_text(rows, columns)


def write_lightcurve(path: str | os.PathLike[str], comment: str, rows: Iterable[Mapping[str, Any]],
                     columns: Sequence[str]) -> Path:
    """Write a light curve's CSV atomically; returns the path."""
    target = Path(path)
    atomic_write_text(target, lightcurve_text(comment, rows, columns))
    return target


def write_plot(path: str | os.PathLike[str], png: bytes) -> Path:
    """Write an encoded plot atomically; returns the path."""
    target = Path(path)
    atomic_write_bytes(target, png)
    return target


def read_lightcurve(path: str | os.PathLike[str]) -> tuple[str, list[dict[str, str]]]:
    """The comment line and the rows (cells as text) of a light curve written by `write_lightcurve`."""
    import csv

    text = Path(path).read_text(encoding="utf-8")
    first, _, rest = text.partition("\n")
    return first, [dict(row) for row in csv.DictReader(rest.splitlines())]
