"""Ingest: what a new file is, from its headers — a light to route, a calibration frame for the library, a file
to leave alone, or a rejection with its one-line reason. The first room of a frame's way through the daemon
(ingest -> router -> session), a decision on one file that the daemon records once in its journal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from astrod.errors import AstrodError
from astrod.io.frames import read_meta
from astrod.io.headers import PathRule
from astrod.io.images import NO_EXPOSURE_FORMATS
from astrod.model import FrameKind, FrameMeta
from astrod.pipeline.sessions import plausible_date


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """How frame files are read: header keyword renames and the folder rules of the config."""

    rename: Mapping[str, str]
    rules: tuple[PathRule, ...]

    @classmethod
    def of(cls, rename: Mapping[str, str], rules: Iterable[PathRule]) -> ReadOptions:
        return cls(rename=dict(rename), rules=tuple(rules))


@dataclass(frozen=True, slots=True)
class Light:
    """A light to stack. ``date_note`` says when its DATE-OBS could not be right and the file's time names its
    night instead."""

    meta: FrameMeta
    date_note: str | None = None


@dataclass(frozen=True, slots=True)
class Calibration:
    meta: FrameMeta


@dataclass(frozen=True, slots=True)
class Ignored:
    """A file astrod does not stack and does not count as a failure (a stack someone else made)."""

    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    kind: str | None = None


Ingested = Light | Calibration | Ignored | Rejected


def ingest(path: Path, *, mtime: float, now: datetime, options: ReadOptions) -> Ingested:
    """What the file at ``path`` is (its headers only; the pixels are read by its session). A picture without an
    exposure time (TIFF, PNG, JPEG rarely carry one) is a light with its exposure unknown."""
    try:
        meta = read_meta(path, rename=options.rename, rules=options.rules)
    except AstrodError as err:
        return Rejected(str(err))
    if meta.kind is FrameKind.UNKNOWN:
        return Rejected(f"{path}: unknown frame type: {meta.kind_reason}", kind="unknown")
    # a colour FITS cube is someone's stack; a colour picture (JPEG, TIFF, ...) is a debayered frame
    if meta.stack_count > 1 or (meta.planes > 1 and meta.source_format == "fits"):
        return Ignored(meta.kind.value, f"{path}: already a stack of {meta.stack_count} frames")
    if meta.kind.is_calibration:
        return Calibration(meta)
    if meta.exposure is None and meta.source_format not in NO_EXPOSURE_FORMATS:
        return Rejected(f"{path}: no exposure time (EXPTIME/EXPOSURE) in the header", kind="light")
    return _dated(path, meta, mtime=mtime, now=now)


def _dated(path: Path, meta: FrameMeta, *, mtime: float, now: datetime) -> Light:
    """The light with a DATE-OBS that names its night: the file's time when it has none or an impossible one."""
    file_time = datetime.fromtimestamp(mtime, tz=UTC)
    if meta.date_obs is None:
        return Light(replace(meta, date_obs=file_time))
    if plausible_date(meta.date_obs, now):
        return Light(meta)
    note = (f"{path}: DATE-OBS {meta.date_obs.isoformat()} cannot be right; the file's time "
            f"{file_time.isoformat(timespec='seconds')} names its night")
    return Light(replace(meta, date_obs=file_time), date_note=note)
