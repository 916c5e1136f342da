"""End to end: masters from `astrod library build`, frames through `astrod calibrate`; the dark current and the
vignetting are gone, and the result equals ccdproc.ccd_process with the same masters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ccdproc
import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData

from astrod.cli import main
from astrod.io.frames import read_frame
from astrod.io.index import file_digest
from astrod.library.build import build_library
from astrod.library.calibration import calibrate_frame, output_name
from astrod.library.masters import MasterLibrary
from astrod.library.match import MatchRules
from astrod.model import Frame
from tests import synth
from tests.library.observatory import CAMERA_A, Group, build_options, write_group

SKY = 2000.0  # electrons per pixel in every light (gain 1 e-/ADU)
W, H = 192, 144


@dataclass(frozen=True)
class Night:
    library: Path
    lights: dict[float, Path]
    outputs: Path
    config: Path
    sensor: synth.Sensor
    light_digests: dict[float, str]


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Night:
    """Calibration frames and lights at 300 s and 120 s from one sensor with vignetting, dust, hot pixels and amp
    glow; the library built and the lights calibrated through the CLI."""
    root = tmp_path_factory.mktemp("night")
    sensor = synth.Sensor(width=W, height=H, seed=41, hot_pixels=40, amp_glow=2.0, vignetting=0.3, dust=2)
    src = root / "calibration"
    for i, group in enumerate([Group(CAMERA_A, "bias", 9), Group(CAMERA_A, "dark", 9, exposure=300.0),
                               Group(CAMERA_A, "dark", 9, exposure=60.0), Group(CAMERA_A, "darkflat", 9, exposure=1.0),
                               Group(CAMERA_A, "flat", 9, exposure=1.0, filter="L")]):
        write_group(src / group.kind, sensor, group, seed=50 + i, dialect="nina")
    scene = np.full((H, W), SKY, dtype=np.float32)
    lights = {}
    for exposure in (300.0, 120.0):
        data = sensor.light(scene, exposure=exposure, temperature=-10.0, seed=int(exposure))
        lights[exposure] = synth.write_fits(root / "lights" / f"light_{exposure:g}s.fits", data, kind="light",
                                            exposure=exposure, camera=CAMERA_A, filter="L",
                                            date_obs=Group(CAMERA_A, "light", 1).night)
    config = root / "astrod.toml"
    config.write_text("[site]\nlatitude = 51.5\nlongitude = 0.0\n", encoding="utf-8")
    library = root / "library"
    assert main(["library", "build", "--source", str(src), "--library", str(library), "--config", str(config)]) == 0
    digests = {e: file_digest(p) for e, p in lights.items()}
    outputs = root / "calibrated"
    assert main(["calibrate", str(root / "lights"), "-o", str(outputs), "--library", str(library),
                 "--config", str(config)]) == 0
    return Night(library=library, lights=lights, outputs=outputs, config=config, sensor=sensor,
                 light_digests=digests)


def block_means(image: np.ndarray, size: int = 16) -> np.ndarray:
    h, w = image.shape
    return image[: h // size * size, : w // size * size].reshape(h // size, size, w // size, size).mean(axis=(1, 3))


@pytest.mark.parametrize("exposure", [300.0, 120.0])
def test_dark_current_and_vignetting_are_gone(night: Night, exposure: float) -> None:
    """After calibration (exact dark at 300 s, 60 s dark scaled ×2 at 120 s) the frame is the uniform sky: its
    16×16 block means scatter no more than noise allows, while the uncalibrated frame shows vignetting, dust and
    amp glow far above that; no hot pixel stands out."""
    calibrated = fits.getdata(night.outputs / output_name(night.lights[exposure])).astype(np.float64)
    raw = fits.getdata(night.lights[exposure]).astype(np.float64) - night.sensor.bias_map
    pixel_noise = np.sqrt(SKY + night.sensor.read_noise**2)
    expected_block_scatter = pixel_noise / 16
    residual_blocks = block_means(calibrated - SKY)
    assert abs(residual_blocks.mean()) < 3 * expected_block_scatter
    assert residual_blocks.std() < 2.0 * expected_block_scatter
    assert block_means(raw).std() > 50 * expected_block_scatter
    assert np.abs(calibrated - SKY).max() < 6 * pixel_noise


@pytest.mark.parametrize("exposure", [300.0, 120.0])
def test_equals_ccdproc_with_the_same_masters(night: Night, exposure: float) -> None:
    """The calibrated frame equals ccdproc.ccd_process with the masters the library chose (exact dark with its
    bias; or bias plus the dark's current scaled by exposure) within 1e-5 relative, away from bad pixels (which
    astrod replaces and ccdproc does not)."""
    with MasterLibrary.open(night.library, rules=MatchRules(longitude=0.0)) as library:
        frame = read_frame(night.lights[exposure])
        match = library.match(frame.meta)
        assert match.ok and match.flat is not None and match.dark is not None and match.badpixels is not None
        flat = CCDData(library.load(match.flat.record).astype(np.float64), unit="adu")
        dark = library.load(match.dark.record).astype(np.float64)
        bad = library.load_mask(match.badpixels.record)
        light = CCDData(frame.data.astype(np.float64), unit="adu")
        if exposure == 300.0:
            assert match.dark_mode == "exact"
            ref = ccdproc.ccd_process(light, dark_frame=CCDData(dark, unit="adu"), master_flat=flat,
                                      dark_exposure=300 * u.s, data_exposure=300 * u.s)
        else:
            assert match.dark_mode == "scaled" and match.dark.record.key.exposure == 60.0 and match.bias is not None
            bias = library.load(match.bias.record).astype(np.float64)
            ref = ccdproc.ccd_process(light, master_bias=CCDData(bias, unit="adu"),
                                      dark_frame=CCDData(dark - bias, unit="adu"), master_flat=flat,
                                      dark_exposure=60 * u.s, data_exposure=120 * u.s, dark_scale=True)
    got = fits.getdata(night.outputs / output_name(night.lights[exposure]))
    np.testing.assert_allclose(got[~bad], np.asarray(ref.data)[~bad], rtol=1e-5)
    assert bad.sum() > 0


def test_outputs_carry_provenance_and_inputs_are_untouched(night: Night) -> None:
    """The output names the masters it used and its steps; the input file is untouched."""
    header = fits.getheader(night.outputs / output_name(night.lights[120.0]))
    assert header["CALDARK"].startswith("dark_g100_o50_bin1x1_192x144_m10C_60s_")
    assert header["DARKMODE"] == "scaled" and header["DARKSCAL"] == 2.0
    assert header["CALFLAT"].startswith("flat_") and header["CALBPM"].startswith("badpixels_")
    history = "".join(str(h) for h in header["HISTORY"])  # long lines continue on the next card
    assert "dark current subtracted (scaled by exposure x2)" in history and "dark scaled 60 s -> 120 s" in history
    exact = fits.getheader(night.outputs / output_name(night.lights[300.0]))
    assert exact["DARKMODE"] == "exact" and "CALBIAS" not in exact, "an exact dark includes the bias"
    assert header["CALBIAS"].startswith("bias_"), "a scaled dark needs the bias"
    assert {e: file_digest(p) for e, p in night.lights.items()} == night.light_digests


def test_calibrate_frame_leaves_its_input_alone(night: Night) -> None:
    """calibrate_frame (the daemon's entry point) does not modify the frame's array and reuses cached masters."""
    with MasterLibrary.open(night.library, rules=MatchRules(longitude=0.0)) as library:
        frame = read_frame(night.lights[300.0])
        before = frame.data.copy()
        first = calibrate_frame(library, frame)
        # the exact dark includes the bias: read are the dark, the flat and the bad-pixel map (pixels, then mask)
        assert library.cache_stats().misses == 4
        second = calibrate_frame(library, Frame(meta=frame.meta, data=frame.data.copy(), path=frame.path))
        assert library.cache_stats().misses == 4, "the second frame re-read a master"
        np.testing.assert_array_equal(frame.data, before)
        np.testing.assert_array_equal(first.data, second.data)


def test_missing_masters_give_exit_1_and_are_recorded(night: Night, tmp_path: Path) -> None:
    """A light whose gain has no dark is still calibrated with what exists, says what is missing, and the
    command exits 1."""
    data = night.sensor.light(np.full((H, W), SKY, dtype=np.float32), exposure=300.0, temperature=-10.0, seed=3)
    path = synth.write_fits(tmp_path / "gain0.fits", data, kind="light", exposure=300.0, gain=0, camera=CAMERA_A,
                            filter="L", date_obs=Group(CAMERA_A, "light", 1).night)
    code = main(["calibrate", str(path), "-o", str(tmp_path / "out"), "--library", str(night.library),
                 "--config", str(night.config)])
    assert code == 1
    header = fits.getheader(tmp_path / "out" / "gain0_cal.fits")
    assert header["CALMISS"].startswith("darkless: no dark for ZWO ASI2600MM Pro gain 0")
    assert "CALFLAT" in header and "CALDARK" not in header


def test_colour_sensor_flat_is_applied_per_cfa_colour(tmp_path: Path) -> None:
    """For a Bayer sensor (flat normalised per CFA colour, bad pixels from same-colour neighbours) each colour
    plane of a calibrated uniform scene is flat: its 8×8 block means scatter as the noise allows, while the raw
    plane shows the vignetting."""
    sensor = synth.Sensor(width=128, height=96, seed=43, bayer="RGGB", vignetting=0.3, amp_glow=1.0)
    src = tmp_path / "calibration"
    for i, group in enumerate([Group(CAMERA_A, "bias", 7), Group(CAMERA_A, "dark", 7, exposure=300.0),
                               Group(CAMERA_A, "flat", 7, exposure=1.0, filter="L")]):
        write_group(src / group.kind, sensor, group, seed=60 + i, dialect="nina")
    build_library(tmp_path / "lib", [src], options=build_options())
    scene = synth.to_rgb(np.full((96, 128), SKY, dtype=np.float32))
    data = sensor.light(scene, exposure=300.0, temperature=-10.0, seed=9)
    path = synth.write_fits(tmp_path / "light.fits", data, kind="light", exposure=300.0, camera=CAMERA_A, filter="L",
                            bayer="RGGB", date_obs=Group(CAMERA_A, "light", 1).night)
    with MasterLibrary.open(tmp_path / "lib", rules=MatchRules(longitude=0.0)) as library:
        frame = read_frame(path)
        assert frame.meta.bayer == "RGGB"
        result = calibrate_frame(library, frame)
    assert any("per CFA colour" in step for step in result.steps)
    for y0, x0 in ((0, 0), (0, 1), (1, 1)):  # R, G, B
        plane = result.data[y0::2, x0::2].astype(np.float64)
        raw = data[y0::2, x0::2].astype(np.float64)
        noise = np.std(plane[:, 1:] - plane[:, :-1]) / np.sqrt(2)
        assert block_means(plane, 8).std() < 2.0 * noise / 8
        assert block_means(raw, 8).std() > 10 * noise / 8


@pytest.mark.parametrize("exposure", [300.0, 120.0])
def test_masters_mapped_from_scratch_calibrate_identically(night: Night, exposure: float,
                                                           tmp_path: Path) -> None:
    """A library with a scratch folder (the daemon's) keeps its prepared masters in mapped scratch files and
    caches no master pixels, and calibrates bit for bit as the in-memory library does, in place too."""
    scratch = tmp_path / "prepared"
    with MasterLibrary.open(night.library, rules=MatchRules(longitude=0.0)) as library, \
            MasterLibrary.open(night.library, rules=MatchRules(longitude=0.0), scratch=scratch) as mapped:
        frame = read_frame(night.lights[exposure])
        expected = calibrate_frame(library, frame).data
        got = calibrate_frame(mapped, frame).data
        np.testing.assert_array_equal(got, expected)
        scratch_copy = frame.data.copy()
        in_place = calibrate_frame(mapped, Frame(meta=frame.meta, data=scratch_copy, path=frame.path),
                                   out=scratch_copy)
        assert in_place.data is scratch_copy
        np.testing.assert_array_equal(scratch_copy, expected)
        assert mapped.cache_stats().misses == 0, "the mapped library cached master pixels"
        sets = list(scratch.iterdir())
        assert len(sets) == 1 and {p.name for p in sets[0].iterdir()} <= {"offset.f32", "dark_current.f32",
                                                                         "inverse_flat.f32", "prepared.npz"}


def test_a_later_library_maps_the_prepared_set_without_reading_the_masters(night: Night, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The set a library left in its scratch folder is whole: another library (a later `astrod stack`) given the
    same folder calibrates bit for bit without opening a master file."""
    scratch = tmp_path / "prepared"
    frame = read_frame(night.lights[300.0])
    with MasterLibrary.open(night.library, rules=MatchRules(longitude=0.0), scratch=scratch) as first:
        expected = calibrate_frame(first, frame).data

    def no_master(*args: object, **kwargs: object) -> None:
        raise AssertionError("a master file was read")

    monkeypatch.setattr(MasterLibrary, "_read", no_master)
    monkeypatch.setattr(MasterLibrary, "load", no_master)
    with MasterLibrary.open(night.library, rules=MatchRules(longitude=0.0), scratch=scratch,
                            scratch_shared=True) as later:
        np.testing.assert_array_equal(calibrate_frame(later, frame).data, expected)
