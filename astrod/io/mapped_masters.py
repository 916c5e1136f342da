"""Prepared calibration masters kept in scratch files and memory-mapped, a band of rows resident at a time.

At 26 MP a prepared dark and inverse flat are 208 MB of float32 that every frame reads once, in row order.
Held as arrays they stay in the process's memory all night; mapped from native float32 scratch files they
live in the page cache (where the master files' own pages would be anyway), and
`astrod.core.calibrate.apply` calls ``release_rows`` after each band so its pages leave the process
(``MADV_DONTNEED``; the next frame faults them back in from the cache, without a copy). The values are
the prepared arrays' own, bit for bit.

Scratch files are written atomically once per set of masters (``folder`` should be named after what
the masters are, so a later run finds them) and never modified; a file of the wrong size is rewritten. The
set's other fields (the bad pixels' indices, the steps, the modes) go last into ``prepared.npz``: a folder
with it holds a complete set, which `open_prepared` maps without reading or preparing the masters again
(at 26 MP that is 0.4 s of reading and preparing, and 0.3–1.0 s of writing the scratch files here).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from astrod.core.calibrate import PreparedMasters
from astrod.io.atomic import atomic_write

FloatArray = npt.NDArray[np.float32]
_FIELDS = ("offset", "dark_current", "inverse_flat")
_META = "prepared.npz"
_META_FORMAT = 1


class _RowReleaser:
    """``release_rows`` for a set of mapped row-major float32 arrays of the same width."""

    def __init__(self, maps: list[mmap.mmap], row_bytes: int) -> None:
        self._maps = maps
        self._row_bytes = row_bytes

    def __call__(self, first: int, stop: int) -> None:
        page = mmap.PAGESIZE
        start = first * self._row_bytes // page * page
        for mapped in self._maps:
            end = min(len(mapped), -(-stop * self._row_bytes // page) * page)
            if end > start:
                mapped.madvise(mmap.MADV_DONTNEED, start, end - start)


def map_prepared(prepared: PreparedMasters, folder: Path) -> PreparedMasters:
    """``prepared`` with its frame-sized float32 masters replaced by read-only maps of scratch files in
    ``folder`` (written there unless already present) and ``release_rows`` set to drop their pages; the set
    is complete in ``folder`` when this returns (`open_prepared` finds it)."""
    folder.mkdir(parents=True, exist_ok=True)
    maps: list[mmap.mmap] = []
    fields: dict[str, FloatArray] = {}
    for name in _FIELDS:
        array = getattr(prepared, name)
        if array is None:
            continue
        data = np.ascontiguousarray(array, dtype=np.float32)
        path = folder / f"{name}.f32"
        if not path.is_file() or path.stat().st_size != data.nbytes:
            with atomic_write(path, "wb") as handle:
                data.tofile(handle)
        mapped = _map(path)
        maps.append(mapped)
        fields[name] = np.frombuffer(mapped, dtype=np.float32).reshape(data.shape)
    if not (folder / _META).is_file():
        with atomic_write(folder / _META, "wb") as handle:
            np.savez(handle, bad_index=prepared.bad_index, bad_neighbours=prepared.bad_neighbours,
                     meta=np.array(json.dumps(_small_fields(prepared))))
    if not maps:
        return prepared
    release = _RowReleaser(maps, row_bytes=4 * prepared.shape[1])
    release(0, prepared.shape[0])  # the file was just written or read: nothing needs to stay resident
    return replace(prepared, release_rows=release, **fields)  # type: ignore[arg-type]


def open_prepared(folder: Path) -> PreparedMasters | None:
    """The complete set `map_prepared` left in ``folder``, mapped (and the folder's time set to now, so that a
    `remove_stale` elsewhere sees it in use); None when there is none, or it is not whole: it is made again."""
    try:
        with np.load(folder / _META, allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
            bad_index = np.asarray(saved["bad_index"], dtype=np.intp)
            bad_neighbours = np.asarray(saved["bad_neighbours"], dtype=np.intp)
        if meta.get("format") != _META_FORMAT:
            return None
        shape = (int(meta["shape"][0]), int(meta["shape"][1]))
        maps: list[mmap.mmap] = []
        fields: dict[str, FloatArray | None] = {}
        for name in _FIELDS:
            fields[name] = None
            if name in meta["fields"]:
                path = folder / f"{name}.f32"
                if path.stat().st_size != 4 * shape[0] * shape[1]:
                    return None
                maps.append(_map(path))
                fields[name] = np.frombuffer(maps[-1], dtype=np.float32).reshape(shape)
        os.utime(folder)
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile):
        return None
    prepared = PreparedMasters(
        shape=shape, bad_index=bad_index, bad_neighbours=bad_neighbours,
        has_bad_pixel_map=bool(meta["has_bad_pixel_map"]), dark_used=bool(meta["dark_used"]),
        dark_mode=meta["dark_mode"], dark_exposure=meta["dark_exposure"], bayer=meta["bayer"],
        bayer_offset=(int(meta["bayer_offset"][0]), int(meta["bayer_offset"][1])), steps=tuple(meta["steps"]),
        band_rows=int(meta["band_rows"]), **fields)  # type: ignore[arg-type]
    if not maps:
        return prepared
    return replace(prepared, release_rows=_RowReleaser(maps, row_bytes=4 * shape[1]))


def _map(path: Path) -> mmap.mmap:
    with path.open("rb") as handle:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)


def _small_fields(prepared: PreparedMasters) -> dict[str, Any]:
    return {"format": _META_FORMAT, "shape": list(prepared.shape),
            "fields": [n for n in _FIELDS if getattr(prepared, n) is not None],
            "has_bad_pixel_map": prepared.has_bad_pixel_map, "dark_used": prepared.dark_used,
            "dark_mode": prepared.dark_mode, "dark_exposure": prepared.dark_exposure, "bayer": prepared.bayer,
            "bayer_offset": list(prepared.bayer_offset), "steps": list(prepared.steps),
            "band_rows": prepared.band_rows}


def scratch_name(*parts: object) -> str:
    """A folder name for a set of prepared masters: a digest of what identifies them."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=12).hexdigest()
    return f"prepared-{digest}"


def remove_stale(folder: Path, keep: set[str], *, idle_s: float = 0.0) -> None:
    """Delete scratch sets in ``folder`` other than ``keep`` (they are re-creatable caches) that nobody has
    made or opened for ``idle_s`` seconds (a folder other processes share: one may be using a set)."""
    if not folder.is_dir():
        return
    now = time.time()
    for entry in folder.iterdir():
        if (entry.name.startswith("prepared-") and entry.name not in keep and entry.is_dir()
                and now - entry.stat().st_mtime >= idle_s):
            try:
                for child in entry.iterdir():
                    child.unlink(missing_ok=True)
                entry.rmdir()
            except OSError:  # another process removing it too, or writing into it after all: left
                continue
