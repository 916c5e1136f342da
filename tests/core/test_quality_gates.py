"""Tests of astrod.core.quality_gates: gates relative to the session's own frames, their reasons, transparency."""

from __future__ import annotations

import math

import numpy as np
import pytest

from astrod.core.quality import FrameQuality
from astrod.core.quality_gates import (
    Figure,
    FrameFigures,
    GateThresholds,
    SessionStats,
    check_gates,
    flux_ratio,
)
from astrod.model import Transform

LIMITS = GateThresholds()


def _q(*, stars: int = 200, fwhm: float = 2.5, ecc: float = 0.3, bg: float = 510.0, fwhm_err: float = 0.03,
       ecc_err: float = 0.03) -> FrameQuality:
    return FrameQuality(star_count=stars, fwhm=fwhm, hfr=fwhm / 2, eccentricity=ecc, background=bg, noise=10.0,
                        fwhm_err=fwhm_err, eccentricity_err=ecc_err, shape_stars=20)


def _session(n: int = 8, *, seed: int = 1, fwhm: float = 2.5, ecc: float = 0.3) -> SessionStats:
    """A session of ``n`` good frames scattered a little around the given figures."""
    rng = np.random.default_rng(seed)
    frames = [FrameFigures(_q(stars=int(rng.normal(200, 8)), fwhm=fwhm * rng.normal(1, 0.03),
                              ecc=float(np.clip(rng.normal(ecc, 0.03), 0, 1)), bg=float(rng.normal(510, 5))),
                           transparency=float(rng.normal(1.0, 0.02))) for _ in range(n)]
    return SessionStats.from_accepted(frames)


def test_frames_like_the_session_pass_and_a_best_frame_sets_no_bar() -> None:
    """A frame like the session's passes; so does one 25 % wider than the median: the session's best frame
    is not the bar, and 1.25× is inside the physical floor (1.4×)."""
    session = _session()
    assert check_gates(FrameFigures(_q(), 1.0), session, LIMITS) == ()
    assert check_gates(FrameFigures(_q(fwhm=2.5 * 1.25), 1.0), session, LIMITS) == ()


@pytest.mark.parametrize(("figures", "words"), [
    (FrameFigures(_q(fwhm=5.0), 1.0), ("FWHM 5.00 px is 2.01× the session's median 2.48 px", "limits 5σ and 1.4×")),
    (FrameFigures(_q(stars=60), 1.0), ("60 stars, 0.30× the session's",)),
    (FrameFigures(_q(ecc=0.9), 1.0), ("eccentricity 0.90", "trailed")),
    (FrameFigures(_q(bg=1500.0), 1.0), ("background 1500.0 ADU", "the session's")),
    (FrameFigures(_q(), 0.3), ("transparency 0.30", "clouds")),
])
def test_each_gate_rejects_an_outlier_past_its_floor(figures: FrameFigures, words: tuple[str, ...]) -> None:
    """Each gate alone rejects a frame far outside the session's distribution and past its floor, with one
    line naming the frame's and the session's figures and both limits."""
    reasons = check_gates(figures, _session(), LIMITS)
    assert len(reasons) == 1, reasons
    assert all(w in reasons[0] for w in words), reasons[0]


def test_an_outlier_inside_the_physical_floor_passes() -> None:
    """A session of near-identical frames makes a 15 % wider FWHM a many-σ outlier, but it is inside the
    1.4× floor: accepted. Both conditions are needed."""
    tight = SessionStats.from_accepted([FrameFigures(_q(fwhm=2.5, fwhm_err=0.001), 1.0)] * 10)
    assert check_gates(FrameFigures(_q(fwhm=2.5 * 1.15, fwhm_err=0.001), 1.0), tight, LIMITS) == ()


def test_a_poorly_measured_figure_is_no_outlier() -> None:
    """A frame's FWHM 1.6× the median but known only to ±0.5 px is within 5σ: not rejected for it."""
    assert check_gates(FrameFigures(_q(fwhm=4.0, fwhm_err=0.5), 1.0), _session(), LIMITS) == ()


def test_a_young_session_rejects_only_a_collapse() -> None:
    """With fewer accepted frames than ``min_frames`` only a star count below a quarter of the session's
    rejects: a defocused or trailed frame is not yet judged."""
    young = _session(2)
    assert check_gates(FrameFigures(_q(fwhm=6.0, ecc=0.95), 1.0), young, LIMITS) == ()
    reasons = check_gates(FrameFigures(_q(stars=30), 1.0), young, LIMITS)
    assert len(reasons) == 1 and "collapsed" in reasons[0]


def test_absolute_limits_are_off_by_default_and_work_when_set() -> None:
    """The absolute FWHM, eccentricity and star-count limits reject nothing by default; set, they do."""
    session = _session()
    frame = FrameFigures(_q(fwhm=2.6, ecc=0.35, stars=190), 1.0)
    assert check_gates(frame, session, LIMITS) == ()
    strict = GateThresholds(max_fwhm_px=2.0, max_eccentricity=0.3, min_star_count=195)
    reasons = check_gates(frame, session, strict)
    assert len(reasons) == 3 and "limit" in reasons[0]


def test_disabled_and_unknown_figures_do_not_reject() -> None:
    """Ratios of 0 disable their gates; NaN (unmeasured) figures skip theirs."""
    off = GateThresholds(max_fwhm_ratio=0, min_star_ratio=0, max_axis_ratio_drop=0, max_background_ratio=0,
                         min_transparency_ratio=0, collapse_star_ratio=0)
    assert check_gates(FrameFigures(_q(stars=1, fwhm=50.0, ecc=0.99, bg=1e5), 0.01), _session(), off) == ()
    unmeasured = FrameFigures(_q(fwhm=math.nan, ecc=math.nan, fwhm_err=math.nan, ecc_err=math.nan))
    assert check_gates(unmeasured, _session(), LIMITS) == ()


def test_session_stats_are_robust() -> None:
    """Median and 1.4826 × MAD ignore NaN entries and one wild value."""
    fig = Figure.of([2.0, 2.1, 1.9, math.nan, 2.0, 30.0])
    assert fig.median == 2.0 and fig.n == 5
    assert fig.sigma == pytest.approx(1.4826 * 0.1)
    assert Figure.of([]).n == 0 and math.isnan(Figure.of([]).median)


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
