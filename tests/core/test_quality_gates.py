"""Tests of astrod.core.quality_gates: gate decisions and their reasons, session figures, transparency."""

from __future__ import annotations

import math

import numpy as np
import pytest

from astrod.core.quality import FrameQuality
from astrod.core.quality_gates import GateThresholds, SessionReference, check_gates, flux_ratio
from astrod.model import Transform

SESSION = SessionReference(best_fwhm=2.4, star_count=200.0, background=500.0)
LIMITS = GateThresholds(max_fwhm_ratio=1.6, min_star_ratio=0.4, max_eccentricity=0.7, max_background_ratio=2.5)


def _q(*, stars: int = 200, fwhm: float = 2.5, ecc: float = 0.3, bg: float = 510.0) -> FrameQuality:
    return FrameQuality(star_count=stars, fwhm=fwhm, hfr=fwhm / 2, eccentricity=ecc, background=bg, noise=10.0)


def test_a_good_frame_passes() -> None:
    """A frame like the session's passes every gate, also right at each limit."""
    assert check_gates(_q(), SESSION, LIMITS) == ()
    edge = _q(stars=80, fwhm=2.4 * 1.6, ecc=0.7, bg=1250.0)
    assert check_gates(edge, SESSION, LIMITS) == ()


@pytest.mark.parametrize(("quality", "words"), [
    (_q(fwhm=5.1), ("FWHM 5.10 px is 2.12× the session's best 2.40 px",)),
    (_q(stars=60), ("60 stars, 0.30× the session's 200",)),
    (_q(ecc=0.85), ("eccentricity 0.85 is above 0.70",)),
    (_q(bg=1500.0), ("background 1500.0 ADU is 3.00× the session's 500.0 ADU",)),
])
def test_each_gate_rejects_with_its_numbers(quality: FrameQuality, words: tuple[str, ...]) -> None:
    """Each gate alone rejects past its limit with one line naming the frame's and the session's figures."""
    reasons = check_gates(quality, SESSION, LIMITS)
    assert len(reasons) == 1
    assert all(w in reasons[0] for w in words)


def test_several_failures_are_all_reported_background_first() -> None:
    """A cloudy frame fails background and star count; the background (the cause) comes first."""
    reasons = check_gates(_q(stars=20, bg=2000.0), SESSION, LIMITS)
    assert len(reasons) == 2 and reasons[0].startswith("background") and "stars" in reasons[1]


def test_disabled_and_unknown_figures_do_not_reject() -> None:
    """Limits of 0 disable gates; NaN figures (no stars measured) and an unknown session skip theirs."""
    off = GateThresholds(max_fwhm_ratio=0, min_star_ratio=0, max_eccentricity=0, max_background_ratio=0)
    assert check_gates(_q(stars=1, fwhm=50.0, ecc=0.99, bg=1e5), SESSION, off) == ()
    unknown = SessionReference(best_fwhm=math.nan, star_count=math.nan, background=math.nan)
    assert check_gates(_q(stars=1, fwhm=50.0, bg=1e5), unknown, LIMITS) == ()
    assert check_gates(_q(fwhm=math.nan, ecc=math.nan), SESSION, LIMITS) == ()


def test_session_reference_from_accepted_frames() -> None:
    """Best FWHM is the minimum, star count and background the medians; NaN entries are ignored."""
    ref = SessionReference.from_accepted([3.0, 2.2, math.nan, 2.8], [100, 300, 200, 150], [500, 520, math.nan, 480])
    assert ref.best_fwhm == 2.2 and ref.star_count == 175.0 and ref.background == 500.0
    empty = SessionReference.from_accepted([], [], [])
    assert math.isnan(empty.best_fwhm) and math.isnan(empty.star_count)


def test_flux_ratio_measures_transparency() -> None:
    """Stars moved by a known transform with 70 % of their flux (plus one stray star) give a ratio of 0.7."""
    rng = np.random.default_rng(4)
    ref_xy = rng.uniform(0, 500, (40, 2))
    ref_flux = rng.uniform(1e3, 1e5, 40)
    t = Transform.similarity(dx=12.0, dy=-7.0, rotation_deg=30.0, scale=1.001)
    frame_xy = t.inverse().apply(ref_xy)
    frame_flux = 0.7 * ref_flux * rng.normal(1.0, 0.01, 40)
    xy = np.vstack([frame_xy, [[250.0, 250.0]]])
    flux = np.append(frame_flux, 1e6)
    assert flux_ratio(xy, flux, t, ref_xy, ref_flux) == pytest.approx(0.7, rel=0.01)
    assert math.isnan(flux_ratio(xy[:2], flux[:2], t, ref_xy, ref_flux))
    assert math.isnan(flux_ratio(xy, flux, Transform.similarity(dx=200.0, dy=0.0), ref_xy, ref_flux))
