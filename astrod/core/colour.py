"""Colour calibration of a linear RGB stack: background neutralisation and white balance from the stars.

One affine map per channel, ``out_c = gain_c · x_c + offset_c``, worked out on a binned copy of the image (at
most ``max_pixels`` per plane: the cost does not grow with the stack, and binning by block means keeps star
fluxes and sky medians):

* **background**: the sky's median in each channel, over background samples only — pixels of the luminance
  (the channels' mean) above its sky by ``mask_sigma`` σ are masked, the mask grown by ``mask_grow`` binned
  pixels so the wings of stars and the bright parts of a nebula stay out; the median is σ-clipped.
* **white balance**: the stars are detected on the luminance (`astrod.core.stars.detect_stars`), measured by
  aperture photometry in each channel (sky from an annulus), and the median of their colour ratios
  ``F_c / F_G`` over unsaturated, well-measured stars (signal-to-noise ≥ ``min_snr``, peak below
  ``saturation``) is taken as white: ``gain_c = 1 / median(F_c / F_G)``, green keeping gain 1.
* the offsets put every channel's sky on green's: ``offset_c = bg_G - gain_c · bg_c``.

So the neutral sky keeps green's level (the picture is not shifted), the median star is white, and the result is
still linear. Too few stars (``min_stars``): gains 1, background neutralisation only.

Photometric calibration against a catalogue (the issue's optional path) is not done here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from astrod.core.background import background_mask, clipped_median
from astrod.core.stars import detect_stars
from astrod.core.stretch import downsample

FloatArray = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

_MAD = 1.4826
_BAND_ROWS = 512  # rows of a full-size image changed at a time by `apply_colour`


@dataclass(frozen=True, slots=True)
class ColourBalance:
    """The per-channel map ``out = gain · x + offset`` (R, G, B) and what it was worked out from: the sky
    medians ``background``, the median star colour ``star_ratio`` (F_c / F_G before the gains) and the number
    of stars that set it (0: no white balance, gains 1)."""

    gains: tuple[float, float, float]
    offsets: tuple[float, float, float]
    background: tuple[float, float, float]
    star_ratio: tuple[float, float, float]
    stars: int

    @classmethod
    def identity(cls) -> ColourBalance:
        return cls(gains=(1.0, 1.0, 1.0), offsets=(0.0, 0.0, 0.0), background=(0.0, 0.0, 0.0),
                   star_ratio=(1.0, 1.0, 1.0), stars=0)

    def cards(self) -> dict[str, tuple[float | int, str]]:
        """FITS cards (key -> (value, comment)) naming the factors: CBGAIN1..3, CBOFFS1..3, CBSTARS."""
        out: dict[str, tuple[float | int, str]] = {}
        for i, name in enumerate("RGB"):
            out[f"CBGAIN{i + 1}"] = (round(self.gains[i], 6), f"colour balance gain of {name}")
        for i, name in enumerate("RGB"):
            out[f"CBOFFS{i + 1}"] = (round(self.offsets[i], 4), f"colour balance offset of {name}, data units")
        out["CBSTARS"] = (self.stars, "stars that set the white balance (0: none)")
        return out


def colour_balance(image: npt.NDArray[np.floating], *, max_pixels: int = 2_000_000, mask_sigma: float = 3.0,
                   mask_grow: int = 2, min_snr: float = 30.0, min_stars: int = 5, max_stars: int = 300,
                   saturation: float | None = None, white_balance: bool = True) -> ColourBalance:
    """The `ColourBalance` of a linear (3, H, W) R, G, B image (NaN where nothing was measured).

    ``saturation`` (data units): stars whose peak reaches it in any channel are left out (None: the brightest
    peaks, within 10 % of the highest star's peak in a channel, are taken for saturated). ``white_balance``
    False: background neutralisation only.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"colour calibration needs a (3, H, W) image, got shape {image.shape}")
    h, w = image.shape[-2:]
    factor = max(1, math.ceil(math.sqrt(h * w / max(1, max_pixels))))
    small = downsample(image, factor) if factor > 1 else np.array(image, dtype=np.float32)
    lum: FloatArray = np.asarray(np.mean(small, axis=0, dtype=np.float32))
    finite = np.isfinite(lum)
    if np.count_nonzero(finite) < 100:
        return ColourBalance.identity()
    sky_mask = background_mask(lum, mask_sigma=mask_sigma, grow=mask_grow)
    bg = tuple(clipped_median(small[c][sky_mask]) for c in range(3))
    if not all(math.isfinite(b) for b in bg):
        return ColourBalance.identity()
    ratio, n = (1.0, 1.0, 1.0), 0
    if white_balance:
        # peaks compare with the saturation level at full size: a block mean lowers a saturated core
        ratio, n = _star_ratio(small, lum, bg, factor=factor, min_snr=min_snr, max_stars=max_stars,
                               saturation=saturation)
        if n < min_stars:
            ratio, n = (1.0, 1.0, 1.0), 0
    gains = (1.0 / ratio[0], 1.0, 1.0 / ratio[2])
    offsets = tuple(bg[1] - g * b for g, b in zip(gains, bg, strict=True))
    return ColourBalance(gains=gains, offsets=(offsets[0], offsets[1], offsets[2]),
                         background=(bg[0], bg[1], bg[2]), star_ratio=ratio, stars=n)


def apply_colour(image: npt.NDArray[np.floating], balance: ColourBalance, *,
                 out: FloatArray | None = None) -> FloatArray:
    """``gain · x + offset`` per channel of a (3, H, W) image, float32, in bands of rows (``out`` may be
    ``image`` itself to calibrate in place; NaN stays NaN)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"colour calibration needs a (3, H, W) image, got shape {image.shape}")
    target = np.empty(image.shape, dtype=np.float32) if out is None else out
    if target.shape != image.shape or target.dtype != np.float32:
        raise ValueError(f"out must be float32 {image.shape}, got {target.dtype}{target.shape}")
    for c in range(3):
        g, o = np.float32(balance.gains[c]), np.float32(balance.offsets[c])
        for r0 in range(0, image.shape[1], _BAND_ROWS):
            band = np.asarray(image[c, r0:r0 + _BAND_ROWS], dtype=np.float32)
            np.multiply(band, g, out=target[c, r0:r0 + _BAND_ROWS])
            target[c, r0:r0 + _BAND_ROWS] += o
    return target


def _star_ratio(small: FloatArray, lum: FloatArray, bg: tuple[float, ...], *, factor: int, min_snr: float,
                max_stars: int, saturation: float | None) -> tuple[tuple[float, float, float], int]:
    """Median F_R/F_G and F_B/F_G of the well-measured, unsaturated stars, and how many there were."""
    med = float(np.nanmedian(lum))
    filled = np.where(np.isfinite(lum), lum, np.float32(med)).astype(np.float32)
    if min(filled.shape) < 16:
        return (1.0, 1.0, 1.0), 0
    stars = detect_stars(filled, bin2=False, max_stars=max_stars, threshold_sigma=8.0)
    if len(stars) == 0:
        return (1.0, 1.0, 1.0), 0
    radius = float(np.clip(2.0 * np.median(stars.fwhm), 2.0, 12.0))
    fluxes, errors, peaks = aperture_photometry(small, stars.x, stars.y, radius=radius)
    snr = fluxes / np.maximum(errors, 1e-12)
    ok = np.all(np.isfinite(fluxes), axis=0) & np.all(snr >= min_snr, axis=0) & np.all(fluxes > 0, axis=0)
    if saturation is not None:
        # a block mean of f×f pixels lowers a saturated core's peak: compare at the binned scale, with margin
        ok &= np.all(peaks < (saturation - np.asarray(bg)[:, None]) * (0.9 if factor == 1 else 0.5), axis=0)
    else:
        top = np.nanmax(np.where(ok, peaks, np.nan), axis=1, initial=-np.inf) if ok.any() else None
        if top is not None:
            ok &= np.all(peaks < 0.9 * top[:, None], axis=0)
    if not ok.any():
        return (1.0, 1.0, 1.0), 0
    f = fluxes[:, ok]
    r = float(np.median(f[0] / f[1]))
    b = float(np.median(f[2] / f[1]))
    return (r, 1.0, b), int(np.count_nonzero(ok))


def aperture_photometry(planes: FloatArray, x: F64, y: F64, *, radius: float, annulus: tuple[float, float] = (
        2.0, 3.0)) -> tuple[F64, F64, F64]:
    """Background-subtracted aperture fluxes of stars at (x, y) in each plane of a (P, H, W) image: circular
    aperture of ``radius`` px, sky the median of the annulus ``annulus`` × radius. Returns (P, N) fluxes,
    their noise (sky scatter and Poisson-free: a lower bound for faint stars) and the peak above the sky.
    Stars whose annulus leaves the image come back NaN."""
    p, h, w = planes.shape
    r_out = annulus[1] * radius
    half = math.ceil(r_out)
    n = x.size
    fluxes = np.full((p, n), np.nan)
    errors = np.full((p, n), np.nan)
    peaks = np.full((p, n), np.nan)
    ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    inside = (ix - half >= 0) & (iy - half >= 0) & (ix + half < w) & (iy + half < h)
    if not inside.any():
        return fluxes, errors, peaks
    offs = np.arange(-half, half + 1)
    sel = np.flatnonzero(inside)
    rows = iy[sel, None, None] + offs[None, :, None]
    cols = ix[sel, None, None] + offs[None, None, :]
    dy = rows - y[sel, None, None]
    dx = cols - x[sel, None, None]
    dist = np.hypot(dx, dy)
    in_ap = dist <= radius
    in_ann = (dist >= annulus[0] * radius) & (dist <= r_out)
    n_ap = in_ap.sum(axis=(1, 2))
    for c in range(p):
        stamps = planes[c][rows, cols].astype(np.float64)  # (N, S, S)
        ann = np.where(in_ann, stamps, np.nan)
        sky = np.nanmedian(ann.reshape(sel.size, -1), axis=1)
        sd = _MAD * np.nanmedian(np.abs(ann.reshape(sel.size, -1) - sky[:, None]), axis=1)
        above = stamps - sky[:, None, None]
        fluxes[c, sel] = np.where(in_ap, above, 0.0).sum(axis=(1, 2))
        errors[c, sel] = sd * np.sqrt(n_ap)
        peaks[c, sel] = np.where(in_ap, above, -np.inf).max(axis=(1, 2))
    return fluxes, errors, peaks
