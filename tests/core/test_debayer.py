"""Tests of astrod.core.debayer: CFA patterns, offsets, channel order and colour fidelity at star edges."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from astrod.core.debayer import debayer, effective_pattern
from tests import synth

OFFSETS = [(0, 0), (1, 0), (0, 1), (1, 1)]
CASES = list(itertools.product(synth.BAYER_PATTERNS, OFFSETS))


@pytest.mark.parametrize(("pattern", "offset"), CASES)
def test_effective_pattern_matches_the_sensor_model(pattern: str, offset: tuple[int, int]) -> None:
    """The pattern after the XBAYROFF/YBAYROFF offset names the colours synth's sensor puts at (0, 0)…(1, 1)."""
    colours = synth.cfa_channel_index(pattern, offset, (2, 2)).ravel()
    assert effective_pattern(pattern, offset) == "".join("RGB"[c] for c in colours)


@pytest.mark.parametrize("method", ["gradient", "bilinear"])
@pytest.mark.parametrize(("pattern", "offset"), CASES)
def test_pure_colours_land_in_their_plane(pattern: str, offset: tuple[int, int], method: str) -> None:
    """A pure red, green or blue scene ends in plane 0, 1 or 2 and nowhere else, for every pattern and offset."""
    for channel in range(3):
        colour = tuple(1000.0 if c == channel else 0.0 for c in range(3))
        rgb = synth.to_rgb(np.ones((31, 36), dtype=np.float32), colour=colour)  # type: ignore[arg-type]
        out = debayer(synth.mosaic(rgb, pattern=pattern, offset=offset), pattern=pattern, offset=offset,
                      method=method)  # type: ignore[arg-type]
        assert out.shape == (3, 31, 36) and out.dtype == np.float32
        np.testing.assert_allclose(out, rgb, atol=1e-3)


@pytest.mark.parametrize(("pattern", "offset"), [("RGGB", (0, 0)), ("GBRG", (1, 1)), ("BGGR", (0, 1))])
def test_a_colour_gradient_is_reproduced(pattern: str, offset: tuple[int, int]) -> None:
    """Linear ramps of different slope per channel come back exactly in the interior (both methods are
    exact for linear signals), so colour planes are registered on the same pixel grid."""
    yy, xx = np.mgrid[0:40, 0:50].astype(np.float32)
    rgb = np.stack([100 + 3 * xx + yy, 200 - 2 * yy + 0.5 * xx, 50 + xx + 4 * yy]).astype(np.float32)
    for method in ("gradient", "bilinear"):
        out = debayer(synth.mosaic(rgb, pattern=pattern, offset=offset), pattern=pattern, offset=offset,
                      method=method)  # type: ignore[arg-type]
        np.testing.assert_allclose(out[:, 2:-2, 2:-2], rgb[:, 2:-2, 2:-2], atol=1e-3)


def test_grey_stars_have_no_colour_fringes_beyond_the_noise() -> None:
    """A white-balanced grey star field debayers to R = G = B within the photon + read noise of each pixel,
    and bright stars keep equal R, G, B aperture fluxes."""
    size = 160
    sky, read_noise = 300.0, 5.0
    catalogue = synth.make_catalogue(width=size, height=size, n_stars=25, seed=31, margin=10, flux_min=2e3,
                                     flux_max=2e4, min_separation=12)
    scene, _ = synth.render_stars(width=size, height=size, catalogue=catalogue, fwhm=4.0, sky=sky)
    grey = synth.to_rgb(scene)
    for pattern, offset in [("RGGB", (0, 0)), ("GRBG", (1, 0)), ("BGGR", (1, 1))]:
        out = debayer(synth.mosaic(grey, pattern=pattern, offset=offset), pattern=pattern, offset=offset)
        fringe = np.maximum(np.abs(out[0] - out[1]), np.abs(out[2] - out[1]))
        noise = np.sqrt(scene + read_noise**2)
        assert float((fringe / noise)[2:-2, 2:-2].max()) < 1.0

    bright = synth.make_catalogue(width=size, height=size, n_stars=6, seed=32, flux_min=2e5, flux_max=1e6,
                                  min_separation=40)
    scene, truth = synth.render_stars(width=size, height=size, catalogue=bright, fwhm=4.0, sky=sky)
    rng = np.random.default_rng(33)
    noisy = rng.poisson(synth.mosaic(synth.to_rgb(scene), pattern="RGGB")).astype(np.float32)
    out = debayer(noisy, pattern="RGGB")
    yy, xx = np.mgrid[0:size, 0:size]
    for x, y, flux in zip(truth.x, truth.y, truth.flux, strict=True):
        if not (15 < x < size - 15 and 15 < y < size - 15):
            continue
        aperture = (xx - x) ** 2 + (yy - y) ** 2 <= 10.0**2
        sums = (out[:, aperture] - sky).sum(axis=1)
        # a channel interpolated from a quarter of the pixels: noise of ~4× fewer photons
        sigma = 2.0 * np.sqrt(flux + sky * aperture.sum())
        assert np.all(np.abs(sums - sums[1]) < 3 * sigma)


def test_input_untouched_and_bad_arguments_refused() -> None:
    """debayer leaves its input alone and refuses unknown patterns, methods and shapes."""
    rng = np.random.default_rng(34)
    raw = rng.normal(500.0, 20.0, (21, 33)).astype(np.float32)
    before = raw.copy()
    debayer(raw, pattern="gbrg", offset=(1, 0))
    np.testing.assert_array_equal(raw, before)
    with pytest.raises(ValueError, match="Bayer pattern"):
        debayer(raw, pattern="RGBG")
    with pytest.raises(ValueError, match="method"):
        debayer(raw, pattern="RGGB", method="vng")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2-D"):
        debayer(raw[None], pattern="RGGB")
