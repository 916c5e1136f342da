"""Auto-stretch a linear stack into an 8-bit preview (a midtones transfer function, as PixInsight's STF).

The image is first reduced by an integer factor (cv2.resize INTER_AREA: exact block means), scaled to
[0, 1] between its finite minimum and maximum, then per channel (or linked over channels):
shadows clip ``c0 = median + shadows_clip·MAD_n`` (MAD_n = 1.4826·MAD), and the midtones balance ``m``
that puts the median on ``target_background``: ``m = MTF(target_background, (median - c0)/(1 - c0))``.
Statistics come from a fixed, evenly strided subsample (``max_samples`` pixels), so a preview costs the
same at any stack size. NaN (no coverage) becomes black.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True, slots=True)
class StretchParameters:
    """Per-channel screen transfer: input range [low, high] (data units), shadows clip and midtones
    balance in the normalised [0, 1] range."""

    low: float
    high: float
    shadows: tuple[float, ...]
    midtones: tuple[float, ...]


def mtf(m: float | FloatArray, x: float | FloatArray) -> float | FloatArray:
    """The midtones transfer function: MTF(m, 0) = 0, MTF(m, m) = 0.5, MTF(m, 1) = 1."""
    return (m - 1.0) * x / ((2.0 * m - 1.0) * x - m)


def downsample(image: npt.NDArray[np.floating], factor: int) -> FloatArray:
    """Block mean over ``factor``×``factor`` pixels of a (H, W) or (planes, H, W) image (edges cropped)."""
    if factor < 1:
        raise ValueError(f"downsample factor must be at least 1, got {factor}")
    src = np.asarray(image, dtype=np.float32)
    if src.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (planes, H, W), got shape {src.shape}")
    h, w = src.shape[-2] // factor, src.shape[-1] // factor
    if h < 1 or w < 1:
        raise ValueError(f"image {src.shape} is smaller than the downsample factor {factor}")
    if factor == 1:
        return src.copy()
    planes = [src] if src.ndim == 2 else list(src)
    small = [cv2.resize(p[: h * factor, : w * factor], (w, h), interpolation=cv2.INTER_AREA) for p in planes]
    return np.asarray(small[0] if src.ndim == 2 else np.stack(small), dtype=np.float32)


def stretch_parameters(image: npt.NDArray[np.floating], *, linked: bool = True, shadows_clip: float = -2.8,
                       target_background: float = 0.25, max_samples: int = 250_000) -> StretchParameters:
    """Compute the auto-stretch of a (H, W) or (planes, H, W) image (use on the downsampled image)."""
    if not 0.0 < target_background < 1.0:
        raise ValueError(f"target_background must be in (0, 1), got {target_background}")
    planes = [image] if image.ndim == 2 else list(image)
    samples = [_sample(p, max_samples) for p in planes]
    finite = [s for s in samples if s.size]
    if not finite:
        return StretchParameters(low=0.0, high=1.0, shadows=(0.0,) * len(planes),
                                 midtones=(0.5,) * len(planes))
    low = float(min(s.min() for s in finite))
    high = float(max(s.max() for s in finite))
    span = high - low if high > low else 1.0
    medians: list[float] = []
    clips: list[float] = []
    for s in samples:
        if not s.size:
            medians.append(0.0)
            clips.append(0.0)
            continue
        x = (s.astype(np.float64) - low) / span
        med = float(np.median(x))
        madn = _MAD_TO_SIGMA * float(np.median(np.abs(x - med)))
        medians.append(med)
        clips.append(min(max(0.0, med + shadows_clip * madn), med))
    if linked:
        # one transfer for every channel: the lowest shadows clip, so no channel of a coloured sky is crushed
        # to black, and the midtones that put the mean of the channel medians on the target
        medians = [sum(medians) / len(medians)] * len(medians)
        clips = [min(clips)] * len(clips)
    mids = []
    for med, c0 in zip(medians, clips, strict=True):
        x0 = (med - c0) / (1.0 - c0) if c0 < 1.0 else 0.0
        mids.append(float(mtf(target_background, x0)) if 0.0 < x0 < 1.0 else 0.5)
    return StretchParameters(low=low, high=low + span, shadows=tuple(clips), midtones=tuple(mids))


_STRETCH_ROWS = 256  # rows stretched at a time: a full-size picture needs no full-size float temporaries


def apply_stretch(image: npt.NDArray[np.floating], params: StretchParameters, *,
                  bits: int = 8) -> npt.NDArray[np.uint8 | np.uint16]:
    """Apply ``params`` to a (H, W) or (planes, H, W) image: uint8 (``bits`` 16: uint16) (H, W) or
    (H, W, planes), RGB order."""
    planes = [image] if image.ndim == 2 else list(image)
    if len(planes) != len(params.midtones):
        raise ValueError(f"image has {len(planes)} planes, the stretch {len(params.midtones)}")
    span = params.high - params.low
    height, width = planes[0].shape
    if bits not in (8, 16):
        raise ValueError(f"a stretched picture has 8 or 16 bits, not {bits}")
    dtype, top = (np.uint8, 255.0) if bits == 8 else (np.uint16, 65535.0)
    out = np.empty((height, width, len(planes)), dtype=dtype)
    for i, (p, c0, m) in enumerate(zip(planes, params.shadows, params.midtones, strict=True)):
        # fold the [low, high] normalisation and the shadows clip into one affine step
        a = 1.0 / (span * (1.0 - c0)) if c0 < 1.0 else 0.0
        b = -(params.low / span + c0) / (1.0 - c0) if c0 < 1.0 else 0.0
        for r0 in range(0, height, _STRETCH_ROWS):
            x = np.asarray(p[r0:r0 + _STRETCH_ROWS], dtype=np.float32) * np.float32(a)
            x += np.float32(b)
            np.nan_to_num(x, copy=False, nan=0.0)
            np.clip(x, 0.0, 1.0, out=x)
            # MTF rearranged for in-place evaluation: (m-1)x / ((2m-1)x - m)
            denom = x * np.float32(2.0 * m - 1.0)
            denom -= np.float32(m)
            x *= np.float32(m - 1.0)
            x /= denom
            x *= np.float32(top)
            x += 0.5
            out[r0:r0 + _STRETCH_ROWS, :, i] = x.astype(dtype)
    return out[:, :, 0] if image.ndim == 2 else out


def auto_stretch(image: npt.NDArray[np.floating], *, downsample_factor: int = 2, linked: bool = True,
                 shadows_clip: float = -2.8, target_background: float = 0.25) -> npt.NDArray[np.uint8]:
    """An 8-bit auto-stretched preview of a linear (H, W) or (planes, H, W) image.

    Returns uint8 (H // f, W // f) for mono or (H // f, W // f, planes) in R, G, B order for colour, with
    ``f = downsample_factor``. ``linked`` uses one stretch for every channel (keeps colour balance);
    unlinked stretches each channel to the same background, which neutralises a coloured sky.
    """
    # full size: the image itself (apply_stretch does not change it), not a copy
    small = np.asarray(image, dtype=np.float32) if downsample_factor == 1 else downsample(image, downsample_factor)
    params = stretch_parameters(small, linked=linked, shadows_clip=shadows_clip,
                                target_background=target_background)
    return cast(npt.NDArray[np.uint8], apply_stretch(small, params))


def _sample(plane: npt.NDArray[np.floating], max_samples: int) -> npt.NDArray[np.float32]:
    """Finite values of a fixed, evenly strided subsample of the plane."""
    flat = np.asarray(plane, dtype=np.float32).reshape(-1)
    step = max(1, math.ceil(flat.size / max(1, max_samples)))
    s = flat[::step]
    return s[np.isfinite(s)]
