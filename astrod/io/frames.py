"""One entry point for reading any frame file: FITS (plain, gzipped or tile-compressed), camera raw, or a picture
(TIFF, PNG, JPEG, XISF: `astrod.io.images`), pixels and normalised metadata."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from astrod.errors import FrameReadError
from astrod.io import fits as fitsio
from astrod.io import images
from astrod.io.headers import PathRule, complete_from_path, normalise
from astrod.model import Frame, FrameMeta

RAW_SUFFIXES = frozenset({".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".rw2",
                          ".raf", ".orf", ".pef", ".srw", ".3fr", ".erf", ".kdc", ".mrw", ".x3f"})


def is_raw_name(path: Path) -> bool:
    return path.suffix.lower() in RAW_SUFFIXES


def is_frame_name(path: Path) -> bool:
    """Whether a file name looks like a frame astrod reads (by extension; content is checked on reading)."""
    return fitsio.is_fits_name(path) or is_raw_name(path) or images.is_image_name(path)


def expand_frame_paths(names: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; folders replaced by the frame files under them (recursively, sorted, no dotfiles)."""
    out: list[Path] = []
    for name in names:
        p = Path(name)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_frame_name(f)
                              and not f.name.startswith(".")))
        else:
            out.append(p)
    return out


def _check_file(path: Path) -> None:
    try:
        st = path.stat()
    except OSError as err:
        raise FrameReadError(f"{path}: cannot stat: {err.strerror or err}") from err
    if not path.is_file():
        raise FrameReadError(f"{path}: not a regular file")
    if st.st_size == 0:
        raise FrameReadError(f"{path}: empty file")
    if not os.access(path, os.R_OK):
        raise FrameReadError(f"{path}: permission denied")


def read_meta(path: str | os.PathLike[str], *, rename: Mapping[str, str] | None = None,
              rules: Iterable[PathRule] = ()) -> FrameMeta:
    """Normalised metadata of a frame file without reading its pixels."""
    p = Path(path)
    _check_file(p)
    if is_raw_name(p):
        from astrod.io import raw  # rawpy is only loaded when a raw file shows up

        return complete_from_path(raw.raw_to_meta(raw.read_raw_metadata(p), p), p, rules=rules)
    if images.is_image_name(p):
        return images.image_meta(p, images.read_image_info(p), rename=rename, rules=rules)
    return normalise(fitsio.read_fits_header(p), p, rename=rename, rules=rules)


def is_scratch(data: npt.NDArray[np.generic]) -> bool:
    """Whether a frame's pixel array can be read into again (``read_frame(out=)``) and calibrated in place:
    a writeable, C-contiguous, single-plane float32 image."""
    return data.ndim == 2 and data.dtype == np.float32 and data.flags.c_contiguous and data.flags.writeable


def read_frame(path: str | os.PathLike[str], *, rename: Mapping[str, str] | None = None,
               rules: Iterable[PathRule] = (), out: npt.NDArray[np.float32] | None = None) -> Frame:
    """Pixels as float32 plus normalised metadata. Raises FrameReadError with a one-line cause.

    ``out``: a reused buffer for the pixels, used only when it fits (writeable C-contiguous float32 with as
    many elements as the image), otherwise ignored; check ``np.shares_memory(frame.data, out)``. FITS pixels
    are decoded straight into it (see ``fits.read_fits``). Raw and picture pixels are decoded by their library
    into its own array and then copied into ``out``, so a caller recycling buffers gets the same contract for
    every kind, though such a read still peaks at one extra frame. Colour pictures are (3, H, W) R, G, B.
    """
    p = Path(path)
    _check_file(p)
    if is_raw_name(p):
        from astrod.io import raw

        data, raw_meta = raw.read_raw(p)
        meta = complete_from_path(raw.raw_to_meta(raw_meta, p), p, rules=rules)
        return Frame(meta=meta, data=_into(np.asarray(data, dtype=np.float32), out), path=p)
    if images.is_image_name(p):
        pixels, info = images.read_image(p)
        meta = images.image_meta(p, info, rename=rename, rules=rules)
        return Frame(meta=meta, data=_into(pixels, out), path=p)
    data, header = fitsio.read_fits(p, out=out)
    return Frame(meta=normalise(header, p, rename=rename, rules=rules), data=data, path=p)


def read_frame_rows(path: str | os.PathLike[str], row0: int, row1: int, *,
                    out: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
    """Rows ``row0 .. row1`` of a single-plane FITS frame's pixels (float32), as `read_frame` has them, read
    without the rest. Raises FrameReadError, also for a frame that cannot be read by rows (camera raw,
    pictures, compressed or multi-plane FITS): read it whole."""
    p = Path(path)
    if is_raw_name(p) or images.is_image_name(p):
        raise FrameReadError(f"{p}: rows can be read only from FITS frames")
    return fitsio.read_fits_rows(p, row0, row1, out=out)


def _into(pixels: npt.NDArray[np.float32], out: npt.NDArray[np.float32] | None) -> npt.NDArray[np.float32]:
    """``pixels`` copied into ``out`` when it fits (see `read_frame`), else ``pixels`` itself."""
    if (out is not None and out.dtype == np.float32 and out.flags.c_contiguous and out.flags.writeable
            and out.size == pixels.size):
        target = out if out.shape == pixels.shape else out.reshape(pixels.shape)
        np.copyto(target, pixels)
        return target
    return pixels
