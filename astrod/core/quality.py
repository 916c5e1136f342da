"""Per-frame quality figures from measured stars and the sky background, for quality gates and reports."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from astrod.core.stars import Background, StarList, estimate_background

_MIN_SHAPE_STARS = 10  # below this many stars every measured star counts towards the shape medians


@dataclass(frozen=True, slots=True)
class FrameQuality:
    """Quality of one frame: detected star count, median FWHM and HFR (px), median eccentricity, sky
    background level and per-pixel noise (ADU). Shape figures are NaN when no star was measured."""

    star_count: int
    fwhm: float
    hfr: float
    eccentricity: float
    background: float
    noise: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def measure_quality(
    data: npt.NDArray[np.floating] | npt.NDArray[np.integer],
    stars: StarList,
    background: Background | None = None,
    *,
    bayer: str | None = None,
    box: int = 64,
) -> FrameQuality:
    """Quality of ``data`` given its `detect_stars` result and, if already known, its background.

    The shape medians use the brighter half of the measured stars (all of them when there are fewer than
    ten), whose shapes are not dominated by noise. Without ``background`` it is estimated here (on the
    superpixel luminance with ``bayer``).
    """
    if background is None:
        background = estimate_background(data, box=box, bayer=bayer)
    n = len(stars)
    if n == 0:
        fwhm = hfr = ecc = math.nan
    else:
        # Stars come sorted by flux, brightest first.
        use = slice(0, n if n < _MIN_SHAPE_STARS else max(_MIN_SHAPE_STARS, n // 2))
        fwhm = _median(stars.fwhm[use])
        hfr = _median(stars.hfr[use])
        ecc = _median(stars.eccentricity[use])
    return FrameQuality(star_count=int(stars.n_detected), fwhm=fwhm, hfr=hfr, eccentricity=ecc,
                        background=float(background.level), noise=float(background.noise))


def _median(values: npt.NDArray[np.float64]) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else math.nan
