"""Calibration must equal ccdproc on the same masters and remove the synthetic sensor's signatures."""

from __future__ import annotations

import sys
from pathlib import Path

import astropy.units as u
import ccdproc
import numpy as np
import numpy.typing as npt
import pytest
from astropy.io import fits
from astropy.nddata import CCDData

from astrod.core.calibrate import (
    apply,
    bad_pixel_map,
    calibrate,
    cfa_colour_map,
    correct_bad_pixels,
    flat_normalisation,
    optimise_dark_scale,
    parse_section,
    prepare,
    subtract_overscan,
    trim,
)
from astrod.core.combine import combine_arrays, combine_flats
from tests import synth

F32 = npt.NDArray[np.float32]
H, W = 128, 192
DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def readonly(a: F32) -> F32:
    """A read-only copy: any attempt of the code under test to write into its input raises."""
    b = np.array(a)
    b.setflags(write=False)
    return b


def masters(sensor: synth.Sensor, *, dark_exposure: float = 300.0, n: int = 10) -> tuple[F32, F32, F32]:
    """Master bias, dark (bias included) and flat built from ``n`` synthetic frames each with our combine."""
    bias = combine_arrays([sensor.bias(seed=i) for i in range(n)]).image
    dark = combine_arrays([sensor.dark(exposure=dark_exposure, temperature=-10.0, seed=100 + i)
                           for i in range(n)]).image
    flats = np.stack([sensor.flat(level=20000.0, seed=200 + i) for i in range(n)])
    flat = combine_flats(lambda r0, r1: flats[:, r0:r1], n_frames=n, shape=sensor.shape, bias=bias).image
    return readonly(bias), readonly(dark), readonly(flat)


@pytest.fixture(scope="module")
def mono() -> tuple[synth.Sensor, F32, F32, F32]:
    sensor = synth.Sensor(width=W, height=H, seed=11)
    return (sensor, *masters(sensor))


def block_std(image: F32, block: int = 16) -> float:
    """Standard deviation of the map of block means: the large-scale structure of an image."""
    h, w = image.shape
    cut = image[: h // block * block, : w // block * block].astype(np.float64)
    return float(cut.reshape(h // block, block, w // block, block).mean(axis=(1, 3)).std())


def robust_std(values: npt.NDArray[np.floating]) -> float:
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


# ------------------------------------------------------------------------------------------------ sections


def test_parse_section_is_fits_convention() -> None:
    """'[x1:x2,y1:y2]' is 1-based inclusive with x the column; '*' is a whole axis; reversed ranges flip;
    malformed or out-of-frame sections raise."""
    assert parse_section("[4:13,1:520]") == (slice(0, 520), slice(3, 13))
    assert parse_section("[   4:  13,   1: 520]") == (slice(0, 520), slice(3, 13))
    assert parse_section("[*,2:3]") == (slice(1, 3), slice(None))
    a = np.arange(20).reshape(4, 5)
    np.testing.assert_array_equal(a[parse_section("[5:1,1:1]")], a[0:1, ::-1])
    for bad in ("4:13,1:520", "[0:3,1:2]", "[1:3]", "[a:b,1:2]"):
        with pytest.raises(ValueError):
            parse_section(bad)
    with pytest.raises(ValueError, match="exceeds"):
        parse_section("[1:6,1:2]", shape=(4, 5))


def test_overscan_and_trim_match_ccdproc_on_real_frame() -> None:
    """The real SAAO frame, overscan-subtracted (per-row median of BIASSEC) and trimmed to TRIMSEC, equals
    ccdproc.subtract_overscan(overscan_axis=1, median=True) then trim_image within 1e-5 relative."""
    path = DATA / "ccdproc_saao_raw" / "a8280271.fits"
    if not path.is_file():
        pytest.skip(f"real data {path} is absent")
    with fits.open(path) as hdul:
        raw = np.array(hdul[0].data)
        header = hdul[0].header
    biassec, trimsec = str(header["BIASSEC"]), str(header["TRIMSEC"])
    assert raw.shape == (520, 536)
    ref = ccdproc.trim_image(ccdproc.subtract_overscan(CCDData(raw, unit="adu"), fits_section=biassec,
                                                       overscan_axis=1, median=True), fits_section=trimsec)
    ours = calibrate(readonly(raw), overscan=biassec, trimsec=trimsec)
    assert ours.data.shape == (520, 512) and ours.data.dtype == np.float32
    np.testing.assert_allclose(ours.data, ref.data, rtol=1e-5, atol=1e-6)
    assert ours.steps[0].startswith("overscan") and ours.steps[1].startswith("trimmed")
    np.testing.assert_array_equal(trim(subtract_overscan(raw, biassec=biassec), trimsec=trimsec), ours.data)


def test_overscan_along_columns() -> None:
    """An overscan strip of rows gives one level per column (axis chosen from the strip's short side)."""
    rng = np.random.default_rng(0)
    data = rng.normal(100, 1, (40, 30)) + np.arange(30)[None, :]
    ref = ccdproc.subtract_overscan(CCDData(data, unit="adu"), fits_section="[1:30,35:40]", overscan_axis=0,
                                    median=True)
    np.testing.assert_allclose(subtract_overscan(data, biassec="[1:30,35:40]"), ref.data, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------- against ccdproc


def test_scaled_dark_matches_ccd_process(mono: tuple[synth.Sensor, F32, F32, F32]) -> None:
    """calibrate(bias, dark, flat, dark_mode="scaled") equals ccdproc.ccd_process(master_bias,
    dark_frame=dark-bias, master_flat, dark_exposure, data_exposure, dark_scale=True) within 1e-5."""
    sensor, bias, dark, flat = mono
    light = readonly(sensor.light(np.full(sensor.shape, 2000.0, np.float32), exposure=120.0,
                                  temperature=-10.0, seed=1))
    ref = ccdproc.ccd_process(CCDData(light, unit="adu"), master_bias=CCDData(bias, unit="adu"),
                              dark_frame=CCDData(dark - bias, unit="adu"), master_flat=CCDData(flat, unit="adu"),
                              dark_exposure=300.0 * u.s, data_exposure=120.0 * u.s, dark_scale=True)
    ours = calibrate(light, bias=bias, dark=dark, flat=flat, light_exposure=120.0, dark_exposure=300.0,
                     dark_mode="scaled")
    np.testing.assert_allclose(ours.data, ref.data, rtol=1e-5)
    assert ours.dark_scale == pytest.approx(0.4)
    assert ours.steps == ("bias subtracted", "dark current subtracted (scaled by exposure x0.4)",
                          "flat divided (normalised by its mean)")


def test_exact_dark_matches_ccd_process(mono: tuple[synth.Sensor, F32, F32, F32]) -> None:
    """An exact dark (bias included, same exposure) gives what ccd_process gives with the bias and the
    bias-subtracted dark at equal exposures; the prepared path gives the same frame as calibrate."""
    sensor, bias, dark, flat = mono
    light = readonly(sensor.light(np.full(sensor.shape, 2000.0, np.float32), exposure=300.0,
                                  temperature=-10.0, seed=2))
    ref = ccdproc.ccd_process(CCDData(light, unit="adu"), master_bias=CCDData(bias, unit="adu"),
                              dark_frame=CCDData(dark - bias, unit="adu"), master_flat=CCDData(flat, unit="adu"),
                              dark_exposure=300.0 * u.s, data_exposure=300.0 * u.s, dark_scale=True)
    ours = calibrate(light, bias=bias, dark=dark, flat=flat)
    np.testing.assert_allclose(ours.data, ref.data, rtol=1e-5)
    assert ours.dark_scale == 1.0
    prepared = prepare(bias=bias, dark=dark, flat=flat)
    np.testing.assert_allclose(apply(prepared, light.astype(np.uint16)).data, ours.data, rtol=1e-6)


def test_prepared_masters_reused_with_output_buffer(mono: tuple[synth.Sensor, F32, F32, F32]) -> None:
    """One PreparedMasters calibrates many frames (scaled per frame exposure) into a reused buffer with the
    same result as calibrate; an output buffer overlapping the frame in any other way than being it is
    refused."""
    sensor, bias, dark, flat = mono
    prepared = prepare(bias=bias, dark=dark, flat=flat, dark_mode="scaled", dark_exposure=300.0)
    buffer = np.empty(sensor.shape, np.float32)
    for i, exposure in enumerate((60.0, 180.0)):
        light = readonly(sensor.light(np.full(sensor.shape, 900.0, np.float32), exposure=exposure,
                                      temperature=-10.0, seed=40 + i))
        got = apply(prepared, light, light_exposure=exposure, out=buffer)
        assert got.data is buffer
        expected = calibrate(light, bias=bias, dark=dark, flat=flat, light_exposure=exposure,
                             dark_exposure=300.0, dark_mode="scaled")
        np.testing.assert_array_equal(buffer, expected.data)
        assert got.dark_scale == pytest.approx(exposure / 300.0)
    frame = np.ones((sensor.shape[0] + 1, sensor.shape[1]), np.float32)
    with pytest.raises(ValueError, match="share memory"):
        apply(prepared, frame[1:], light_exposure=60.0, out=frame[:-1])


@pytest.mark.parametrize("dark_mode", ["exact", "scaled", "optimised"])
def test_in_place_calibration_equals_a_separate_output(mono: tuple[synth.Sensor, F32, F32, F32],
                                                       dark_mode: str) -> None:
    """Calibrating a float32 frame into itself gives bit for bit what calibrating into another array gives,
    bad-pixel replacement (which reads neighbours) and the optimised dark scale (which reads the frame)
    included."""
    sensor, bias, dark, flat = mono
    bad = np.zeros(sensor.shape, dtype=np.bool_)
    bad[10:12, 20] = True
    bad[40, 30:33] = True
    prepared = prepare(bias=bias, dark=dark, flat=flat, bad_pixels=bad, dark_mode=dark_mode,  # type: ignore[arg-type]
                       dark_exposure=300.0)
    light = sensor.light(np.full(sensor.shape, 900.0, np.float32), exposure=120.0, temperature=-10.0, seed=5)
    separate = apply(prepared, light, light_exposure=120.0)
    scratch = np.array(light, dtype=np.float32)
    in_place = apply(prepared, scratch, light_exposure=120.0, out=scratch)
    assert in_place.data is scratch
    assert in_place.dark_scale == separate.dark_scale
    assert in_place.n_bad_pixels == separate.n_bad_pixels == 5
    np.testing.assert_array_equal(scratch, separate.data)


def test_gain_and_bias_only(mono: tuple[synth.Sensor, F32, F32, F32]) -> None:
    """Bias only then gain equals ccd_process with gain_corrected=False (gain applied last)."""
    sensor, bias, _, _ = mono
    light = readonly(sensor.bias(seed=77) + np.float32(300.0))
    ref = ccdproc.ccd_process(CCDData(light, unit="adu"), master_bias=CCDData(bias, unit="adu"),
                              gain=1.7 * u.electron / u.adu, gain_corrected=False)
    ours = calibrate(light, bias=bias, gain=1.7)
    np.testing.assert_allclose(ours.data, ref.data, rtol=1e-5)
    assert ours.steps[-1] == "multiplied by gain 1.7 e-/ADU"


# ---------------------------------------------------------------------------------------- against truth


@pytest.mark.parametrize(("light_exposure", "dark_mode"), [(300.0, "exact"), (120.0, "scaled")])
def test_dark_current_and_vignetting_are_gone(mono: tuple[synth.Sensor, F32, F32, F32], light_exposure: float,
                                              dark_mode: str) -> None:
    """A flat scene calibrated with masters from 10 frames each keeps no large-scale structure: the map of
    16x16 block means scatters as pure noise would (per-pixel noise / 16, from two independent lights),
    well under twice that, while the uncalibrated frame's structure is over ten times larger."""
    sensor, bias, dark, flat = mono
    scene = np.full(sensor.shape, 1000.0, np.float32)
    lights = [sensor.light(scene, exposure=light_exposure, temperature=-10.0, seed=10 + i) for i in range(2)]
    done = [calibrate(readonly(lt), bias=bias, dark=dark, flat=flat, light_exposure=light_exposure,
                      dark_exposure=300.0, dark_mode=dark_mode).data for lt in lights]  # type: ignore[arg-type]
    pixel_noise = robust_std(done[0] - done[1]) / np.sqrt(2.0)
    bound = 2.0 * pixel_noise / 16.0
    assert block_std(done[0]) < bound
    assert block_std(lights[0] - bias) > 10.0 * bound


def test_dark_optimisation_finds_temperature_scale(mono: tuple[synth.Sensor, F32, F32, F32]) -> None:
    """A light 6 °C warmer than the dark (dark current doubles) is calibrated with k within 3 % of the
    truth, despite stars and sky; the calibrated hot pixels then sit at the sky level."""
    sensor, bias, dark, flat = mono
    catalogue = synth.make_catalogue(width=W, height=H, n_stars=40, seed=3)
    scene, _ = synth.render_stars(width=W, height=H, catalogue=catalogue, sky=300.0)
    light = readonly(sensor.light(scene, exposure=300.0, temperature=-4.0, seed=4))
    truth = sensor.dark_scale(-4.0) / sensor.dark_scale(-10.0)
    k = optimise_dark_scale(light, dark - bias, bias=bias)
    assert k == pytest.approx(truth, rel=0.03)
    result = calibrate(light, bias=bias, dark=dark, flat=flat, dark_mode="optimised")
    assert result.dark_scale == pytest.approx(k)
    assert "optimised" in result.steps[1]
    hot = sensor.hot_pixel_yx
    sky = np.median(result.data)
    assert np.all(np.abs(result.data[hot[:, 0], hot[:, 1]] - sky) < 0.1 * (dark - bias)[hot[:, 0], hot[:, 1]])


def test_bad_pixel_map_finds_hot_pixels_and_bad_columns(mono: tuple[synth.Sensor, F32, F32, F32]) -> None:
    """Every synthetic hot pixel is found; a dead flat column (30 % response), a weak one (65 %, no pixel
    of it cold on its own) and a dark column only 3 noise sigma warm are found whole; nothing else is
    flagged beyond 0.1 % of the pixels (despite vignetting, dust and the bias column pattern)."""
    sensor, bias, dark, flat = mono
    current = np.array(dark - bias)
    bad_flat = np.array(flat)
    bad_flat[:, 50] *= 0.3
    bad_flat[:, 140] *= 0.65
    current[:, 100] += 3.0 * robust_std(current)
    found = bad_pixel_map(master_dark=readonly(current), master_flat=readonly(bad_flat))
    hot = sensor.hot_pixel_yx
    assert found[hot[:, 0], hot[:, 1]].all()
    assert found[:, 50].all() and found[:, 100].all() and found[:, 140].all()
    truth = np.zeros(sensor.shape, dtype=bool)
    truth[hot[:, 0], hot[:, 1]] = True
    truth[:, [50, 100, 140]] = True
    assert np.count_nonzero(found & ~truth) <= 0.001 * found.size
    assert np.count_nonzero(bad_pixel_map(master_flat=flat)) <= 0.001 * found.size


def test_bad_pixels_replaced_by_same_colour_neighbour_median() -> None:
    """A bad pixel becomes the median of its 8 good neighbours (mono) or of the 8 same-colour pixels 2 away
    (CFA); bad neighbours are skipped; the input is not modified."""
    rng = np.random.default_rng(1)
    data = readonly(rng.normal(100, 10, (20, 24)).astype(np.float32))
    bad = np.zeros(data.shape, dtype=bool)
    bad[[5, 5, 12], [7, 8, 0]] = True
    mono_fixed = correct_bad_pixels(data, bad)
    assert mono_fixed[5, 7] == pytest.approx(np.median([data[y, x] for y in (4, 5, 6) for x in (6, 7, 8)
                                                        if (y, x) not in ((5, 7), (5, 8))]))
    assert mono_fixed[12, 0] == pytest.approx(np.median([data[y, x] for y in (11, 12, 13) for x in (0, 1)
                                                         if (y, x) != (12, 0)]))
    np.testing.assert_array_equal(mono_fixed[~bad], data[~bad])
    cfa_fixed = correct_bad_pixels(data, bad, cfa=True)
    assert cfa_fixed[5, 7] == pytest.approx(np.median([data[y, x] for y in (3, 5, 7) for x in (5, 7, 9)
                                                       if (y, x) != (5, 7)]))


def test_hot_pixels_corrected_through_calibrate(mono: tuple[synth.Sensor, F32, F32, F32]) -> None:
    """With the bad pixel map, calibrated hot pixels of a dark-scaled light are replaced: none stands out."""
    sensor, bias, dark, flat = mono
    bad = bad_pixel_map(master_dark=dark - bias, master_flat=flat)
    light = sensor.light(np.full(sensor.shape, 500.0, np.float32), exposure=300.0, temperature=-7.0, seed=5)
    result = calibrate(readonly(light), bias=bias, dark=dark, flat=flat, bad_pixels=bad, light_exposure=300.0,
                       dark_exposure=300.0, dark_mode="scaled")
    hot = sensor.hot_pixel_yx
    noise = robust_std(result.data)
    assert np.all(np.abs(result.data[hot[:, 0], hot[:, 1]] - np.median(result.data)) < 5 * noise)
    assert result.n_bad_pixels == np.count_nonzero(bad)


# ------------------------------------------------------------------------------------------------------ CFA


def test_cfa_flat_normalised_per_colour_removes_flat_colour_cast() -> None:
    """A flat lit by a reddish source, normalised per Bayer colour, gives the same calibrated light as a
    white-lit flat and keeps the light's own colour balance; normalised as mono it changes the colours
    by the flat source's cast. Vignetting is removed within each colour."""
    sensor = synth.Sensor(width=W, height=H, seed=21, bayer="GRBG", bayer_offset=(1, 0), hot_pixels=0)
    bias = combine_arrays([sensor.bias(seed=i) for i in range(6)]).image
    colours = cfa_colour_map(sensor.shape, bayer="GRBG", bayer_offset=(1, 0))
    np.testing.assert_array_equal(colours, sensor.cfa_index)
    white = np.stack([sensor.flat(level=20000.0, seed=300 + i) for i in range(6)])
    cast = np.array([1.6, 1.0, 0.5], dtype=np.float32)[colours]  # reddish flat panel
    red = np.stack([bias + (f - bias) * cast for f in white])
    flat_white = combine_flats(lambda r0, r1: white[:, r0:r1], n_frames=6, shape=sensor.shape, bias=bias,
                               method="median").image
    flat_red = combine_flats(lambda r0, r1: red[:, r0:r1], n_frames=6, shape=sensor.shape, bias=bias,
                             method="median").image
    light = sensor.light(np.full(sensor.shape, 3000.0, np.float32), exposure=10.0, temperature=-10.0, seed=9)
    kw = {"bias": bias, "bayer": "GRBG", "bayer_offset": (1, 0)}
    by_white = calibrate(light, flat=flat_white, **kw).data  # type: ignore[arg-type]
    by_red = calibrate(light, flat=flat_red, **kw).data  # type: ignore[arg-type]
    np.testing.assert_allclose(by_red, by_white, rtol=1e-3)

    def channel_means(img: F32) -> npt.NDArray[np.float64]:
        return np.array([img[colours == c].mean() for c in range(3)])

    raw = channel_means(light - bias)
    np.testing.assert_allclose(channel_means(by_red) / channel_means(by_red)[1], raw / raw[1], rtol=5e-3)
    # normalised as mono, the flat divides out the sensor's colour response and imprints 1/cast instead
    mono_red = calibrate(light, bias=bias, flat=flat_red).data
    np.testing.assert_allclose(channel_means(mono_red) / channel_means(mono_red)[1], [1 / 1.6, 1.0, 1 / 0.5],
                               rtol=5e-3)
    for c in range(3):
        plane = np.where(colours == c, by_red, np.nan)[: H // 16 * 16, : W // 16 * 16]
        blocks = np.nanmean(plane.reshape(H // 16, 16, W // 16, 16), axis=(1, 3))
        assert blocks.std() / blocks.mean() < 0.01
    norm = flat_normalisation(flat_red, bayer="GRBG", bayer_offset=(1, 0))
    for c in range(3):
        assert (flat_red / norm)[colours == c].mean() == pytest.approx(1.0, rel=1e-5)


def test_bad_pixel_map_on_cfa_sensor() -> None:
    """On a Bayer sensor each colour plane is examined alone: the hot pixels are found, the strongly
    coloured flat raises no false cold pixels."""
    sensor = synth.Sensor(width=W, height=H, seed=23, bayer="RGGB", hot_pixels=30)
    bias, dark, flat = masters(sensor, n=6)
    found = bad_pixel_map(master_dark=dark - bias, master_flat=flat, cfa=True)
    hot = sensor.hot_pixel_yx
    assert found[hot[:, 0], hot[:, 1]].all()
    assert np.count_nonzero(found) - len(hot) <= 0.001 * found.size


# -------------------------------------------------------------------------------------------- cosmic rays


def test_cosmic_rays_cleaned_with_astroscrappy(mono: tuple[synth.Sensor, F32, F32, F32]) -> None:
    """Injected single-pixel cosmic rays are detected and replaced near the sky level."""
    pytest.importorskip("astroscrappy")
    sensor, bias, dark, flat = mono
    light = sensor.light(np.full(sensor.shape, 800.0, np.float32), exposure=300.0, temperature=-10.0, seed=6)
    rng = np.random.default_rng(3)
    ys, xs = rng.integers(5, H - 5, 15), rng.integers(5, W - 5, 15)
    light[ys, xs] += 4000.0
    result = calibrate(readonly(light), bias=bias, dark=dark, flat=flat, cosmic=True, cosmic_readnoise=5.0)
    sky, noise = np.median(result.data), robust_std(result.data)
    assert np.all(np.abs(result.data[ys, xs] - sky) < 5 * noise)
    assert result.n_cosmic >= len(set(zip(ys.tolist(), xs.tolist(), strict=True)))
    assert result.steps[-1].startswith("cosmic rays cleaned")


def test_cosmic_without_astroscrappy_raises_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """When astroscrappy cannot be imported, asking for cosmic-ray cleaning says what is missing."""
    monkeypatch.setitem(sys.modules, "astroscrappy", None)
    with pytest.raises(ImportError, match="needs astroscrappy"):
        calibrate(np.ones((10, 10), np.float32), cosmic=True)


# ------------------------------------------------------------------------------------------------- errors


def test_invalid_calibration_requests_raise() -> None:
    """Scaling a bias-including dark without the bias, scaling without exposures, mismatched shapes and
    unknown modes fail with a precise ValueError."""
    frame = np.ones((8, 8), np.float32)
    with pytest.raises(ValueError, match="needs the master bias"):
        calibrate(frame, dark=frame, dark_mode="scaled", light_exposure=1.0, dark_exposure=1.0)
    with pytest.raises(ValueError, match="dark_exposure"):
        calibrate(frame, bias=frame, dark=frame, dark_mode="scaled", light_exposure=1.0)
    with pytest.raises(ValueError, match="both the light and the dark exposure"):
        calibrate(frame, bias=frame, dark=frame, dark_mode="scaled", dark_exposure=1.0)
    with pytest.raises(ValueError, match="differs"):
        calibrate(frame, bias=frame, flat=np.ones((8, 9), np.float32))
    with pytest.raises(ValueError, match="does not match"):
        apply(prepare(bias=frame), np.ones((9, 8), np.float32))
    with pytest.raises(ValueError, match="dark_mode"):
        prepare(bias=frame, dark=frame, dark_mode="guess")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Bayer pattern"):
        cfa_colour_map((4, 4), bayer="RGBX")


def test_prepared_masters_keep_the_bad_pixel_map_as_indices() -> None:
    """The bad-pixel map given to prepare comes back whole from its indices; no map, no mask."""
    rng = np.random.default_rng(9)
    bad = rng.uniform(size=(40, 60)) < 0.01
    bad[0, 0] = bad[39, 59] = True
    prepared = prepare(bad_pixels=bad)
    mask = prepared.bad_pixel_mask()
    assert mask is not None and mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, bad)
    assert prepare(shape=(40, 60)).bad_pixel_mask() is None
