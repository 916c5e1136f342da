"""Quality gates: whether a frame joins the stack, judged against the session's own accepted frames.

A session has its own normal: an undersampled smart telescope, a cooled CCD and a Bayer DSLR give very
different FWHM and eccentricity figures for equally good frames. So a gate does not compare a figure with
a fixed number, nor with the session's single best frame (one lucky or mis-measured frame would set the bar):
a frame fails a gate when its figure is an outlier of the distribution of the frames accepted so far *and*
worse than a physical floor, and the reason names both:

- outlier: more than ``margin_sigma`` robust standard deviations from the session's median, where the
  spread is the session's own (1.4826 × MAD) combined with the frame's measurement uncertainty and a small
  floor (so that a few identical figures do not make every later frame an outlier);
- physical floor: FWHM above ``max_fwhm_ratio`` × the session's median (seeing, focus); stars'
  axis ratio b/a more than ``max_axis_ratio_drop`` below the session's (trailing, wind, guiding); star count
  below ``min_star_ratio`` × the session's (clouds, dew); transparency (star flux against the reference)
  below ``min_transparency_ratio`` × the session's (clouds); background above ``max_background_ratio`` ×
  the session's (Moon, dawn, light-polluted clouds).

Until ``min_frames`` frames are accepted the distribution is unknown, and only a gross failure rejects: a
star count that collapsed below ``collapse_star_ratio`` of the session's. A figure that is NaN (unmeasured:
too few stars to fit) never rejects. Absolute limits (``max_fwhm_px``, ``max_eccentricity``,
``min_star_count``) are there for users who want them, off (0) by default.

A background ratio is only meaningful for a background above zero: compare calibrated frames (with the
bias removed), or uncalibrated frames whose pedestal is small beside the sky (with a large pedestal the
ratio gate is merely lenient).

`flux_ratio` measures a frame's transparency relative to the reference from the stars both share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from astrod.core.quality import FrameQuality
from astrod.model import Transform

F64 = npt.NDArray[np.float64]

_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True, slots=True)
class GateThresholds:
    """The gates' settings (``[quality]`` config); a ratio or absolute limit of 0 disables its gate."""

    margin_sigma: float = 5.0
    min_frames: int = 3
    max_fwhm_ratio: float = 1.4
    max_axis_ratio_drop: float = 0.15
    min_star_ratio: float = 0.5
    min_transparency_ratio: float = 0.6
    max_background_ratio: float = 1.5
    collapse_star_ratio: float = 0.25
    max_fwhm_px: float = 0.0
    max_eccentricity: float = 0.0
    min_star_count: int = 0


@dataclass(frozen=True, slots=True)
class Figure:
    """One figure's distribution over the accepted frames: median, robust σ (1.4826 × MAD) and how many
    frames had it (NaN, NaN, 0 when none)."""

    median: float
    sigma: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Figure:
        a = np.asarray(values, dtype=np.float64)
        a = a[np.isfinite(a)]
        if a.size == 0:
            return cls(math.nan, math.nan, 0)
        med = float(np.median(a))
        return cls(med, _MAD_TO_SIGMA * float(np.median(np.abs(a - med))), int(a.size))


@dataclass(frozen=True, slots=True)
class FrameFigures:
    """What the gates look at in one frame: its quality and its transparency (median flux ratio of its
    stars to the reference's; NaN when not measured)."""

    quality: FrameQuality
    transparency: float = math.nan

    @property
    def axis_ratio(self) -> float:
        return _axis_ratio(self.quality.eccentricity)


@dataclass(frozen=True, slots=True)
class SessionStats:
    """The distributions of the accepted frames' figures, and how many frames were accepted."""

    frames: int
    fwhm: Figure
    axis_ratio: Figure
    star_count: Figure
    background: Figure
    transparency: Figure

    @classmethod
    def from_accepted(cls, accepted: Sequence[FrameFigures]) -> SessionStats:
        """From the figures of the accepted frames (in any order; NaN figures are left out)."""
        return cls(
            frames=len(accepted),
            fwhm=Figure.of([a.quality.fwhm for a in accepted]),
            axis_ratio=Figure.of([a.axis_ratio for a in accepted]),
            star_count=Figure.of([float(a.quality.star_count) for a in accepted]),
            background=Figure.of([a.quality.background for a in accepted]),
            transparency=Figure.of([a.transparency for a in accepted]),
        )


def _axis_ratio(eccentricity: float) -> float:
    """b/a of an ellipse of eccentricity e: sqrt(1 − e²) (NaN stays NaN)."""
    if not math.isfinite(eccentricity):
        return math.nan
    return math.sqrt(max(0.0, 1.0 - min(1.0, eccentricity) ** 2))


def _spread(figure: Figure, own: float, floor: float) -> float:
    """σ for an outlier test: the session's spread, the frame's own uncertainty and a floor, in quadrature."""
    own = own if math.isfinite(own) else 0.0
    return math.sqrt(figure.sigma ** 2 + own ** 2 + floor ** 2)


def check_gates(frame: FrameFigures, session: SessionStats, limits: GateThresholds) -> tuple[str, ...]:
    """The reasons ``frame`` fails the gates (empty when it passes), one line each, most telling first."""
    q = frame.quality
    reasons: list[str] = []
    k = limits.margin_sigma
    relative = session.frames >= max(1, limits.min_frames)

    def margins(ratio_text: str) -> str:
        return f"limits {k:g}σ and {ratio_text}"

    if relative:
        bg = session.background
        if (limits.max_background_ratio > 0 and bg.n and bg.median > 0 and math.isfinite(q.background)):
            # The floor of the spread: the frame's own noise over √(pixels) is nothing; a sky that wanders
            # by a percent is normal.
            s = _spread(bg, 0.0, 0.01 * bg.median)
            dev = (q.background - bg.median) / s
            if dev > k and q.background > limits.max_background_ratio * bg.median:
                reasons.append(f"background {q.background:.1f} ADU is {q.background / bg.median:.2f}× the "
                               f"session's {bg.median:.1f} ADU (+{dev:.1f}σ; "
                               f"{margins(f'{limits.max_background_ratio:g}×')}): Moon, dawn or clouds?")
        tr = session.transparency
        t = frame.transparency
        if limits.min_transparency_ratio > 0 and tr.n and tr.median > 0 and math.isfinite(t):
            s = _spread(tr, 0.0, 0.03 * tr.median)
            dev = (tr.median - t) / s
            if dev > k and t < limits.min_transparency_ratio * tr.median:
                reasons.append(f"transparency {t:.2f} of the reference's star flux against the session's "
                               f"{tr.median:.2f} (−{dev:.1f}σ; "
                               f"{margins(f'{limits.min_transparency_ratio:g}×')}): clouds?")
        ar = session.axis_ratio
        b_a = frame.axis_ratio
        if limits.max_axis_ratio_drop > 0 and ar.n and math.isfinite(b_a):
            # The eccentricity's uncertainty carried to b/a (db/a = −e/(b/a)·de), bounded for round stars.
            e = q.eccentricity
            own = e / max(b_a, 0.1) * q.eccentricity_err if math.isfinite(q.eccentricity_err) else 0.0
            s = _spread(ar, own, 0.02)
            dev = (ar.median - b_a) / s
            if dev > k and b_a < (1.0 - limits.max_axis_ratio_drop) * ar.median:
                reasons.append(f"eccentricity {e:.2f} (stars' b/a {b_a:.2f}) against the session's b/a "
                               f"{ar.median:.2f} (−{dev:.1f}σ; "
                               f"{margins(f'b/a {limits.max_axis_ratio_drop:.0%} lower')}): trailed?")
        fw = session.fwhm
        if limits.max_fwhm_ratio > 0 and fw.n and fw.median > 0 and math.isfinite(q.fwhm):
            s = _spread(fw, q.fwhm_err, 0.03 * fw.median)
            dev = (q.fwhm - fw.median) / s
            if dev > k and q.fwhm > limits.max_fwhm_ratio * fw.median:
                reasons.append(f"FWHM {q.fwhm:.2f} px is {q.fwhm / fw.median:.2f}× the session's median "
                               f"{fw.median:.2f} px (+{dev:.1f}σ; {margins(f'{limits.max_fwhm_ratio:g}×')})")
    sc = session.star_count
    if sc.n and sc.median > 0:
        ratio = q.star_count / sc.median
        if relative and limits.min_star_ratio > 0:
            # Counting noise (√N) is the least spread a star count has.
            s = _spread(sc, math.sqrt(sc.median), 0.05 * sc.median)
            dev = (sc.median - q.star_count) / s
            if dev > k and ratio < limits.min_star_ratio:
                reasons.append(f"{q.star_count} stars, {ratio:.2f}× the session's {sc.median:.0f} (−{dev:.1f}σ; "
                               f"{margins(f'{limits.min_star_ratio:g}×')})")
        elif limits.collapse_star_ratio > 0 and ratio < limits.collapse_star_ratio:
            reasons.append(f"{q.star_count} stars, {ratio:.2f}× the session's {sc.median:.0f}: the star count "
                           f"collapsed (below {limits.collapse_star_ratio:g}×)")
    reasons.extend(_absolute(q, limits))
    return tuple(reasons)


def _absolute(q: FrameQuality, limits: GateThresholds) -> list[str]:
    """The optional absolute limits (0: off)."""
    out: list[str] = []
    if limits.max_eccentricity > 0 and math.isfinite(q.eccentricity) and q.eccentricity > limits.max_eccentricity:
        out.append(f"eccentricity {q.eccentricity:.2f} is above the limit {limits.max_eccentricity:.2f}")
    if limits.max_fwhm_px > 0 and math.isfinite(q.fwhm) and q.fwhm > limits.max_fwhm_px:
        out.append(f"FWHM {q.fwhm:.2f} px is above the limit {limits.max_fwhm_px:.2f} px")
    if limits.min_star_count > 0 and q.star_count < limits.min_star_count:
        out.append(f"{q.star_count} stars, below the limit {limits.min_star_count}")
    return out


def flux_ratio(xy: npt.ArrayLike, flux: npt.ArrayLike, transform: Transform, ref_xy: npt.ArrayLike,
               ref_flux: npt.ArrayLike, *, radius: float = 2.0, min_pairs: int = 3) -> float:
    """Median ratio of a frame's star fluxes to the reference's, over stars within ``radius`` px of one
    another once ``transform`` (frame → reference) is applied; NaN with fewer than ``min_pairs`` pairs."""
    p = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    f = np.asarray(flux, dtype=np.float64).ravel()
    rp = np.asarray(ref_xy, dtype=np.float64).reshape(-1, 2)
    rf = np.asarray(ref_flux, dtype=np.float64).ravel()
    if p.shape[0] != f.size or rp.shape[0] != rf.size:
        raise ValueError("star positions and fluxes differ in length")
    if p.shape[0] == 0 or rp.shape[0] == 0:
        return math.nan
    dist, idx = cKDTree(rp).query(transform.apply(p), distance_upper_bound=radius)
    ok = np.isfinite(dist)
    if np.count_nonzero(ok) < min_pairs:
        return math.nan
    ratio = f[ok] / rf[idx[ok]]
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    return float(np.median(ratio)) if ratio.size >= min_pairs else math.nan
