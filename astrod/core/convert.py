"""Conversion of raw big-endian FITS pixel bytes into float32 in one pass."""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt


@numba.njit(parallel=True, cache=True, nogil=True)
def _int16be_to_float32(buf: npt.NDArray[np.uint8], out: npt.NDArray[np.float32], bscale: float,
                        bzero: float) -> None:  # pragma: no cover - compiled
    for i in numba.prange(out.size):
        v = (np.int32(buf[2 * i]) << 8) | np.int32(buf[2 * i + 1])
        if v >= 32768:
            v -= 65536
        out[i] = np.float32(v * bscale + bzero)


def int16be_to_float32(buf: npt.NDArray[np.uint8], *, bscale: float = 1.0, bzero: float = 0.0,
                       ) -> npt.NDArray[np.float32]:
    """Decode big-endian signed 16-bit pixels (FITS BITPIX 16) to ``value * bscale + bzero`` as float32.

    One fused pass: reading a 26 MP BZERO-scaled uint16 frame costs what the byte swap alone costs.
    """
    if buf.dtype != np.uint8 or buf.ndim != 1 or buf.size % 2:
        raise ValueError("expected a flat uint8 buffer of even length")
    out = np.empty(buf.size // 2, dtype=np.float32)
    _int16be_to_float32(buf, out, float(bscale), float(bzero))
    return out


def scaled_to_float32(raw: npt.NDArray[np.generic], *, bscale: float = 1.0, bzero: float = 0.0,
                      ) -> npt.NDArray[np.float32]:
    """Any FITS pixel array (any BITPIX) to float32 physical values ``raw * bscale + bzero``."""
    if bscale == 1.0 and bzero == 0.0:
        return np.asarray(raw, dtype=np.float32)
    if raw.dtype.itemsize >= 4 and raw.dtype.kind in "iu":
        # float64 keeps 32-bit integers exact before the final rounding to float32
        return (raw.astype(np.float64) * bscale + bzero).astype(np.float32)
    out = raw.astype(np.float32)
    if bscale != 1.0:
        out *= np.float32(bscale)
    if bzero != 0.0:
        out += np.float32(bzero)
    return out
