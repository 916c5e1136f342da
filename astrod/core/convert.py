"""Conversion of raw big-endian FITS pixel bytes into float32 in one pass.

Both decoders write into a caller-supplied ``out`` when given (C-contiguous float32 of the right size, any
shape) so a reader can decode a file chunk by chunk into slices of one reused frame buffer.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

# Elements per float64 scratch block for scaled 32/64-bit integers: 512 KiB keeps the temporary in cache
# whatever the size of the input.
_WIDE_BLOCK = 1 << 16


@numba.njit(cache=True, nogil=True, inline="always")
def _int16be_at(buf: npt.NDArray[np.uint8], i: int, bscale: float,
                bzero: float) -> np.float32:  # pragma: no cover - compiled
    v = (np.int32(buf[2 * i]) << 8) | np.int32(buf[2 * i + 1])
    if v >= 32768:
        v -= 65536
    return np.float32(v * bscale + bzero)


@numba.njit(parallel=True, cache=True, nogil=True)
def _int16be_to_float32(buf: npt.NDArray[np.uint8], out: npt.NDArray[np.float32], bscale: float,
                        bzero: float) -> None:  # pragma: no cover - compiled
    for i in numba.prange(out.size):
        out[i] = _int16be_at(buf, i, bscale, bzero)


@numba.njit(cache=True, nogil=True)
def _int16be_to_float32_serial(buf: npt.NDArray[np.uint8], out: npt.NDArray[np.float32], bscale: float,
                               bzero: float) -> None:  # pragma: no cover - compiled
    for i in range(out.size):
        out[i] = _int16be_at(buf, i, bscale, bzero)


def _flat_out(out: npt.NDArray[np.float32] | None, size: int) -> npt.NDArray[np.float32]:
    """``out`` as a flat view (or a fresh array when None); ValueError when it cannot take ``size`` values."""
    if out is None:
        return np.empty(size, dtype=np.float32)
    if out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable or out.size != size:
        raise ValueError(f"out must be a writeable C-contiguous float32 array of {size} elements, got "
                         f"{out.dtype} {out.shape} contiguous={out.flags.c_contiguous} "
                         f"writeable={out.flags.writeable}")
    return out.reshape(-1)


def int16be_to_float32(buf: npt.NDArray[np.uint8], *, bscale: float = 1.0, bzero: float = 0.0,
                       out: npt.NDArray[np.float32] | None = None, parallel: bool = True,
                       ) -> npt.NDArray[np.float32]:
    """Decode big-endian signed 16-bit pixels (FITS BITPIX 16) to ``value * bscale + bzero`` as float32.

    One fused pass: reading a 26 MP BZERO-scaled uint16 frame costs what the byte swap alone costs.
    With ``out`` (writeable C-contiguous float32 of ``buf.size // 2`` elements, any shape) the values are
    written there and ``out`` is returned; otherwise a fresh 1-D array is returned.
    ``parallel=False`` decodes on the calling thread only (GIL released), for callers that run their own
    threads over pieces of a frame; numba's thread pool must not be entered from several threads at once.
    """
    if buf.dtype != np.uint8 or buf.ndim != 1 or buf.size % 2:
        raise ValueError("expected a flat uint8 buffer of even length")
    flat = _flat_out(out, buf.size // 2)
    kernel = _int16be_to_float32 if parallel else _int16be_to_float32_serial
    kernel(buf, flat, float(bscale), float(bzero))
    return flat if out is None else out


def scaled_to_float32(raw: npt.NDArray[np.generic], *, bscale: float = 1.0, bzero: float = 0.0,
                      out: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
    """Any FITS pixel array (any BITPIX, either byte order) to float32 physical values ``raw * bscale + bzero``.

    With ``out`` (writeable C-contiguous float32 with ``raw.size`` elements, any shape) the values are
    written there and ``out`` is returned. Without it the result has ``raw``'s shape and is always a new
    array. ``raw`` is never modified.
    """
    src = np.ascontiguousarray(raw).reshape(-1)
    flat = _flat_out(out, src.size)
    if bscale == 1.0 and bzero == 0.0:
        np.copyto(flat, src, casting="unsafe")
    elif src.dtype.itemsize >= 4 and src.dtype.kind in "iu":
        # float64 keeps 32-bit integers exact before the final rounding to float32; in blocks so the
        # float64 temporary stays small
        tmp = np.empty(min(_WIDE_BLOCK, src.size), dtype=np.float64)
        for start in range(0, src.size, _WIDE_BLOCK):
            stop = min(start + _WIDE_BLOCK, src.size)
            t = tmp[: stop - start]
            np.multiply(src[start:stop], bscale, out=t, dtype=np.float64)
            np.add(t, bzero, out=t)
            np.copyto(flat[start:stop], t, casting="same_kind")
    else:
        np.copyto(flat, src, casting="unsafe")
        if bscale != 1.0:
            np.multiply(flat, np.float32(bscale), out=flat)
        if bzero != 0.0:
            np.add(flat, np.float32(bzero), out=flat)
    if out is not None:
        return out
    return flat.reshape(np.shape(raw))
