"""The scan of a library build: find the calibration frames under the source folders, read their headers,
group them by the master they go into, and hash each group's source list.

`astrod.library.build` re-exports every public name here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astrod.errors import AstrodError, LibraryError
from astrod.io.files import walk_files
from astrod.io.fits import is_fits_name, read_fits_header
from astrod.io.frames import is_frame_name, is_raw_name, read_meta
from astrod.io.headers import PathRule, normalise
from astrod.io.index import file_stamp
from astrod.library.keys import CalibrationKey, MasterKind, key_of
from astrod.library.options import BuildOptions, Skipped
from astrod.library.progress import Progress
from astrod.model import FrameKind, FrameMeta


@dataclass(frozen=True, slots=True)
class SourceFrame:
    """A calibration frame found by the scan, with the stamp (size, mtime) its source hash is made of."""

    path: Path
    meta: FrameMeta
    size: int
    mtime_ns: int


# ------------------------------------------------------------------------------------------------- scan


def _list_files(sources: Sequence[Path], *, exclude: Path) -> list[Path]:
    found: set[Path] = set()
    for source in sources:
        if source.is_file():
            found.add(source.resolve())
            continue
        if not source.is_dir():
            raise LibraryError(f"{source}: source folder does not exist")
        found.update(walk_files(source, keep=is_frame_name, exclude=exclude))
    return sorted(found)


def _is_master_header(header: Mapping[str, Any]) -> str | None:
    if "ASTRDKEY" in header:
        return "an astrod master, not a source frame"
    for key in ("IMAGETYP", "FRAME", "FRAMETYP"):
        value = str(header.get(key, "") or "")
        if "master" in value.lower():
            return f"{key}={value.strip()!r}: a master, not a source frame"
    return None


def _read_source(path: Path, *, rename: Mapping[str, str], rules: tuple[PathRule, ...]) -> SourceFrame | Skipped:
    try:
        size, mtime_ns = file_stamp(path)
        if is_fits_name(path) and not is_raw_name(path):
            header = read_fits_header(path)
            why = _is_master_header(header)
            if why is not None:
                return Skipped(path, why)
            meta = normalise(header, path, rename=rename, rules=rules)
        else:
            meta = read_meta(path, rename=rename, rules=rules)
    except (AstrodError, OSError) as err:
        return Skipped(path, str(err).removeprefix(f"{path}: "))
    if meta.kind is FrameKind.UNKNOWN:
        return Skipped(path, f"kind unknown: {meta.kind_reason}")
    if meta.kind is FrameKind.LIGHT:
        return SourceFrame(path, meta, size, mtime_ns)  # counted, then ignored
    if meta.stack_count > 1:
        return Skipped(path, f"already combined from {meta.stack_count} frames (NCOMBINE/STACKCNT)")
    if meta.planes != 1:
        return Skipped(path, f"{meta.planes}-plane image: masters need single-plane sensor data")
    if meta.width <= 0 or meta.height <= 0:
        return Skipped(path, "no image size in the header")
    if meta.kind in (FrameKind.DARK, FrameKind.DARKFLAT) and not (meta.exposure is not None and meta.exposure >= 0):
        return Skipped(path, f"{meta.kind.value} without an exposure time")
    return SourceFrame(path, meta, size, mtime_ns)


def scan_sources(sources: Sequence[Path], *, library: Path, options: BuildOptions,
                 progress: Progress) -> tuple[list[SourceFrame], list[Skipped], int]:
    """Every calibration frame under ``sources`` (recursively; the library folder itself excluded), the files
    skipped with their reasons, and the number of lights ignored. Headers are read by ``options.jobs``
    threads at most (a bounded pool that ends with the scan)."""
    paths = _list_files(sources, exclude=library)
    progress.start("scan", len(paths))
    frames: list[SourceFrame] = []
    skipped: list[Skipped] = []
    lights = 0

    def read(p: Path) -> SourceFrame | Skipped:
        return _read_source(p, rename=options.rename, rules=options.path_rules)

    results: Iterable[SourceFrame | Skipped]
    with contextlib.ExitStack() as stack:
        if options.jobs > 1 and len(paths) > 1:
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=options.jobs, thread_name_prefix="astrod-scan"))
            results = pool.map(read, paths)
        else:
            results = map(read, paths)
        for result in results:
            progress.advance(result.path.name)
            if isinstance(result, Skipped):
                skipped.append(result)
            elif result.meta.kind is FrameKind.LIGHT:
                lights += 1
            else:
                frames.append(result)
    progress.finish()
    return frames, skipped, lights


def group_frames(frames: Iterable[SourceFrame], *, temperature_bucket: float,
                 longitude: float | None) -> dict[CalibrationKey, list[SourceFrame]]:
    """Frames grouped by the key of the master they go into, each group sorted by path."""
    groups: dict[CalibrationKey, list[SourceFrame]] = defaultdict(list)
    for frame in frames:
        kind = MasterKind.of_frame(frame.meta.kind)
        if kind is None:
            continue
        groups[key_of(frame.meta, kind, temperature_bucket=temperature_bucket, longitude=longitude)].append(frame)
    return {k: sorted(v, key=lambda f: str(f.path)) for k, v in groups.items()}


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def source_hash(frames: Sequence[SourceFrame]) -> str:
    """A hash of the source list: every path with its size and modification time."""
    return _sha(sorted([str(f.path), f.size, f.mtime_ns] for f in frames))
