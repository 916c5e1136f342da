"""Tests of astrod.core.stretch: the STF-style auto-stretch preview."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from astrod.core.stretch import apply_stretch, auto_stretch, downsample, mtf, stretch_parameters
from tests import synth

F32 = npt.NDArray[np.float32]


def linear_stack(*, size: int = 256, seed: int = 41, sky: float = 1200.0, noise: float = 6.0) -> F32:
    """A linear star field like a stack: sky, stars and Gaussian noise."""
    catalogue = synth.make_catalogue(width=size, height=size, n_stars=60, seed=seed, flux_max=5e6)
    scene, _ = synth.render_stars(width=size, height=size, catalogue=catalogue, fwhm=3.0, sky=sky)
    rng = np.random.default_rng(seed)
    return (scene + noise * rng.standard_normal(scene.shape)).astype(np.float32)


def test_mtf_fixed_points() -> None:
    """MTF(m, 0) = 0, MTF(m, m) = 1/2, MTF(m, 1) = 1, and it is monotonic."""
    for m in (0.01, 0.25, 0.5, 0.9):
        assert mtf(m, 0.0) == pytest.approx(0.0)
        assert mtf(m, m) == pytest.approx(0.5)
        assert mtf(m, 1.0) == pytest.approx(1.0)
        x = np.linspace(0, 1, 101, dtype=np.float32)
        assert np.all(np.diff(np.asarray(mtf(m, x))) > 0)


def test_downsample_is_a_block_mean() -> None:
    """downsample(f) equals the numpy block mean over f×f pixels, cropping the remainder."""
    rng = np.random.default_rng(42)
    image = rng.random((3, 50, 71), dtype=np.float32)
    small = downsample(image, 4)
    expected = image[:, :48, :68].reshape(3, 12, 4, 17, 4).mean(axis=(2, 4))
    assert small.shape == (3, 12, 17)
    np.testing.assert_allclose(small, expected, rtol=1e-5)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_mono_preview_range_background_and_determinism(factor: int) -> None:
    """A mono stack stretches to uint8 (H/f, W/f), full range, sky median near the target; twice the same."""
    image = linear_stack()
    before = image.copy()
    out = auto_stretch(image, downsample_factor=factor)
    assert out.dtype == np.uint8 and out.shape == (256 // factor, 256 // factor)
    assert out.max() == 255 and out.min() == 0
    assert abs(float(np.median(out)) - 0.25 * 255) <= 3
    np.testing.assert_array_equal(out, auto_stretch(image, downsample_factor=factor))
    np.testing.assert_array_equal(image, before)


def test_other_targets_and_shadow_clip() -> None:
    """The background follows target_background; about 0.26 % of the sky clips black at -2.8 MAD_n."""
    image = linear_stack(noise=20.0)
    for target in (0.1, 0.2, 0.4):
        out = auto_stretch(image, downsample_factor=1, target_background=target)
        assert abs(float(np.median(out)) - target * 255) <= 3
    out = auto_stretch(image, downsample_factor=1)
    # Gaussian sky: P(x < median - 2.8σ) = 0.26 %
    assert 0.001 < float(np.mean(out == 0)) < 0.006


def test_colour_linked_keeps_balance_unlinked_neutralises() -> None:
    """Colour gives (H, W, 3) RGB; linked keeps a red sky red, unlinked puts every channel on the target."""
    base = linear_stack(size=128)
    rgb = np.stack([base * 1.5, base, base * 0.8]).astype(np.float32)
    linked = auto_stretch(rgb, downsample_factor=2, linked=True)
    unlinked = auto_stretch(rgb, downsample_factor=2, linked=False)
    assert linked.shape == (64, 64, 3) and linked.dtype == np.uint8
    med_linked = np.median(linked.reshape(-1, 3), axis=0)
    med_unlinked = np.median(unlinked.reshape(-1, 3), axis=0)
    assert med_linked[0] > med_linked[1] > med_linked[2]
    assert np.all(np.abs(med_unlinked - 0.25 * 255) <= 3)


def test_nan_regions_are_black_and_do_not_disturb_statistics() -> None:
    """NaN (uncovered) pixels come out 0 and the covered sky still lands on the target."""
    image = linear_stack()
    image[:, :40] = np.nan
    out = auto_stretch(image, downsample_factor=2)
    assert np.all(out[:, :20] == 0)
    assert abs(float(np.median(out[:, 21:])) - 0.25 * 255) <= 3
    empty = auto_stretch(np.full((8, 8), np.nan, dtype=np.float32), downsample_factor=1)
    assert np.all(empty == 0)


def test_parameters_apply_to_another_image() -> None:
    """stretch_parameters + apply_stretch is what auto_stretch does (so a preview can reuse a stretch)."""
    image = linear_stack()
    small = downsample(image, 2)
    params = stretch_parameters(small)
    np.testing.assert_array_equal(apply_stretch(small, params), auto_stretch(image, downsample_factor=2))
