"""Banded row reading of FITS frames: rows ``[row0, row1)`` of a frame without reading the rest.

Master combination reads the same rows of many frames at once. Mapping only the bytes of those rows keeps
peak memory at one band of every frame, whatever their number. The header is parsed exactly as
:mod:`astrod.io.fits` parses it. Frames that cannot be mapped (gzip or tile-compressed FITS, camera raw) are
decoded once into an uncompressed float32 FITS file in a spool folder, which is then mapped like any other.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from astropy.io import fits

from astrod.core.convert import int16be_to_float32, scaled_to_float32
from astrod.errors import FrameReadError
from astrod.io import fits as fitsio
from astrod.io.frames import is_raw_name, read_frame

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class RowLayout:
    """Where the pixels of a 2-D frame lie in its file, and how to decode them.

    ``source`` is the frame the user gave; ``path`` the file actually mapped (the same file, or its
    spooled float32 copy). ``size`` and ``mtime_ns`` are the mapped file's when it was located, so a
    file changed under a running build is noticed.
    """

    source: Path
    path: Path
    data_offset: int
    height: int
    width: int
    bitpix: int
    bscale: float
    bzero: float
    size: int
    mtime_ns: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def row_bytes(self) -> int:
        return self.width * abs(self.bitpix) // 8


def locate_rows(path: str | os.PathLike[str]) -> RowLayout:
    """The row layout of an uncompressed FITS frame. Raises FrameReadError with a one-line cause for a file
    that is unreadable, truncated, not 2-D, or compressed (see :func:`open_rows` for those)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as err:
        raise FrameReadError(f"{p}: cannot stat: {err.strerror or err}") from err
    if not p.is_file():
        raise FrameReadError(f"{p}: not a regular file")
    try:
        with p.open("rb") as handle:
            head = handle.read(6)
        if head != b"SIMPLE":
            raise FrameReadError(f"{p}: not an uncompressed FITS file: its rows cannot be mapped")
        loc = fitsio._locate_image(p)
    except FrameReadError:
        raise
    except (OSError, ValueError, KeyError, EOFError, TypeError) as err:
        raise FrameReadError(f"{p}: corrupt FITS: {err}") from err
    if loc is None:
        raise FrameReadError(f"{p}: tile-compressed FITS: its rows cannot be mapped")
    if len(loc.shape) != 2:
        raise FrameReadError(f"{p}: image of shape {loc.shape}: only 2-D frames can be read in row bands")
    if loc.bitpix not in fitsio.BITPIX_DTYPES:
        raise FrameReadError(f"{p}: unsupported BITPIX {loc.bitpix}")
    try:
        bscale = float(loc.header.get("BSCALE", 1.0))
        bzero = float(loc.header.get("BZERO", 0.0))
    except (TypeError, ValueError) as err:
        raise FrameReadError(f"{p}: bad BSCALE/BZERO: {err}") from err
    return RowLayout(source=p, path=p, data_offset=loc.data_offset, height=int(loc.shape[0]),
                     width=int(loc.shape[1]), bitpix=loc.bitpix, bscale=bscale, bzero=bzero, size=st.st_size,
                     mtime_ns=st.st_mtime_ns)


def open_rows(path: str | os.PathLike[str], *, spool_dir: str | os.PathLike[str] | None = None) -> RowLayout:
    """The row layout of any frame file. An uncompressed FITS file is mapped in place; with ``spool_dir``,
    a compressed FITS or camera raw frame is decoded once into ``spool_dir`` (float32 FITS) and that copy
    is mapped. Without ``spool_dir`` such frames raise FrameReadError."""
    p = Path(path)
    if not is_raw_name(p):
        try:
            return locate_rows(p)
        except FrameReadError as err:
            if spool_dir is None or "cannot be mapped" not in str(err):
                raise
    elif spool_dir is None:
        raise FrameReadError(f"{p}: camera raw frame: its rows cannot be mapped without a spool folder")
    data = read_frame(p).data
    if data.ndim != 2:
        raise FrameReadError(f"{p}: image of shape {data.shape}: only 2-D frames can be read in row bands")
    folder = Path(spool_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # one spool name per source: the same frame spooled twice in one build reuses the same file
    digest = hashlib.sha1(str(p.resolve()).encode("utf-8")).hexdigest()[:12]
    target = folder / f"{digest}_{p.name}.spool.fits"
    hdu = fits.PrimaryHDU(np.ascontiguousarray(data, dtype=np.float32))
    hdu.writeto(target, overwrite=True)
    layout = locate_rows(target)
    return RowLayout(source=p, path=layout.path, data_offset=layout.data_offset, height=layout.height,
                     width=layout.width, bitpix=layout.bitpix, bscale=layout.bscale, bzero=layout.bzero,
                     size=layout.size, mtime_ns=layout.mtime_ns)


def _exact_in_float32(layout: RowLayout) -> bool:
    """Whether ``raw + BZERO`` is exact in float32 arithmetic (8- and 16-bit integers with an integral BZERO,
    or unscaled floats): then one numpy pass decodes straight into the destination."""
    if layout.bscale != 1.0:
        return False
    if layout.bitpix in (8, 16):
        return float(layout.bzero).is_integer() and abs(layout.bzero) <= 2**23
    return layout.bitpix in (-32, -64) and layout.bzero == 0.0


def _decode_into(buf: npt.NDArray[np.uint8], layout: RowLayout, out: FloatArray) -> None:
    flat = out.reshape(-1)
    if _exact_in_float32(layout):
        raw = buf.view(fitsio.BITPIX_DTYPES[layout.bitpix])
        if layout.bzero:
            np.add(raw, np.float32(layout.bzero), out=flat, dtype=np.float32, casting="unsafe")
        else:
            np.copyto(flat, raw, casting="unsafe")
        return
    if layout.bitpix == 16:
        flat[...] = int16be_to_float32(buf, bscale=layout.bscale, bzero=layout.bzero)
    else:
        # 32/64-bit integers or scaled data: float64 keeps them exact before the final rounding
        flat[...] = scaled_to_float32(buf.view(fitsio.BITPIX_DTYPES[layout.bitpix]), bscale=layout.bscale,
                                      bzero=layout.bzero)


def read_rows(path: str | os.PathLike[str], row0: int, row1: int, *, layout: RowLayout | None = None,
              out: FloatArray | None = None) -> FloatArray:
    """Rows ``[row0, row1)`` of a 2-D FITS frame as float32 ``(row1 - row0, width)`` physical values.

    Only those rows' bytes are mapped and decoded. ``layout`` (from :func:`locate_rows`) saves parsing the
    header again; ``out`` receives the rows instead of a new array. Raises FrameReadError for an unreadable,
    truncated or changed file, ValueError for rows outside the frame.
    """
    lay = layout if layout is not None else locate_rows(path)
    if not 0 <= row0 <= row1 <= lay.height:
        raise ValueError(f"rows [{row0}, {row1}) are outside the frame's {lay.height} rows")
    rows = row1 - row0
    if out is not None and out.shape != (rows, lay.width):
        raise ValueError(f"out has shape {out.shape}, rows [{row0}, {row1}) need {(rows, lay.width)}")
    if out is not None and out.dtype != np.float32:
        raise ValueError(f"out must be float32, got {out.dtype}")
    if rows == 0:
        return out if out is not None else np.empty((0, lay.width), dtype=np.float32)
    start = lay.data_offset + row0 * lay.row_bytes
    count = rows * lay.row_bytes
    try:
        st = lay.path.stat()
    except OSError as err:
        raise FrameReadError(f"{lay.source}: cannot stat: {err.strerror or err}") from err
    if st.st_size != lay.size or st.st_mtime_ns != lay.mtime_ns:
        raise FrameReadError(f"{lay.source}: changed while it was being read")
    if st.st_size < start + count:
        raise FrameReadError(f"{lay.source}: truncated: rows [{row0}, {row1}) end at byte {start + count}, "
                             f"the file has {st.st_size}")
    dest = out if out is not None else np.empty((rows, lay.width), dtype=np.float32)
    aligned = start - start % mmap.ALLOCATIONGRANULARITY
    try:
        with lay.path.open("rb") as handle, mmap.mmap(handle.fileno(), start + count - aligned,
                                                      access=mmap.ACCESS_READ, offset=aligned) as mapped:
            buf = np.frombuffer(mapped, dtype=np.uint8, count=count, offset=start - aligned)
            try:
                _decode_into(buf, lay, dest)
            finally:
                del buf  # the map cannot close while a view of it is alive
    except (OSError, ValueError) as err:
        raise FrameReadError(f"{lay.source}: cannot map rows [{row0}, {row1}): {err}") from err
    return dest


def read_band(layouts: Sequence[RowLayout], row0: int, row1: int, *,
              out: FloatArray | None = None) -> FloatArray:
    """Rows ``[row0, row1)`` of every frame as one float32 ``(n_frames, row1 - row0, width)`` array."""
    if not layouts:
        raise ValueError("no frames to read")
    width = layouts[0].width
    height = layouts[0].height
    for lay in layouts:
        if lay.shape != (height, width):
            raise ValueError(f"{lay.source}: frame is {lay.width}x{lay.height}, the others {width}x{height}")
    shape = (len(layouts), row1 - row0, width)
    band = np.empty(shape, dtype=np.float32) if out is None else out
    if band.shape != shape:
        raise ValueError(f"out has shape {band.shape}, expected {shape}")
    for i, lay in enumerate(layouts):
        read_rows(lay.path, row0, row1, layout=lay, out=band[i])
    return band
