"""Prepared calibration masters kept in scratch files and memory-mapped, a band of rows resident at a time.

At 26 MP a prepared dark and inverse flat are 208 MB of float32 that every frame reads once, in row order.
Held as arrays they stay in the process's memory all night; mapped from native float32 scratch files they
live in the page cache (where the master files' own pages would be anyway), and
`astrod.core.calibrate.apply` calls ``release_rows`` after each band so its pages leave the process
(``MADV_DONTNEED``; the next frame faults them back in from the cache, without a copy). The values are
the prepared arrays' own, bit for bit.

Scratch files are written atomically once per set of masters (``folder`` should be named after what
the masters are, so a later run finds them) and never modified; a file of the wrong size is rewritten.
"""

from __future__ import annotations

import hashlib
import mmap
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from astrod.core.calibrate import PreparedMasters
from astrod.io.atomic import atomic_write

FloatArray = npt.NDArray[np.float32]
_FIELDS = ("offset", "dark_current", "inverse_flat")


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
    ``folder`` (written there unless already present) and ``release_rows`` set to drop their pages."""
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
        with path.open("rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        maps.append(mapped)
        view = np.frombuffer(mapped, dtype=np.float32).reshape(data.shape)
        fields[name] = view
    if not maps:
        return prepared
    release = _RowReleaser(maps, row_bytes=4 * prepared.shape[1])
    release(0, prepared.shape[0])  # the file was just written or read: nothing needs to stay resident
    return replace(prepared, release_rows=release, **fields)  # type: ignore[arg-type]


def scratch_name(*parts: object) -> str:
    """A folder name for a set of prepared masters: a digest of what identifies them."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=12).hexdigest()
    return f"prepared-{digest}"


def remove_stale(folder: Path, keep: set[str]) -> None:
    """Delete scratch sets in ``folder`` other than ``keep`` (they are re-creatable caches)."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith("prepared-") and entry.name not in keep and entry.is_dir():
            for child in entry.iterdir():
                child.unlink(missing_ok=True)
            entry.rmdir()
