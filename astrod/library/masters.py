"""The master library as the daemon and the commands use it: open once, match frames, load masters (cached).

Lookups go through the SQLite index only (never a scan of the folder). Master arrays are kept in a small LRU
cache bounded in bytes, and so are the prepared calibrations, so calibrating a night of frames with the same
masters reads and prepares each master once.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from astrod import __version__
from astrod.config import Config
from astrod.core.calibrate import PreparedMasters, prepare
from astrod.errors import AstrodError, LibraryError
from astrod.io.fits import read_fits
from astrod.io.index import PREPARED_FOLDER as PREPARED_FOLDER
from astrod.io.index import MasterIndex
from astrod.io.mapped_masters import map_prepared, open_prepared, remove_stale, scratch_name
from astrod.library.keys import MasterKind
from astrod.library.match import MatchResult, MatchRules, match_frame
from astrod.library.records import MasterRecord
from astrod.model import FrameMeta

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
T = TypeVar("T")

SHARED_SCRATCH_IDLE_S = 3600.0


class _LRU:
    """A least-recently-used cache bounded by the total ``size`` of its values (bytes, or a count)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._used = 0
        self.hits = 0
        self.misses = 0

    def get_or_make(self, key: Hashable, make: Callable[[], T], size: Callable[[T], int]) -> T:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
            self.hits += 1
            return found[0]  # type: ignore[return-value]
        self.misses += 1
        value = make()
        n = size(value)
        self._items[key] = (value, n)
        self._used += n
        while self._used > self.capacity and len(self._items) > 1:
            _, (_, old) = self._items.popitem(last=False)
            self._used -= old
        return value

    def clear(self) -> None:
        self._items.clear()
        self._used = 0


@dataclass(frozen=True, slots=True)
class CacheStats:
    """How often the master cache answered without reading a file."""

    hits: int
    misses: int


class MasterLibrary:
    """A master library folder: its index, the matching rules and cached master arrays.

    ``MasterLibrary.open(folder, rules=...)``; use as a context manager or call :meth:`close`.
    """

    def __init__(self, folder: Path, index: MasterIndex, rules: MatchRules, *, cache_bytes: int,
                 scratch: Path | None = None, scratch_shared: bool = False) -> None:
        self.folder = folder
        self.index = index
        self.rules = rules
        self.scratch = scratch
        # a scratch folder other processes use too keeps the sets they may be using (made or opened lately)
        self.scratch_idle_s = SHARED_SCRATCH_IDLE_S if scratch_shared else 0.0
        self._lock = threading.RLock()
        self._arrays = _LRU(cache_bytes)
        self._prepared = _LRU(8)
        self._records: tuple[MasterRecord, ...] | None = None
        self._version: int | None = None

    @classmethod
    def open(cls, folder: str | os.PathLike[str], *, rules: MatchRules | None = None, config: Config | None = None,
             cache_bytes: int = 1 << 30, scratch: str | os.PathLike[str] | None = None,
             scratch_shared: bool = False) -> MasterLibrary:
        """Open the library in ``folder`` (LibraryError if it has no index). Rules come from ``rules``, else
        from ``config``, else the defaults. ``cache_bytes`` bounds the master arrays kept in memory.

        ``scratch`` (a folder of this process's own, e.g. in the daemon's state folder) keeps the prepared
        masters of :meth:`prepared` in memory-mapped scratch files instead of memory, their pages resident
        only while a band of a frame is calibrated (`astrod.io.mapped_masters`); the master files are then
        read for preparing without being cached either. For a long-running process calibrating large
        frames: 26 MP masters are 100 MB each. A later process given the same ``scratch`` maps the sets it finds
        there without reading the masters again; ``scratch_shared``: other processes may use it at the same
        time (the library's own `PREPARED_FOLDER`), so sets others made or opened in the last hour stay."""
        root = Path(folder)
        if rules is None:
            rules = MatchRules.from_config(config) if config is not None else MatchRules()
        return cls(root, MasterIndex.open(root, create=False), rules, cache_bytes=cache_bytes,
                   scratch=None if scratch is None else Path(scratch), scratch_shared=scratch_shared)

    def close(self) -> None:
        with self._lock:
            self._arrays.clear()
            self._prepared.clear()
            self.index.close()

    def __enter__(self) -> MasterLibrary:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------- records

    def records(self, *, kind: MasterKind | None = None) -> tuple[MasterRecord, ...]:
        """Every master in the index (re-read only when another connection changed it)."""
        with self._lock:
            version = self.index.data_version()
            if self._records is None or version != self._version:
                self._records = tuple(MasterRecord.from_row(row, self.folder) for row in self.index.rows())
                self._version = version
            found = self._records
        return found if kind is None else tuple(r for r in found if r.kind is kind)

    def invalidate(self) -> None:
        """Forget the cached records (after this connection itself wrote to the index)."""
        with self._lock:
            self._records = None

    def match(self, meta: FrameMeta) -> MatchResult:
        """The masters for a frame, with reasons and what is missing."""
        return match_frame(meta, self.records(), self.rules)

    # ------------------------------------------------------------------------------------------ arrays

    def load(self, record: MasterRecord) -> FloatArray:
        """A master's pixels (float32, read-only), from the cache when it was loaded before."""

        with self._lock:
            return self._arrays.get_or_make(("pixels", record.content_hash, str(record.path)),
                                            lambda: self._read(record),
                                            lambda a: int(a.nbytes))

    def _read(self, record: MasterRecord) -> FloatArray:
        """A master's pixels, read without being cached."""
        try:
            data, _ = read_fits(record.path)
        except AstrodError as err:
            raise LibraryError(f"{record.path}: cannot read the master: {err}") from err
        if data.shape != (record.key.height, record.key.width):
            raise LibraryError(f"{record.path}: master is {data.shape[-1]}x{data.shape[0]}, its index entry "
                               f"says {record.key.width}x{record.key.height}")
        data.setflags(write=False)
        return data

    def _bad_pixels(self, record: MasterRecord) -> BoolArray:
        return self.load_mask(record) if self.scratch is None else self._mask(self._read(record))

    @staticmethod
    def _mask(pixels: FloatArray) -> BoolArray:
        mask = np.asarray(pixels > 0.5, dtype=np.bool_)
        mask.setflags(write=False)
        return mask

    def load_mask(self, record: MasterRecord) -> BoolArray:
        """A bad-pixel map as a read-only boolean array (True = bad)."""

        def make() -> BoolArray:
            return self._mask(self.load(record))

        with self._lock:
            return self._arrays.get_or_make(("mask", record.content_hash, str(record.path)), make,
                                            lambda a: int(a.nbytes))

    def prepared(self, result: MatchResult, *, use_badpixels: bool = True) -> PreparedMasters:
        """The chosen masters of ``result`` prepared for :func:`astrod.core.calibrate.apply` (cached)."""
        meta = result.meta
        bias = result.bias.record if result.bias else None
        dark = result.dark.record if result.dark else None
        flat = result.flat.record if result.flat else None
        bpm = result.badpixels.record if (result.badpixels and use_badpixels) else None
        mode = result.dark_mode or "exact"
        if dark is not None and mode != "exact" and bias is None:
            raise LibraryError(f"dark mode {mode} needs a master bias")
        key = (tuple(None if r is None else r.content_hash for r in (bias, dark, flat, bpm)), mode,
               None if dark is None else dark.key.exposure, meta.bayer, meta.bayer_offset,
               (meta.height, meta.width))

        def make() -> PreparedMasters:
            name = scratch_name(__version__, key)
            if self.scratch is not None:
                # other sets are unlinked: the ones still cached stay mapped (and valid) until they are evicted
                remove_stale(self.scratch, keep={name}, idle_s=self.scratch_idle_s)
                found = open_prepared(self.scratch / name)
                if found is not None:
                    return found
            # with an exact dark the bias is already in it: subtracting the bias too would remove it twice
            use_bias = bias is not None and (dark is None or mode != "exact")
            load = self.load if self.scratch is None else self._read
            prepared = prepare(bias=load(bias) if (use_bias and bias is not None) else None,
                               dark=None if dark is None else load(dark),
                               flat=None if flat is None else load(flat),
                               bad_pixels=None if bpm is None else self._bad_pixels(bpm),
                               dark_exposure=None if dark is None else dark.key.exposure, dark_mode=mode,
                               bayer=meta.bayer, bayer_offset=meta.bayer_offset, shape=(meta.height, meta.width))
            if self.scratch is None:
                return prepared
            return map_prepared(prepared, self.scratch / name)

        with self._lock:
            return self._prepared.get_or_make(key, make, lambda _: 1)

    def cache_stats(self) -> CacheStats:
        return CacheStats(hits=self._arrays.hits, misses=self._arrays.misses)
