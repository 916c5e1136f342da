"""Quality gates: whether a frame joins the stack, judged against the frames accepted so far, with the reason.

The session's reference figures come from the accepted frames: the best (smallest) FWHM, and the median
star count and background (the reference frame alone at first). A gate compares one figure of a frame with
its reference figure and, when the frame fails, says so in one line naming both numbers:

- FWHM: above ``max_fwhm_ratio`` × the session's best (bad seeing, focus drift);
- star count: below ``min_star_ratio`` × the session's (clouds, dew, a lost guide star);
- eccentricity: above ``max_eccentricity`` (trailing, wind, a guiding error);
- background: above ``max_background_ratio`` × the session's (clouds lit by the town, the Moon, dawn).

A background ratio is only meaningful for a background above zero: compare calibrated frames (with the
bias removed), or uncalibrated frames whose pedestal is small beside the sky.

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


@dataclass(frozen=True, slots=True)
class GateThresholds:
    """Limits of the quality gates (``[quality]`` config); a limit of 0 (or inf for ratios) disables a gate."""

    max_fwhm_ratio: float = 1.6
    min_star_ratio: float = 0.4
    max_eccentricity: float = 0.7
    max_background_ratio: float = 2.5


@dataclass(frozen=True, slots=True)
class SessionReference:
    """The figures a new frame is judged against: the best FWHM and the median star count and background
    of the frames accepted so far (NaN when unknown)."""

    best_fwhm: float
    star_count: float
    background: float

    @classmethod
    def from_accepted(cls, fwhm: Sequence[float], star_count: Sequence[float],
                      background: Sequence[float]) -> SessionReference:
        """From the figures of the accepted frames (in any order; NaN entries are ignored)."""
        return cls(best_fwhm=_finite_reduce(fwhm, np.min), star_count=_finite_reduce(star_count, np.median),
                   background=_finite_reduce(background, np.median))


def _finite_reduce(values: Sequence[float], reduce: object) -> float:
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(reduce(a)) if a.size else math.nan  # type: ignore[operator]


def check_gates(quality: FrameQuality, session: SessionReference, limits: GateThresholds) -> tuple[str, ...]:
    """The reasons ``quality`` fails the gates (empty when it passes), one line each, most telling first."""
    reasons: list[str] = []
    if (limits.max_background_ratio > 0 and math.isfinite(quality.background) and session.background > 0
            and quality.background > limits.max_background_ratio * session.background):
        reasons.append(f"background {quality.background:.1f} ADU is {quality.background / session.background:.2f}× "
                       f"the session's {session.background:.1f} ADU (clouds?)")
    if (limits.max_eccentricity > 0 and math.isfinite(quality.eccentricity)
            and quality.eccentricity > limits.max_eccentricity):
        reasons.append(f"eccentricity {quality.eccentricity:.2f} is above {limits.max_eccentricity:.2f} (trailed)")
    if (limits.max_fwhm_ratio > 0 and math.isfinite(quality.fwhm) and session.best_fwhm > 0
            and quality.fwhm > limits.max_fwhm_ratio * session.best_fwhm):
        reasons.append(f"FWHM {quality.fwhm:.2f} px is {quality.fwhm / session.best_fwhm:.2f}× the session's "
                       f"best {session.best_fwhm:.2f} px")
    if (limits.min_star_ratio > 0 and session.star_count > 0
            and quality.star_count < limits.min_star_ratio * session.star_count):
        reasons.append(f"{quality.star_count} stars, {quality.star_count / session.star_count:.2f}× the "
                       f"session's {session.star_count:.0f}")
    return tuple(reasons)


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
