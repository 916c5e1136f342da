"""FITS reading and writing.

Reading takes a fast path for the common case (an uncompressed file with an image in the primary HDU or
the first image extension): the header is parsed by astropy, the pixels are read in chunks of
``_CHUNK_BYTES`` by a few threads, each into its own small buffer, and each chunk is decoded to float32 in one
fused pass straight into its slice of the output. Peak memory is the float32 output plus a few chunks:
neither the file's bytes nor a map of them are ever held whole (mapped pages would count in RSS), and a
file that shrinks while being read gives an error rather than a crash (as a bus error on a map would). Astropy's own
scaling would cost about twice as much, and astropy refuses to memory-map BZERO-scaled data. Compressed
(gzip, tile-compressed) files go through astropy.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from astropy.io import fits
from astropy.io.fits import Header as Header  # re-exported: other layers build headers; only io reads and writes them
from astropy.io.fits.verify import VerifyWarning
from astropy.utils.exceptions import AstropyWarning

from astrod.core.convert import int16be_to_float32, scaled_to_float32
from astrod.errors import FrameReadError
from astrod.io.atomic import atomic_write

FITS_EXTENSIONS = frozenset({".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fz"})
_BLOCK = 2880
BITPIX_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
# Raw bytes each reader thread reads and decodes per step (rounded down to whole pixels): small enough to
# stay in a core's cache between the copy and the decode, large enough that per-chunk costs vanish.
# Reading holds at most _MAX_READERS chunks beside the output.
_CHUNK_BYTES = 1 << 20
_MAX_READERS = 4


def is_fits_name(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(ext) for ext in FITS_EXTENSIONS)


@dataclass(frozen=True, slots=True)
class _ImageLocation:
    header: fits.Header  # primary cards merged with the image extension's own
    data_offset: int
    shape: tuple[int, ...]
    bitpix: int


def _merged(primary: fits.Header, ext: fits.Header) -> fits.Header:
    merged = primary.copy()
    skip = {"XTENSION", "PCOUNT", "GCOUNT", "EXTNAME", "SIMPLE", "EXTEND"}
    for card in ext.cards:
        if card.keyword in skip or card.keyword in ("COMMENT", "HISTORY", ""):
            continue
        merged[card.keyword] = (card.value, card.comment)
    for key in [k for k in merged if k.startswith("NAXIS")]:
        if key not in ext:
            del merged[key]
    return merged


def _shape(header: fits.Header) -> tuple[int, ...]:
    naxis = int(header.get("NAXIS", 0))
    return tuple(int(header[f"NAXIS{i}"]) for i in range(naxis, 0, -1))


def _data_bytes(header: fits.Header) -> int:
    shape = _shape(header)
    if not shape:
        return 0
    n = abs(int(header["BITPIX"])) // 8 * int(header.get("GCOUNT", 1)) * (
        int(header.get("PCOUNT", 0)) + math.prod(shape))
    return -(-n // _BLOCK) * _BLOCK


def _checked(path: Path, loc: _ImageLocation, size: int) -> _ImageLocation:
    """A frame whose pixels do not all fit in the file is truncated: say so before anyone reads it."""
    if loc.bitpix not in BITPIX_DTYPES:
        raise FrameReadError(f"{path}: unsupported BITPIX {loc.bitpix}")
    nbytes = math.prod(loc.shape) * abs(loc.bitpix) // 8
    available = size - loc.data_offset
    if available < nbytes:
        raise FrameReadError(f"{path}: truncated: the image needs {nbytes} bytes, the file has {max(available, 0)}")
    return loc


def _locate_image(path: Path) -> _ImageLocation | None:
    """Find the first image HDU in an uncompressed file; None where only astropy can read it."""
    with warnings.catch_warnings(), path.open("rb") as handle:
        warnings.simplefilter("ignore", AstropyWarning)
        size = os.fstat(handle.fileno()).st_size
        primary = fits.Header.fromfile(handle)
        if _shape(primary):
            return _checked(path, _ImageLocation(primary, handle.tell(), _shape(primary), int(primary["BITPIX"])),
                            size)
        handle.seek(handle.tell() + _data_bytes(primary))
        while handle.tell() < size:
            ext = fits.Header.fromfile(handle)
            start = handle.tell()
            if ext.get("XTENSION", "").strip() == "IMAGE" and _shape(ext):
                return _checked(path, _ImageLocation(_merged(primary, ext), start, _shape(ext), int(ext["BITPIX"])),
                                size)
            if ext.get("ZIMAGE", False):
                return None
            handle.seek(start + _data_bytes(ext))
    raise FrameReadError(f"{path}: no image in any HDU")


def _fitting(out: npt.NDArray[np.float32] | None, shape: tuple[int, ...]) -> npt.NDArray[np.float32] | None:
    """``out`` viewed with ``shape`` when the image can be decoded into it in place, else None.

    It fits when it is float32, C-contiguous, writeable and holds exactly as many elements as the image.
    ``out`` itself is returned when its shape is already ``shape``, so callers may test ``result is out``.
    """
    if (out is None or out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable
            or out.size != math.prod(shape)):
        return None
    return out if out.shape == shape else out.reshape(shape)


def _read_with_astropy(path: Path, out: npt.NDArray[np.float32] | None,
                       ) -> tuple[npt.NDArray[np.float32], fits.Header]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        with fits.open(path, memmap=False, do_not_scale_image_data=True) as hdul:
            for hdu in hdul:
                if (hdu.is_image and hdu.header.get("NAXIS", 0) > 0) or isinstance(hdu, fits.CompImageHDU):
                    raw = hdu.data
                    if raw is None:
                        continue
                    header = hdu.header if hdu is hdul[0] else _merged(hdul[0].header, hdu.header)
                    target = _fitting(out, tuple(raw.shape))
                    # tile-compressed data too come unscaled here: fpack stores uint16 as int16 with BZERO 32768
                    bscale = float(header.get("BSCALE", 1.0))
                    bzero = float(header.get("BZERO", 0.0))
                    if target is None:
                        return scaled_to_float32(raw, bscale=bscale, bzero=bzero), header
                    scaled_to_float32(raw, bscale=bscale, bzero=bzero, out=target)
                    return target, header
    raise FrameReadError(f"{path}: no image in any HDU")


def _check_readable(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            head = handle.read(_BLOCK)
    except IsADirectoryError as err:
        raise FrameReadError(f"{path}: is a folder, not a file") from err
    except OSError as err:
        raise FrameReadError(f"{path}: cannot open: {err.strerror or err}") from err
    if not head:
        raise FrameReadError(f"{path}: empty file")
    return head


def read_fits(path: str | os.PathLike[str], *, out: npt.NDArray[np.float32] | None = None,
              ) -> tuple[npt.NDArray[np.float32], fits.Header]:
    """Pixels (float32, physical values after BSCALE/BZERO) and header of the first image in a FITS file.

    Shape is (NAXIS2, NAXIS1) or (NAXIS3, NAXIS2, NAXIS1), as stored (row 0 is the first row in the file).
    ``out``: a buffer to decode into, reused between frames to save an allocation. It is used when it is a
    writeable C-contiguous float32 array with as many elements as the image (the result is then ``out``
    itself, or a reshaped view of it when its shape differs); otherwise it is ignored and a fresh array is
    returned, so a caller that cares checks ``result is out`` or ``np.shares_memory(result, out)``. After an
    error the contents of ``out`` are undefined.
    Raises FrameReadError with a one-line cause for anything unreadable.
    """
    p = Path(path)
    head = _check_readable(p)
    try:
        if head[:2] == b"\x1f\x8b" or not head.startswith(b"SIMPLE"):
            if head[:2] != b"\x1f\x8b":
                raise FrameReadError(f"{p}: not a FITS file (no SIMPLE card at the start)")
            return _read_with_astropy(p, out)
        loc = _locate_image(p)
        if loc is None:
            return _read_with_astropy(p, out)
        return _read_located(p, loc, out), loc.header
    except FrameReadError:
        raise
    except (OSError, ValueError, KeyError, EOFError, gzip.BadGzipFile, TypeError) as err:
        raise FrameReadError(f"{p}: corrupt FITS: {err}") from err


def read_fits_rows(path: str | os.PathLike[str], row0: int, row1: int, *,
                   out: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
    """Rows ``row0 .. row1`` (float32, physical values) of the 2-D image of an uncompressed FITS file,
    read without the rest: what `read_fits` gives for those rows. ``out``: as in `read_fits`.
    Raises FrameReadError (also for a file whose image cannot be read by rows: compressed, 3-D)."""
    p = Path(path)
    _check_readable(p)
    try:
        loc = _locate_image(p)
    except (OSError, ValueError, KeyError, EOFError, TypeError) as err:
        raise FrameReadError(f"{p}: corrupt FITS: {err}") from err
    if loc is None or len(loc.shape) != 2 or loc.bitpix not in BITPIX_DTYPES:
        raise FrameReadError(f"{p}: rows can be read only from an uncompressed 2-D FITS image")
    height, width = loc.shape
    if not 0 <= row0 < row1 <= height:
        raise FrameReadError(f"{p}: rows [{row0}, {row1}) are outside the image's {height} rows")
    part = replace(loc, data_offset=loc.data_offset + row0 * width * (abs(loc.bitpix) // 8), shape=(row1 - row0, width))
    return _read_located(p, part, out)


def _read_located(path: Path, loc: _ImageLocation, out: npt.NDArray[np.float32] | None,
                  ) -> npt.NDArray[np.float32]:
    if loc.bitpix not in BITPIX_DTYPES:
        raise FrameReadError(f"{path}: unsupported BITPIX {loc.bitpix}")
    count = math.prod(loc.shape)
    itemsize = abs(loc.bitpix) // 8
    nbytes = count * itemsize
    with path.open("rb", buffering=0) as handle:
        available = os.fstat(handle.fileno()).st_size - loc.data_offset
        if available < nbytes:
            raise FrameReadError(
                f"{path}: truncated: the image needs {nbytes} bytes, the file has {max(available, 0)}")
        target = _fitting(out, loc.shape)
        if target is None:
            target = np.empty(loc.shape, dtype=np.float32)
        reader = _ChunkReader(path=path, handle=handle, loc=loc, out=target.reshape(-1),
                              step=max(_CHUNK_BYTES // itemsize, 1), nbytes=nbytes)
        starts = range(0, count, reader.step)
        # Several threads, each reading (pread copies out of the page cache) and decoding its own chunks
        # while they are hot in cache, beat one thread copying and a parallel kernel decoding: the copy is
        # half the work. Without pread (Windows) one handle cannot be shared, so one thread reads.
        workers = min(len(starts), _MAX_READERS, os.cpu_count() or 1) if hasattr(os, "preadv") else 1
        if workers <= 1:
            reader.run(starts)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fits-read") as pool:
                futures = [pool.submit(reader.run, starts[i::workers]) for i in range(workers)]
                for future in futures:
                    future.result()  # re-raises a worker's FrameReadError here
    return target


@dataclass(frozen=True, slots=True)
class _ChunkReader:
    """Reads chunks of one image's pixel bytes and decodes each into its slice of ``out``; thread-safe
    (positional reads, one buffer per call of ``run``)."""

    path: Path
    handle: io.FileIO
    loc: _ImageLocation
    out: npt.NDArray[np.float32]  # flat, as many elements as the image
    step: int  # pixels per chunk
    nbytes: int
    failed: threading.Event = field(default_factory=threading.Event)

    def run(self, starts: range) -> None:
        try:
            self._run(starts)
        except BaseException:
            self.failed.set()  # the other workers stop at their next chunk
            raise

    def _run(self, starts: range) -> None:
        itemsize = abs(self.loc.bitpix) // 8
        bscale = float(self.loc.header.get("BSCALE", 1.0))
        bzero = float(self.loc.header.get("BZERO", 0.0))
        chunk = np.empty(min(self.step, self.out.size) * itemsize, dtype=np.uint8)
        for first in starts:
            if self.failed.is_set():
                return
            n = min(self.step, self.out.size - first)
            raw = chunk[: n * itemsize]
            if self._fill(raw, self.loc.data_offset + first * itemsize) < raw.size:
                # the file shrank after the size check
                available = os.fstat(self.handle.fileno()).st_size - self.loc.data_offset
                raise FrameReadError(f"{self.path}: truncated: the image needs {self.nbytes} bytes, the file "
                                     f"has {max(available, 0)}")
            dest = self.out[first:first + n]
            if self.loc.bitpix == 16:
                int16be_to_float32(raw, bscale=bscale, bzero=bzero, out=dest, parallel=False)
            else:
                scaled_to_float32(raw.view(BITPIX_DTYPES[self.loc.bitpix]), bscale=bscale, bzero=bzero, out=dest)

    def _fill(self, buf: npt.NDArray[np.uint8], offset: int) -> int:
        """Read ``buf.size`` bytes at ``offset``; the number read (fewer only at the end of the file)."""
        view = buf.data  # buf is a contiguous uint8 array: a flat byte view
        done = 0
        if hasattr(os, "preadv"):
            while done < len(view) and (got := os.preadv(self.handle.fileno(), [view[done:]], offset + done)):
                done += got
            return done
        self.handle.seek(offset)  # only ever one reader thread here
        while done < len(view) and (got := self.handle.readinto(view[done:]) or 0):
            done += got
        return done


def read_fits_header(path: str | os.PathLike[str]) -> fits.Header:
    """The header of the first image HDU (merged with the primary header for extensions), without pixels."""
    p = Path(path)
    head = _check_readable(p)
    try:
        if head.startswith(b"SIMPLE"):
            loc = _locate_image(p)
            if loc is not None:
                return loc.header
        elif head[:2] != b"\x1f\x8b":
            raise FrameReadError(f"{p}: not a FITS file (no SIMPLE card at the start)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            with fits.open(p, memmap=False) as hdul:
                for hdu in hdul:
                    if hdu.header.get("NAXIS", 0) > 0 and (hdu.is_image or isinstance(hdu, fits.CompImageHDU)):
                        return hdu.header if hdu is hdul[0] else _merged(hdul[0].header, hdu.header)
        raise FrameReadError(f"{p}: no image in any HDU")
    except FrameReadError:
        raise
    except (OSError, ValueError, KeyError, EOFError, gzip.BadGzipFile, TypeError) as err:
        raise FrameReadError(f"{p}: corrupt FITS: {err}") from err


def _header(header: fits.Header | Mapping[str, Any] | None, *, extension: bool = False) -> fits.Header:
    hdr = fits.Header()
    if isinstance(header, fits.Header):
        hdr = header.copy()
    elif header:
        for key, value in header.items():
            hdr[key] = value
    structural = ("SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "BZERO", "BSCALE",
                  "PCOUNT", "GCOUNT")
    for key in (*structural, "EXTNAME") if extension else structural:
        hdr.remove(key, ignore_missing=True)
    return hdr


def write_fits(path: str | os.PathLike[str], data: npt.NDArray[Any],
               header: fits.Header | Mapping[str, Any] | None = None, *,
               extensions: Sequence[tuple[str, npt.NDArray[Any], fits.Header | Mapping[str, Any] | None]] = (),
               ) -> Path:
    """Write ``data`` with ``header`` cards to ``path`` atomically; returns the path.

    ``header`` values may be plain values or ``(value, comment)`` pairs. ``extensions`` are further images,
    ``(EXTNAME, data, header)``, written after the primary one: readers of the first image (:func:`read_fits`)
    never see them; :func:`read_fits_extension` reads one by name.
    """
    target = Path(path)
    hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [fits.PrimaryHDU(data=np.asarray(data), header=_header(header))]
    names = [name.strip().upper() for name, _, _ in extensions]
    if len(set(names)) != len(names) or "PRIMARY" in names:
        raise ValueError(f"extension names must be distinct and not PRIMARY, got {names}")
    for name, ext_data, ext_header in extensions:
        hdus.append(fits.ImageHDU(data=np.asarray(ext_data), header=_header(ext_header, extension=True),
                                  name=name.strip().upper()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        warnings.simplefilter("ignore", VerifyWarning)  # an over-long comment is truncated, as FITS requires
        with atomic_write(target, "wb") as handle:
            fits.HDUList(hdus).writeto(handle, output_verify="silentfix")
    return target


def read_fits_extension(path: str | os.PathLike[str], name: str,
                        ) -> tuple[npt.NDArray[np.float32], fits.Header] | None:
    """Pixels (float32, physical values) and own header of the image extension ``EXTNAME=name``, or None when
    the file has no such extension. Raises FrameReadError for an unreadable file."""
    p = Path(path)
    _check_readable(p)
    wanted = name.strip().upper()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            with fits.open(p, memmap=False) as hdul:
                for hdu in hdul[1:]:
                    if str(hdu.header.get("EXTNAME", "")).strip().upper() == wanted and hdu.is_image:
                        if hdu.data is None:
                            raise FrameReadError(f"{p}: extension {wanted} holds no image")
                        return np.asarray(hdu.data, dtype=np.float32), hdu.header.copy()
    except FrameReadError:
        raise
    except (OSError, ValueError, KeyError, EOFError, gzip.BadGzipFile, TypeError) as err:
        raise FrameReadError(f"{p}: corrupt FITS: {err}") from err
    return None


def set_header_cards(data: bytes, updates: Mapping[str, str]) -> bytes:
    """The FITS file with these header cards set (unchanged bytes when they already hold these values)."""
    with fits.open(io.BytesIO(data), do_not_scale_image_data=True) as hdul:
        header = hdul[0].header
        if all(str(header.get(k, "")).strip() == v for k, v in updates.items()):
            return data
        for key, value in updates.items():
            header[key] = value
        out = io.BytesIO()
        hdul.writeto(out, output_verify="silentfix")
    return out.getvalue()
