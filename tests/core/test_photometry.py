"""Aperture photometry kernels (`astrod.core.photometry`) on seeded synthetic stars with known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from astrod.core.photometry import (
    measure_apertures,
    pick_comparisons,
    relative_flux,
    scintillation,
    weed_comparisons,
)
from astrod.demo.synth import Catalogue, moffat_alpha, render_stars

FWHM, BETA = 3.0, 4.0


def _grid_field(n_side: int = 12, flux: float = 2e5, sky: float = 500.0) -> tuple[np.ndarray, Catalogue]:
    """A noiseless scene of isolated stars on a grid, sub-pixel offsets all different (electrons)."""
    rng = np.random.default_rng(5)
    xs, ys = np.meshgrid(np.arange(n_side) * 40.0 + 30.0, np.arange(n_side) * 40.0 + 30.0)
    xy = np.column_stack([xs.ravel(), ys.ravel()]) + rng.uniform(-0.5, 0.5, (n_side * n_side, 2))
    cat = Catalogue(x=xy[:, 0], y=xy[:, 1], flux=np.full(n_side * n_side, flux))
    scene, _ = render_stars(width=n_side * 40 + 20, height=n_side * 40 + 20, catalogue=cat, fwhm=FWHM, beta=BETA,
                            sky=sky, supersample=3)
    return scene, cat


def test_noiseless_stars_give_their_flux_and_sky() -> None:
    """On a noiseless field the sky is the truth and each star's flux the Moffat share inside the aperture
    (to 0.2 %), wherever the star sits within its pixel."""
    scene, cat = _grid_field()
    r = 2.0 * FWHM
    m = measure_apertures(scene, cat.xy, radius=r, annulus=(5 * FWHM, 8 * FWHM), gain=1.0)
    alpha = moffat_alpha(fwhm=FWHM, beta=BETA)
    share = 1.0 - (1.0 + (r / alpha) ** 2) ** (1.0 - BETA)
    assert np.allclose(m.sky, 500.0, atol=0.5)
    assert np.allclose(m.flux / cat.flux, share, rtol=2e-3)
    assert not m.saturated.any() and not m.clipped.any()


def test_errors_match_the_scatter_of_noisy_copies() -> None:
    """Poisson and read noise on the same field: the stated error is the scatter of the measured fluxes over
    144 stars (ratio within 0.85-1.15), sky noise dominating or not."""
    scene, cat = _grid_field(flux=2e4, sky=800.0)
    rng = np.random.default_rng(11)
    gain, rn = 2.0, 6.0
    noisy = (rng.poisson(scene).astype(np.float64) + rng.normal(0.0, rn, scene.shape)) / gain
    m = measure_apertures(noisy.astype(np.float32), cat.xy, radius=1.5 * FWHM, annulus=(5 * FWHM, 8 * FWHM),
                          gain=gain, read_noise=rn)
    ratio = float(np.std(m.flux, ddof=1) / np.mean(m.flux_err))
    assert 0.85 < ratio < 1.15, ratio


def test_saturated_and_clipped_apertures_are_flagged() -> None:
    """A star with a pixel at the saturation level is flagged saturated; one whose annulus runs off the frame
    is flagged clipped; one off the frame has no flux."""
    scene, cat = _grid_field()
    m = measure_apertures(scene, np.vstack([cat.xy[:1], [[3.0, 200.0]], [[-50.0, 20.0]]]), radius=4.0,
                          annulus=(10.0, 16.0), gain=1.0, saturation=float(scene.max()) * 0.9)
    assert m.saturated.tolist()[0] and m.clipped.tolist() == [False, True, True]
    assert math.isnan(m.flux[2])


def test_comparisons_are_similar_isolated_unsaturated_and_away_from_edges() -> None:
    """Of six stars, only those within the flux range, under the peak limit, far from the target, the edge and
    a bright neighbour are picked, closest in brightness first."""
    xy = np.array([[100, 100], [200, 100], [300, 100], [400, 100], [100, 300], [5, 300], [205, 105]], float)
    flux = np.array([1000, 1100, 3000, 50, 900, 1000, 500], float)
    peak = np.array([100, 100, 100, 10, 10000, 100, 50], float)
    idx = pick_comparisons(xy, flux, peak, targets_xy=[[400, 300]], target_flux=1000.0, shape=(500, 500),
                           isolation_px=20.0, edge_px=30.0, saturation=10000.0)
    # 1 has a bright neighbour (6), 3 is too faint, 4 too close to saturation, 5 at the edge
    assert idx.tolist() == [0, 2]


def test_relative_flux_stays_continuous_when_a_comparison_is_missing() -> None:
    """A frame missing one comparison gives the same relative flux as with it (flat stars), and errors add
    in quadrature."""
    comps = np.array([[100.0, 300.0], [100.0, 300.0]])
    err = np.array([[10.0, 10.0], [10.0, 10.0]])
    use = np.array([[True, True], [False, True]])
    rel, rel_err = relative_flux(np.array([200.0, 200.0]), np.array([0.0, 0.0]), comps, err, use,
                                 np.array([100.0, 300.0]))
    assert rel == pytest.approx([0.5, 0.5])
    assert rel_err[0] == pytest.approx(0.5 * math.sqrt(200.0) / 400.0)


def test_a_variable_saturated_or_often_missing_comparison_is_weeded() -> None:
    """Of seven comparisons with 1 % noise, one varying by 10 %, one saturated once and one off the frame in
    a fifth of the frames go; one off the frame in a single frame stays (that frame is left out of the scatter);
    with fewer frames than needed for the scatter only the saturated one goes (over the first ten frames the
    others are all usable in nine of ten at least)."""
    rng = np.random.default_rng(2)
    comps = 1000.0 * (1.0 + 0.01 * rng.standard_normal((30, 7)))
    comps[:, 2] *= 1.0 + 0.1 * np.sin(np.arange(30))
    err = np.full_like(comps, 10.0)
    use = np.ones_like(comps, dtype=bool)
    saturated = np.zeros_like(use)
    saturated[7, 4] = True
    use[7, 4] = False
    use[24:, 5] = False
    comps[24:, 5] = np.nan
    use[3, 6] = False
    comps[3, 6] = np.nan
    kept = weed_comparisons(comps, err, use, saturated=saturated)
    assert kept.tolist() == [True, True, False, True, False, False, True]
    assert weed_comparisons(comps[:3], err[:3], use[:3], saturated=saturated[:3]).tolist() == [True] * 7
    assert weed_comparisons(comps[:10], err[:10], use[:10], saturated=saturated[:10], min_frames=20).tolist() == [
        True, True, True, True, False, True, True]


def test_scintillation_follows_youngs_formula() -> None:
    """0.2 m at airmass 1, 60 s, sea level: 0.09 × 20^(-2/3) / √120 ≈ 1.1e-3; none for a bad input."""
    assert scintillation(diameter_m=0.2, airmass=1.0, exposure_s=60.0) == pytest.approx(
        0.09 * 20 ** (-2 / 3) / math.sqrt(120), rel=1e-9)
    assert scintillation(diameter_m=0.0, airmass=1.0, exposure_s=60.0) == 0.0
