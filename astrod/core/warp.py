"""Warp a frame onto the reference grid, NaN where the frame does not cover it.

`astrod.model.Transform` maps frame pixel coordinates onto reference coordinates. cv2.warpAffine and
cv2.warpPerspective, called without WARP_INVERSE_MAP, invert the matrix they are given and compute
``dst(p) = src(M⁻¹·p)``, so the frame→reference matrix is passed to OpenCV as it is.

Coverage travels in the pixels: the border value is NaN, so every output pixel whose interpolation kernel
touches anything outside the frame is NaN (for linear interpolation, a sample exactly on the last row or
column also counts as touching outside, since its zero-weight neighbour is NaN). `astrod.core.stack`
skips NaN samples, so no separate mask is warped or allocated. Pure integer translations, the reference
frame itself included, are copied exactly instead of interpolated.

`warp_bands` yields the warped image a band of rows at a time in one small reused buffer, so the live
stack never holds a whole warped frame (104 MB at 26 MP): each band is accumulated while it is still in
the CPU cache. A band is the same as the matching rows of `warp` (the output rows are shifted into the
matrix, so OpenCV sees the same map up to the last bit of its double arithmetic).

`resample` does the same for one plane of a map that is not a frame (a stack's running mean, its uint16
counts), keeping its dtype, bilinear or nearest-neighbour.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from astrod.model import Transform

FloatArray = npt.NDArray[np.float32]
Interpolation = Literal["linear", "cubic", "lanczos"]

_CV_INTERPOLATION: dict[str, int] = {
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}


def warp(image: npt.NDArray[np.floating], transform: Transform, *, shape: tuple[int, int],
         interpolation: Interpolation = "linear", out: FloatArray | None = None) -> FloatArray:
    """Resample ``image`` (H, W) or (planes, H, W) onto a reference grid of ``shape`` (H_ref, W_ref).

    ``transform`` maps image pixels onto reference pixels. Returns float32 (H_ref, W_ref) or
    (planes, H_ref, W_ref), NaN where the image does not cover the reference; ``out`` may be given to
    reuse a buffer. The input is not modified.
    """
    out_shape = _check(image, transform, shape, interpolation)
    if out is None:
        out = np.empty(out_shape, dtype=np.float32)
    elif out.shape != out_shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 of shape {out_shape}")
    _warp_rows(np.asarray(image, dtype=np.float32), transform.as_array(), 0, out, interpolation)
    return out


def warp_bands(image: npt.NDArray[np.floating], transform: Transform, *, shape: tuple[int, int],
               interpolation: Interpolation = "linear", band_rows: int = 256,
               buffer: FloatArray | None = None) -> Iterator[tuple[int, FloatArray]]:
    """`warp` a band of ``band_rows`` rows at a time: yields ``(first_row, band)`` top to bottom, ``band``
    being (rows, W_ref) or (planes, rows, W_ref) and valid until the next band is produced.

    ``buffer`` (float32, C-contiguous, at least one band) is reused for every band. The arguments are
    checked here, before the first band, so a caller sees a bad transform before it has consumed anything.
    """
    out_shape = _check(image, transform, shape, interpolation)
    if band_rows < 1:
        raise ValueError(f"band_rows must be positive, got {band_rows}")
    height = out_shape[-2]
    band_rows = min(band_rows, height)
    band_size = math.prod(out_shape[:-2]) * band_rows * out_shape[-1]
    if buffer is None:
        buffer = np.empty(band_size, dtype=np.float32)
    elif buffer.dtype != np.float32 or not buffer.flags.c_contiguous or buffer.size < band_size:
        raise ValueError(f"buffer must be C-contiguous float32 with at least {band_size} elements")
    return _bands(np.asarray(image, dtype=np.float32), transform.as_array(), out_shape, band_rows,
                  buffer.reshape(-1), interpolation)


def warp_rows(image: npt.NDArray[np.floating], transform: Transform, *, shape: tuple[int, int], row0: int,
              out: FloatArray, interpolation: Interpolation = "linear") -> None:
    """Rows ``row0 .. row0 + out.shape[-2]`` of `warp` into ``out`` ((rows, W_ref) or (planes, rows, W_ref),
    float32, each plane's rows contiguous: a slice of rows of a bigger band will do).

    The same rows as `warp_bands` gives for a band that starts at ``row0``, bit for bit.
    """
    out_shape = _check(image, transform, shape, interpolation)
    rows = out.shape[-2] if out.ndim >= 2 else 0
    if (out.dtype != np.float32 or out.shape[:-2] != out_shape[:-2] or out.shape[-1] != out_shape[-1]
            or not 0 <= row0 <= row0 + rows <= out_shape[-2]):
        raise ValueError(f"out {out.dtype}{out.shape} at row {row0} does not fit a warp of shape {out_shape}")
    planes = [out] if out.ndim == 2 else list(out)
    if not all(p.flags.c_contiguous for p in planes):
        raise ValueError("out must have C-contiguous planes")
    _warp_rows(np.asarray(image, dtype=np.float32), transform.as_array(), row0, out, interpolation)


def resample(image: npt.NDArray[np.float32] | npt.NDArray[np.uint16], transform: Transform, *,
             shape: tuple[int, int], interpolation: Literal["linear", "nearest"], fill: float = math.nan,
             out: npt.NDArray[np.float32] | npt.NDArray[np.uint16] | None = None,
             ) -> npt.NDArray[np.float32] | npt.NDArray[np.uint16]:
    """`warp` for maps that are not frames: one (H, W) plane of float32 or uint16 (a count map), its dtype
    kept, resampled bilinearly or by nearest neighbour onto ``shape``, ``fill`` where the plane does not
    cover the output (NaN only for float32; with linear interpolation, wherever the kernel touches outside,
    as in `warp`). ``out`` (C-contiguous, of the output shape and the input's dtype) may be given.
    """
    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"unknown interpolation {interpolation!r} for resample")
    if image.ndim != 2 or image.dtype not in (np.float32, np.uint16):
        raise ValueError(f"resample needs one float32 or uint16 (H, W) plane, got {image.dtype}{image.shape}")
    if image.dtype == np.uint16 and not (0.0 <= fill <= 65535.0):
        raise ValueError(f"fill {fill} does not fit a uint16 map")
    height, width = check_grid(transform, shape)
    if out is None:
        out = np.empty((height, width), dtype=image.dtype)
    elif out.shape != (height, width) or out.dtype != image.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous {image.dtype} of shape {(height, width)}")
    flags = cv2.INTER_LINEAR if interpolation == "linear" else cv2.INTER_NEAREST
    _warp_plane(image, transform.as_array(), out, flags, fill)
    return out


def _bands(src: FloatArray, m: npt.NDArray[np.float64], out_shape: tuple[int, ...], band_rows: int,
           flat: FloatArray, interpolation: Interpolation) -> Iterator[tuple[int, FloatArray]]:
    height = out_shape[-2]
    for row0 in range(0, height, band_rows):
        rows = min(band_rows, height - row0)
        band_shape = (*out_shape[:-2], rows, out_shape[-1])
        band = flat[: math.prod(band_shape)].reshape(band_shape)
        _warp_rows(src, m, row0, band, interpolation)
        yield row0, band


def _check(image: npt.NDArray[np.floating], transform: Transform, shape: tuple[int, int],
           interpolation: str) -> tuple[int, ...]:
    """The output shape, after checking the arguments of a warp."""
    if interpolation not in _CV_INTERPOLATION:
        raise ValueError(f"unknown interpolation {interpolation!r}")
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (planes, H, W), got shape {image.shape}")
    height, width = check_grid(transform, shape)
    return (height, width) if image.ndim == 2 else (int(image.shape[0]), height, width)


def check_grid(transform: Transform, shape: tuple[int, int]) -> tuple[int, int]:
    """The output (H, W) of a warp through ``transform`` onto ``shape``; raises ValueError when the shape is
    not positive or the transform cannot be inverted."""
    height, width = int(shape[0]), int(shape[1])
    if height < 1 or width < 1:
        raise ValueError(f"reference shape must be positive, got {shape}")
    m = transform.as_array()
    if not np.all(np.isfinite(m)) or abs(np.linalg.det(m)) < 1e-12:
        raise ValueError(f"transform is not invertible: {transform.matrix}")
    return height, width


def _warp_rows(src: FloatArray, m: npt.NDArray[np.float64], row0: int, out: FloatArray,
               interpolation: str) -> None:
    """Rows ``row0 .. row0 + out.shape[-2]`` of the warped image into ``out``."""
    # output row y of the band is reference row y + row0: move the output grid up by row0
    shifted = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, -float(row0)], [0.0, 0.0, 1.0]]) @ m
    src_planes = [src] if src.ndim == 2 else list(src)
    out_planes = [out] if out.ndim == 2 else list(out)
    for s, o in zip(src_planes, out_planes, strict=True):
        _warp_plane(s, shifted, o, _CV_INTERPOLATION[interpolation], math.nan)


def _warp_plane(src: npt.NDArray[Any], m: npt.NDArray[np.float64], out: npt.NDArray[Any], flags: int,
                fill: float) -> None:
    """One plane through ``m`` into ``out`` (its shape is the output's), ``fill`` where ``src`` does not
    cover: a whole-pixel shift is copied exactly, else OpenCV's affine or perspective warp."""
    rows, width = out.shape
    shift = _integer_shift(m)
    if shift is not None:
        _shift_copy(src, out, shift, fill=fill)
    elif np.array_equal(m[2], [0.0, 0.0, 1.0]):
        cv2.warpAffine(np.ascontiguousarray(src), m[:2], (width, rows), dst=out, flags=flags,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=float(fill))
    else:
        cv2.warpPerspective(np.ascontiguousarray(src), m, (width, rows), dst=out, flags=flags,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=float(fill))


def _integer_shift(m: npt.NDArray[np.float64]) -> tuple[int, int] | None:
    """(dx, dy) when ``m`` is a translation by whole pixels, else None."""
    if not np.array_equal(m[:, :2], [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]) or m[2, 2] != 1.0:
        return None
    dx, dy = m[0, 2], m[1, 2]
    if dx != round(dx) or dy != round(dy):
        return None
    return int(dx), int(dy)


def _shift_copy(src: npt.NDArray[Any], dst: npt.NDArray[Any], shift: tuple[int, int], *,
                fill: float = math.nan) -> None:
    """dst(x, y) = src(x - dx, y - dy), ``fill`` outside."""
    dx, dy = shift
    sh, sw = src.shape
    dh, dw = dst.shape
    x0, x1 = max(0, dx), min(dw, sw + dx)
    y0, y1 = max(0, dy), min(dh, sh + dy)
    dst.fill(fill)
    if x0 < x1 and y0 < y1:
        dst[y0:y1, x0:x1] = src[y0 - dy:y1 - dy, x0 - dx:x1 - dx]
