"""Per-frame quality figures from measured stars and the sky background, for quality gates and reports.

The star count and HFR come from the detected stars; the FWHM and the eccentricity from fitted stars
(`astrod.core.psf`: unbiased for undersampled, faint and Bayer stars), each with its uncertainty and the
number of stars behind it. A shape figure from too few stars is NaN: unmeasured, never a reason to reject.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from astrod.core.psf import ShapeFigures, measure_shape
from astrod.core.stars import Background, StarList, estimate_background

_MIN_SHAPE_STARS = 10  # below this many stars every measured star counts towards the HFR median


@dataclass(frozen=True, slots=True)
class FrameQuality:
    """Quality of one frame: detected star count, FWHM (px) and eccentricity of the fitted stars with their
    1σ uncertainties and how many stars they come from (``shape_stars``), median HFR (px) of the detected
    stars, sky background level and per-pixel noise (ADU). Shape figures are NaN when unmeasured."""

    star_count: int
    fwhm: float
    hfr: float
    eccentricity: float
    background: float
    noise: float
    fwhm_err: float = math.nan
    eccentricity_err: float = math.nan
    shape_stars: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def measure_quality(
    data: npt.NDArray[np.floating] | npt.NDArray[np.integer],
    stars: StarList,
    background: Background | None = None,
    *,
    bayer: str | None = None,
    box: int = 64,
    fit_stars_max: int = 20,
    min_shape_stars: int = 5,
) -> FrameQuality:
    """Quality of ``data`` given its `detect_stars` result and, if already known, its background.

    FWHM and eccentricity come from fits of the ``fit_stars_max`` brightest isolated stars (twice as many
    when those are faint, see `astrod.core.psf.measure_shape`) and are NaN
    when fewer than ``min_shape_stars`` could be fitted. The HFR is the median of the brighter half of the
    detected stars (all of them when there are fewer than ten). Without ``background`` it is estimated
    here (on the superpixel luminance with ``bayer``).
    """
    if background is None:
        background = estimate_background(data, box=box, bayer=bayer)
    n = len(stars)
    hfr = math.nan
    if n:
        # Stars come sorted by flux, brightest first.
        hfr = _median(stars.hfr[: n if n < _MIN_SHAPE_STARS else max(_MIN_SHAPE_STARS, n // 2)])
    if data.ndim == 2:
        shape = measure_shape(data, stars, bayer=bayer, max_stars=fit_stars_max, min_stars=min_shape_stars)
    else:
        shape = ShapeFigures.unmeasured(0)
    return FrameQuality(star_count=int(stars.n_detected), fwhm=shape.fwhm, hfr=hfr,
                        eccentricity=shape.eccentricity, background=float(background.level),
                        noise=float(background.noise), fwhm_err=shape.fwhm_err,
                        eccentricity_err=shape.eccentricity_err, shape_stars=shape.n_stars)


def _median(values: npt.NDArray[np.float64]) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else math.nan
