"""Warp a frame onto the reference grid, NaN where the frame does not cover it.

`astrod.model.Transform` maps frame pixel coordinates onto reference coordinates. cv2.warpAffine and
cv2.warpPerspective, called without WARP_INVERSE_MAP, invert the matrix they are given and compute
``dst(p) = src(M⁻¹·p)``, so the frame→reference matrix is passed to OpenCV as it is.

Coverage travels in the pixels: the border value is NaN, so every output pixel whose interpolation kernel
touches anything outside the frame is NaN (for linear interpolation, a sample exactly on the last row or
column also counts as touching outside, since its zero-weight neighbour is NaN). `astrod.core.stack`
skips NaN samples, so no separate mask is warped or allocated. Pure integer translations, the reference
frame itself included, are copied exactly instead of interpolated.
"""

from __future__ import annotations

from typing import Literal

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
    if interpolation not in _CV_INTERPOLATION:
        raise ValueError(f"unknown interpolation {interpolation!r}")
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (planes, H, W), got shape {image.shape}")
    height, width = int(shape[0]), int(shape[1])
    if height < 1 or width < 1:
        raise ValueError(f"reference shape must be positive, got {shape}")
    out_shape = (height, width) if image.ndim == 2 else (image.shape[0], height, width)
    if out is None:
        out = np.empty(out_shape, dtype=np.float32)
    elif out.shape != out_shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 of shape {out_shape}")
    src = np.asarray(image, dtype=np.float32)
    m = transform.as_array()
    if not np.all(np.isfinite(m)) or abs(np.linalg.det(m)) < 1e-12:
        raise ValueError(f"transform is not invertible: {transform.matrix}")
    src_planes = [src] if src.ndim == 2 else list(src)
    out_planes = [out] if out.ndim == 2 else list(out)
    shift = _integer_shift(m)
    for s, o in zip(src_planes, out_planes, strict=True):
        if shift is not None:
            _shift_copy(s, o, shift)
        elif np.array_equal(m[2], [0.0, 0.0, 1.0]):
            cv2.warpAffine(np.ascontiguousarray(s), m[:2], (width, height), dst=o,
                           flags=_CV_INTERPOLATION[interpolation], borderMode=cv2.BORDER_CONSTANT,
                           borderValue=float("nan"))
        else:
            cv2.warpPerspective(np.ascontiguousarray(s), m, (width, height), dst=o,
                                flags=_CV_INTERPOLATION[interpolation], borderMode=cv2.BORDER_CONSTANT,
                                borderValue=float("nan"))
    return out


def _integer_shift(m: npt.NDArray[np.float64]) -> tuple[int, int] | None:
    """(dx, dy) when ``m`` is a translation by whole pixels, else None."""
    if not np.array_equal(m[:, :2], [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]) or m[2, 2] != 1.0:
        return None
    dx, dy = m[0, 2], m[1, 2]
    if dx != round(dx) or dy != round(dy):
        return None
    return int(dx), int(dy)


def _shift_copy(src: FloatArray, dst: FloatArray, shift: tuple[int, int]) -> None:
    """dst(x, y) = src(x - dx, y - dy), NaN outside."""
    dx, dy = shift
    sh, sw = src.shape
    dh, dw = dst.shape
    x0, x1 = max(0, dx), min(dw, sw + dx)
    y0, y1 = max(0, dy), min(dh, sh + dy)
    dst.fill(np.nan)
    if x0 < x1 and y0 < y1:
        dst[y0:y1, x0:x1] = src[y0 - dy:y1 - dy, x0 - dx:x1 - dx]
