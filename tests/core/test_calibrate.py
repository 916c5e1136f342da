"""Calibration must equal ccdproc on the same masters and remove the synthetic sensor's signatures."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import astropy.units as u
import ccdproc
import cv2
import numpy as np
import numpy.typing as npt
import pytest
from astropy.io import fits
from astropy.nddata import CCDData

from astrod.core.calibrate import (
    CalibrationRecipe,
    apply,
    apply_rows,
    bad_pixel_map,
    calibrate,
    cfa_colour_map,
    correct_bad_pixels,
    find_bad_pixels,
    fit_dark_noise,
    flat_normalisation,
    optimise_dark_scale,
    parse_section,
    prepare,
    subtract_overscan,
    trim,
)
from astrod.core.combine import combine_arrays, combine_flats
from astrod.io.fits import read_fits
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


@pytest.mark.parametrize("cfa", [False, True], ids=["mono", "cfa"])
def test_rows_calibrated_again_equal_the_whole_frame_where_their_bad_pixels_see_all_neighbours(
        mono: tuple[synth.Sensor, F32, F32, F32], cfa: bool) -> None:
    """apply_rows with the recipe apply used (optimised dark scale, gain) gives the whole frame's calibrated
    rows bit for bit, in place too, for bad pixels anywhere in the slice whose neighbours are in it; a bad
    pixel on a cut edge whose neighbour is outside is left raw-calibrated; a slice that does not fit fails."""
    sensor, bias, dark, flat = mono
    bad = np.zeros(sensor.shape, dtype=np.bool_)
    bad[[30, 31, 32, 49, 50, 70], [20, 21, 40, 60, 61, 5]] = True
    prepared = prepare(bias=bias, dark=dark, flat=flat, bad_pixels=bad, dark_mode="optimised",
                       dark_exposure=300.0, bayer="RGGB" if cfa else None)
    light = readonly(sensor.light(np.full(sensor.shape, 900.0, np.float32), exposure=120.0, temperature=-10.0,
                                  seed=6))
    whole = apply(prepared, light, light_exposure=120.0, gain=1.5)
    recipe = CalibrationRecipe(prepared=prepared, dark_scale=whole.dark_scale, gain=1.5)
    rows = apply_rows(recipe, light[26:54], first_row=26)
    np.testing.assert_array_equal(rows, whole.data[26:54])
    scratch = np.array(light[28:52], dtype=np.float32)
    assert apply_rows(recipe, scratch, first_row=28, out=scratch) is scratch
    reach = 2 if cfa else 1  # bad pixels within this many rows of a cut edge may miss a neighbour
    np.testing.assert_array_equal(scratch[reach:-reach], whole.data[28 + reach:52 - reach])
    edge = apply_rows(recipe, light[31:40], first_row=31)  # bad pixel (31, 21): its row-30 neighbours are cut
    plain = apply_rows(CalibrationRecipe(prepare(bias=bias, dark=dark, flat=flat, dark_mode="optimised",
                                                 dark_exposure=300.0, bayer="RGGB" if cfa else None),
                                         dark_scale=whole.dark_scale, gain=1.5), light[31:40], first_row=31)
    assert edge[0, 21] == plain[0, 21] != whole.data[31, 21]
    with pytest.raises(ValueError, match="do not fit"):
        apply_rows(recipe, light[120:], first_row=121)


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


# ------------------------------------------------------------------------ bad pixels the dark cannot correct


UNSTEADY_COLUMN, STEADY_COLUMN = 60, 100


@pytest.fixture(scope="module")
def unsteady() -> dict[str, object]:
    """A sensor with 300 steady warm pixels (225-675 e- in 300 s: the dark subtracts them, their shot noise is
    at most ~4x a typical pixel's) whose darks also carry 25 erratic pixels (a fresh N(0, 80 ADU) offset every
    frame), a column whose level flickers from frame to frame (N(0, 1.5 typical sigma) per frame: no pixel of
    it stands out alone) and a column steadily 10 ADU warm (1.6 single-frame sigmas, many master sigmas).
    Returns the sensor, the ten darks, their master with its noise map, the truth, and a function that gives
    lights with the same defects."""
    sensor = synth.Sensor(width=W, height=H, seed=41, hot_pixels=300, hot_rate=1.5)
    rng = np.random.default_rng(77)
    hot = {tuple(p) for p in sensor.hot_pixel_yx.tolist()}
    free = [p for p in zip(*np.unravel_index(rng.permutation(H * W), (H, W)), strict=True)
            if tuple(p) not in hot and 2 <= p[1] < W - 2 and abs(p[1] - UNSTEADY_COLUMN) > 3
            and abs(p[1] - STEADY_COLUMN) > 3]
    erratic = np.array(free[:25], dtype=np.int64)

    def defects(frame: F32, r: np.random.Generator) -> F32:
        out = np.array(frame)
        out[erratic[:, 0], erratic[:, 1]] += r.normal(0.0, 80.0, len(erratic)).astype(np.float32)
        out[:, UNSTEADY_COLUMN] += np.float32(r.normal(0.0, 1.5 * math.sqrt(40.0)))
        out[:, STEADY_COLUMN] += np.float32(10.0)
        return out

    darks = [defects(sensor.dark(exposure=300.0, temperature=-10.0, seed=300 + i), rng) for i in range(10)]
    master = combine_arrays(darks, noise=True)

    def lights(n: int, seed: int) -> list[F32]:
        r = np.random.default_rng(seed)
        sky = np.full(sensor.shape, 100.0, np.float32)
        return [defects(sensor.light(sky, exposure=300.0, temperature=-10.0, seed=seed + i), r) for i in range(n)]

    return {"sensor": sensor, "darks": darks, "master": master, "erratic": erratic, "lights": lights}


def test_unstable_pixels_and_flickering_column_found_steady_warm_pixels_kept(unsteady: dict[str, object]) -> None:
    """With the darks' noise map the erratic pixels and the flickering column are flagged (unstable, column);
    none of the 300 steady warm pixels and not the steadily warm column, which the master-only rule all flags;
    nothing else beyond 0.05 % of the sensor."""
    sensor = unsteady["sensor"]
    master = unsteady["master"]
    erratic = unsteady["erratic"]
    assert isinstance(sensor, synth.Sensor) and isinstance(erratic, np.ndarray)
    assert master.noise is not None  # type: ignore[attr-defined]
    found = find_bad_pixels(master_dark=master.image, dark_noise=master.noise)  # type: ignore[attr-defined]
    assert found.rule == "temporal"
    assert found.mask[erratic[:, 0], erratic[:, 1]].all()
    assert found.mask[:, UNSTEADY_COLUMN].all() and found.n_columns == 1
    warm = sensor.hot_pixel_yx
    assert not found.mask[warm[:, 0], warm[:, 1]].any()
    assert not found.mask[:, STEADY_COLUMN].any()
    truth = np.zeros(sensor.shape, dtype=bool)
    truth[erratic[:, 0], erratic[:, 1]] = True
    truth[:, UNSTEADY_COLUMN] = True
    assert np.count_nonzero(found.mask & ~truth) <= 0.0005 * truth.size
    assert found.counts["unstable"] >= len(erratic) and found.counts["column"] == H
    assert found.counts["hot"] == found.counts["saturated"] == found.counts["stuck"] == 0
    old = bad_pixel_map(master_dark=master.image)  # type: ignore[attr-defined]
    assert old[warm[:, 0], warm[:, 1]].all() and old[:, STEADY_COLUMN].all()


def test_flagged_pixels_are_the_ones_wrong_after_dark_subtraction(unsteady: dict[str, object]) -> None:
    """Calibrated with the master dark, lights show what the map claims: every flagged pixel outside the
    flagged column (the erratic ones) scatters over 3 times its own expected noise over the lights, and the
    flagged column's mean level scatters from light to light 5 times as much as a typical column's (3 times the
    most scattered other); the
    steady warm pixels the map no longer flags sit within their own noise (shot noise of sky and dark
    included): their mean residual over 10 lights is below 4 standard errors for all of them and their
    scatter near 1, and the steadily warm column scatters like the others."""
    sensor = unsteady["sensor"]
    master = unsteady["master"]
    make_lights = unsteady["lights"]
    assert isinstance(sensor, synth.Sensor) and callable(make_lights)
    found = find_bad_pixels(master_dark=master.image, dark_noise=master.noise)  # type: ignore[attr-defined]
    lights = make_lights(10, 900)
    residuals = []
    for light in lights:
        cal = calibrate(readonly(light), dark=master.image).data  # type: ignore[attr-defined]
        residuals.append(cal - cv2.medianBlur(cal, 5))
    res = np.stack(residuals)
    electrons = sensor.expected_light_electrons(np.full(sensor.shape, 100.0, np.float32), exposure=300.0,
                                                temperature=-10.0)
    expected = np.sqrt(electrons / sensor.gain**2 + (sensor.read_noise / sensor.gain) ** 2 * 1.1)
    z = res / expected
    scatter = z.std(axis=0, ddof=1)
    columns = found.mask.all(axis=0)
    assert np.flatnonzero(columns).tolist() == [UNSTEADY_COLUMN]
    assert (scatter[found.mask & ~columns[np.newaxis, :]] > 3.0).all()
    column_scatter = z.mean(axis=1).std(axis=0, ddof=1)
    others = np.delete(column_scatter, [0, 1, UNSTEADY_COLUMN, W - 2, W - 1])  # edges: the median filter's border
    assert column_scatter[UNSTEADY_COLUMN] > max(5.0 * float(np.median(others)), 3.0 * float(others.max()))
    assert column_scatter[STEADY_COLUMN] < 2.0 * float(np.median(others))
    warm = sensor.hot_pixel_yx
    zw = z[:, warm[:, 0], warm[:, 1]]
    assert (np.abs(zw.mean(axis=0)) * math.sqrt(len(lights)) < 4.0).all()
    assert 0.8 < float(np.sqrt(np.mean(zw**2))) < 1.25


def test_saturated_stuck_and_too_hot_pixels() -> None:
    """A pixel at the ADC ceiling in every dark is saturated; one stuck at 0 (no noise, far below its
    neighbours) is stuck; one whose steady dark current makes it over 5 times as noisy as a typical pixel is
    hot; a dead pixel in the flat is cold; each reason is counted once and the map is their union."""
    sensor = synth.Sensor(width=W, height=H, seed=43, hot_pixels=60, hot_rate=1.5)
    darks = [np.array(sensor.dark(exposure=300.0, temperature=-10.0, seed=i)) for i in range(10)]
    rng = np.random.default_rng(3)
    for d in darks:
        d[10, 20] = 65535.0
        d[30, 40] = 0.0
        d[50, 60] = 500.0 + rng.poisson(6000.0)  # steady: only its shot noise (~77 ADU vs ~6 typical)
    master = combine_arrays(darks, noise=True)
    flat = np.ones(sensor.shape, np.float32)
    flat[70, 80] = 0.1
    found = find_bad_pixels(master_dark=master.image, master_flat=flat, dark_noise=master.noise, saturation=65535.0)
    assert found.mask[10, 20] and found.mask[30, 40] and found.mask[50, 60] and found.mask[70, 80]
    assert found.counts["saturated"] == 1 and found.counts["stuck"] == 1 and found.counts["cold"] == 1
    assert found.counts["hot"] == 2  # the 6000 e- pixel and the saturated one
    assert found.counts["unstable"] == 0 and found.n_bad == 4
    assert found.thresholds["saturated_level"] == pytest.approx(0.8 * 65535.0)
    no_ceiling = find_bad_pixels(master_dark=master.image, dark_noise=master.noise)
    assert no_ceiling.mask[10, 20] and no_ceiling.counts["saturated"] == 0  # still far too hot to use


def test_temporal_rule_on_a_cfa_sensor() -> None:
    """On a Bayer sensor with a noise map, the (very hot: 7500-22500 e-) hot pixels are flagged as too hot to
    use, the strongly coloured flat raises no false cold pixels, and nothing else is flagged beyond 0.1 %."""
    sensor = synth.Sensor(width=W, height=H, seed=23, bayer="RGGB", hot_pixels=30)
    bias = combine_arrays([sensor.bias(seed=i) for i in range(8)]).image
    darks = [sensor.dark(exposure=300.0, temperature=-10.0, seed=100 + i) for i in range(8)]
    master = combine_arrays(darks, noise=True)
    _, _, flat = masters(sensor, n=6)
    found = find_bad_pixels(master_dark=master.image - bias, master_flat=flat, dark_noise=master.noise, cfa=True)
    hot = sensor.hot_pixel_yx
    assert found.rule == "temporal" and found.mask[hot[:, 0], hot[:, 1]].all()
    assert found.counts["hot"] >= len(hot) and found.counts["cold"] == 0 and found.n_columns == 0
    assert found.n_bad - len(hot) <= 0.001 * found.mask.size


def test_noise_model_learns_the_shot_noise_slope() -> None:
    """The fitted variance per ADU of dark excess is 1/gain within 15 % (gain 1 and 2 e-/ADU); with too few
    warm pixels the header gain is used, and without one unit gain is assumed (and said so)."""
    for gain in (1.0, 2.0):
        sensor = synth.Sensor(width=W, height=H, seed=45, hot_pixels=200, hot_rate=3.0, gain=gain)
        master = combine_arrays([sensor.dark(exposure=300.0, temperature=-10.0, seed=i) for i in range(10)],
                                noise=True)
        excess = master.image - np.median(master.image)
        model = fit_dark_noise(excess, master.noise)  # type: ignore[arg-type]
        assert model.slope_from == "fit" and model.n_warm >= 150
        assert model.slope == pytest.approx(1.0 / gain, rel=0.15)
    few = np.zeros((50, 50), np.float32)
    noise = np.full((50, 50), 5.0, np.float32)
    assert fit_dark_noise(few, noise, gain=0.5).slope_from == "gain"
    assert fit_dark_noise(few, noise, gain=0.5).slope == pytest.approx(2.0)
    assumed = fit_dark_noise(few, noise)
    assert assumed.slope_from == "assumed" and assumed.slope == 1.0 and assumed.floor == pytest.approx(25.0)


def test_without_a_noise_map_the_rule_is_master_only_and_says_so(mono: tuple[synth.Sensor, F32, F32, F32]) -> None:
    """Without a noise map the conservative master-only rule runs (and BadPixels.rule says so): the same map
    bad_pixel_map gives; with a flat only the rule is 'flat-only'; a noise map without a dark is refused."""
    sensor, bias, dark, flat = mono
    found = find_bad_pixels(master_dark=dark - bias, master_flat=flat)
    assert found.rule == "master-only" and found.model is None
    np.testing.assert_array_equal(found.mask, bad_pixel_map(master_dark=dark - bias, master_flat=flat))
    assert found.counts["hot"] >= len(sensor.hot_pixel_yx) and "hot_sigma" in found.thresholds
    assert find_bad_pixels(master_flat=flat).rule == "flat-only"
    with pytest.raises(ValueError, match="dark_noise"):
        find_bad_pixels(master_flat=flat, dark_noise=np.ones(flat.shape, np.float32))


# --------------------------------------------------------------------------------------- real ST-10 darks


def st10_darks() -> npt.NDArray[np.float32]:
    folder = DATA / "oscaar_tres1_sbig_st10" / "darks"
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is absent")
    return np.stack([read_fits(p)[0] for p in sorted(folder.glob("*.fit"))])


def held_out_z(held: npt.NDArray[np.float32], master: F32, own_sigma: F32) -> F32:
    """(frame - master - 5x5 local median) over each pixel's own expected noise, for held-out darks."""
    res = np.stack([(f - master) - cv2.medianBlur(np.ascontiguousarray(f - master), 5) for f in held])
    res -= np.median(res, axis=(1, 2))[:, None, None]
    return np.asarray(res / own_sigma, dtype=np.float32)


def test_real_st10_darks_flag_few_pixels_and_they_are_the_unstable_ones() -> None:
    """On the ten real SBIG ST-10 darks: the map flags well under 0.1 % of the sensor (the master-only rule
    flags over 1 %, including steady columns) and no column. Split test: the map made from the 5 even darks
    predicts the pixels that stay wrong in the 5 odd ones (median |residual| over 3 of the pixel's own
    expected sigmas): it flags at least 90 % of them, while the pixels only the master-only rule flags are
    wrong at a rate below 0.1 %, like never-flagged pixels."""
    darks = st10_darks()
    full = combine_arrays(list(darks), noise=True)
    found = find_bad_pixels(master_dark=full.image, dark_noise=full.noise, saturation=65535.0)
    old = bad_pixel_map(master_dark=full.image)
    assert found.rule == "temporal" and found.n_bad < 0.001 * found.mask.size
    assert old.mean() > 0.01 and found.counts["column"] == 0
    assert found.counts["unstable"] > 0 and found.counts["saturated"] > 0
    even = combine_arrays(list(darks[0::2]), noise=True)
    assert even.noise is not None
    split = find_bad_pixels(master_dark=even.image, dark_noise=even.noise, saturation=65535.0)
    split_old = bad_pixel_map(master_dark=even.image)
    assert split.model is not None and split.n_bad < 0.002 * split.mask.size
    excess = even.image - np.median(even.image)
    own = np.sqrt(split.model.variance(excess) * (1 + 1 / 5))
    wrong = np.median(np.abs(held_out_z(darks[1::2], even.image, own)), axis=0) > 3.0
    assert wrong.sum() > 50  # there is something to predict
    assert (wrong & split.mask).sum() >= 0.9 * wrong.sum()
    assert wrong[split_old & ~split.mask].mean() < 0.001
    assert wrong[~split_old & ~split.mask].mean() < 0.0001
