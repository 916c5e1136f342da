"""Combination of calibration frames into masters, band by band under a memory cap.

The caller reads the frames: ``read_band(row_start, row_stop)`` returns the rows ``[row_start, row_stop)`` of
every frame as one ``(n_frames, rows, width)`` array, so this module does no I/O. Each band is combined by a
numba kernel that works pixel by pixel on a small buffer, which avoids the masked-array temporaries that
make ccdproc's combination slow and memory hungry.

Rejection follows ``ccdproc.combine`` / ``astropy.stats.sigma_clip`` exactly (same bounds, ``>=``/``<=``
inclusive, std with ddof=0, final mask from the last bounds applied to every value), so the masters agree
with ccdproc's to float rounding. Note that ``ccdproc.combine(sigma_clip=True)`` clips *once* with a mean
centre (its ``Combiner.sigma_clipping`` passes ``maxiters=1`` to astropy and cannot be given another):
``cenfunc="mean", maxiters=1`` here reproduces it; the defaults (median centre, up to 5 iterations) are
the more robust choice. One deliberate difference: the per-frame ``scale`` is applied *before* rejection,
while ccdproc rejects on unscaled data and scales afterwards, which rejects whole frames when flats of
different levels are combined.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numba
import numpy as np
import numpy.typing as npt

from astrod.core.calibrate import exposure_ratio, flat_normalisation

FloatArray = npt.NDArray[np.float32]
BandReader = Callable[[int, int], npt.NDArray[np.generic]]
Method = Literal["sigma_clip", "median", "mean", "minmax"]
CenFunc = Literal["median", "mean"]
StdFunc = Literal["std", "mad_std"]

_MODE_MEAN = 0
_MODE_MEDIAN = 1
_MODE_SIGMA = 2
_MODE_MINMAX = 3
_MODES: Mapping[str, int] = MappingProxyType({"mean": _MODE_MEAN, "median": _MODE_MEDIAN,
                                              "sigma_clip": _MODE_SIGMA, "minmax": _MODE_MINMAX})
_MAD_TO_STD = 1.482602218505602  # the factor astropy's mad_std uses


@dataclass(frozen=True, slots=True, eq=False)
class CombineResult:
    """A combined image with how it was made.

    ``n_used`` counts the frames that contributed to each pixel (after rejection); where it is 0 the image
    is NaN. ``description`` is a one-line summary for provenance headers. ``noise``, when asked for, is
    each pixel's temporal scatter over the frames (see :func:`combine`).
    """

    image: FloatArray
    n_used: npt.NDArray[np.uint16]
    n_frames: int
    method: str
    description: str
    band_rows: int
    n_bands: int
    scale: tuple[float, ...] | None = None
    noise: FloatArray | None = None

    @property
    def rejected_fraction(self) -> float:
        """Fraction of all input samples that rejection (or min/max clipping) left out."""
        total = self.n_frames * self.image.size
        return 0.0 if total == 0 else 1.0 - float(self.n_used.sum(dtype=np.int64)) / total


# ----------------------------------------------------------------------------------------------- kernels


# Sums may be reassociated (vectorised): the order changes results by ~1e-16 relative only.
@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def _sum(a: npt.NDArray[np.float64], lo: int, hi: int) -> float:  # pragma: no cover - compiled
    total = 0.0
    for i in range(lo, hi):
        total += a[i]
    return total


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def _sum_sq_dev(a: npt.NDArray[np.float64], n: int, mean: float) -> float:  # pragma: no cover - compiled
    total = 0.0
    for i in range(n):
        d = a[i] - mean
        total += d * d
    return total


@numba.njit(cache=True, nogil=True)
def _select(a: npt.NDArray[np.float64], n: int, k: int) -> float:  # pragma: no cover - compiled
    """k-th smallest of a[:n]; leaves a[:k] <= a[k] <= a[k+1:n]. Branch-free partitions (three-way,
    median-of-three pivot): the comparisons of a median are unpredictable, mispredictions cost most."""
    lo = 0
    hi = n
    while hi - lo > 1:
        p, q, r = a[lo], a[(lo + hi - 1) // 2], a[hi - 1]
        x = max(min(p, q), min(max(p, q), r))
        store = lo
        for i in range(lo, hi):
            t = a[i]
            a[i] = a[store]
            a[store] = t
            store += t < x
        if k < store:
            hi = store
            continue
        equal_end = store
        for i in range(store, hi):
            t = a[i]
            a[i] = a[equal_end]
            a[equal_end] = t
            equal_end += t <= x
        if k < equal_end:
            return float(x)
        lo = equal_end
    return float(a[k])


@numba.njit(cache=True, nogil=True)
def _median_inplace(a: npt.NDArray[np.float64], n: int) -> float:  # pragma: no cover - compiled
    if n % 2 == 1:
        return _select(a, n, (n - 1) // 2)
    upper = _select(a, n, n // 2)
    # the selection leaves a[:n//2] <= a[n//2]: the lower middle value is their maximum
    lower = float(a[0])
    for i in range(1, n // 2):
        lower = max(lower, float(a[i]))
    return 0.5 * (upper + lower)


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def _kept_spread(a: npt.NDArray[np.float64], lo: int, hi: int, mean: float) -> float:  # pragma: no cover
    """Standard deviation (ddof=1) of a[lo:hi] around ``mean``; NaN for fewer than two values."""
    if hi - lo < 2:
        return np.nan
    total = 0.0
    for i in range(lo, hi):
        d = a[i] - mean
        total += d * d
    return math.sqrt(total / (hi - lo - 1))


@numba.njit(cache=True, nogil=True)
def _sigma_clip_pixel(v: npt.NDArray[np.float64], n: int, w: npt.NDArray[np.float64],
                      m: npt.NDArray[np.float64], sigma_low: float, sigma_high: float, maxiters: int,
                      use_median: bool, use_mad: bool, want_spread: bool,
                      ) -> tuple[float, int, float]:  # pragma: no cover - compiled
    # The loop of astropy's compute_sigma_clipped_bounds, then ccdproc's mean of the unmasked values;
    # with want_spread also the standard deviation (ddof=1) of those values.
    if n == 0:
        return np.nan, 0, np.nan
    for i in range(n):
        w[i] = v[i]
    count = n
    lo = -np.inf
    hi = np.inf
    iteration = 0
    while True:
        med = 0.0
        mean = 0.0
        if use_median or use_mad:
            med = _median_inplace(w, count)
        if not use_median or not use_mad:
            mean = _sum(w, 0, count) / count
        cen = med if use_median else mean
        if use_mad:
            for i in range(count):
                m[i] = abs(w[i] - med)
            std = _median_inplace(m, count) * _MAD_TO_STD
        else:
            std = math.sqrt(_sum_sq_dev(w, count, mean) / count)
        # an infinite kappa means "no rejection on that side", also when std is 0
        lo = -np.inf if sigma_low == np.inf else cen - sigma_low * std
        hi = np.inf if sigma_high == np.inf else cen + sigma_high * std
        new_count = 0
        for i in range(count):
            t = w[i]
            w[new_count] = t
            new_count += (t >= lo) & (t <= hi)
        if new_count == count or new_count == 0:
            break
        count = new_count
        iteration += 1
        if maxiters >= 0 and iteration >= maxiters:
            break
    total = 0.0
    used = 0
    for i in range(n):
        inside = (v[i] >= lo) & (v[i] <= hi)
        total += v[i] if inside else 0.0
        used += inside
    if used == 0:
        return np.nan, 0, np.nan
    mean = total / used
    if not want_spread:
        return mean, used, np.nan
    kept = 0
    for i in range(n):
        t = v[i]
        w[kept] = t
        kept += (t >= lo) & (t <= hi)
    return mean, used, _kept_spread(w, 0, kept, mean)


@numba.njit(cache=True, nogil=True)
def _minmax_pixel(v: npt.NDArray[np.float64], n: int, w: npt.NDArray[np.float64], nlow: int,
                  nhigh: int) -> tuple[float, int]:  # pragma: no cover - compiled
    stop = n - nhigh
    if stop <= nlow:
        return np.nan, 0
    for i in range(n):
        w[i] = v[i]
    if nlow + nhigh <= 4:
        # few extremes (the usual 1 and 1): moving them aside one by one beats a selection
        for j in range(nlow):
            best = j
            for i in range(j + 1, n):
                if w[i] < w[best]:
                    best = i
            t = w[j]
            w[j] = w[best]
            w[best] = t
        for j in range(nhigh):
            last = n - 1 - j
            best = last
            for i in range(nlow, last):
                if w[i] > w[best]:
                    best = i
            t = w[last]
            w[last] = w[best]
            w[best] = t
    else:
        # partition so that w[:nlow] are the lowest and w[stop:] the highest values
        if nhigh > 0:
            _select(w, n, stop)
        if nlow > 0:
            _select(w, stop, nlow - 1)
    return _sum(w, nlow, stop) / (stop - nlow), stop - nlow


@numba.njit(parallel=True, cache=True, nogil=True)
def _combine_band(band: npt.NDArray[np.generic], scale: npt.NDArray[np.float64], mode: int,
                  sigma_low: float, sigma_high: float, maxiters: int, use_median: bool, use_mad: bool,
                  nlow: int, nhigh: int, check_finite: bool, n_threads: int, out: FloatArray,
                  used: npt.NDArray[np.uint16], want_noise: bool,
                  noise: FloatArray) -> None:  # pragma: no cover - compiled
    n, rows, width = band.shape
    block = 512  # columns loaded at a time: the (n, block) float64 buffer stays in L2
    pitch = block + 8  # a row pitch off a power of two keeps a pixel's n values out of one cache set
    n_chunks = max(1, min(n_threads, rows))
    for chunk in numba.prange(n_chunks):
        r_start = chunk * rows // n_chunks
        r_stop = (chunk + 1) * rows // n_chunks
        buf = np.empty((n, pitch), dtype=np.float64)
        v = np.empty(n, dtype=np.float64)
        w = np.empty(n, dtype=np.float64)
        m = np.empty(n, dtype=np.float64)
        for r in range(r_start, r_stop):
            for c0 in range(0, width, block):
                c1 = min(width, c0 + block)
                # contiguous, vectorised loads frame by frame; each pixel then gathers from the L2 buffer
                for i in range(n):
                    s = scale[i]
                    for c in range(c0, c1):
                        buf[i, c - c0] = np.float64(band[i, r, c]) * s
                for c in range(c1 - c0):
                    k = 0
                    for i in range(n):
                        x = buf[i, c]
                        if check_finite and not np.isfinite(x):
                            continue
                        v[k] = x
                        k += 1
                    value = np.nan
                    count = 0
                    spread = np.nan
                    if mode == _MODE_SIGMA:
                        value, count, spread = _sigma_clip_pixel(v, k, w, m, sigma_low, sigma_high, maxiters,
                                                                 use_median, use_mad, want_noise)
                    elif mode == _MODE_MEDIAN:
                        if k > 0:
                            for i in range(k):
                                w[i] = v[i]
                            value = _median_inplace(w, k)
                            count = k
                            if want_noise and k > 1:
                                # the median's own robust scatter: 1.4826 MAD
                                for i in range(k):
                                    m[i] = abs(v[i] - value)
                                spread = _median_inplace(m, k) * _MAD_TO_STD
                    elif mode == _MODE_MINMAX:
                        value, count = _minmax_pixel(v, k, w, nlow, nhigh)
                        if want_noise and count > 0:
                            spread = _kept_spread(w, nlow, nlow + count, value)  # w[nlow:stop] are the kept
                    elif k > 0:
                        total = 0.0
                        for i in range(k):
                            total += v[i]
                        value = total / k
                        count = k
                        if want_noise:
                            spread = _kept_spread(v, 0, k, value)
                    out[r, c0 + c] = np.float32(value)
                    used[r, c0 + c] = np.uint16(count)
                    if want_noise:
                        noise[r, c0 + c] = np.float32(spread)


# ---------------------------------------------------------------------------------------------- planning


def plan_band_rows(*, n_frames: int, shape: tuple[int, int], memory_cap_bytes: int,
                   sample_bytes: int = 4, noise: bool = False) -> int:
    """Rows per band so that the outputs plus one band of all frames fit in ``memory_cap_bytes``.

    ``sample_bytes`` is what one pixel of one frame costs while its band is in memory (4 for the float32
    bands a reader usually returns, 2 for uint16); ``noise`` counts the float32 noise map among the outputs.
    """
    height, width = shape
    fixed = height * width * (4 + 2 + (4 if noise else 0))  # float32 image + uint16 n_used (+ float32 noise)
    per_row = n_frames * width * sample_bytes
    rows = (memory_cap_bytes - fixed) // per_row if per_row > 0 else height
    if rows < 1:
        need = fixed + per_row
        raise ValueError(f"memory_cap_bytes={memory_cap_bytes} is too small for {n_frames} frames of "
                         f"{width}x{height}: one row band needs {need} bytes")
    return int(min(rows, height))


def _describe(method: str, *, sigma_low: float, sigma_high: float, maxiters: int | None, cenfunc: str,
              stdfunc: str, nlow: int, nhigh: int, scaled: bool) -> str:
    scaled_note = ", frames scaled" if scaled else ""
    if method == "sigma_clip":
        iters = "until converged" if maxiters is None else f"maxiters={maxiters}"
        return (f"sigma-clipped mean (low={sigma_low:g}, high={sigma_high:g}, cen={cenfunc}, dev={stdfunc}, "
                f"{iters}){scaled_note}")
    if method == "minmax":
        return f"min/max clipped mean (nlow={nlow}, nhigh={nhigh}){scaled_note}"
    return f"{method}{scaled_note}"


# ------------------------------------------------------------------------------------------------ public


def combine(read_band: BandReader, *, n_frames: int, shape: tuple[int, int], method: Method = "sigma_clip",
            sigma_low: float = 3.0, sigma_high: float = 3.0, maxiters: int | None = 5,
            cenfunc: CenFunc = "median", stdfunc: StdFunc = "std", nlow: int = 1, nhigh: int = 1,
            scale: npt.ArrayLike | None = None, memory_cap_bytes: int = 2 * 1024**3,
            sample_bytes: int = 4, noise: bool = False) -> CombineResult:
    """Combine ``n_frames`` frames of ``shape`` (height, width) read band by band.

    ``read_band(r0, r1)`` must return an array of shape ``(n_frames, r1 - r0, width)``. ``method``:
    ``"sigma_clip"`` (mean of the values astropy's ``sigma_clip`` keeps, iterated up to ``maxiters``;
    ``None`` iterates until nothing changes), ``"median"``, ``"mean"``, or ``"minmax"`` (mean after
    dropping the ``nlow`` lowest and ``nhigh`` highest values). ``scale`` multiplies each frame before
    rejection (e.g. ``1/median`` for flats). Non-finite samples are ignored.

    ``noise=True`` also returns, in the same pass, each pixel's temporal scatter over the frames
    (float32, NaN where fewer than two samples were used): the standard deviation (ddof=1) of the samples
    the combination averaged (those sigma clipping kept, those left after min/max clipping, or all of
    them for ``"mean"``), and for ``"median"`` 1.4826 times their median absolute deviation. It is the
    scatter of exactly what went into each master pixel, so a cosmic ray the clipping removed does not
    count, and one it could not remove (too few frames) does. Frame-to-frame changes of the whole frame's
    level (bias drift) are part of it, equally for every pixel.
    """
    if method not in _MODES:
        raise ValueError(f"unknown combine method {method!r}; expected one of {sorted(_MODES)}")
    if cenfunc not in ("median", "mean"):
        raise ValueError(f"unknown cenfunc {cenfunc!r}; expected 'median' or 'mean'")
    if stdfunc not in ("std", "mad_std"):
        raise ValueError(f"unknown stdfunc {stdfunc!r}; expected 'std' or 'mad_std'")
    if not 1 <= n_frames <= np.iinfo(np.uint16).max:
        raise ValueError(f"n_frames must be between 1 and 65535, got {n_frames}")
    if sigma_low < 0 or sigma_high < 0 or math.isnan(sigma_low) or math.isnan(sigma_high):
        raise ValueError(f"sigma_low and sigma_high must be >= 0, got {sigma_low}, {sigma_high}")
    if maxiters is not None and maxiters < 1:
        raise ValueError(f"maxiters must be >= 1 or None, got {maxiters}")
    if method == "minmax" and (nlow < 0 or nhigh < 0 or nlow + nhigh >= n_frames):
        raise ValueError(f"minmax needs 0 <= nlow + nhigh < n_frames, got nlow={nlow}, nhigh={nhigh} "
                         f"for {n_frames} frames")
    height, width = (int(shape[0]), int(shape[1]))
    if height < 1 or width < 1:
        raise ValueError(f"shape must be positive, got {shape}")
    if scale is None:
        scale_arr = np.ones(n_frames, dtype=np.float64)
    else:
        scale_arr = np.asarray(scale, dtype=np.float64).reshape(-1)
        if scale_arr.shape != (n_frames,):
            raise ValueError(f"scale needs one factor per frame ({n_frames}), got {scale_arr.size}")
        if not np.all(np.isfinite(scale_arr)):
            raise ValueError("scale factors must be finite")

    band_rows = plan_band_rows(n_frames=n_frames, shape=(height, width), memory_cap_bytes=memory_cap_bytes,
                               sample_bytes=sample_bytes, noise=noise)
    image = np.empty((height, width), dtype=np.float32)
    n_used = np.empty((height, width), dtype=np.uint16)
    # without a noise map the kernel gets a 1x1 stand-in it never writes (one compiled signature)
    spread = np.empty((height, width) if noise else (1, 1), dtype=np.float32)
    n_bands = 0
    for r0 in range(0, height, band_rows):
        r1 = min(height, r0 + band_rows)
        band = np.asarray(read_band(r0, r1))
        if band.shape != (n_frames, r1 - r0, width):
            raise ValueError(f"read_band({r0}, {r1}) returned shape {band.shape}, expected "
                             f"{(n_frames, r1 - r0, width)}")
        if band.dtype.kind not in "uif":
            raise ValueError(f"read_band returned dtype {band.dtype}, expected integers or floats")
        _combine_band(band, scale_arr, _MODES[method], float(sigma_low), float(sigma_high),
                      -1 if maxiters is None else int(maxiters), cenfunc == "median", stdfunc == "mad_std",
                      int(nlow), int(nhigh), band.dtype.kind == "f", numba.get_num_threads(), image[r0:r1],
                      n_used[r0:r1], noise, spread[r0:r1] if noise else spread)
        del band
        n_bands += 1
    description = _describe(method, sigma_low=sigma_low, sigma_high=sigma_high, maxiters=maxiters,
                            cenfunc=cenfunc, stdfunc=stdfunc, nlow=nlow, nhigh=nhigh,
                            scaled=scale is not None)
    return CombineResult(image=image, n_used=n_used, n_frames=n_frames, method=method,
                         description=description, band_rows=band_rows, n_bands=n_bands,
                         scale=None if scale is None else tuple(float(s) for s in scale_arr),
                         noise=spread if noise else None)


def combine_arrays(arrays: Sequence[npt.NDArray[np.generic]], *, method: Method = "sigma_clip",
                   sigma_low: float = 3.0, sigma_high: float = 3.0, maxiters: int | None = 5,
                   cenfunc: CenFunc = "median", stdfunc: StdFunc = "std", nlow: int = 1, nhigh: int = 1,
                   scale: npt.ArrayLike | None = None,
                   memory_cap_bytes: int = 2 * 1024**3, noise: bool = False) -> CombineResult:
    """:func:`combine` over frames already in memory (all the same 2-D shape)."""
    if len(arrays) == 0:
        raise ValueError("no frames to combine")
    shape = arrays[0].shape
    if len(shape) != 2 or any(a.shape != shape for a in arrays):
        shapes = sorted({a.shape for a in arrays})
        raise ValueError(f"frames must all be 2-D with the same shape, got {shapes}")
    dtype = np.result_type(*arrays)

    def read_band(r0: int, r1: int) -> npt.NDArray[np.generic]:
        return np.stack([a[r0:r1] for a in arrays]).astype(dtype, copy=False)

    return combine(read_band, n_frames=len(arrays), shape=(int(shape[0]), int(shape[1])), method=method,
                   sigma_low=sigma_low, sigma_high=sigma_high, maxiters=maxiters, cenfunc=cenfunc,
                   stdfunc=stdfunc, nlow=nlow, nhigh=nhigh, scale=scale, memory_cap_bytes=memory_cap_bytes,
                   sample_bytes=dtype.itemsize, noise=noise)


def frame_medians(read_band: BandReader, *, n_frames: int, shape: tuple[int, int], stride: int | None = None,
                  memory_cap_bytes: int = 2 * 1024**3, sample_bytes: int = 4) -> npt.NDArray[np.float64]:
    """Median of each frame from a ``stride``-subsampled grid, read band by band (one pass).

    The default stride keeps about 250 000 samples per frame: every pixel of a small frame, a precise
    median of a large one at little memory.
    """
    height, width = (int(shape[0]), int(shape[1]))
    if stride is None:
        stride = max(1, math.ceil(math.sqrt(height * width / 250_000)))
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    band_rows = plan_band_rows(n_frames=n_frames, shape=(height, width), memory_cap_bytes=memory_cap_bytes,
                               sample_bytes=sample_bytes)
    samples: list[npt.NDArray[np.float32]] = []
    for r0 in range(0, height, band_rows):
        r1 = min(height, r0 + band_rows)
        first = (-r0) % stride  # keep the subsample grid aligned across bands
        band = np.asarray(read_band(r0, r1))
        if band.shape != (n_frames, r1 - r0, width):
            raise ValueError(f"read_band({r0}, {r1}) returned shape {band.shape}, expected "
                             f"{(n_frames, r1 - r0, width)}")
        samples.append(band[:, first::stride, ::stride].reshape(n_frames, -1).astype(np.float32))
    grid = np.concatenate(samples, axis=1)
    return np.asarray(np.nanmedian(grid, axis=1), dtype=np.float64)


def combine_flats(read_band: BandReader, *, n_frames: int, shape: tuple[int, int],
                  bias: FloatArray | None = None, dark: FloatArray | None = None,
                  flat_exposure: float | None = None, dark_exposure: float | None = None,
                  medians: npt.ArrayLike | None = None, bayer: str | None = None,
                  bayer_offset: tuple[int, int] = (0, 0), method: Method = "sigma_clip",
                  sigma_low: float = 3.0, sigma_high: float = 3.0, maxiters: int | None = 5,
                  cenfunc: CenFunc = "median", stdfunc: StdFunc = "std", nlow: int = 1, nhigh: int = 1,
                  memory_cap_bytes: int = 2 * 1024**3, sample_bytes: int = 4) -> CombineResult:
    """Master flat: calibrate each flat, scale it by ``1/median``, combine, normalise the result to mean 1.

    Each flat loses ``dark`` (a dark-flat or master dark, bias included) scaled by
    ``flat_exposure/dark_exposure`` after the bias when both exposures and ``bias`` are given, ``dark``
    as it is otherwise, or ``bias`` alone. This is what ccdproc users do (``scale=1/median`` per flat);
    the master is normalised by its mean, the level ``ccdproc.flat_correct`` divides by, per CFA colour
    when ``bayer`` is given. ``medians`` (of the calibrated flats) skips the first reading pass.
    """
    height, width = (int(shape[0]), int(shape[1]))
    for name, master in (("bias", bias), ("dark", dark)):
        if master is not None and master.shape != (height, width):
            raise ValueError(f"{name} shape {master.shape} does not match the flats {(height, width)}")
    offset: npt.NDArray[np.float32] | None = None
    if dark is not None:
        if bias is not None and flat_exposure is not None and dark_exposure is not None:
            k = exposure_ratio(flat_exposure, dark_exposure)
            offset = (bias + np.float32(k) * (dark - bias)).astype(np.float32)
        else:
            offset = np.asarray(dark, dtype=np.float32)
    elif bias is not None:
        offset = np.asarray(bias, dtype=np.float32)

    def calibrated_band(r0: int, r1: int) -> npt.NDArray[np.generic]:
        band = np.asarray(read_band(r0, r1), dtype=np.float32)
        if offset is None:
            return band
        return band - offset[r0:r1]

    work_bytes = max(4, sample_bytes) + 4  # the reader's band plus its calibrated float32 copy
    if medians is None:
        med = frame_medians(calibrated_band, n_frames=n_frames, shape=(height, width),
                            memory_cap_bytes=memory_cap_bytes, sample_bytes=work_bytes)
    else:
        med = np.asarray(medians, dtype=np.float64).reshape(-1)
        if med.shape != (n_frames,):
            raise ValueError(f"medians needs one value per flat ({n_frames}), got {med.size}")
    if not np.all(np.isfinite(med) & (med > 0)):
        raise ValueError(f"every calibrated flat needs a positive median, got {med.tolist()}")
    result = combine(calibrated_band, n_frames=n_frames, shape=(height, width), method=method,
                     sigma_low=sigma_low, sigma_high=sigma_high, maxiters=maxiters, cenfunc=cenfunc,
                     stdfunc=stdfunc, nlow=nlow, nhigh=nhigh, scale=1.0 / med,
                     memory_cap_bytes=memory_cap_bytes, sample_bytes=work_bytes)
    norm = flat_normalisation(result.image, bayer=bayer, bayer_offset=bayer_offset)
    image = (result.image / norm).astype(np.float32)
    what = "per CFA colour" if bayer else "overall"
    return CombineResult(image=image, n_used=result.n_used, n_frames=n_frames, method=method,
                         description=f"{result.description}; flats scaled by 1/median, master normalised "
                                     f"to mean 1 {what}",
                         band_rows=result.band_rows, n_bands=result.n_bands, scale=result.scale)
