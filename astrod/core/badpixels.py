"""Bad-pixel maps: the pixels a master dark cannot correct and those a master flat shows dead, with the reasons.

Pure functions: master arrays in, a :class:`BadPixels` value out, inputs never modified. Replacing the bad
pixels of a frame (:func:`astrod.core.calibrate.correct_bad_pixels`) is part of calibration and stays there;
`astrod.core.calibrate` re-exports the public names of this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


def _local_median(image: FloatArray) -> FloatArray:
    # 5x5 median: the largest window OpenCV filters float32 with
    return np.asarray(cv2.medianBlur(np.ascontiguousarray(image, dtype=np.float32), 5), dtype=np.float32)


def _large_scale_level(image: FloatArray, *, factor: int = 8) -> FloatArray:
    """The level around each pixel, blind to small defects: medians of ``factor``-square blocks,
    interpolated back (linearly extrapolated past the outer block centres so gradients hold to the edge)."""
    h, w = image.shape
    f = max(1, min(factor, h // 2, w // 2))
    sh, sw = h // f, w // f
    blocks = np.ascontiguousarray(image[:sh * f, :sw * f], dtype=np.float32).reshape(sh, f, sw, f)
    small = np.nanmedian(blocks.transpose(0, 2, 1, 3).reshape(sh, sw, f * f), axis=2).astype(np.float32)
    padded = np.empty((sh + 2, sw + 2), dtype=np.float32)
    padded[1:-1, 1:-1] = small
    padded[0, 1:-1] = 2 * small[0] - small[1] if sh > 1 else small[0]
    padded[-1, 1:-1] = 2 * small[-1] - small[-2] if sh > 1 else small[-1]
    padded[:, 0] = 2 * padded[:, 1] - padded[:, 2] if sw > 1 else padded[:, 1]
    padded[:, -1] = 2 * padded[:, -2] - padded[:, -3] if sw > 1 else padded[:, -2]
    big = cv2.resize(padded, ((sw + 2) * f, (sh + 2) * f), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(big[f:f + h, f:f + w], dtype=np.float32)


def _robust_sigma(values: npt.NDArray[np.floating]) -> float:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(finite - np.median(finite))))


def _column_deviation(image: FloatArray, *, pixel_sigma: float) -> tuple[npt.NDArray[np.float64], float]:
    """Each column's median minus the median of its 6 neighbours' (neighbours, not all columns, so that
    smooth trends do not count), and the robust spread of that deviation (at least what ``pixel_sigma``
    noise per pixel gives a column median)."""
    col_median = np.nanmedian(image, axis=0).astype(np.float64)
    n = col_median.size
    padded = np.full(n + 6, np.nan)
    padded[3:-3] = col_median
    around = np.stack([padded[3 + d:3 + d + n] for d in (-3, -2, -1, 1, 2, 3)])
    deviation = col_median - np.nanmedian(around, axis=0)
    spread = max(_robust_sigma(deviation), 1.2533 * pixel_sigma / math.sqrt(image.shape[0]))
    return deviation, spread


def _deviant_columns(residual: FloatArray, *, column_sigma: float, pixel_sigma: float) -> BoolArray:
    """Columns whose median sits ``column_sigma`` robust spreads off the median of their 6 neighbours'."""
    if residual.shape[1] < 2:
        return np.zeros(residual.shape[1], dtype=np.bool_)
    deviation, spread = _column_deviation(residual, pixel_sigma=pixel_sigma)
    return np.asarray(np.abs(deviation) > column_sigma * spread, dtype=np.bool_)


def _noisy_columns(ratio: FloatArray, *, column_sigma: float, min_excess: float = 0.05) -> BoolArray:
    """Columns whose pixels are typically noisier over time than their neighbours': the column median of
    ``ratio`` (temporal scatter over its model) sits ``column_sigma`` robust spreads and at least
    ``min_excess`` above its 6 neighbours'. A column whose level jumps from frame to frame (a flickering
    readout) shows so; a column that is merely warm or cool but steady does not."""
    if ratio.shape[1] < 2:
        return np.zeros(ratio.shape[1], dtype=np.bool_)
    deviation, spread = _column_deviation(ratio, pixel_sigma=0.0)
    return np.asarray(deviation > max(column_sigma * spread, min_excess), dtype=np.bool_)


BadPixelRule = Literal["temporal", "master-only", "flat-only"]
#: The reasons a pixel is flagged for, in the order :class:`BadPixels` counts them.
BAD_PIXEL_REASONS = ("hot", "unstable", "saturated", "stuck", "cold", "column")


@dataclass(frozen=True, slots=True)
class DarkNoiseModel:
    """The temporal scatter a *stable* dark pixel shows, learnt from the sensor itself.

    Variance ``floor + slope * max(excess, 0)`` (ADU²), ``excess`` being the pixel's master-dark level above
    the sensor's median. ``floor`` is the typical pixel's variance over the frames (read noise, the typical
    dark current's shot noise, bias drift between frames); ``slope`` is the shot noise of extra dark current:
    variance per ADU of signal, 1/gain (e-/ADU) for a Poisson source. It is fitted on the warm pixels where
    there are enough of them (``slope_from="fit"``), else taken from the camera's gain (``"gain"``), else
    assumed 1 (``"assumed"``, unit gain).
    """

    floor: float
    slope: float
    slope_from: str
    n_warm: int

    def variance(self, excess: npt.NDArray[np.floating]) -> FloatArray:
        return np.asarray(self.floor + self.slope * np.maximum(excess, 0.0), dtype=np.float32)


def fit_dark_noise(excess: npt.NDArray[np.floating], noise: npt.NDArray[np.floating], *,
                   gain: float | None = None, min_warm: int = 25) -> DarkNoiseModel:
    """Fit :class:`DarkNoiseModel` to a master dark's level ``excess`` over its median and its per-pixel
    temporal ``noise`` (ADU, NaN where unknown).

    ``floor`` is the median variance of all pixels (nearly all sit near the median level). ``slope`` is the
    median of ``(variance - floor) / excess`` over the warm pixels, those more than 10 typical sigmas above
    the median, where the shot noise is a sizeable part of the variance; a median, so that up to half of
    them may be unstable without biasing it. Fewer than ``min_warm`` warm pixels leave it to ``gain``.
    Medians of a variance sit ~7 % under its mean for 10 frames; ``floor`` and ``slope`` are both medians,
    so a pixel is compared with the typical one, which is what matters here.
    """
    level = np.asarray(excess, dtype=np.float32)
    sigma = np.asarray(noise, dtype=np.float32)
    stride = max(1, level.shape[0] // 512)
    sample = sigma[::stride]
    sample = sample[np.isfinite(sample) & np.isfinite(level[::stride])]
    if sample.size == 0:
        raise ValueError("the dark noise map has no finite value")
    floor = float(np.median(np.square(sample, dtype=np.float64)))
    floor = max(floor, 1e-12)
    warm = np.isfinite(sigma) & (level > 10.0 * math.sqrt(floor))
    n_warm = int(np.count_nonzero(warm))
    if n_warm >= min_warm:
        per_adu = (np.square(sigma[warm], dtype=np.float64) - floor) / level[warm]
        return DarkNoiseModel(floor=floor, slope=max(float(np.median(per_adu)), 0.0), slope_from="fit",
                              n_warm=n_warm)
    if gain is not None and gain > 0:
        return DarkNoiseModel(floor=floor, slope=1.0 / gain, slope_from="gain", n_warm=n_warm)
    return DarkNoiseModel(floor=floor, slope=1.0, slope_from="assumed", n_warm=n_warm)


@dataclass(frozen=True, slots=True, eq=False)
class BadPixels:
    """A bad-pixel map (``mask``, True = bad) with why its pixels were flagged.

    ``counts`` holds, per reason of :data:`BAD_PIXEL_REASONS`, how many pixels meet it (a pixel may meet
    several, so they may add up to more than ``mask.sum()``; ``"column"`` counts the pixels of whole bad
    columns, ``n_columns`` the columns). ``rule`` says what the dark could be judged by: ``"temporal"`` (a
    noise map over the individual darks), ``"master-only"`` (the master dark alone) or ``"flat-only"``.
    ``thresholds`` are the numbers the reasons were decided with (ADU for levels), for provenance.
    """

    mask: BoolArray
    rule: BadPixelRule
    counts: Mapping[str, int]
    n_columns: int
    thresholds: Mapping[str, float]
    model: DarkNoiseModel | None = None

    @property
    def n_bad(self) -> int:
        return int(np.count_nonzero(self.mask))


def _plane_reasons(dark: FloatArray | None, flat: FloatArray | None, ratio: FloatArray | None,
                   sigma0: float, *, hot_sigma: float, stuck_factor: float, cold_fraction: float,
                   column_sigma: float) -> tuple[dict[str, BoolArray], BoolArray]:
    """The reasons that compare a pixel with its neighbours (of its own colour), and the columns bad by
    their dark or flat (before the flagged-fraction rule). With ``ratio`` (temporal scatter over its model)
    the dark is judged by what changes between frames; without it by the master alone."""
    shape = dark.shape if dark is not None else flat.shape if flat is not None else (0, 0)
    reasons: dict[str, BoolArray] = {}
    columns = np.zeros(shape[1], dtype=np.bool_)
    if dark is not None:
        residual = dark - _local_median(dark)
        if ratio is None:
            # master only: a steady warm pixel cannot be told from an unstable one, so every pixel (and
            # column) that stands out of the master is flagged
            sigma = _robust_sigma(residual[:: max(1, residual.shape[0] // 512)])
            reasons["hot"] = np.asarray(residual > hot_sigma * sigma, dtype=np.bool_)
            columns |= _deviant_columns(residual, column_sigma=column_sigma, pixel_sigma=sigma)
        else:
            # far below its neighbours and without even read noise: a pixel that does not take charge
            with np.errstate(invalid="ignore"):
                reasons["stuck"] = np.asarray((ratio < 1.0 / stuck_factor) & (residual < -hot_sigma * sigma0),
                                              dtype=np.bool_)
            columns |= _noisy_columns(ratio, column_sigma=column_sigma)
    if flat is not None:
        level = _large_scale_level(flat)
        with np.errstate(divide="ignore", invalid="ignore"):
            flat_ratio = np.where(level > 0, flat / level, 0.0).astype(np.float32)
        reasons["cold"] = ~(flat_ratio >= cold_fraction)  # NaN counts as cold
        # a weak but consistent column is what the flat corrects; only one far below is bad
        columns |= np.nanmedian(flat_ratio, axis=0) < 0.5 * (1.0 + cold_fraction)
    return reasons, columns


def find_bad_pixels(*, master_dark: npt.NDArray[np.floating] | None = None,
                    master_flat: npt.NDArray[np.floating] | None = None,
                    dark_noise: npt.NDArray[np.floating] | None = None, saturation: float | None = None,
                    gain: float | None = None, hot_sigma: float = 5.0, unstable_factor: float = 3.0,
                    hot_noise_factor: float = 5.0, saturation_fraction: float = 0.8, stuck_factor: float = 4.0,
                    cold_fraction: float = 0.5, column_fraction: float = 0.5, column_sigma: float = 5.0,
                    cfa: bool = False) -> BadPixels:
    """The pixels a master dark cannot correct and those a master flat shows dead, with the reasons.

    A bad-pixel map is for what stays wrong after calibration. Subtracting a master dark corrects any pixel
    whose dark signal is the same in every frame, however warm; what it cannot correct is a pixel whose
    dark signal changes between frames. That needs ``dark_noise``, each pixel's temporal scatter over the
    individual darks the master was combined from (``combine(..., noise=True)``); with it (rule
    ``"temporal"``) the dark's reasons are:

    * **unstable**: scatter more than ``unstable_factor`` times what a stable pixel at that dark level shows
      (:func:`fit_dark_noise`: the typical pixel's scatter plus the shot noise of the pixel's extra dark
      current, so a steady warm pixel is not flagged for being warm). The criterion is a ratio of standard
      deviations because that is what the pixel adds to a calibrated frame: 3 means its error after dark
      subtraction is a 3-sigma outlier of a dark-limited frame. A steady Gaussian pixel passes it by chance
      about 5 times in a million with 5 frames and never in practice with 10 (chi-square, against the
      median variance), so the false alarms are few. It also flags a pixel whose master a transient
      spoiled (a cosmic ray, or the afterglow of one, that clipping could not reject among few frames):
      that master pixel is wrong too. A master pixel that is not finite (every sample rejected) counts as
      unstable;
    * **hot**: so much dark current that its shot noise alone makes the pixel ``hot_noise_factor`` times as
      noisy as a typical pixel in a dark (its excess above ``(factor² - 1) * floor / slope``). Deliberately
      few: 5 times the noise is an outlier beyond 5 sigma in a third of dark-limited frames, and a pixel
      that hot turns the smallest change of temperature or exposure scale into an error of many sigmas;
    * **saturated**: the master dark at or above ``saturation_fraction`` of ``saturation`` (the ADC ceiling
      or full well, in the units of ``master_dark``): its true dark signal is unknown and light has no room;
    * **stuck**: temporal scatter under ``1/stuck_factor`` of the model and the master more than
      ``hot_sigma`` typical sigmas below its 5x5 neighbours: a pixel stuck low that does not take charge.

    Without ``dark_noise`` (rule ``"master-only"``: a master of one frame, or made before noise maps) a steady
    warm pixel cannot be told from an unstable one, so the rule is conservative: **hot** is the master more
    than ``hot_sigma`` robust (MAD) sigmas above its 5x5 local median, and a column whose median deviates
    from its neighbours' by ``column_sigma`` robust spreads is bad; saturation is checked as above.

    Cold (from the flat): below ``cold_fraction`` of its large-scale local level. A whole column is bad when
    at least ``column_fraction`` of it is flagged, when its flat median is below halfway between
    ``cold_fraction`` and 1, or (temporal rule) when its pixels are noisier over time than its neighbours'
    (a flickering column). A column that is steadily warm or cool in the dark is corrected by the dark and
    not flagged. With ``cfa`` the neighbour and column tests examine each 2x2 colour plane alone.
    ``gain`` (e-/ADU) is used for the shot-noise slope only when the sensor has too few warm pixels to fit it.
    """
    shape = _check_masters(master_dark, master_flat, dark_noise, unstable_factor=unstable_factor,
                           hot_noise_factor=hot_noise_factor, stuck_factor=stuck_factor)
    dark = None if master_dark is None else np.asarray(master_dark, dtype=np.float32)
    flat = None if master_flat is None else np.asarray(master_flat, dtype=np.float32)
    rule: BadPixelRule = "flat-only" if dark is None else "master-only" if dark_noise is None else "temporal"
    thresholds: dict[str, float] = {"cold_fraction": cold_fraction, "column_fraction": column_fraction,
                                    "column_sigma": column_sigma}
    found = _DarkFindings(masks={}, thresholds={}, model=None, ratio=None, sigma0=0.0)
    if dark is not None:
        found = _dark_reasons(dark, dark_noise, saturation=saturation, gain=gain, hot_sigma=hot_sigma,
                              unstable_factor=unstable_factor, hot_noise_factor=hot_noise_factor,
                              saturation_fraction=saturation_fraction, stuck_factor=stuck_factor)
        thresholds.update(found.thresholds)
    masks = found.masks
    columns = _neighbour_reasons(dark, flat, found.ratio, found.sigma0, masks, shape=shape, cfa=cfa,
                                 column_fraction=column_fraction, hot_sigma=hot_sigma, stuck_factor=stuck_factor,
                                 cold_fraction=cold_fraction, column_sigma=column_sigma)
    bad = np.zeros(shape, dtype=np.bool_)
    for mask in masks.values():
        bad |= mask
    bad |= columns
    counts = {name: int(np.count_nonzero(masks[name])) if name in masks else 0 for name in BAD_PIXEL_REASONS}
    counts["column"] = int(np.count_nonzero(columns))
    n_columns = int(np.count_nonzero(columns.all(axis=0))) if not cfa else int(
        np.count_nonzero(columns.any(axis=0)))
    return BadPixels(mask=bad, rule=rule, counts=MappingProxyType(counts), n_columns=n_columns,
                     thresholds=MappingProxyType(thresholds), model=found.model)


def _check_masters(master_dark: npt.NDArray[np.floating] | None, master_flat: npt.NDArray[np.floating] | None,
                   dark_noise: npt.NDArray[np.floating] | None, *, unstable_factor: float,
                   hot_noise_factor: float, stuck_factor: float) -> tuple[int, int]:
    """The (height, width) of the masters, after checking that :func:`find_bad_pixels` can use them."""
    if master_dark is None and master_flat is None:
        raise ValueError("bad_pixel_map needs a master dark, a master flat or both")
    if master_dark is not None and master_flat is not None and master_dark.shape != master_flat.shape:
        raise ValueError(f"dark {master_dark.shape} and flat {master_flat.shape} shapes differ")
    ref = master_dark if master_dark is not None else master_flat
    assert ref is not None
    if ref.ndim != 2:
        raise ValueError(f"bad_pixel_map needs 2-D masters, got shape {ref.shape}")
    if dark_noise is not None and (master_dark is None or dark_noise.shape != master_dark.shape):
        raise ValueError("dark_noise needs a master dark of the same shape"
                         + ("" if master_dark is None else f": {dark_noise.shape} vs {master_dark.shape}"))
    for name, factor in (("unstable_factor", unstable_factor), ("hot_noise_factor", hot_noise_factor),
                         ("stuck_factor", stuck_factor)):
        if not factor > 1.0:
            raise ValueError(f"{name} must be > 1, got {factor}")
    return int(ref.shape[0]), int(ref.shape[1])


@dataclass(frozen=True, slots=True)
class _DarkFindings:
    """What the master dark alone decides: the pixel-wise reasons (saturated; with a noise map unstable and
    hot), the numbers they used, the noise model, each pixel's scatter over its model (``ratio``) and the
    typical pixel's temporal sigma (``sigma0``), both of which the neighbour tests need."""

    masks: dict[str, BoolArray]
    thresholds: dict[str, float]
    model: DarkNoiseModel | None
    ratio: FloatArray | None
    sigma0: float


def _dark_reasons(dark: FloatArray, dark_noise: npt.NDArray[np.floating] | None, *, saturation: float | None,
                  gain: float | None, hot_sigma: float, unstable_factor: float, hot_noise_factor: float,
                  saturation_fraction: float, stuck_factor: float) -> _DarkFindings:
    """The reasons :func:`find_bad_pixels` reads off each dark pixel by itself (not against its neighbours)."""
    masks: dict[str, BoolArray] = {}
    thresholds: dict[str, float] = {}
    model: DarkNoiseModel | None = None
    ratio: FloatArray | None = None
    sigma0 = 0.0
    if saturation is not None:
        level = saturation_fraction * saturation
        with np.errstate(invalid="ignore"):
            masks["saturated"] = np.asarray(dark >= level, dtype=np.bool_)
        thresholds["saturation"] = float(saturation)
        thresholds["saturated_level"] = float(level)
    if dark_noise is None:
        thresholds["hot_sigma"] = hot_sigma
    else:
        excess = dark - np.float32(np.nanmedian(dark[:: max(1, dark.shape[0] // 512)]))
        model = fit_dark_noise(excess, dark_noise, gain=gain)
        sigma0 = math.sqrt(model.floor)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = (np.asarray(dark_noise, dtype=np.float32) / np.sqrt(model.variance(excess))).astype(
                np.float32)
            masks["unstable"] = np.asarray((ratio > unstable_factor) | ~np.isfinite(dark), dtype=np.bool_)
            hot_excess = ((hot_noise_factor ** 2 - 1.0) * model.floor / model.slope if model.slope > 0
                          else math.inf)
            masks["hot"] = np.asarray(excess > hot_excess, dtype=np.bool_)
        thresholds.update({"unstable_factor": unstable_factor, "hot_noise_factor": hot_noise_factor,
                           "hot_excess": hot_excess, "stuck_factor": stuck_factor, "hot_sigma": hot_sigma})
    return _DarkFindings(masks=masks, thresholds=thresholds, model=model, ratio=ratio, sigma0=sigma0)


def _neighbour_reasons(dark: FloatArray | None, flat: FloatArray | None, ratio: FloatArray | None, sigma0: float,
                       masks: dict[str, BoolArray], *, shape: tuple[int, int], cfa: bool, column_fraction: float,
                       hot_sigma: float, stuck_factor: float, cold_fraction: float,
                       column_sigma: float) -> BoolArray:
    """Add to ``masks`` the reasons that compare a pixel with its neighbours (per 2x2 colour plane with
    ``cfa``), and return the pixels of bad columns: those :func:`_plane_reasons` finds, and those of which
    at least ``column_fraction`` is flagged for any reason."""
    options = {"hot_sigma": hot_sigma, "stuck_factor": stuck_factor, "cold_fraction": cold_fraction,
               "column_sigma": column_sigma}
    planes = [(slice(y0, None, 2), slice(x0, None, 2)) for y0 in (0, 1) for x0 in (0, 1)] if cfa else [
        (slice(None), slice(None))]
    columns = np.zeros(shape, dtype=np.bool_)
    for plane in planes:
        def cut(a: FloatArray | None, plane: tuple[slice, slice] = plane) -> FloatArray | None:
            return None if a is None else np.ascontiguousarray(a[plane])
        found, plane_columns = _plane_reasons(cut(dark), cut(flat), cut(ratio), sigma0, **options)
        for name, mask in found.items():
            masks.setdefault(name, np.zeros(shape, dtype=np.bool_))[plane] |= mask
        flagged = np.zeros(columns[plane].shape, dtype=np.bool_)
        for mask in masks.values():
            flagged |= mask[plane]
        plane_columns |= flagged.mean(axis=0) >= column_fraction
        columns[plane] |= plane_columns[np.newaxis, :]
    return columns


def bad_pixel_map(**options: Any) -> BoolArray:
    """Bad pixels (True) found in the masters: :func:`find_bad_pixels` (same keyword arguments) without the
    reasons."""
    return find_bad_pixels(**options).mask
