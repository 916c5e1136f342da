"""Incremental (live) stacking with online κσ rejection, and full-rejection re-integration by row bands.

Live stack
    `Stacker` keeps per-pixel running statistics, so its memory is O(pixels) and frame 500 costs what
    frame 5 costs: a weighted mean and weighted sum of squared deviations (West's 1979 incremental form of
    Welford's algorithm), the number of frames used and the number of rejections. Once a pixel has
    ``min_frames_for_rejection`` accepted samples, a new sample is rejected when it lies outside the
    prediction interval of the running mean and σ that has the normal κσ tail probability: with n
    samples the limit is ``t(n-1)·σ·√(1 + 1/n)`` (Student's t), 7.2σ at n = 5, 4.3σ at 10, 3.2σ at 50
    for κ = 3. A plain κσ test trusts σ estimated from 5 samples: on 30 frames of pure noise it rejected
    2.4 % of good samples and raised the stack noise by 9 %; the t limit rejects 0.3 % (the Gaussian
    rate) and costs under 1 %. The update is one fused, vectorised numba kernel over rows, in place on
    the state arrays.

    Accumulators are float32. The running mean is updated by ``mean += (x - mean)·w/W``, so each step only
    rounds to half an ulp of the mean, with random sign: after N frames the rounding error is about
    √N·ulp(mean)/6 (measured: 0.046 ADU for N = 5000 at 60 000 ADU, where the stack noise is 3.5 ADU).
    float32 keeps the state at 12 bytes per pixel and plane (mean, M2, uint16 count, uint16 rejected) plus a
    float32 weight sum when frames are weighted: 313–418 MB for a 26 MP mono stack, where float64 sums would
    add another 104–208 MB to a pipeline that must stay under 1 GB. `integrate_bands` accumulates in
    float64 per pixel, so a final stack loses nothing either way.

    Samples that are NaN, or masked out, do not count: warped frames carry NaN outside their coverage
    (see `astrod.core.warp`), so no separate coverage mask needs to be allocated.

    Online rejection cannot reject anything in the first frames. `integrate_bands` (in `astrod.core.integrate`,
    re-exported here) re-integrates the registered frames with full rejection (sigma clipping, winsorized
    sigma clipping, linear fit clipping), a band of rows at a time under a memory cap; the caller supplies
    the band reader, core does no I/O.

`Stacker.regrid` moves a live stack onto another reference grid (a session that re-picks its reference):
mean, M2 and weight sum resampled bilinearly, counts by nearest neighbour, values mapped like a frame's.

Normalisation maps a frame onto the reference frame's background and noise, ``x' = x·scale + offset``
(see `normalisation`), so a changing sky neither biases the mean nor inflates σ for the rejection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
import numpy.typing as npt

from astrod.core.integrate import Rejection as Rejection
from astrod.core.integrate import StackResult as StackResult
from astrod.core.integrate import _plane_shape
from astrod.core.integrate import integrate_bands as integrate_bands
from astrod.core.warp import resample
from astrod.model import Transform

FloatArray = npt.NDArray[np.float32]
Weighting = Literal["none", "snr", "fwhm"]

_MAX_COUNT = 65535  # per-pixel counters are uint16
_STATE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class AddResult:
    """What one `Stacker.add` did: samples used and rejected (counted over every plane), frames so far."""

    accepted: int
    rejected: int
    frames: int

    @property
    def rejected_fraction(self) -> float:
        total = self.accepted + self.rejected
        return self.rejected / total if total else 0.0


# ---------------------------------------------------------------------------------------------------------
# helpers for the caller: normalisation and weights


def normalisation(background: float, noise: float, ref_background: float, ref_noise: float,
                  ) -> tuple[float, float]:
    """``(offset, scale)`` mapping a frame onto the reference: ``x' = x·scale + offset``.

    Equivalent to ``x' = (x - background)·(ref_noise / noise) + ref_background``: the frame's sky lands on
    the reference sky and its noise on the reference noise (additive + scale normalisation).
    """
    values = (background, noise, ref_background, ref_noise)
    if not all(math.isfinite(v) for v in values) or noise <= 0.0 or ref_noise <= 0.0:
        raise ValueError(f"normalisation needs finite values and positive noise, got {values}")
    scale = ref_noise / noise
    return ref_background - background * scale, scale


def snr_weight(*, signal: float, noise: float, ref_signal: float, ref_noise: float) -> float:
    """Weight ∝ SNR², relative to the reference frame (1.0 for a frame as good as the reference).

    After `normalisation` every frame has the reference noise, so inverse-variance weighting of the
    normalised frames is weighting by the square of the frame's signal-to-noise ratio.
    """
    values = (signal, noise, ref_signal, ref_noise)
    if not all(math.isfinite(v) and v > 0.0 for v in values):
        raise ValueError(f"snr_weight needs positive finite values, got {values}")
    return ((signal / noise) / (ref_signal / ref_noise)) ** 2


def fwhm_weight(*, fwhm: float, ref_fwhm: float) -> float:
    """Weight ∝ 1/FWHM², relative to the reference: a point source's peak SNR falls as its area grows."""
    if not (math.isfinite(fwhm) and math.isfinite(ref_fwhm) and fwhm > 0.0 and ref_fwhm > 0.0):
        raise ValueError(f"fwhm_weight needs positive finite FWHMs, got {fwhm}, {ref_fwhm}")
    return (ref_fwhm / fwhm) ** 2


# ---------------------------------------------------------------------------------------------------------
# online accumulation


def _t_expansion(kappa: float) -> tuple[float, float, float, float, float]:
    """Coefficients of Student's t quantile with the normal tail probability of κ, as a series in 1/ν.

    ``t_ν ≈ κ + g1/ν + g2/ν² + g3/ν³ + g4/ν⁴`` (Cornish–Fisher, Abramowitz & Stegun 26.7.5): within 1 % of
    the exact quantile for κ ≤ 3 from ν = 4 (5 samples) on, slightly low for fewer samples or larger κ.
    Arithmetic in ν keeps the kernel vectorised; a per-pixel table lookup compiles to gathers, 5× slower.
    """
    z = kappa
    return (z, (z**3 + z) / 4.0, (5 * z**5 + 16 * z**3 + 3 * z) / 96.0,
            (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384.0,
            (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160.0)


@numba.njit(inline="always", fastmath=False, error_model="numpy")
def _accumulate_row(frame: FloatArray, mask: npt.NDArray[np.uint8], r: int, mr: int, use_mask: bool,
                    weight: float, offset: float, scale: float, reject: bool, t0: float, g1: float, g2: float,
                    g3: float, g4: float, min_nf: float, mean: FloatArray, m2: FloatArray, wsum: FloatArray,
                    use_wsum: bool, count: npt.NDArray[np.uint16],
                    rejected: npt.NDArray[np.uint16]) -> tuple[np.int32, np.int32]:  # pragma: no cover - compiled
    """One row of `_accumulate`: (accepted, rejected) pixels."""
    # Branch-free body (selects, unconditional stores of unchanged values) so that LLVM vectorises it.
    cols = frame.shape[1]
    n_acc = np.int32(0)
    n_rej = np.int32(0)
    for c in range(cols):
        x = np.float64(frame[r, c])
        ok = x - x == 0.0  # finite
        if use_mask:
            ok = ok & (mask[mr, c] != 0)
        ni = np.int32(count[r, c])
        nf = np.float64(ni)
        k = np.int32(rejected[r, c])
        mu = np.float64(mean[r, c])
        s = np.float64(m2[r, c])
        w_tot = np.float64(wsum[r, c]) if use_wsum else nf
        v = x * scale + offset
        d = v - mu
        # prediction-interval test d² > t²·(1 + 1/n)·σ² with σ² = s/w_tot·n/(n-1) and t = P(ν)/ν⁴,
        # ν = n - 1, multiplied out so that it needs no division
        nu = nf - 1.0
        p = (((t0 * nu + g1) * nu + g2) * nu + g3) * nu + g4
        nu2 = nu * nu
        nu4 = nu2 * nu2
        rej = ok & reject & (nf >= min_nf) & (d * d * w_tot * (nu4 * nu4 * nu) > p * p * s * (nf + 1.0))
        take = ok ^ rej
        wa = weight if take else 0.0
        w_new = w_tot + wa
        mu_new = mu + d * (wa / w_new) if take else mu
        s_new = s + wa * d * (v - mu_new) if take else s
        mean[r, c] = mu_new
        m2[r, c] = s_new
        if use_wsum:
            wsum[r, c] = w_new
        count[r, c] = ni + np.int32(take)
        k += np.int32(rej)
        rejected[r, c] = k if k < 65535 else 65535
        n_acc += np.int32(take)
        n_rej += np.int32(rej)
    return n_acc, n_rej


@numba.njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _accumulate(frame: FloatArray, mask: npt.NDArray[np.uint8], use_mask: bool, weight: float,
                offset: float, scale: float, reject: bool, t0: float, g1: float, g2: float, g3: float,
                g4: float, min_n: int, mean: FloatArray, m2: FloatArray, wsum: FloatArray, use_wsum: bool,
                count: npt.NDArray[np.uint16], rejected: npt.NDArray[np.uint16],
                row_accepted: npt.NDArray[np.int64],
                row_rejected: npt.NDArray[np.int64]) -> None:  # pragma: no cover - compiled
    # The row is inlined with use_mask and use_wsum as constants, one copy per combination: a flag tested
    # inside the pixel loop kept LLVM from vectorising it (scalar divisions; 1.4–2.7x slower).
    rows = frame.shape[0]
    mask_rows = mask.shape[0]
    min_nf = np.float64(min_n)
    for r in numba.prange(rows):
        mr = r % mask_rows
        if use_mask:
            if use_wsum:
                a, j = _accumulate_row(frame, mask, r, mr, True, weight, offset, scale, reject, t0, g1, g2, g3,
                                       g4, min_nf, mean, m2, wsum, True, count, rejected)
            else:
                a, j = _accumulate_row(frame, mask, r, mr, True, weight, offset, scale, reject, t0, g1, g2, g3,
                                       g4, min_nf, mean, m2, wsum, False, count, rejected)
        elif use_wsum:
            a, j = _accumulate_row(frame, mask, r, mr, False, weight, offset, scale, reject, t0, g1, g2, g3, g4,
                                   min_nf, mean, m2, wsum, True, count, rejected)
        else:
            a, j = _accumulate_row(frame, mask, r, mr, False, weight, offset, scale, reject, t0, g1, g2, g3, g4,
                                   min_nf, mean, m2, wsum, False, count, rejected)
        row_accepted[r] = a
        row_rejected[r] = j


class Stacker:
    """Live weighted-mean stack with online κσ rejection; state is plain numpy arrays.

    ``shape`` is (H, W) for mono or (planes, H, W) for colour; each plane is stacked and rejected
    independently. ``weighting`` records how the caller weights frames; with ``"none"`` every weight must
    be 1 and no per-pixel weight sum is stored (the frame count is the weight sum). ``kappa=math.inf``
    disables rejection.
    """

    def __init__(self, shape: tuple[int, ...], *, kappa: float = 3.0, min_frames_for_rejection: int = 5,
                 weighting: Weighting = "none") -> None:
        _plane_shape(shape)
        if not kappa > 0.0:
            raise ValueError(f"kappa must be positive, got {kappa}")
        if min_frames_for_rejection < 2:
            raise ValueError(f"min_frames_for_rejection must be at least 2, got {min_frames_for_rejection}")
        if weighting not in ("none", "snr", "fwhm"):
            raise ValueError(f"unknown weighting {weighting!r}")
        self._shape = tuple(int(s) for s in shape)
        self._kappa = float(kappa)
        self._min_n = int(min_frames_for_rejection)
        self._weighting: Weighting = weighting
        self._frames = 0
        self._mean = np.zeros(self._shape, dtype=np.float32)
        self._m2 = np.zeros(self._shape, dtype=np.float32)
        self._wsum: FloatArray | None = (
            None if weighting == "none" else np.zeros(self._shape, dtype=np.float32))
        self._count = np.zeros(self._shape, dtype=np.uint16)
        self._rejected = np.zeros(self._shape, dtype=np.uint16)
        self._t = _t_expansion(self._kappa) if math.isfinite(self._kappa) else (0.0, 0.0, 0.0, 0.0, 0.0)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def frames(self) -> int:
        """Frames added so far."""
        return self._frames

    @property
    def kappa(self) -> float:
        return self._kappa

    @property
    def min_frames_for_rejection(self) -> int:
        return self._min_n

    @property
    def weighting(self) -> Weighting:
        return self._weighting

    @property
    def nbytes(self) -> int:
        """Bytes held by the state arrays."""
        total = self._mean.nbytes + self._m2.nbytes + self._count.nbytes + self._rejected.nbytes
        return total + (self._wsum.nbytes if self._wsum is not None else 0)

    def add(self, frame: npt.NDArray[np.floating], weight: float = 1.0, *,
            mask: npt.NDArray[np.bool_] | npt.NDArray[np.uint8] | None = None,
            norm: tuple[float, float] = (0.0, 1.0)) -> AddResult:
        """Add one registered frame (same shape as the stack; NaN = not covered).

        ``mask`` (H, W) or the stack's shape, true/non-zero where the frame counts; ``norm`` is
        ``(offset, scale)`` from `normalisation`, applied as ``x·scale + offset``. The frame is not modified.
        """
        if frame.shape != self._shape:
            raise ValueError(f"frame shape {frame.shape} does not match the stack shape {self._shape}")
        _, height, width = _plane_shape(self._shape)
        mask2d: npt.NDArray[np.uint8] | None = None
        if mask is not None:
            if mask.shape not in ((height, width), self._shape):
                raise ValueError(f"mask shape {mask.shape} must be {(height, width)} or {self._shape}")
            # bool and uint8 masks are viewed, not copied
            plain = mask.dtype in (np.uint8, np.bool_)
            mask2d = np.ascontiguousarray(mask if plain else mask != 0).view(np.uint8).reshape(-1, width)
        return self.add_bands([(0, frame)], weight, norm=norm, mask=mask2d)

    def add_bands(self, bands: Iterable[tuple[int, npt.NDArray[np.floating]]], weight: float = 1.0, *,
                  norm: tuple[float, float] = (0.0, 1.0),
                  mask: npt.NDArray[np.uint8] | None = None) -> AddResult:
        """Add one registered frame given as bands of rows: ``(first_row, band)`` pairs, top to bottom,
        each band (rows, W) or (planes, rows, W); what `add` does, without the whole frame in memory.

        Rows no band covers do not count for this frame. Every argument is checked before the first band
        is taken, but a band of the wrong shape found later leaves the rows before it added: give bands
        from a producer whose shapes are known, such as `astrod.core.warp.warp_bands`.
        """
        if not (math.isfinite(weight) and weight > 0.0):
            raise ValueError(f"weight must be positive and finite, got {weight}")
        if self._wsum is None and weight != 1.0:
            raise ValueError(f"weighting is 'none' but weight is {weight}; create the Stacker weighted")
        offset, scale = float(norm[0]), float(norm[1])
        if not (math.isfinite(offset) and math.isfinite(scale) and scale > 0.0):
            raise ValueError(f"norm must be a finite offset and a positive scale, got {norm}")
        if self._frames >= _MAX_COUNT:
            raise ValueError(f"the stack already holds {_MAX_COUNT} frames, the most a uint16 count can hold")
        planes, height, width = _plane_shape(self._shape)
        reject = math.isfinite(self._kappa)
        mean3, m23 = self._mean.reshape(planes, height, width), self._m2.reshape(planes, height, width)
        count3 = self._count.reshape(planes, height, width)
        rejected3 = self._rejected.reshape(planes, height, width)
        wsum3 = None if self._wsum is None else self._wsum.reshape(planes, height, width)
        no_wsum = np.zeros((1, 1), dtype=np.float32)
        no_mask = np.ones((1, 1), dtype=np.uint8)
        accepted = rejected = 0
        next_row = 0
        for row0, band in bands:
            n = band.shape[-2]
            if band.shape[:-2] != self._shape[:-2] or band.shape[-1] != width or row0 < next_row \
                    or row0 + n > height:
                raise ValueError(f"band of shape {band.shape} at row {row0} does not fit the stack "
                                 f"{self._shape} after row {next_row}")
            next_row = row0 + n
            data = np.ascontiguousarray(band, dtype=np.float32).reshape(planes, n, width)
            for p in range(planes):
                rows = slice(row0, row0 + n)
                wsum = no_wsum if wsum3 is None else wsum3[p, rows]
                if mask is None:
                    mask_rows = no_mask
                elif mask.shape[0] == height:
                    mask_rows = mask[rows]
                else:
                    mask_rows = mask[p * height + row0:p * height + row0 + n]
                row_acc = np.empty(n, dtype=np.int64)
                row_rej = np.empty(n, dtype=np.int64)
                _accumulate(data[p], mask_rows, mask is not None, float(weight), offset, scale, reject, *self._t,
                            self._min_n, mean3[p, rows], m23[p, rows], wsum, wsum3 is not None, count3[p, rows],
                            rejected3[p, rows], row_acc, row_rej)
                accepted += int(row_acc.sum())
                rejected += int(row_rej.sum())
        self._frames += 1
        return AddResult(accepted=accepted, rejected=rejected, frames=self._frames)

    def finalize(self, *, fill: float = math.nan, copy_maps: bool = True) -> StackResult:
        """The current stack: the weighted mean (``fill`` where no frame counted), with copies of the maps,
        or, with ``copy_maps=False`` (a stack that takes no more frames), read-only views of them."""
        image = self._mean.copy()
        flat_image, flat_count = image.reshape(-1), self._count.reshape(-1)
        step = 1 << 20  # the uncovered pixels are found a slice at a time: no full-size mask
        for start in range(0, flat_image.size, step):
            piece = flat_image[start:start + step]
            piece[flat_count[start:start + step] == 0] = np.float32(fill)
        if copy_maps:
            count, rejected = self._count.copy(), self._rejected.copy()
        else:
            count, rejected = self._count.view(), self._rejected.view()
            count.flags.writeable = rejected.flags.writeable = False
        return StackResult(image=image, count=count, rejected=rejected, frames=self._frames,
                           rejection="online-sigma", kappa_low=self._kappa, kappa_high=self._kappa)

    def regrid(self, transform: Transform, *, shape: tuple[int, int], norm: tuple[float, float] = (0.0, 1.0),
               weight_scale: float = 1.0) -> None:
        """Move the stack onto another pixel grid, in place: what it holds becomes what it would hold (up to
        interpolation) had every frame been warped onto the new grid, normalised by ``norm`` after its own
        normalisation and weighted ``weight_scale`` times its weight.

        ``transform`` maps the current grid onto the new one, whose (H, W) is ``shape``. The mean, M2 and
        weight sum are resampled bilinearly, the counts by nearest neighbour; a new pixel whose interpolation
        touches a pixel no frame covered (or lies outside the old grid) is not covered (count 0, and 0 in the
        sums, as in a fresh stack): coverage shrinks by at most a pixel at its edges. ``norm`` = ``(offset,
        scale)`` maps the stacked values as `add` maps a frame's (``x·scale + offset``), so it carries the
        caller's flux-conserving area factor and background shift; M2 scales by ``scale²·weight_scale`` and
        the weight sum by ``weight_scale``, so σ and the rejection limits follow the values and the frames
        added next weigh against the old ones as the caller intends. Rejection counts are resampled as counts.

        The arrays are replaced one at a time (the peak is the old state plus one new array); views of the
        old state handed out before stay valid and unchanged, except the mean's (its uncovered pixels become
        NaN on the way). If this raises after the checks, the stacker is unusable.
        """
        planes = _plane_shape(self._shape)[0]
        new_h, new_w = int(shape[0]), int(shape[1])
        offset, scale = float(norm[0]), float(norm[1])
        if not (math.isfinite(offset) and math.isfinite(scale) and scale > 0.0):
            raise ValueError(f"norm must be a finite offset and a positive scale, got {norm}")
        if not (math.isfinite(weight_scale) and weight_scale > 0.0):
            raise ValueError(f"weight_scale must be positive and finite, got {weight_scale}")
        if self._wsum is None and weight_scale != 1.0:
            raise ValueError(f"weighting is 'none' but weight_scale is {weight_scale}")
        new_shape = (new_h, new_w) if len(self._shape) == 2 else (planes, new_h, new_w)
        m = transform.as_array()
        if new_h < 1 or new_w < 1 or not np.all(np.isfinite(m)) or abs(np.linalg.det(m)) < 1e-12:
            raise ValueError(f"cannot regrid onto {shape} through {transform.matrix}")

        def planes_of(a: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
            return a.reshape(planes, *a.shape[-2:])

        # The mean first, with its uncovered pixels NaN so that bilinear interpolation marks every new pixel
        # that touches one; then the counts, zero wherever the new mean is NaN.
        old_mean, old_count = planes_of(self._mean), planes_of(self._count)
        mean = np.empty((planes, new_h, new_w), dtype=np.float32)
        for p in range(planes):
            np.copyto(old_mean[p], np.float32(np.nan), where=old_count[p] == 0)
            resample(old_mean[p], transform, shape=(new_h, new_w), interpolation="linear", out=mean[p])
        self._mean = mean.reshape(new_shape)
        del old_mean
        count = np.empty((planes, new_h, new_w), dtype=np.uint16)
        for p in range(planes):
            resample(old_count[p], transform, shape=(new_h, new_w), interpolation="nearest", fill=0, out=count[p])
            np.copyto(count[p], np.uint16(0), where=np.isnan(mean[p]))
        self._count = count.reshape(new_shape)
        del old_count
        gap = count == 0
        np.multiply(mean, np.float32(scale), out=mean)
        np.add(mean, np.float32(offset), out=mean)
        np.copyto(mean, np.float32(0.0), where=gap)
        for key, factor in (("m2", scale * scale * weight_scale), ("wsum", weight_scale)):
            old = getattr(self, f"_{key}")
            if old is None:
                continue
            new = np.empty((planes, new_h, new_w), dtype=np.float32)
            for p in range(planes):
                resample(planes_of(old)[p], transform, shape=(new_h, new_w), interpolation="linear", fill=0.0,
                         out=new[p])
            if factor != 1.0:
                np.multiply(new, np.float32(factor), out=new)
            np.copyto(new, np.float32(0.0), where=gap)
            setattr(self, f"_{key}", new.reshape(new_shape))
            del old
        rejected = np.empty((planes, new_h, new_w), dtype=np.uint16)
        old_rejected = planes_of(self._rejected)
        for p in range(planes):
            resample(old_rejected[p], transform, shape=(new_h, new_w), interpolation="nearest", fill=0,
                     out=rejected[p])
        self._rejected = rejected.reshape(new_shape)
        self._shape = tuple(int(n) for n in new_shape)

    def sigma(self) -> FloatArray:
        """Per-pixel weighted standard deviation of the accepted samples (NaN below two samples)."""
        n = self._count.astype(np.float32)
        w_tot = self._wsum if self._wsum is not None else n
        with np.errstate(divide="ignore", invalid="ignore"):
            var = self._m2 / w_tot * (n / (n - 1))
        var[self._count < 2] = np.nan
        return np.sqrt(var, out=var)

    # -- state ---------------------------------------------------------------------------------------

    def state(self) -> dict[str, npt.NDArray[np.generic]]:
        """The whole state as numpy arrays (np.savez-able, no pickling needed).

        Large arrays are read-only views of the live state, not copies: save them before the next `add`.
        """
        out: dict[str, npt.NDArray[np.generic]] = {
            "format": np.array(_STATE_FORMAT, dtype=np.int64),
            "shape": np.array(self._shape, dtype=np.int64),
            "kappa": np.array(self._kappa, dtype=np.float64),
            "min_frames_for_rejection": np.array(self._min_n, dtype=np.int64),
            "weighting": np.array(self._weighting),
            "frames": np.array(self._frames, dtype=np.int64),
            "mean": self._mean,
            "m2": self._m2,
            "count": self._count,
            "rejected": self._rejected,
        }
        if self._wsum is not None:
            out["wsum"] = self._wsum
        for key in ("mean", "m2", "count", "rejected", "wsum"):
            if key in out:
                view = out[key].view()
                view.flags.writeable = False
                out[key] = view
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, npt.NDArray[np.generic]], *, copy: bool = True) -> Stacker:
        """Rebuild a stacker from `state` output; ``copy=False`` adopts freshly loaded arrays as they are."""
        try:
            fmt = int(state["format"])
            shape = tuple(int(s) for s in np.asarray(state["shape"]).ravel())
            kappa = float(state["kappa"])
            min_n = int(state["min_frames_for_rejection"])
            weighting = str(state["weighting"])
            frames = int(state["frames"])
            arrays = {k: np.asarray(state[k]) for k in ("mean", "m2", "count", "rejected")}
            if weighting != "none":
                arrays["wsum"] = np.asarray(state["wsum"])
        except KeyError as err:
            raise ValueError(f"stacker state lacks {err.args[0]!r}") from err
        if fmt != _STATE_FORMAT:
            raise ValueError(f"stacker state format {fmt} is not {_STATE_FORMAT}")
        stacker = cls(shape, kappa=kappa, min_frames_for_rejection=min_n,
                      weighting=weighting)  # type: ignore[arg-type]
        dtypes = {"mean": np.float32, "m2": np.float32, "wsum": np.float32, "count": np.uint16,
                  "rejected": np.uint16}
        for key, arr in arrays.items():
            if arr.shape != stacker._shape or arr.dtype != dtypes[key]:
                raise ValueError(f"stacker state {key!r} is {arr.dtype}{arr.shape}, expected "
                                 f"{np.dtype(dtypes[key])}{stacker._shape}")
            adopted = np.array(arr, copy=True, order="C") if copy or not arr.flags.writeable \
                else np.ascontiguousarray(arr)
            setattr(stacker, f"_{key}", adopted)
        stacker._frames = frames
        return stacker
