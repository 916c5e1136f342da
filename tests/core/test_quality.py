"""Per-frame quality figures against synthetic truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from astrod.core.quality import FrameQuality, measure_quality
from astrod.core.stars import StarList, detect_stars, estimate_background
from tests import synth

W = H = 512
EXPOSURE, TEMP = 60.0, -10.0


def _frame(*, seed: int, trail: tuple[float, float] | None = None, fwhm: float = 3.0,
           n_stars: int = 150) -> tuple[np.ndarray, synth.StarField, synth.Sensor]:
    cat = synth.make_catalogue(width=W, height=H, n_stars=n_stars, seed=seed, min_separation=15.0,
                               flux_min=1e4, flux_max=1e6)
    scene, truth = synth.render_stars(width=W, height=H, catalogue=cat, fwhm=fwhm, beta=3.5, sky=100.0,
                                      trail=trail)
    sensor = synth.Sensor(width=W, height=H, seed=seed + 1, vignetting=0.0, dust=0, hot_pixels=20)
    return sensor.light(scene, exposure=EXPOSURE, temperature=TEMP, seed=seed + 2), truth, sensor


def test_trailed_frame_has_clearly_larger_eccentricity() -> None:
    """Stars trailed by 8 px give a median eccentricity far above that of round stars (which is small)."""
    round_data, _, _ = _frame(seed=1)
    trailed_data, _, _ = _frame(seed=1, trail=(8.0, 30.0))
    round_q = measure_quality(round_data, detect_stars(round_data))
    trailed_q = measure_quality(trailed_data, detect_stars(trailed_data))
    assert round_q.eccentricity < 0.35
    assert trailed_q.eccentricity > 0.75
    assert trailed_q.eccentricity > round_q.eccentricity + 0.4


def test_background_noise_fwhm_and_count_match_truth() -> None:
    """Background level and noise are within a few % of the sensor truth, the FWHM within 10 % of the
    PSF's, and the star count is the number of stars in the frame (within 10 %)."""
    data, truth, sensor = _frame(seed=2, fwhm=3.5)
    expected_e = sensor.expected_light_electrons(np.full((H, W), 100.0, dtype=np.float32), exposure=EXPOSURE,
                                                 temperature=TEMP)
    truth_level = float(np.median(sensor.bias_map + expected_e / sensor.gain))
    # Shot noise of sky and dark, read noise, and the bias pattern (fixed, but noise within one frame).
    truth_noise = math.sqrt(float(np.median(expected_e)) / sensor.gain**2 + (sensor.read_noise / sensor.gain) ** 2
                            + float(np.var(sensor.bias_map)))
    stars = detect_stars(data)
    q = measure_quality(data, stars)
    assert q.background == pytest.approx(truth_level, rel=0.01)
    assert q.noise == pytest.approx(truth_noise, rel=0.05)
    assert q.fwhm == pytest.approx(3.5, rel=0.10)
    assert q.star_count == pytest.approx(truth.n, rel=0.10)
    assert q.hfr > 0.5 * q.fwhm  # a Moffat's half-flux radius exceeds its half width at half maximum


def test_given_background_is_used_and_bayer_frames_work() -> None:
    """A background passed in is reported as is; a Bayer frame gets its superpixel background."""
    data, _, _ = _frame(seed=3)
    stars = detect_stars(data)
    bg = estimate_background(data)
    q = measure_quality(data, stars, bg)
    assert (q.background, q.noise) == (bg.level, bg.noise)

    cfa = synth.Sensor(width=W, height=H, seed=4, bayer="RGGB", vignetting=0.0, dust=0)
    scene = synth.to_rgb(np.full((H, W), 400.0, dtype=np.float32), colour=(1.0, 0.8, 0.6))
    frame = cfa.light(scene, exposure=EXPOSURE, temperature=TEMP, seed=5)
    qc = measure_quality(frame, detect_stars(frame, bayer="RGGB"), bayer="RGGB")
    assert qc.star_count == 0
    assert qc.background == pytest.approx(float(frame.mean()), rel=0.01)


def test_no_stars_gives_nan_shapes_and_a_zero_count() -> None:
    """Without stars the count is 0 and the shape figures are NaN, the background still measured."""
    data = np.random.default_rng(6).normal(300.0, 7.0, (H, W)).astype(np.float32)
    q = measure_quality(data, StarList.empty(width=W, height=H))
    assert q.star_count == 0
    assert math.isnan(q.fwhm) and math.isnan(q.hfr) and math.isnan(q.eccentricity)
    assert q.background == pytest.approx(300.0, abs=0.3)
    assert q.noise == pytest.approx(7.0, rel=0.03)


def test_as_dict_and_frozen() -> None:
    """FrameQuality is an immutable value that turns into a plain dict."""
    q = FrameQuality(star_count=3, fwhm=2.0, hfr=1.5, eccentricity=0.2, background=100.0, noise=5.0,
                     fwhm_err=0.1, eccentricity_err=0.05, shape_stars=3)
    assert q.as_dict() == {"star_count": 3, "fwhm": 2.0, "hfr": 1.5, "eccentricity": 0.2,
                           "background": 100.0, "noise": 5.0, "fwhm_err": 0.1, "eccentricity_err": 0.05,
                           "shape_stars": 3}
    with pytest.raises(AttributeError):
        q.fwhm = 3.0  # type: ignore[misc]
