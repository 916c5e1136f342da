"""Background estimation, star detection and star measurement against synthetic truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
import pytest
from scipy.spatial import cKDTree

from astrod.core.stars import StarList, detect_stars, estimate_background
from tests import synth

W = H = 512
EXPOSURE, TEMP = 60.0, -10.0


def _isolated_bright(truth: synth.StarField, *, flux_min: float, margin: float = 12.0,
                     spacing: float = 12.0) -> npt.NDArray[np.bool_]:
    """Truth stars bright enough, away from the edges and from every other star (hot pixels included)."""
    xy = truth.xy
    inside = ((xy[:, 0] > margin) & (xy[:, 0] < truth.width - 1 - margin)
              & (xy[:, 1] > margin) & (xy[:, 1] < truth.height - 1 - margin))
    d, _ = cKDTree(xy).query(xy, k=2)
    return np.asarray((truth.flux >= flux_min) & inside & (d[:, 1] > spacing))


def _match(stars: StarList, truth: synth.StarField, radius: float = 1.0) -> tuple[npt.NDArray[np.intp],
                                                                                   npt.NDArray[np.intp]]:
    """(detected index, truth index) pairs within ``radius`` px."""
    if len(stars) == 0:
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.intp)
    d, i = cKDTree(truth.xy).query(stars.xy)
    ok = np.flatnonzero(d < radius)
    return ok, i[ok]


def _mono_frame(*, fwhm: float, beta: float, seed: int, n_stars: int = 150, hot_pixels: int = 50,
                flux_min: float = 3e3) -> tuple[npt.NDArray[np.float32], synth.StarField, synth.Sensor]:
    cat = synth.make_catalogue(width=W, height=H, n_stars=n_stars, seed=seed, min_separation=10.0,
                               flux_min=flux_min, flux_max=1e6)
    scene, truth = synth.render_stars(width=W, height=H, catalogue=cat, fwhm=fwhm, beta=beta, sky=100.0)
    sensor = synth.Sensor(width=W, height=H, seed=seed + 1, hot_pixels=hot_pixels)
    return sensor.light(scene, exposure=EXPOSURE, temperature=TEMP, seed=seed + 2), truth, sensor


# ---------------------------------------------------------------------------------------------------------
# Background


def test_background_level_and_noise_match_truth() -> None:
    """Sky level and noise come out within 1 % and 3 % of the truth despite stars and hot pixels, and the
    map follows a sky gradient."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    sky = 1000.0 + 0.2 * (xx - W / 2) + 0.1 * (yy - H / 2)
    sigma = 12.0
    cat = synth.make_catalogue(width=W, height=H, n_stars=200, seed=3, flux_min=2e3, flux_max=5e5)
    stars, _ = synth.render_stars(width=W, height=H, catalogue=cat, fwhm=3.0, sky=0.0)
    data = (sky + stars + rng.normal(0.0, sigma, (H, W))).astype(np.float32)
    data[rng.integers(0, H, 50), rng.integers(0, W, 50)] = 60000.0
    before = data.copy()

    bg = estimate_background(data, with_map=True)

    assert bg.level == pytest.approx(1000.0, rel=0.01)
    assert bg.noise == pytest.approx(sigma, rel=0.03)
    assert bg.map is not None and bg.map.shape == data.shape and bg.map.dtype == np.float32
    # The interpolated mesh follows the gradient to within a fraction of the noise (edges excluded, where
    # the mesh can only extrapolate flat).
    inner = (slice(64, H - 64), slice(64, W - 64))
    assert np.sqrt(np.mean((bg.map[inner] - sky[inner]) ** 2)) < 0.25 * sigma
    np.testing.assert_array_equal(data, before)


def test_background_of_a_bayer_frame_is_that_of_its_superpixels() -> None:
    """With a Bayer pattern the level is the mean of the four CFA channels, not a channel's median, and
    the noise is that of the 2×2 superpixel (half the per-pixel noise for equal channels)."""
    rng = np.random.default_rng(2)
    cell = np.array([[400.0, 700.0], [700.0, 500.0]], dtype=np.float32)
    data = np.tile(cell, (H // 2, W // 2)) + rng.normal(0.0, 10.0, (H, W)).astype(np.float32)
    bg = estimate_background(data, bayer="RGGB")
    assert bg.level == pytest.approx(575.0, rel=0.005)
    assert bg.noise == pytest.approx(5.0, rel=0.03)


# ---------------------------------------------------------------------------------------------------------
# Detection and measurement


@pytest.mark.parametrize(("fwhm", "beta"), [(3.0, 4.0), (4.5, 2.5)])
def test_centroids_fwhm_and_completeness_against_truth(fwhm: float, beta: float) -> None:
    """Bright isolated stars are all found, their centroids are within 0.05 px RMS of the truth, and the
    median FWHM is within 10 % of the true Moffat FWHM (hot pixels and a sensor's defects included)."""
    data, truth, sensor = _mono_frame(fwhm=fwhm, beta=beta, seed=10, n_stars=100, flux_min=1e4)
    stars = detect_stars(data)

    det, tru = _match(stars, truth)
    bright = _isolated_bright(truth, flux_min=2e4)
    # Stars next to a hot pixel are not "isolated" for the centroid figure; they must still be found.
    hot = sensor.hot_pixel_yx[:, ::-1].astype(np.float64)
    d_hot, _ = cKDTree(hot).query(truth.xy)
    clean = bright & (d_hot > 4 * fwhm)
    assert bright.sum() >= 20

    found = np.isin(np.flatnonzero(bright), tru)
    assert found.mean() >= 0.95, f"found {found.sum()} of {bright.sum()} bright stars"

    sel = clean[tru]
    err = stars.xy[det[sel]] - truth.xy[tru[sel]]
    rms = float(np.sqrt(np.mean(np.sum(err**2, axis=1))))
    assert rms <= 0.05, f"centroid RMS {rms:.4f} px over {sel.sum()} stars"

    fwhm_med = float(np.median(stars.fwhm[det[sel]]))
    assert fwhm_med == pytest.approx(fwhm, rel=0.10)
    # Every detection is real: nothing further than 1 px from a true star among the measured ones.
    assert len(det) == len(stars)


def test_detection_on_the_full_resolution_frame_agrees() -> None:
    """Without 2×2 binning the same bright stars are found with the same precision."""
    data, truth, _ = _mono_frame(fwhm=3.0, beta=4.0, seed=20, hot_pixels=0, n_stars=100, flux_min=1e4)
    stars = detect_stars(data, bin2=False)
    det, tru = _match(stars, truth)
    bright = _isolated_bright(truth, flux_min=2e4)
    assert np.isin(np.flatnonzero(bright), tru).mean() >= 0.95
    sel = bright[tru]
    rms = float(np.sqrt(np.mean(np.sum((stars.xy[det[sel]] - truth.xy[tru[sel]]) ** 2, axis=1))))
    assert rms <= 0.05
    assert float(np.median(stars.fwhm[det[sel]])) == pytest.approx(3.0, rel=0.10)


def test_no_detections_on_noise_and_hot_pixels() -> None:
    """A frame of sky, read noise, dust shadows and hundreds of hot pixels yields no star at all."""
    sensor = synth.Sensor(width=W, height=H, seed=4, hot_pixels=400, hot_rate=200.0)
    scene = np.full((H, W), 100.0, dtype=np.float32)
    data = sensor.light(scene, exposure=EXPOSURE, temperature=TEMP, seed=5)
    assert data.max() > 5000  # the hot pixels are there and bright
    stars = detect_stars(data)
    assert len(stars) == 0
    assert stars.n_detected == 0


def test_cosmic_rays_are_not_stars() -> None:
    """Cosmic-ray hits (single pixels and short tracks) are not taken for stars, and the stars beside
    them are still found."""
    data, truth, _ = _mono_frame(fwhm=3.0, beta=4.0, seed=30, hot_pixels=0)
    hit, _ = synth.add_cosmic_rays(data, n=300, seed=31, amplitude=3000.0)
    stars = detect_stars(hit)
    det, tru = _match(stars, truth)
    assert len(stars) == len(det), f"{len(stars) - len(det)} cosmic rays detected as stars"
    clean = _match(detect_stars(data), truth)[1]
    assert np.isin(clean, tru).mean() >= 0.9


def test_bayer_frame_detection() -> None:
    """On a colour (RGGB) frame of coloured stars, bright stars are found from the CFA with full-resolution
    coordinates within 0.1 px RMS, without colour bias, and an FWHM within 10 %."""
    cat = synth.make_catalogue(width=W, height=H, n_stars=120, seed=40, min_separation=12.0,
                               flux_min=1e4, flux_max=1e6)
    scene, truth = synth.render_stars(width=W, height=H, catalogue=cat, fwhm=3.5, beta=3.0, sky=100.0)
    for pattern, colour in (("RGGB", (1.0, 0.8, 0.5)), ("GBRG", (0.6, 0.8, 1.0))):
        sensor = synth.Sensor(width=W, height=H, seed=41, bayer=pattern, hot_pixels=0)
        data = sensor.light(synth.to_rgb(scene, colour=colour), exposure=EXPOSURE, temperature=TEMP, seed=42)
        stars = detect_stars(data, bayer=pattern)
        det, tru = _match(stars, truth)
        bright = _isolated_bright(truth, flux_min=5e4)
        assert np.isin(np.flatnonzero(bright), tru).mean() >= 0.95, pattern
        sel = bright[tru]
        err = stars.xy[det[sel]] - truth.xy[tru[sel]]
        assert float(np.sqrt(np.mean(np.sum(err**2, axis=1)))) <= 0.1, pattern
        assert np.all(np.abs(err.mean(axis=0)) < 0.03), pattern  # no shift towards one colour's pixels
        assert float(np.median(stars.fwhm[det[sel]])) == pytest.approx(3.5, rel=0.10), pattern


def test_saturated_stars_are_rejected() -> None:
    """Stars clipped at the sensor's full well are rejected, with the saturation level given and without
    it (their flat tops give them away); unsaturated stars remain."""
    cat = synth.make_catalogue(width=W, height=H, n_stars=60, seed=50, min_separation=20.0,
                               flux_min=2e4, flux_max=1e5)
    big = synth.Catalogue(x=np.append(cat.x, [100.3, 400.6]), y=np.append(cat.y, [300.2, 120.7]),
                          flux=np.append(cat.flux, [5e7, 8e7]))
    scene, truth = synth.render_stars(width=W, height=H, catalogue=big, fwhm=4.0, sky=100.0)
    sensor = synth.Sensor(width=W, height=H, seed=51, hot_pixels=0, full_well=40000.0)
    data = sensor.light(scene, exposure=EXPOSURE, temperature=TEMP, seed=52)
    assert (data >= 40000.0).sum() > 10
    saturated_xy = np.array([[100.3, 300.2], [400.6, 120.7]])
    for kwargs in ({"saturation": 40000.0}, {}):
        stars = detect_stars(data, **kwargs)  # type: ignore[arg-type]
        d, _ = cKDTree(stars.xy).query(saturated_xy)
        assert np.all(d > 3.0), kwargs
        assert len(_match(stars, truth)[0]) >= 50, kwargs


def test_star_list_is_sorted_frozen_and_capped() -> None:
    """Stars come brightest first, at most ``max_stars`` of them, while ``n_detected`` still counts every
    detected star; the arrays are read-only and the input frame is not modified."""
    data, _, _ = _mono_frame(fwhm=3.0, beta=4.0, seed=60)
    before = data.copy()
    full = detect_stars(data)
    capped = detect_stars(data, max_stars=20)
    np.testing.assert_array_equal(data, before)
    assert len(capped) == 20
    # Only measured sources can fail their measurement: the capped count is at least the full one.
    assert capped.n_detected >= full.n_detected >= len(full) > 20
    assert np.all(np.diff(full.flux) <= 0)
    np.testing.assert_allclose(capped.xy, full.xy[:20])
    assert capped.width == W and capped.height == H
    with pytest.raises(ValueError):
        full.x[0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        full.n_detected = 3  # type: ignore[misc]


def test_integer_input_gives_the_float_result() -> None:
    """A uint16 frame gives exactly what its float32 copy gives."""
    data, _, _ = _mono_frame(fwhm=3.0, beta=4.0, seed=70)
    a = detect_stars(data.astype(np.uint16))
    b = detect_stars(data)
    np.testing.assert_array_equal(a.xy, b.xy)


def test_measured_fluxes_follow_the_truth() -> None:
    """Aperture fluxes of bright isolated stars are proportional to the true fluxes (within a few %)."""
    data, truth, sensor = _mono_frame(fwhm=3.0, beta=4.0, seed=80, hot_pixels=0)
    stars = detect_stars(data)
    det, tru = _match(stars, truth)
    bright = _isolated_bright(truth, flux_min=5e4)[tru]
    ratio = stars.flux[det[bright]] / truth.flux[tru[bright]]
    # ADU per electron is 1/gain times the local flat; the 3-FWHM aperture misses a few % of a Moffat.
    expected = sensor.flat_field[np.rint(truth.y[tru[bright]]).astype(int),
                                 np.rint(truth.x[tru[bright]]).astype(int)] / sensor.gain
    rel = ratio / expected
    assert np.std(rel) < 0.03
    assert 0.9 < np.median(rel) <= 1.0


def test_thread_safe() -> None:
    """Detection run from several threads at once gives the serial result."""
    from concurrent.futures import ThreadPoolExecutor

    data, _, _ = _mono_frame(fwhm=3.0, beta=4.0, seed=90)
    serial = detect_stars(data)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: detect_stars(data), range(4)))
    for r in results:
        np.testing.assert_array_equal(r.xy, serial.xy)
        np.testing.assert_array_equal(r.fwhm, serial.fwhm)
