"""The on-disk cache of registered frames for a session's final full-rejection re-integration.

Each stacked frame is kept as one float32 ``.npy`` file (NaN where it does not cover the reference), written
band by band as the live stack warps it, so no whole warped frame is ever held in memory, and read back a
band of rows at a time. The files are scratch: renamed into place when complete, but not fsynced — after a
crash the checkpoint says which frames the stack holds, and a frame whose file is missing only costs the
final re-integration (the live stack is given instead).

When a session re-picks its reference, the frames cached so far are re-warped onto the new grid into files of
new names (`rewarp_cached_frame`): the checkpoint of before the re-pick still finds the files it names, so a
session resumed from it re-picks the same way; the old files go (`remove_cached_frames`) once a checkpoint no
longer names them.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

from astrod.core.warp import Interpolation, warp_bands
from astrod.model import Transform

FloatArray = npt.NDArray[np.float32]


class CachedFrameWriter:
    """Writes one frame of ``shape`` ((H, W) or (planes, H, W)) to ``path`` band by band.

    Use as a context manager: the file appears under its name only when the block ends without an
    error, after every row has been written.

    `write` copies the band and hands it to a writer thread of this frame's own (joined when the block
    ends), at most `_PENDING` bands ahead: the caller warps and accumulates the next band meanwhile.
    Writing into the page cache was a third of the per-frame time of ``astrod stack`` at 26 MP (1.25 GB
    for 12 frames), and ``pwrite`` lets the other thread run.
    """

    _PENDING = 2  # bands copied and not yet written: 2 × 3.2 MB for 128 rows of a 26 MP mono frame

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        if len(shape) not in (2, 3):
            raise ValueError(f"cached frames are (H, W) or (planes, H, W), got {shape}")
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._fd = -1
        self._data_offset = 0
        self._rows_written = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[None]] = deque()

    def __enter__(self) -> CachedFrameWriter:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": self.shape}
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with os.fdopen(os.dup(self._fd), "wb") as handle:
                np.lib.format.write_array_header_1_0(handle, header)  # type: ignore[no-untyped-call]
                self._data_offset = handle.tell()
            os.ftruncate(self._fd, self._data_offset + 4 * int(np.prod(self.shape)))
        except BaseException:
            os.close(self._fd)
            self._tmp.unlink(missing_ok=True)
            raise
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frame-cache")
        return self

    def write(self, row0: int, band: npt.NDArray[np.floating]) -> None:
        """Rows ``row0 .. row0 + rows`` of the frame: ``band`` is (rows, W) or (planes, rows, W).

        ``band`` may be reused by the caller as soon as this returns; an error of an earlier band's write
        is raised here (or when the block ends)."""
        planes = 1 if len(self.shape) == 2 else self.shape[0]
        height, width = self.shape[-2:]
        rows = band.shape[-2]
        if band.shape[:-2] != self.shape[:-2] or band.shape[-1] != width or row0 < 0 or row0 + rows > height:
            raise ValueError(f"band of shape {band.shape} at row {row0} does not fit a frame of {self.shape}")
        if self._pool is None:
            raise RuntimeError("CachedFrameWriter.write outside its with block")
        data = np.array(band, dtype=np.float32, order="C", copy=True).reshape(planes, rows, width)
        while len(self._pending) >= self._PENDING:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write_rows, row0, data))
        self._rows_written += rows

    def _write_rows(self, row0: int, data: FloatArray) -> None:
        height, width = self.shape[-2:]
        for p in range(data.shape[0]):
            offset = self._data_offset + 4 * ((p * height + row0) * width)
            view = memoryview(data[p]).cast("B")
            while view:
                written = os.pwrite(self._fd, view, offset)
                view, offset = view[written:], offset + written

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        failed: BaseException | None = None
        try:
            while self._pending:
                try:
                    self._pending.popleft().result()
                except Exception as err:  # the first write error, raised once the file is gone
                    failed = failed or err
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            os.close(self._fd)
        if kind is None and failed is None and self._rows_written == self.shape[-2]:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)
        if kind is None and failed is not None:
            raise failed


def read_cached_rows(path: Path, row0: int, row1: int) -> FloatArray:
    """Rows ``row0 .. row1`` of a cached frame ((rows, W) or (planes, rows, W)), read without the rest.

    Read with ``preadv`` straight into the array returned: one copy from the page cache, where a memory
    map faulted each 4 KB page into the process first (300 000 faults for the 12 frames of a 26 MP stack,
    which dominated the final re-integration's reading on a busy machine).
    """
    with Path(path).open("rb") as handle:
        version = np.lib.format.read_magic(handle)  # type: ignore[no-untyped-call]
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)  # type: ignore[no-untyped-call]
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)  # type: ignore[no-untyped-call]
        if fortran or dtype != np.dtype("<f4") or len(shape) not in (2, 3):
            raise ValueError(f"{path}: not a cached frame (shape {shape}, dtype {dtype})")
        height, width = int(shape[-2]), int(shape[-1])
        if not 0 <= row0 <= row1 <= height:
            raise ValueError(f"{path}: rows [{row0}, {row1}) are outside the frame's {height} rows")
        planes = 1 if len(shape) == 2 else int(shape[0])
        out = np.empty((planes, row1 - row0, width), dtype=np.float32)
        data_offset = handle.tell()
        fd = handle.fileno()
        for p in range(planes):
            view = memoryview(out[p]).cast("B")
            offset = data_offset + 4 * (p * height + row0) * width
            while view:
                got = os.preadv(fd, [view], offset)
                if got <= 0:
                    raise ValueError(f"{path}: truncated cached frame")
                view, offset = view[got:], offset + got
    return out[0] if len(shape) == 2 else out


def rewarp_cached_frame(source: Path, target: Path, transform: Transform, *, shape: tuple[int, ...],
                        interpolation: Interpolation = "linear", band_rows: int = 128) -> None:
    """Warp the cached frame ``source`` through ``transform`` (its grid onto the new one) into a new cached
    frame ``target`` of ``shape`` ((H, W) or (planes, H, W)), band by band, NaN where it does not cover;
    ``target`` appears only when complete. ``source`` is read through a memory map and left as it is."""
    if Path(source) == Path(target):
        raise ValueError(f"{source}: a cached frame is re-warped into a file of another name")
    cached = np.load(source, mmap_mode="r", allow_pickle=False)
    try:
        if cached.ndim != len(shape) or cached.shape[:-2] != tuple(shape[:-2]):
            raise ValueError(f"{source}: cached frame of shape {cached.shape} cannot be re-warped to {shape}")
        bands = warp_bands(cached, transform, shape=(int(shape[-2]), int(shape[-1])),
                           interpolation=interpolation, band_rows=band_rows)
        with CachedFrameWriter(target, shape) as writer:
            for row0, band in bands:
                writer.write(row0, band)
    finally:
        del cached


def remove_cached_frames(paths: list[Path]) -> None:
    """Delete cached frames no checkpoint names any more (missing ones are fine)."""
    for path in paths:
        Path(path).unlink(missing_ok=True)
