"""FITS reading and writing.

Reading takes a fast path for the common case (an uncompressed file with an image in the primary HDU or
the first image extension): the header is parsed by astropy, the pixels are read with one ``readinto`` and
decoded to float32 in one fused pass. Astropy's own scaling would cost about twice as much, and astropy
refuses to memory-map BZERO-scaled data. Compressed (gzip, tile-compressed) files go through astropy.
"""

from __future__ import annotations

import gzip
import math
import mmap
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.utils.exceptions import AstropyWarning

from astrod.core.convert import int16be_to_float32, scaled_to_float32
from astrod.errors import FrameReadError
from astrod.io.atomic import atomic_write

FITS_EXTENSIONS = frozenset({".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fz"})
_BLOCK = 2880
_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


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
    if loc.bitpix not in _DTYPES:
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


def _read_with_astropy(path: Path) -> tuple[npt.NDArray[np.float32], fits.Header]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        with fits.open(path, memmap=False, do_not_scale_image_data=True) as hdul:
            for hdu in hdul:
                if (hdu.is_image and hdu.header.get("NAXIS", 0) > 0) or isinstance(hdu, fits.CompImageHDU):
                    raw = hdu.data
                    if raw is None:
                        continue
                    header = hdu.header if hdu is hdul[0] else _merged(hdul[0].header, hdu.header)
                    if isinstance(hdu, fits.CompImageHDU):
                        return np.asarray(raw, dtype=np.float32), header
                    bscale = float(header.get("BSCALE", 1.0))
                    bzero = float(header.get("BZERO", 0.0))
                    return scaled_to_float32(raw, bscale=bscale, bzero=bzero), header
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


def read_fits(path: str | os.PathLike[str]) -> tuple[npt.NDArray[np.float32], fits.Header]:
    """Pixels (float32, physical values after BSCALE/BZERO) and header of the first image in a FITS file.

    Shape is (NAXIS2, NAXIS1) or (NAXIS3, NAXIS2, NAXIS1), as stored (row 0 is the first row in the file).
    Raises FrameReadError with a one-line cause for anything unreadable.
    """
    p = Path(path)
    head = _check_readable(p)
    try:
        if head[:2] == b"\x1f\x8b" or not head.startswith(b"SIMPLE"):
            if head[:2] != b"\x1f\x8b":
                raise FrameReadError(f"{p}: not a FITS file (no SIMPLE card at the start)")
            return _read_with_astropy(p)
        loc = _locate_image(p)
        if loc is None:
            return _read_with_astropy(p)
        return _read_located(p, loc), loc.header
    except FrameReadError:
        raise
    except (OSError, ValueError, KeyError, EOFError, gzip.BadGzipFile, TypeError) as err:
        raise FrameReadError(f"{p}: corrupt FITS: {err}") from err


def _read_located(path: Path, loc: _ImageLocation) -> npt.NDArray[np.float32]:
    if loc.bitpix not in _DTYPES:
        raise FrameReadError(f"{path}: unsupported BITPIX {loc.bitpix}")
    count = math.prod(loc.shape)
    nbytes = count * abs(loc.bitpix) // 8
    bscale = float(loc.header.get("BSCALE", 1.0))
    bzero = float(loc.header.get("BZERO", 0.0))
    with path.open("rb") as handle:
        available = os.fstat(handle.fileno()).st_size - loc.data_offset
        if available < nbytes:
            raise FrameReadError(
                f"{path}: truncated: the image needs {nbytes} bytes, the file has {max(available, 0)}")
        # Decoding straight from the mapped pages saves a copy of the raw bytes.
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            buf = np.frombuffer(mapped, dtype=np.uint8, count=nbytes, offset=loc.data_offset)
            try:
                if loc.bitpix == 16:
                    data = int16be_to_float32(buf, bscale=bscale, bzero=bzero)
                else:
                    data = scaled_to_float32(buf.view(_DTYPES[loc.bitpix]), bscale=bscale, bzero=bzero)
                    if np.shares_memory(data, buf):
                        data = data.copy()
            finally:
                del buf  # the map cannot close while a view of it is alive
    return data.reshape(loc.shape)


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


def write_fits(path: str | os.PathLike[str], data: npt.NDArray[Any],
               header: fits.Header | Mapping[str, Any] | None = None) -> Path:
    """Write ``data`` with ``header`` cards to ``path`` atomically; returns the path.

    ``header`` values may be plain values or ``(value, comment)`` pairs.
    """
    target = Path(path)
    hdr = fits.Header()
    if isinstance(header, fits.Header):
        hdr = header.copy()
    elif header:
        for key, value in header.items():
            hdr[key] = value
    for key in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "BZERO", "BSCALE"):
        hdr.remove(key, ignore_missing=True)
    hdu = fits.PrimaryHDU(data=np.asarray(data), header=hdr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        warnings.simplefilter("ignore", VerifyWarning)  # an over-long comment is truncated, as FITS requires
        with atomic_write(target, "wb") as handle:
            hdu.writeto(handle, output_verify="silentfix")
    return target
