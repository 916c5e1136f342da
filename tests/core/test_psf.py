"""Star shapes from fitted stars (astrod.core.psf) against synthetic truth: undersampled to wide stars, faint to
bright, mono and Bayer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from astrod.core.psf import (
    ShapeFigures,
    StarFits,
    ellipticity_to_eccentricity,
    fit_stars,
    measure_shape,
    select_fit_stars,
    shape_figures,
)
from astrod.core.stars import StarList, detect_stars
from tests import synth

W = H = 640
SKY, READ_NOISE = 500.0, 8.0  # ADU, gain 1 e-/ADU


def _snr_field(*, fwhm: float, snr: float, seed: int, bayer: str | None = None, ellipticity: float = 0.0,
               beta: float = 3.5) -> npt.NDArray[np.float32]:
    """A frame whose stars all have the given signal-to-noise ratio in an aperture of radius 1.5 FWHM (sky
    and read noise, star shot noise; gain 1), on a flat sky."""
    n_ap = math.pi * (1.5 * fwhm) ** 2
    var_px = SKY + READ_NOISE**2
    # SNR = F / sqrt(F + n_ap·var): the flux that gives it.
    flux = 0.5 * (snr**2 + math.sqrt(snr**4 + 4.0 * snr**2 * n_ap * var_px))
    cat = synth.make_catalogue(width=W, height=H, n_stars=80, seed=seed, min_separation=5.0 * fwhm + 8.0,
                               flux_min=flux, flux_max=flux * 1.0001)
    scene, _ = synth.render_stars(width=W, height=H, catalogue=cat, fwhm=fwhm, beta=beta, sky=0.0,
                                  ellipticity=ellipticity, ellipticity_angle_deg=25.0, stars_only=True)
    if bayer is not None:
        scene = synth.mosaic(synth.to_rgb(scene, colour=(1.0, 0.8, 0.6)), pattern=bayer)
    rng = np.random.default_rng(seed + 1)
    electrons = rng.poisson(np.maximum(scene, 0.0) + SKY).astype(np.float32)
    return (electrons + rng.normal(0.0, READ_NOISE, scene.shape)).astype(np.float32)


def _figures(data: npt.NDArray[np.float32], bayer: str | None) -> ShapeFigures:
    return measure_shape(data, detect_stars(data, bayer=bayer), bayer=bayer)


@pytest.mark.parametrize("bayer", [None, "RGGB"])
@pytest.mark.parametrize("fwhm", [1.5, 2.5, 5.0])
@pytest.mark.parametrize("snr", [20.0, 100.0, 500.0])
def test_round_stars_measure_round_and_their_fwhm(fwhm: float, snr: float, bayer: str | None) -> None:
    """Round stars of FWHM 1.5–5 px at SNR 20–500, mono and Bayer: the frame's eccentricity is at most 0.3
    (second moments of such stars read 0.3–0.8) and its FWHM is within 5 % of the truth (10 % at SNR 20),
    inside the figure's own stated uncertainty (3σ) plus 2 %."""
    data = _snr_field(fwhm=fwhm, snr=snr, seed=int(10 * fwhm + snr), bayer=bayer)
    f = _figures(data, bayer)
    assert f.n_stars >= 10
    assert f.eccentricity <= 0.3
    assert f.fwhm == pytest.approx(fwhm, rel=0.10 if snr < 50 else 0.05)
    assert abs(f.fwhm - fwhm) <= 3.0 * f.fwhm_err + 0.02 * fwhm


@pytest.mark.parametrize("bayer", [None, "GRBG"])
@pytest.mark.parametrize("fwhm", [1.5, 3.0])
def test_elongated_stars_measure_their_eccentricity(fwhm: float, bayer: str | None) -> None:
    """A field whose stars have b/a = 0.6 (eccentricity 0.8) measures 0.8 ± 0.05, mono and Bayer, down to
    undersampled stars."""
    data = _snr_field(fwhm=fwhm, snr=100.0, seed=7, bayer=bayer, ellipticity=0.4)
    f = _figures(data, bayer)
    assert f.eccentricity == pytest.approx(0.8, abs=0.05)
    assert f.eccentricity_err < 0.05


def test_too_few_stars_leave_the_shape_unmeasured() -> None:
    """With fewer fitted stars than ``min_stars`` the figures are NaN (unmeasured), not a guess."""
    data = _snr_field(fwhm=2.5, snr=200.0, seed=3)
    stars = detect_stars(data)
    fits = fit_stars(data, stars, select_fit_stars(stars, max_stars=3))
    few = shape_figures(fits, min_stars=5)
    assert math.isnan(few.fwhm) and math.isnan(few.eccentricity) and few.n_stars == 3
    empty = shape_figures(fit_stars(data, StarList.empty(width=W, height=H), np.empty(0, dtype=np.intp)))
    assert empty.n_stars == 0 and math.isnan(empty.fwhm_err)


def test_hot_pixel_in_a_star_is_left_out_of_its_fit() -> None:
    """A hot pixel on a star's wing does not change its fitted FWHM by more than 3 %: the fit is repeated
    without the pixels it cannot explain."""
    data = _snr_field(fwhm=3.0, snr=300.0, seed=11)
    stars = detect_stars(data)
    chosen = select_fit_stars(stars, max_stars=10)
    clean = fit_stars(data, stars, chosen)
    spoiled = data.copy()
    for i in chosen:
        spoiled[round(stars.y[i]) + 2, round(stars.x[i]) - 1] += 30000.0
    hot = fit_stars(spoiled, stars, chosen)
    ok = clean.ok & hot.ok
    assert ok.sum() >= 8
    np.testing.assert_allclose(hot.fwhm[ok], clean.fwhm[ok], rtol=0.03)


def test_isolated_brightest_stars_are_chosen() -> None:
    """A star with a neighbour closer than 3 FWHM is not chosen; the rest come brightest first."""
    xy = np.array([[100.0, 100.0], [104.0, 100.0], [300.0, 300.0], [400.0, 100.0]])
    flux = np.array([9e5, 8e5, 5e5, 1e5])
    stars = StarList(x=xy[:, 0], y=xy[:, 1], flux=flux, fwhm=np.full(4, 2.0), hfr=np.full(4, 1.2),
                     eccentricity=np.zeros(4), n_detected=4, width=512, height=512)
    assert select_fit_stars(stars).tolist() == [2, 3]
    assert select_fit_stars(stars, max_stars=1).tolist() == [2]


def test_eccentricity_from_ellipticity() -> None:
    """e = sqrt(1 − b²/a²) from |ε| = (a² − b²)/(a² + b²): b/a = 0.6 gives 0.8, round gives 0."""
    b_a = 0.6
    eps = (1 - b_a**2) / (1 + b_a**2)
    np.testing.assert_allclose(ellipticity_to_eccentricity([0.0, eps, 1.0]), [0.0, 0.8, 1.0])


def test_fits_are_values() -> None:
    """StarFits is frozen; its ``ok`` marks the finite fits."""
    nan = np.array([np.nan])
    one = np.array([1.0])
    fits = StarFits(x=one, y=one, fwhm=nan, fwhm_err=nan, e1=one, e2=one, e1_err=one, e2_err=one, beta=one,
                    status=np.array([3]))
    assert fits.ok.tolist() == [False]
    with pytest.raises(AttributeError):
        fits.x = one  # type: ignore[misc]


def test_real_ccd_stars_agree_with_astropy_gaussian_fits(shared_data: Path) -> None:
    """On a real SBIG ST-10 frame (FWHM ≈ 1.8 px) the stars' axis ratio agrees within 0.03 with astropy's
    Gaussian2D fitted to the same stars (its widths less the pixel box), an independent fitter."""
    from astropy.modeling import fitting, models

    from astrod.io.frames import read_frame

    frame = read_frame(shared_data / "oscaar_tres1_sbig_st10" / "lights" / "tres1-022.fit")
    data = np.asarray(frame.data, dtype=np.float32)
    stars = detect_stars(data)
    chosen = select_fit_stars(stars, max_stars=15)
    ours = fit_stars(data, stars, chosen)
    fitter = fitting.LevMarLSQFitter()
    theirs = []
    r = 6
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    for i in chosen:
        x, y = round(stars.x[i]), round(stars.y[i])
        cut = data[y - r:y + r + 1, x - r:x + r + 1].astype(np.float64)
        sky = float(np.median(np.concatenate([cut[0], cut[-1], cut[:, 0], cut[:, -1]])))
        fit = fitter(models.Gaussian2D(cut.max() - sky, 0, 0, 1, 1, 0) + models.Const2D(sky), xx, yy, cut)
        va, vb = fit[0].x_stddev.value ** 2 - 1 / 12, fit[0].y_stddev.value ** 2 - 1 / 12
        theirs.append(math.sqrt(min(va, vb) / max(va, vb)))
    g = np.hypot(ours.e1[ours.ok], ours.e2[ours.ok])
    b_a = float(np.median(np.sqrt((1 - g) / (1 + g))))
    assert b_a == pytest.approx(float(np.median(theirs)), abs=0.03)
