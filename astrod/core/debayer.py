"""Demosaic a colour sensor's mosaic into (3, H, W) float32 planes in R, G, B order.

Debayer first, then warp (not warp per CFA plane). The colour filter array is a lattice in *sensor*
coordinates: after any rotation, a meridian flip or a sub-pixel shift the CFA phase no longer exists on
the reference grid, so demosaicing can only happen on the native grid, before warping. Doing it first
keeps full resolution, lets the warp and the stacker treat colour as three ordinary planes, and needs
no per-channel coverage bookkeeping. Warping each CFA plane separately (Bayer drizzle) only pays off
with many well-dithered frames, and needs a per-channel weight map in the stacker for its sparse samples
(more state per pixel) or gives half-resolution colour.

Demosaicing runs on float32 directly (numba, parallel over rows), because OpenCV's demosaicing accepts
only 8- or 16-bit input and quantising calibrated float frames to 16 bits would add noise. Methods:
``"gradient"`` (default): gradient-corrected linear interpolation, the Malvar–He–Cutler scheme (bilinear
plus a Laplacian correction from the pixel's own channel) with the correction gains set so that the
second-order error cancels on a grey scene (1/4, 1/2, 1/2 instead of MHC's image-statistics gains 1/2,
5/8, 3/4, which overcorrect star profiles). On a grey Moffat star the largest colour error is 5.5 %, 2.7 %,
1.1 % of the peak at FWHM 3.5, 4.5, 6 px, against 19 %, 13 %, 8 % for bilinear (also OpenCV's bilinear
and edge-aware) and 11 %, 8 %, 6 % for OpenCV's VNG; its noise gain is 0.84. ``"bilinear"``: plain
bilinear. Image borders are mirrored without repeating the edge pixel, which keeps the CFA phase.

Pattern and offset follow the FITS BAYERPAT / XBAYROFF / YBAYROFF convention (see :mod:`astrod.core.bayer`):
the pattern names the 2×2 cell starting at sensor pixel (0, 0), and image pixel (x, y) has the filter of
pattern cell ``((x + xoff) mod 2, (y + yoff) mod 2)``.
"""

from __future__ import annotations

from typing import Literal

import numba
import numpy as np
import numpy.typing as npt

from astrod.core.bayer import cell_colours, effective_pattern

__all__ = ["Method", "debayer", "effective_pattern"]

FloatArray = npt.NDArray[np.float32]
Method = Literal["gradient", "bilinear"]

def debayer(mosaic: npt.NDArray[np.floating], *, pattern: str, offset: tuple[int, int] = (0, 0),
            method: Method = "gradient", out: FloatArray | None = None) -> FloatArray:
    """Demosaic a (H, W) CFA mosaic into float32 (3, H, W), planes R, G, B. The input is not modified.

    ``out`` may be given to reuse a buffer (a fresh 26 MP colour frame costs ~0.1 s of page faults).
    """
    if mosaic.ndim != 2 or mosaic.shape[0] < 3 or mosaic.shape[1] < 3:
        raise ValueError(f"mosaic must be 2-D and at least 3×3, got shape {mosaic.shape}")
    if method not in ("gradient", "bilinear"):
        raise ValueError(f"unknown demosaicing method {method!r}")
    eff = effective_pattern(pattern, offset)
    cfa = cell_colours(eff).astype(np.int64)
    src = np.ascontiguousarray(mosaic, dtype=np.float32)
    shape = (3, *src.shape)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 of shape {shape}")
    _demosaic(src, cfa, method == "gradient", out)
    return out


@numba.njit(inline="always")
def _ix(i: int, n: int) -> int:  # pragma: no cover - compiled
    """Mirror an index into [0, n) without repeating the edge (keeps the 2-pixel CFA period)."""
    if i < 0:
        return -i
    if i >= n:
        return 2 * n - 2 - i
    return i


@numba.njit(inline="always")
def _green(raw: FloatArray, out: FloatArray, y: int, x: int, ym2: int, ym1: int, yp1: int, yp2: int,
           xm2: int, xm1: int, xp1: int, xp2: int, row_colour: int,
           corrected: bool) -> None:  # pragma: no cover - compiled
    """A green pixel; ``row_colour`` is the colour of its left and right neighbours."""
    c0 = np.float64(raw[y, x])
    along_row = 0.5 * (np.float64(raw[y, xm1]) + raw[y, xp1])
    along_col = 0.5 * (np.float64(raw[ym1, x]) + raw[yp1, x])
    if corrected:
        # bilinear estimate + gain·(own sample − its own-channel neighbours): second-order exact
        along_row += 0.25 * c0 - 0.125 * (np.float64(raw[y, xm2]) + raw[y, xp2])
        along_col += 0.25 * c0 - 0.125 * (np.float64(raw[ym2, x]) + raw[yp2, x])
    out[1, y, x] = c0
    out[row_colour, y, x] = along_row
    out[2 - row_colour, y, x] = along_col


@numba.njit(inline="always")
def _red_blue(raw: FloatArray, out: FloatArray, y: int, x: int, ym2: int, ym1: int, yp1: int, yp2: int,
              xm2: int, xm1: int, xp1: int, xp2: int, colour: int,
              corrected: bool) -> None:  # pragma: no cover - compiled
    """A red (colour 0) or blue (colour 2) pixel."""
    c0 = np.float64(raw[y, x])
    green = 0.25 * ((np.float64(raw[ym1, x]) + raw[yp1, x]) + (np.float64(raw[y, xm1]) + raw[y, xp1]))
    other = 0.25 * ((np.float64(raw[ym1, xm1]) + raw[ym1, xp1]) + (np.float64(raw[yp1, xm1]) + raw[yp1, xp1]))
    if corrected:
        far = (np.float64(raw[y, xm2]) + raw[y, xp2]) + (np.float64(raw[ym2, x]) + raw[yp2, x])
        green += 0.25 * c0 - 0.0625 * far
        other += 0.5 * c0 - 0.125 * far
    out[colour, y, x] = c0
    out[1, y, x] = green
    out[2 - colour, y, x] = other


@numba.njit(parallel=True, cache=True, fastmath=False)
def _demosaic(raw: FloatArray, cfa: npt.NDArray[np.int64], corrected: bool,
              out: FloatArray) -> None:  # pragma: no cover - compiled
    h, w = raw.shape
    for y in numba.prange(h):
        ym2 = _ix(y - 2, h)
        ym1 = _ix(y - 1, h)
        yp1 = _ix(y + 1, h)
        yp2 = _ix(y + 2, h)
        for parity in range(2):
            colour = cfa[y & 1, parity]
            other_colour = cfa[y & 1, 1 - parity]
            # interior pixels index directly; the two columns at each edge are mirrored
            first = parity + 2
            last = w - 2
            tail = max(first, last + (last - parity) % 2)
            for x in [*range(parity, min(first, w), 2), *range(tail, w, 2)]:
                xm2, xm1, xp1, xp2 = _ix(x - 2, w), _ix(x - 1, w), _ix(x + 1, w), _ix(x + 2, w)
                if colour == 1:
                    _green(raw, out, y, x, ym2, ym1, yp1, yp2, xm2, xm1, xp1, xp2, other_colour, corrected)
                else:
                    _red_blue(raw, out, y, x, ym2, ym1, yp1, yp2, xm2, xm1, xp1, xp2, colour, corrected)
            if colour == 1:
                for x in range(first, last, 2):
                    _green(raw, out, y, x, ym2, ym1, yp1, yp2, x - 2, x - 1, x + 1, x + 2, other_colour,
                           corrected)
            else:
                for x in range(first, last, 2):
                    _red_blue(raw, out, y, x, ym2, ym1, yp1, yp2, x - 2, x - 1, x + 1, x + 2, colour,
                              corrected)
