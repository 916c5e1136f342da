"""Tests of astrod.core.background: the polynomial sky model, fitted on masked samples, subtracted per channel."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
import pytest

from astrod.core.background import BackgroundModel, fit_background, render_background, subtract_background
from astrod.core.colour import aperture_photometry
from tests import synth

F32 = npt.NDArray[np.float32]
SKY = 1000.0
SIZE = (400, 600)  # H, W


def star_field(*, seed: int = 21, noise: float = 8.0) -> tuple[F32, synth.Catalogue]:
    """A linear mono stack: flat sky of SKY, isolated stars, Gaussian noise."""
    h, w = SIZE
    cat = synth.make_catalogue(width=w, height=h, n_stars=120, seed=seed, flux_min=2e4, flux_max=1e6,
                               min_separation=14.0)
    scene, _ = synth.render_stars(width=w, height=h, catalogue=cat, fwhm=3.0, sky=SKY)
    rng = np.random.default_rng(seed)
    return (scene + noise * rng.standard_normal(scene.shape)).astype(np.float32), cat


def gradient(amplitude: float) -> F32:
    """A tilted plane plus a corner glow whose peak-to-valley is ``amplitude`` (0 at the frame's mean)."""
    h, w = SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    g = 0.7 * xx / (w - 1) + 0.3 * (yy / (h - 1)) ** 2
    g = (g - g.min()) / (g.max() - g.min()) * amplitude
    return (g - g.mean()).astype(np.float32)


def nebula(amplitude: float, *, share: float = 0.2) -> F32:
    """A faint, soft-edged elliptical nebula covering ``share`` of the frame (flat top of ``amplitude``)."""
    h, w = SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # ellipse of area share·h·w with axes in the frame's ratio, a 20 px soft edge
    a = np.sqrt(share * h * w / np.pi * w / h)
    b = a * h / w
    r = np.hypot((xx - 0.45 * w) / a, (yy - 0.55 * h) / b)
    edge = np.clip((1.0 - r) * a / 20.0 + 0.5, 0.0, 1.0)
    return (amplitude * edge).astype(np.float32)


def test_gradient_is_removed_to_half_a_percent_of_the_sky() -> None:
    """A gradient of 10 % of the sky: after extraction the background varies by ≤ 0.5 % of the sky across the
    field (a 9×9 grid of 40-px patches, star-free medians), and its level stays the sky's."""
    clean, _ = star_field()
    out = subtract_background(clean + gradient(0.1 * SKY), fit_background(clean + gradient(0.1 * SKY)))
    residual = out - clean
    h, w = SIZE
    patches = [np.median(residual[y:y + 40, x:x + 40]) for y in np.linspace(0, h - 40, 9).astype(int)
               for x in np.linspace(0, w - 40, 9).astype(int)]
    assert np.ptp(patches) <= 0.005 * SKY
    assert abs(np.median(out) - np.median(clean)) <= 0.005 * SKY


def test_star_fluxes_change_by_under_one_percent() -> None:
    """Aperture fluxes of the stars after extraction agree with those of the gradient-free field within 1 %."""
    clean, cat = star_field(seed=4)
    out = subtract_background(clean + gradient(0.1 * SKY), fit_background(clean + gradient(0.1 * SKY)))
    h, w = SIZE
    inside = (cat.x > 20) & (cat.x < w - 20) & (cat.y > 20) & (cat.y < h - 20) & (cat.flux > 4e4)
    before, _, _ = aperture_photometry(clean[None], cat.x[inside], cat.y[inside], radius=6.0)
    after, _, _ = aperture_photometry(out[None], cat.x[inside], cat.y[inside], radius=6.0)
    ratio = after[0] / before[0]
    assert inside.sum() >= 20
    assert np.max(np.abs(ratio - 1.0)) <= 0.01


def test_faint_nebula_keeps_ninety_percent_of_its_flux() -> None:
    """A nebula of 2 % of the sky (under the per-pixel mask's threshold) covering 20 % of the frame, on a
    gradient of 10 %: its flux above the extracted sky is ≥ 90 % of the injected flux."""
    clean, _ = star_field(seed=9)
    neb = nebula(0.02 * SKY)
    image = clean + gradient(0.1 * SKY) + neb
    model = fit_background(image)
    out = subtract_background(image, model)
    kept = float(np.sum(out - clean)) - (float(np.median(out - clean - neb)) * out.size)
    assert kept >= 0.9 * float(neb.sum())
    assert model.boxes_used < model.boxes_total  # the boxes on the nebula were rejected


def test_colour_channels_and_in_place() -> None:
    """Each channel has its own surface; subtracting in place gives the same pixels; NaN stays NaN."""
    clean, _ = star_field(seed=2)
    cube = np.stack([clean + gradient(a) for a in (50.0, 100.0, 20.0)])
    cube[:, :, :3] = np.nan
    model = fit_background(cube)
    assert model.planes == 3
    out = subtract_background(cube, model)
    for p in range(3):
        res = out[p, :, 3:] - clean[:, 3:]
        assert np.ptp([np.median(res[:, i:i + 60]) for i in range(0, 590, 60)]) <= 5.0
    subtract_background(cube, model, out=cube)
    np.testing.assert_array_equal(np.isnan(cube), np.isnan(out))
    np.testing.assert_allclose(cube[:, :, 3:], out[:, :, 3:])


def test_render_binned_is_the_block_mean() -> None:
    """The model rendered 4×-binned equals the block mean of the full-size one (a smooth surface)."""
    model = BackgroundModel(degree=2, coefficients=((10.0, 1.0, -2.0, 0.5, 0.3, -0.7),), pedestal=(10.0,),
                            shape=(64, 96), boxes_used=10, boxes_total=10)
    full = render_background(model)
    binned = render_background(model, factor=4)
    np.testing.assert_allclose(binned[0], full[0].reshape(16, 4, 24, 4).mean(axis=(1, 3)), atol=0.02)


def test_26_megapixel_colour_stack_is_fast() -> None:
    """Fitting and subtracting on a 26 MP colour stack (6224×4168) stays under 6 s on this machine (the
    fit works on a binned copy; the subtraction band by band)."""
    rng = np.random.default_rng(0)
    block = (1000.0 + 5.0 * rng.standard_normal((3, 1042, 1556))).astype(np.float32)
    cube = np.tile(block, (1, 4, 4))  # 3 × 4168 × 6224
    t0 = time.perf_counter()
    model = fit_background(cube)
    t_fit = time.perf_counter() - t0
    subtract_background(cube, model, out=cube)
    t_all = time.perf_counter() - t0
    print(f"26 MP colour: fit {t_fit * 1e3:.0f} ms, fit + subtract {t_all * 1e3:.0f} ms")
    assert t_all < 6.0


@pytest.mark.parametrize("shape", [(5, 5, 5, 5), ()])
def test_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    """Only (H, W) and (planes, H, W) images have a sky model."""
    with pytest.raises(ValueError, match="image must be"):
        fit_background(np.zeros(shape, np.float32))
