"""The synthetic data generator must produce what its truth says, deterministically from its seed."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.time import Time

from astrod.model import Transform
from tests import synth

F = np.float64


def centroid(img: np.ndarray, x: float, y: float, *, radius: int = 12, background: float = 0.0) -> tuple[F, F, F]:
    """First moments and sum of ``img - background`` in a square window around (x, y): an independent reference."""
    cx, cy = round(x), round(y)
    win = img[cy - radius : cy + radius + 1, cx - radius : cx + radius + 1].astype(np.float64) - background
    yy, xx = np.mgrid[cy - radius : cy + radius + 1, cx - radius : cx + radius + 1]
    total = win.sum()
    return F((win * xx).sum() / total), F((win * yy).sum() / total), F(total)


def one_star(x: float, y: float, flux: float = 1e5) -> synth.Catalogue:
    return synth.Catalogue(x=np.array([x]), y=np.array([y]), flux=np.array([flux]))


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_session_and_other_seed_differs() -> None:
    """Two sessions from one seed are identical array for array; another seed gives other frames and stars."""
    kw = {"n_frames": 2, "width": 128, "height": 96, "n_stars": 40}
    a = synth.make_session(seed=7, **kw)  # type: ignore[arg-type]
    b = synth.make_session(seed=7, **kw)  # type: ignore[arg-type]
    c = synth.make_session(seed=8, **kw)  # type: ignore[arg-type]
    for fa, fb in zip(a.frames, b.frames, strict=True):
        np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(a.catalogue.x, b.catalogue.x)
    np.testing.assert_array_equal(a.truths[1].x, b.truths[1].x)
    assert a.transforms == b.transforms
    np.testing.assert_array_equal(a.sensor.bias_map, b.sensor.bias_map)
    assert not np.array_equal(a.frames[1], c.frames[1])
    assert not np.array_equal(a.catalogue.x[:10], c.catalogue.x[:10])
    assert a.transforms[1] != c.transforms[1]


def test_sensor_truth_fixed_by_seed_and_frames_by_frame_seed() -> None:
    """Sensor truth depends only on its seed; each frame on its own seed; bias and dark noise are independent."""
    s1 = synth.Sensor(width=64, height=64, seed=3)
    s2 = synth.Sensor(width=64, height=64, seed=3)
    s3 = synth.Sensor(width=64, height=64, seed=4)
    for name in ("bias_map", "dark_rate_map", "flat_field", "hot_pixel_yx"):
        np.testing.assert_array_equal(getattr(s1, name), getattr(s2, name))
        assert not np.array_equal(getattr(s1, name), getattr(s3, name))
    np.testing.assert_array_equal(s1.bias(seed=1), s2.bias(seed=1))
    np.testing.assert_array_equal(s1.bias(seed=1), s1.bias(1))
    assert not np.array_equal(s1.bias(seed=1), s1.bias(seed=2))
    noise_b = s1.bias(seed=1) - s1.bias_map
    noise_d = s1.dark(exposure=0.0, temperature=-10.0, seed=1) - s1.bias_map
    assert abs(np.corrcoef(noise_b.ravel(), noise_d.ravel())[0, 1]) < 0.05
    with pytest.raises(TypeError):
        s1.bias()


def test_generation_in_threads_equals_serial() -> None:
    """Generators hold no shared state: sessions made in parallel threads equal the serial ones."""
    kw = {"n_frames": 2, "width": 64, "height": 64, "n_stars": 15}
    serial = [synth.make_session(seed=k, **kw).frames[1] for k in range(4)]  # type: ignore[arg-type]
    with ThreadPoolExecutor(max_workers=2) as pool:
        parallel = list(pool.map(lambda k: synth.make_session(seed=k, **kw).frames[1], range(4)))  # type: ignore[arg-type]
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_truth_arrays_are_read_only() -> None:
    """Truth arrays cannot be modified by accident by a test that borrows them, nor the sensor rebound."""
    s = synth.Sensor(width=32, height=32, seed=1)
    with pytest.raises(ValueError):
        s.flat_field[0, 0] = 2.0
    with pytest.raises(AttributeError):
        s.gain = 2.0
    cat = synth.make_catalogue(width=32, height=32, n_stars=5, seed=1)
    with pytest.raises(ValueError):
        cat.x[0] = 1.0


# ------------------------------------------------------------------------------------------ catalogue


def test_catalogue_counts_margin_and_flux_range() -> None:
    """Exactly n_stars fall in the frame, the margin holds more at the same density, fluxes stay in range."""
    cat = synth.make_catalogue(width=200, height=100, n_stars=300, seed=5, margin=20, flux_min=1e3, flux_max=1e6)
    inside = (cat.x >= -0.5) & (cat.x < 199.5) & (cat.y >= -0.5) & (cat.y < 99.5)
    assert inside.sum() == 300
    expected_outside = 300 * (240 * 140 - 200 * 100) / (200 * 100)
    assert (~inside).sum() == round(expected_outside)
    assert cat.x.min() >= -20.5 and cat.x.max() < 219.5
    assert cat.flux.min() >= 1e3 and cat.flux.max() <= 1e6
    x, y, flux = cat
    assert x is cat.x and y is cat.y and flux is cat.flux
    with pytest.raises(ValueError):
        synth.Catalogue(x=[1.0, 2.0], y=[1.0], flux=[1.0, 1.0])  # type: ignore[arg-type]


def test_catalogue_flux_power_law_index() -> None:
    """Cumulative counts follow N(>F) ∝ F^-1.5: the maximum-likelihood Pareto index of the fluxes is 1.5."""
    cat = synth.make_catalogue(width=400, height=400, n_stars=20000, seed=2, flux_min=1e3, flux_max=1e15)
    index = cat.n / np.log(cat.flux / 1e3).sum()
    assert index == pytest.approx(1.5, rel=0.03)
    counts = [(cat.flux > f).sum() for f in (1e3, 1e4)]
    assert counts[0] / counts[1] == pytest.approx(10**1.5, rel=0.1)


def test_catalogue_min_separation() -> None:
    """With min_separation every pair of stars is at least that far apart."""
    cat = synth.make_catalogue(width=128, height=128, n_stars=30, seed=9, margin=10, min_separation=15.0)
    d = np.hypot(cat.x[:, None] - cat.x[None, :], cat.y[:, None] - cat.y[None, :])
    d[np.diag_indices_from(d)] = np.inf
    assert d.min() >= 15.0


# ------------------------------------------------------------------------------------------ rendering


@pytest.mark.parametrize(
    ("x", "y", "ellipticity", "trail", "beta"),
    [
        (40.0, 40.0, 0.0, None, 4.0),
        (40.3, 41.7, 0.0, None, 4.0),
        (40.5, 40.5, 0.0, None, 2.5),
        (39.83, 42.21, 0.35, None, 4.0),
        (40.37, 40.62, 0.0, (9.0, 25.0), 4.0),
    ],
)
def test_rendered_centroid_and_flux_match_truth(
    x: float, y: float, ellipticity: float, trail: tuple[float, float] | None, beta: float
) -> None:
    """An isolated star's pixel centroid is its truth within 0.02 px and its total flux within 1%."""
    scene, truth = synth.render_stars(
        width=81,
        height=81,
        catalogue=one_star(x, y),
        fwhm=3.2,
        beta=beta,
        sky=50.0,
        gradient=(0.2, -0.1),
        ellipticity=ellipticity,
        ellipticity_angle_deg=30.0,
        trail=trail,
    )
    assert scene.dtype == np.float32 and scene.shape == (81, 81)
    assert truth.n == 1 and truth.x[0] == pytest.approx(x) and truth.y[0] == pytest.approx(y)
    stars = scene.astype(np.float64) - truth.sky_map()
    mx, my, _ = centroid(stars, x, y, radius=12)
    assert abs(mx - x) < 0.02 and abs(my - y) < 0.02
    assert stars.sum() == pytest.approx(1e5, rel=0.01)


def test_fwhm_of_rendered_star_matches_truth() -> None:
    """A round star's half-maximum contour has the requested FWHM (radial profile, within 5%)."""
    scene, truth = synth.render_stars(width=65, height=65, catalogue=one_star(32.0, 32.0), fwhm=4.0, sky=0.0)
    row = scene[32].astype(np.float64)
    half = row.max() / 2.0
    above = np.flatnonzero(row >= half)
    left, right = above[0], above[-1]
    # Linear interpolation of the two half-maximum crossings.
    xl = left - 1 + (half - row[left - 1]) / (row[left] - row[left - 1])
    xr = right + (row[right] - half) / (row[right] - row[right + 1])
    assert xr - xl == pytest.approx(truth.fwhm, rel=0.05)


def test_sky_gradient_and_mean() -> None:
    """The sky has the requested mean and slope along x and y."""
    scene, _ = synth.render_stars(
        width=64, height=48, catalogue=one_star(-100.0, -100.0), sky=100.0, gradient=(0.5, -0.25)
    )
    assert scene.mean() == pytest.approx(100.0, rel=1e-5)
    assert float(scene[10, 20] - scene[10, 19]) == pytest.approx(0.5, abs=1e-4)
    assert float(scene[11, 20] - scene[10, 20]) == pytest.approx(-0.25, abs=1e-4)


def test_stars_appear_where_the_transform_says() -> None:
    """With a similarity transform (frame -> reference), stars are found at transform.inverse().apply(ref)."""
    cat = synth.make_catalogue(width=200, height=200, n_stars=25, seed=11, margin=30, min_separation=30.0)
    t = Transform.similarity(dx=7.3, dy=-4.6, rotation_deg=1.5, scale=1.002)
    scene, truth = synth.render_stars(width=200, height=200, catalogue=cat, transform=t, sky=0.0)
    expected = t.inverse().apply(np.column_stack([cat.x, cat.y])[truth.index])
    np.testing.assert_allclose(truth.xy, expected, atol=1e-9)
    np.testing.assert_allclose(t.apply(truth.xy), truth.ref_xy, atol=1e-9)
    checked = 0
    for x, y in truth.xy:
        if 14 <= x <= 185 and 14 <= y <= 185:
            mx, my, _ = centroid(scene, x, y, radius=12)
            assert abs(mx - x) < 0.02 and abs(my - y) < 0.02
            checked += 1
    assert checked >= 5


def test_session_frames_follow_their_transforms() -> None:
    """In noisy session frames, bright isolated stars sit at their truth positions (within 0.1 px);
    frame 0 is the reference and frames after the meridian flip are turned by 180°."""
    s = synth.make_session(
        n_frames=4, width=160, height=160, seed=21, n_stars=20, max_shift=20.0, meridian_flip_at=2,
        min_separation=30.0, flux_min=1e5, flux_max=3e5,
    )  # fmt: skip
    assert s.transforms[0] == Transform.identity()
    assert abs(s.transforms[1].rotation_deg) <= 2.0
    for k in (2, 3):
        assert abs(abs(s.transforms[k].rotation_deg) - 180.0) <= 2.0
    assert s.pier_sides == ["East", "East", "West", "West"]
    frame, truth = s[1]
    dark = s.sensor.dark_current(exposure=s.exposure, temperature=s.temperature)
    # Remove the known bias, sky and dark; divide by the flat so the star profile is the rendered one.
    clean = ((frame - s.sensor.bias_map) * s.sensor.gain - dark) / s.sensor.flat_field - truth.sky
    checked = 0
    for x, y in truth.xy:
        if 14 <= x <= 145 and 14 <= y <= 145:
            mx, my, _ = centroid(clean, x, y, radius=10)
            assert abs(mx - x) < 0.1 and abs(my - y) < 0.1
            checked += 1
    assert checked >= 5
    # Frame 0 is the reference itself: its expected electrons are the reference scene through the sensor.
    ref = s.reference_scene()
    expected0 = s.sensor.expected_light_electrons(ref, exposure=s.exposure, temperature=s.temperature)
    electrons0 = (s.frames[0] - s.sensor.bias_map) * s.sensor.gain
    resid = (electrons0 - expected0) / np.sqrt(expected0 + s.sensor.read_noise**2)
    assert abs(resid.mean()) < 0.02 and resid.std() == pytest.approx(1.0, rel=0.05)


# ------------------------------------------------------------------------------------------ sensor


def test_dark_current_doubles_per_doubling_temp_and_scales_with_exposure() -> None:
    """Mean (dark - bias) over many pixels equals the true dark current: ×2 per +6 °C, linear in exposure."""
    sensor = synth.Sensor(width=192, height=192, seed=5, dark_rate=0.5, gain=1.5, hot_pixels=20)

    def measured(exposure: float, temperature: float, seed: int) -> float:
        frame = sensor.dark(exposure=exposure, temperature=temperature, seed=seed)
        return float(((frame - sensor.bias_map) * sensor.gain).mean(dtype=np.float64))

    base = measured(30.0, -10.0, 1)
    truth = float(sensor.dark_current(exposure=30.0, temperature=-10.0).mean(dtype=np.float64))
    assert truth == pytest.approx(0.5 * 30.0 + 20 * 50.0 * 30.0 / 192**2, rel=0.05)
    assert base == pytest.approx(truth, rel=0.01)
    assert measured(30.0, -4.0, 2) / base == pytest.approx(2.0, rel=0.02)
    assert measured(30.0, 2.0, 3) / base == pytest.approx(4.0, rel=0.02)
    assert measured(60.0, -10.0, 4) / base == pytest.approx(2.0, rel=0.02)


def test_hot_pixels_and_amp_glow() -> None:
    """Hot pixels stand far above the dark level; amp glow lights the top-right corner in proportion to exposure."""
    sensor = synth.Sensor(width=128, height=128, seed=6, hot_pixels=30, hot_rate=50.0, amp_glow=5.0)
    assert sensor.hot_pixel_yx.shape == (30, 2)
    assert len({tuple(p) for p in sensor.hot_pixel_yx}) == 30
    dark = sensor.dark(exposure=60.0, temperature=-10.0, seed=1) - sensor.bias_map
    ys, xs = sensor.hot_pixel_yx[:, 0], sensor.hot_pixel_yx[:, 1]
    assert np.all(dark[ys, xs] > 20 * np.median(dark) + 100)
    corner = sensor.dark_current(exposure=60.0, temperature=-10.0)[:8, -8:].mean()
    far = sensor.dark_current(exposure=60.0, temperature=-10.0)[-8:, :8].mean()
    assert corner > far + 60.0
    glow60 = sensor.dark_current(exposure=60.0, temperature=-10.0) - sensor.dark_rate_map * 60.0
    glow30 = sensor.dark_current(exposure=30.0, temperature=-10.0) - sensor.dark_rate_map * 30.0
    np.testing.assert_allclose(glow60, 2.0 * glow30, rtol=1e-4, atol=1e-3)


def test_bias_frame_statistics() -> None:
    """A bias frame is the bias map plus read noise of the stated rms (in ADU = e- / gain)."""
    sensor = synth.Sensor(width=128, height=128, seed=2, read_noise=6.0, gain=2.0)
    resid = sensor.bias(seed=9) - sensor.bias_map
    assert abs(resid.mean()) < 0.05
    # Rounding to integer ADU adds 1/12 ADU² of variance.
    assert resid.std() == pytest.approx(math.sqrt(3.0**2 + 1 / 12), rel=0.03)
    assert sensor.bias_map.mean() == pytest.approx(500.0, abs=2.0)


def test_light_frame_is_poisson_scene_through_flat_plus_dark() -> None:
    """A uniform scene gives mean (scene × flat + dark) electrons and Poisson + read-noise variance."""
    sensor = synth.Sensor(width=160, height=160, seed=8, gain=2.0, read_noise=4.0, vignetting=0.0, dust=0)
    scene = np.full((160, 160), 1000.0, dtype=np.float32)
    frame = sensor.light(scene, exposure=60.0, temperature=-10.0, seed=1)
    electrons = (frame - sensor.bias_map) * sensor.gain
    expected = scene * sensor.flat_field + sensor.dark_current(exposure=60.0, temperature=-10.0)
    assert electrons.mean() == pytest.approx(float(expected.mean()), rel=0.002)
    resid = electrons - expected
    cold = np.ones(frame.shape, dtype=bool)
    cold[sensor.hot_pixel_yx[:, 0], sensor.hot_pixel_yx[:, 1]] = False
    var_expected = float(expected[cold].mean()) + 4.0**2 + 2.0**2 / 12
    assert resid[cold].var() == pytest.approx(var_expected, rel=0.05)
    assert frame.dtype == np.float32 and np.all(frame == np.round(frame))


def test_saturation_clips_at_full_well() -> None:
    """Pixels brighter than full well read exactly full_well."""
    sensor = synth.Sensor(width=32, height=32, seed=1, full_well=65535)
    frame = sensor.light(np.full((32, 32), 1e6, dtype=np.float32), exposure=1.0, temperature=-10.0, seed=1)
    assert np.all(frame == 65535.0)


def test_flat_field_mean_one_vignetting_and_dust_donuts() -> None:
    """flat_field has mean 1, darker corners, and each dust donut is a local dip of about its depth."""
    sensor = synth.Sensor(width=256, height=256, seed=4, vignetting=0.3, dust=3)
    ff = sensor.flat_field.astype(np.float64)
    assert ff.mean() == pytest.approx(1.0, abs=1e-5)
    assert ff[:10, :10].mean() / ff[123:133, 123:133].mean() == pytest.approx(0.7, abs=0.03)
    assert len(sensor.dust_donuts) == 3
    frame = sensor.flat(level=20000.0, seed=1) - sensor.bias_map
    assert frame.mean() == pytest.approx(20000.0, rel=0.01)
    yy, xx = np.mgrid[0:256, 0:256]
    for d in sensor.dust_donuts:
        r = np.hypot(xx - d.x, yy - d.y)
        ring = (r > d.r_inner + 1) & (r < d.r_outer - 1)
        outside = (r > d.r_outer + 2) & (r < d.r_outer + 6)
        assert 0.03 < d.depth < 0.11
        dip = 1.0 - ff[ring].mean() / ff[outside].mean()
        assert dip == pytest.approx(d.depth, abs=0.02)
        seen = 1.0 - frame[ring].mean() / frame[outside].mean()
        assert seen == pytest.approx(d.depth, abs=0.02)


def test_flat_differs_per_cfa_channel_on_bayer_sensor() -> None:
    """On a Bayer sensor the flat carries the per-channel response: R/G/B means follow qe."""
    sensor = synth.Sensor(width=128, height=128, seed=3, bayer="RGGB", qe=(0.6, 1.0, 0.5), dust=0)
    assert sensor.qe is not None
    ff = sensor.flat_field
    assert ff.mean(dtype=np.float64) == pytest.approx(1.0, abs=1e-5)
    r, g, b = ff[0::2, 0::2].mean(), ff[0::2, 1::2].mean(), ff[1::2, 1::2].mean()
    assert r / g == pytest.approx(0.6, rel=0.02) and b / g == pytest.approx(0.5, rel=0.02)
    assert sensor.qe[0] / sensor.qe[1] == pytest.approx(0.6)


def test_rgb_scene_is_mosaicked_on_bayer_sensor() -> None:
    """A pure-red scene lights only the R pixels of the CFA (G and B see only dark and noise)."""
    sensor = synth.Sensor(width=64, height=64, seed=1, bayer="GRBG", hot_pixels=0, dark_rate=0.0)
    mono = np.full((64, 64), 5000.0, dtype=np.float32)
    frame = sensor.light(synth.to_rgb(mono, colour=(1.0, 0.0, 0.0)), exposure=10.0, temperature=-10.0, seed=2)
    signal = frame - sensor.bias_map
    red = signal[0::2, 1::2]  # GRBG: R at even rows, odd columns
    assert red.mean() > 2000.0
    assert abs(signal[0::2, 0::2].mean()) < 1.0 and abs(signal[1::2, 0::2].mean()) < 1.0
    mono_sensor = synth.Sensor(width=64, height=64, seed=1)
    with pytest.raises(ValueError):
        mono_sensor.light(synth.to_rgb(mono), exposure=10.0, temperature=-10.0, seed=2)


# ------------------------------------------------------------------------------------------ Bayer helpers


@pytest.mark.parametrize(
    ("pattern", "red_rc", "blue_rc"),
    [("RGGB", (0, 0), (1, 1)), ("BGGR", (1, 1), (0, 0)), ("GRBG", (0, 1), (1, 0)), ("GBRG", (1, 0), (0, 1))],
)
def test_mosaic_puts_red_and_blue_where_the_pattern_says(
    pattern: str, red_rc: tuple[int, int], blue_rc: tuple[int, int]
) -> None:
    """R and B land on the (row, col) parities of each pattern; the other two sites of the cell are G."""
    rgb = np.stack([np.full((6, 8), v, dtype=np.float32) for v in (1.0, 2.0, 3.0)])
    cfa = synth.mosaic(rgb, pattern=pattern)
    rows, cols = np.mgrid[0:6, 0:8]
    parity = (rows % 2, cols % 2)
    is_red = (parity[0] == red_rc[0]) & (parity[1] == red_rc[1])
    is_blue = (parity[0] == blue_rc[0]) & (parity[1] == blue_rc[1])
    assert np.all(cfa[is_red] == 1.0) and np.all(cfa[is_blue] == 3.0)
    assert np.all(cfa[~is_red & ~is_blue] == 2.0)
    idx = synth.cfa_channel_index(pattern, (0, 0), (6, 8))
    np.testing.assert_array_equal(idx, cfa - 1)


def test_bayer_offset_shifts_the_pattern() -> None:
    """XBAYROFF=1 turns RGGB into GRBG, YBAYROFF=1 into GBRG, both into BGGR."""
    shape = (4, 6)
    base = {p: synth.cfa_channel_index(p, (0, 0), shape) for p in synth.BAYER_PATTERNS}
    np.testing.assert_array_equal(synth.cfa_channel_index("RGGB", (1, 0), shape), base["GRBG"])
    np.testing.assert_array_equal(synth.cfa_channel_index("RGGB", (0, 1), shape), base["GBRG"])
    np.testing.assert_array_equal(synth.cfa_channel_index("RGGB", (1, 1), shape), base["BGGR"])
    with pytest.raises(ValueError):
        synth.cfa_channel_index("RGBG", (0, 0), shape)


# ------------------------------------------------------------------------------------------ defects


def test_satellite_trail_adds_a_line_and_masks_it() -> None:
    """The trail adds ~amplitude on its centre line, the mask covers it, far pixels and the input are untouched."""
    data = np.full((64, 64), 100.0, dtype=np.float32)
    out, mask = synth.add_satellite_trail(data, x0=0.0, y0=10.0, x1=63.0, y1=50.0, amplitude=1000.0)
    assert np.all(data == 100.0)
    for x in (5, 30, 60):
        y = round(10.0 + 40.0 * x / 63.0)
        assert mask[y, x]
    assert out[10, 0] == pytest.approx(1100.0, rel=1e-4)
    assert np.all(np.abs(out[~mask] - 100.0) < 10.0)
    assert out[60, 5] == pytest.approx(100.0)
    length = math.hypot(63.0, 40.0)
    assert 3 * length <= mask.sum() <= 7 * length


def test_cosmic_rays_are_seeded_and_masked() -> None:
    """Cosmic rays change only masked pixels, by at least a fifth of the amplitude; same seed, same hits."""
    data = np.zeros((64, 64), dtype=np.float32)
    out, mask = synth.add_cosmic_rays(data, n=10, seed=3, amplitude=5000.0)
    out2, mask2 = synth.add_cosmic_rays(data, n=10, seed=3, amplitude=5000.0)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(mask, mask2)
    assert np.all(data == 0.0)
    assert 5 <= mask.sum() <= 30
    assert np.all(out[~mask] == 0.0) and np.all(out[mask] >= 1000.0)


def test_cloudy_dims_and_brightens_sky() -> None:
    """Cloud multiplies the scene by the transmission and adds scattered light."""
    scene = np.array([[0.0, 1000.0]], dtype=np.float32)
    np.testing.assert_allclose(synth.cloudy(scene, transmission=0.3, extra_sky=200.0), [[200.0, 500.0]])


# ------------------------------------------------------------------------------------------ FITS


def test_write_fits_nina_uint16_bzero_and_headers(tmp_path: Path) -> None:
    """N.I.N.A. dialect: uint16 with BZERO 32768, data equal to the clipped, rounded input, N.I.N.A. keywords."""
    data = np.array([[-5.0, 0.0, 123.4, 123.6], [32767.0, 32768.0, 65535.0, 70000.0]], dtype=np.float32)
    path = synth.write_fits(
        tmp_path / "a.fits", data, dialect="nina", kind="light", exposure=120.0, bayer="RGGB", ra=10.684708,
        dec=41.26875, filter="Ha", object="M 31", gain=100, offset=30,
    )  # fmt: skip
    with fits.open(path) as hdul:
        raw = hdul[0]._header  # the header as stored, before astropy's scaling bookkeeping
        assert raw["BITPIX"] == 16 and raw["BZERO"] == 32768
        read = hdul[0].data
        assert read.dtype == np.uint16
        np.testing.assert_array_equal(read, [[0, 0, 123, 124], [32767, 32768, 65535, 65535]])
        h = hdul[0].header
    assert h["IMAGETYP"] == "LIGHT" and h["EXPOSURE"] == 120.0 and h["EXPTIME"] == 120.0
    keys = ("DATE-OBS", "DATE-LOC", "XBINNING", "YBINNING", "EGAIN", "INSTRUME", "CAMERAID", "SET-TEMP", "CCD-TEMP")
    assert all(key in h for key in keys)
    assert h["GAIN"] == 100 and h["OFFSET"] == 30 and h["FILTER"] == "Ha" and h["OBJECT"] == "M 31"
    assert h["BAYERPAT"] == "RGGB" and h["XBAYROFF"] == 0 and h["YBAYROFF"] == 0
    assert h["RA"] == pytest.approx(10.684708) and h["DEC"] == pytest.approx(41.26875)
    assert h["ROWORDER"] == "TOP-DOWN" and h["SWCREATE"].startswith("N.I.N.A.")
    assert Angle(h["OBJCTRA"], unit=u.hourangle).deg == pytest.approx(10.684708, abs=1.0 / 240)
    assert Angle(h["OBJCTDEC"], unit=u.deg).deg == pytest.approx(41.26875, abs=1.0 / 3600)
    assert h["DATE-OBS"].startswith("2024-10-05T21:30:00.") and len(h["DATE-OBS"]) == 27
    assert h["MJD-OBS"] == pytest.approx(Time("2024-10-05T21:30:00", scale="utc").mjd)


def test_write_fits_nina_dark_has_no_object(tmp_path: Path) -> None:
    """N.I.N.A. does not name a target on darks and bias frames, even when one is given."""
    path = synth.write_fits(tmp_path / "d.fits", np.zeros((2, 2)), kind="dark", object="M 31", serial="abc")
    h = fits.getheader(path)
    assert "OBJECT" not in h and h["IMAGETYP"] == "DARK"
    assert h["CAMERAID"].endswith("abc")


@pytest.mark.parametrize(
    ("kind", "nina", "indi_type", "indi_frame"),
    [
        ("light", "LIGHT", "Light Frame", "Light"),
        ("dark", "DARK", "Dark Frame", "Dark"),
        ("flat", "FLAT", "Flat Frame", "Flat"),
        ("bias", "BIAS", "Bias Frame", "Bias"),
        ("darkflat", "DARKFLAT", "Dark Frame", "Dark"),
    ],
)
def test_write_fits_frame_types(tmp_path: Path, kind: str, nina: str, indi_type: str, indi_frame: str) -> None:
    """Each kind is written with the dialect's own frame-type words."""
    data = np.zeros((4, 4), dtype=np.float32)
    h_nina = fits.getheader(synth.write_fits(tmp_path / "n.fits", data, dialect="nina", kind=kind))
    h_indi = fits.getheader(synth.write_fits(tmp_path / "i.fits", data, dialect="indi", kind=kind))
    assert h_nina["IMAGETYP"] == nina
    assert h_indi["IMAGETYP"] == indi_type and h_indi["FRAME"] == indi_frame


def test_write_fits_indi_headers(tmp_path: Path) -> None:
    """INDI dialect: CCD Simulator, EXPTIME, PIXSIZE, sexagesimal OBJCTRA/OBJCTDEC (checked against astropy)."""
    data = np.arange(12, dtype=np.float32).reshape(3, 4) * 1000.0
    path = synth.write_fits(
        tmp_path / "b.fits", data, dialect="indi", kind="dark", exposure=30.0, temperature=-9.8, ra=10.684708,
        dec=-41.26875, binning=2, extra={"FOO": (1, "extra key"), "TELESCOP": None},
    )  # fmt: skip
    with fits.open(path) as hdul:
        np.testing.assert_array_equal(hdul[0].data, np.rint(data).astype(np.uint16))
        h = hdul[0].header
    assert h["INSTRUME"] == "CCD Simulator" and h["EXPTIME"] == 30.0 and h["CCD-TEMP"] == pytest.approx(-9.8)
    assert h["PIXSIZE1"] > 0 and h["PIXSIZE2"] > 0 and h["XBINNING"] == 2 and h["YBINNING"] == 2
    assert h["ROWORDER"] == "TOP-DOWN" and "DATE-OBS" in h and "OBJECT" in h and "GAIN" in h and "OFFSET" in h
    assert Angle(h["OBJCTRA"], unit=u.hourangle).deg == pytest.approx(10.684708, abs=0.01 / 240)
    assert Angle(h["OBJCTDEC"], unit=u.deg).deg == pytest.approx(-41.26875, abs=0.01 / 3600)
    assert h["OBJCTRA"].strip() == "0 42 44.33" and h["OBJCTDEC"] == "-41 16 07.50"
    assert h["FOO"] == 1 and "TELESCOP" not in h


def test_session_and_calibration_set_write_readable_files(tmp_path: Path) -> None:
    """Session.write and write_calibration_set produce FITS files whose pixels are the frames."""
    s = synth.make_session(n_frames=2, width=48, height=32, seed=1, n_stars=5)
    paths = s.write(tmp_path / "lights", dialect="indi")
    assert len(paths) == 2
    np.testing.assert_array_equal(fits.getdata(paths[1]).astype(np.float32), s.frames[1])
    assert fits.getheader(paths[0])["DATE-OBS"] < fits.getheader(paths[1])["DATE-OBS"]
    cal = synth.write_calibration_set(tmp_path / "cal", s.sensor, seed=2, n=2, dark_exposures=(10.0, 60.0))
    assert [len(cal[k]) for k in ("bias", "dark", "flat", "darkflat")] == [2, 4, 2, 2]
    assert fits.getheader(cal["darkflat"][0])["IMAGETYP"] == "DARKFLAT"
