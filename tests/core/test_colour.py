"""Tests of astrod.core.colour: background neutralisation and white balance from the stars."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from astrod.core.colour import ColourBalance, aperture_photometry, apply_colour, colour_balance
from tests import synth

F32 = npt.NDArray[np.float32]

STAR_CAST = (0.62, 1.0, 0.45)  # what the sensor and the filters do to white starlight
SKY = (900.0, 1400.0, 300.0)  # a green-and-red light-polluted sky


def cast_field(*, size: int = 384, seed: int = 7, sky: tuple[float, float, float] = SKY,
               cast: tuple[float, float, float] = STAR_CAST, noise: float = 4.0) -> tuple[F32, synth.Catalogue]:
    """A linear RGB stack of white stars seen through ``cast`` on a sky of ``sky`` per channel, with noise;
    each star's own colour is white times a random factor (stars differ, their median is white)."""
    cat = synth.make_catalogue(width=size, height=size, n_stars=150, seed=seed, flux_min=2e4, flux_max=2e6,
                               min_separation=12.0)
    rng = np.random.default_rng(seed)
    planes = []
    tint = np.exp(rng.normal(0.0, 0.15, (3, cat.x.size)))
    tint[1] = 1.0
    tint[:, np.argsort(tint[0])[cat.x.size // 2]] = 1.0  # an odd count of colours around white
    for c in range(3):
        coloured = synth.Catalogue(x=cat.x, y=cat.y, flux=cat.flux * tint[c] * cast[c])
        scene, _ = synth.render_stars(width=size, height=size, catalogue=coloured, fwhm=3.0, sky=sky[c])
        planes.append(scene + noise * rng.standard_normal(scene.shape).astype(np.float32))
    return np.stack(planes).astype(np.float32), cat


def test_balance_neutralises_sky_and_whitens_stars() -> None:
    """After the balance the sky medians agree within 2 % and the median star colour is white within 3 %
    (measured independently, on the known star positions)."""
    image, cat = cast_field()
    balance = colour_balance(image)
    out = apply_colour(image, balance)
    medians = np.median(out.reshape(3, -1), axis=1)
    assert np.ptp(medians) / medians.mean() < 0.02
    inside = (cat.x > 15) & (cat.x < 369) & (cat.y > 15) & (cat.y < 369)
    flux, _, _ = aperture_photometry(out, cat.x[inside], cat.y[inside], radius=6.0)
    ratio = np.nanmedian(flux / flux[1], axis=1)
    np.testing.assert_allclose(ratio, 1.0, atol=0.03)
    assert balance.stars >= 50
    assert balance.gains[1] == 1.0
    np.testing.assert_allclose(balance.gains, (1 / 0.62, 1.0, 1 / 0.45), rtol=0.03)


def test_balance_is_measured_on_a_binned_copy_the_same() -> None:
    """Binning the measurement (a cap on pixels) gives the same factors within 1 %."""
    image, _ = cast_field(seed=11)
    full = colour_balance(image, max_pixels=10**9)
    binned = colour_balance(image, max_pixels=40_000)
    np.testing.assert_allclose(binned.gains, full.gains, rtol=0.01)
    np.testing.assert_allclose(binned.background, full.background, rtol=0.01)


def test_few_stars_give_background_neutralisation_only() -> None:
    """Without stars the gains stay 1 and only the sky is equalised."""
    rng = np.random.default_rng(3)
    image = np.stack([np.full((128, 128), s, np.float32) + rng.standard_normal((128, 128)).astype(np.float32)
                      for s in SKY])
    balance = colour_balance(image)
    assert balance.stars == 0 and balance.gains == (1.0, 1.0, 1.0)
    out = apply_colour(image, balance)
    np.testing.assert_allclose(np.median(out.reshape(3, -1), axis=1), SKY[1], rtol=0.002)


def test_saturated_stars_are_left_out() -> None:
    """Stars clipped at a saturation level (white cores) do not pull the balance towards grey."""
    image, _ = cast_field(seed=5, cast=(0.5, 1.0, 0.5))
    level = float(np.percentile(image[1], 99.9))
    clipped = np.minimum(image, level)
    free = colour_balance(clipped, saturation=level)
    np.testing.assert_allclose(free.gains, (2.0, 1.0, 2.0), rtol=0.04)


def test_apply_in_place_and_nan() -> None:
    """apply_colour can work in place, keeps NaN, and the identity changes nothing."""
    image, _ = cast_field(size=192, seed=2)
    image[:, :5] = np.nan
    same = apply_colour(image, ColourBalance.identity())
    np.testing.assert_array_equal(same, image)
    b = ColourBalance(gains=(2.0, 1.0, 0.5), offsets=(1.0, 0.0, -1.0), background=(0, 0, 0),
                      star_ratio=(1, 1, 1), stars=0)
    expected = image * np.array([2.0, 1.0, 0.5], np.float32)[:, None, None] + np.array(
        [1.0, 0.0, -1.0], np.float32)[:, None, None]
    apply_colour(image, b, out=image)
    np.testing.assert_allclose(image, expected, rtol=1e-6)
    assert np.isnan(image[:, :5]).all()
    cards = b.cards()
    assert cards["CBGAIN1"][0] == 2.0 and cards["CBOFFS3"][0] == -1.0


def test_rejects_mono() -> None:
    """A mono image is not colour-calibrated: a precise ValueError."""
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        colour_balance(np.zeros((10, 10), np.float32))
