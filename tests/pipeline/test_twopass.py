"""Tests of astrod.pipeline.twopass through `stack_files`: the two-pass stack against the live stack with its
frame cache, which it stands in for in ``astrod stack``."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from astrod.errors import AstrodError
from astrod.library.masters import MasterLibrary
from astrod.model import Transform
from astrod.pipeline.calibration import library_calibrator
from astrod.pipeline.live import PipelineSettings
from astrod.pipeline.oneshot import stack_files
from astrod.pipeline.twopass import DeferredFrame, DeferredFrames
from tests import synth
from tests.pipeline.conftest import CalibratedNight

SETTINGS = PipelineSettings(final_rejection="winsorized", weighting="snr", reference_repick_after=0)


def _session_files(tmp_path: Path, *, bayer: str | None = None, seed: int = 71) -> list[Path]:
    session = synth.make_session(n_frames=5, width=320, height=300, seed=seed, max_shift=12.0, n_stars=150,
                                 max_rotation_deg=1.5)
    return [synth.write_fits(tmp_path / "in" / f"f{i}.fits", frame, bayer=bayer)
            for i, frame in enumerate(session.frames)]


@pytest.mark.parametrize("bayer", [None, "RGGB"], ids=["mono", "cfa"])
def test_two_pass_stack_is_the_cached_stack_bit_for_bit(tmp_path: Path, bayer: str | None) -> None:
    """With the same frames and settings, the two-pass stack (bands of 64 rows, so several bands and each
    frame read again per band) equals the live stack's cached re-integration exactly, image and counts, and
    the frames table says the same."""
    paths = _session_files(tmp_path, bayer=bayer)
    settings = PipelineSettings(final_rejection="winsorized", weighting="snr", reference_repick_after=0,
                                final_memory_bytes=5 * 3 * 320 * 4 * 64)
    two = stack_files(paths, settings)
    live = stack_files(paths, settings, two_pass=False)
    assert two.image.shape == live.image.shape == ((3, 300, 320) if bayer else (300, 320))
    np.testing.assert_array_equal(two.image, live.image)
    np.testing.assert_array_equal(np.asarray(two.count), np.asarray(live.count))
    assert two.header["NCOMBINE"][0] == live.header["NCOMBINE"][0] == 5
    assert two.header["STACKMTH"][0] == "winsorized"
    assert [r["status"] for r in two.rows] == [r["status"] for r in live.rows] == ["stacked"] * 5
    assert [r["weight"] for r in two.rows] == [r["weight"] for r in live.rows]


def test_a_re_picked_reference_composes_the_transforms_instead_of_warping_twice(tmp_path: Path) -> None:
    """After a reference re-pick the two-pass stack interpolates each frame once: it agrees with the cached
    stack (which re-warps its frames) to within the second interpolation's blur, and is sharper: its brightest
    star's peak is at least the cached stack's."""
    session = synth.make_session(n_frames=5, width=320, height=300, seed=72, max_shift=12.0, n_stars=150,
                                 fwhm=2.5)
    defocused, _ = synth.render_stars(width=320, height=300, catalogue=session.catalogue, fwhm=5.0,
                                      beta=session.beta, sky=session.sky)
    first = session.sensor.light(defocused, exposure=60.0, temperature=-10.0, seed=5)
    paths = [synth.write_fits(tmp_path / "in" / "f0.fits", first)]
    paths += [synth.write_fits(tmp_path / "in" / f"f{i}.fits", session.frames[i]) for i in range(1, 5)]
    settings = PipelineSettings(final_rejection="sigma", reference_repick_after=4)
    two = stack_files(paths, settings)
    live = stack_files(paths, settings, two_pass=False)
    assert two.header["REFFRAME"][0] == live.header["REFFRAME"][0] != "f0.fits"
    both = np.isfinite(two.image) & np.isfinite(live.image)
    assert both.mean() > 0.9
    sky = float(np.median(live.image[both]))
    diff = np.abs(two.image[both] - live.image[both])
    assert float(np.median(diff)) < 0.05 * sky
    peak = np.unravel_index(np.nanargmax(np.where(both, live.image, -np.inf)), live.image.shape)
    window = (slice(peak[0] - 3, peak[0] + 4), slice(peak[1] - 3, peak[1] + 4))
    assert np.nanmax(two.image[window]) >= np.nanmax(live.image[window])


def test_a_frame_changed_between_the_passes_fails_the_stack_naming_it(tmp_path: Path) -> None:
    """Pass two reads each frame again: a frame rewritten after pass one read it is not integrated silently;
    the stack fails with the file's name."""
    paths = _session_files(tmp_path, seed=73)
    changed: list[Path] = []

    def rewrite_third(result: object) -> None:
        if not changed and getattr(result, "path", None) == paths[-1]:
            st = paths[2].stat()
            os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
            changed.append(paths[2])

    with pytest.raises(AstrodError, match=r"f2\.fits: changed or replaced"):
        stack_files(paths, SETTINGS, on_result=rewrite_third)
    assert changed == [paths[2]]


def test_regrid_composes_transforms_norms_and_weights() -> None:
    """Moving the frames onto a new grid composes each transform with the grid's, the normalisation as
    (v·scale + offset)·k + c, and scales the weights; the band height is a whole number of sub-bands."""
    frames = DeferredFrames(lambda path: np.zeros((2, 2), np.float32), sub_band_rows=128)
    t = Transform.similarity(dx=3.0, dy=-2.0, rotation_deg=1.0)
    frames.add(DeferredFrame(path=Path("a.fits"), transform=t, offset=5.0, scale=1.1, weight=0.8))
    to_new = Transform.similarity(dx=-1.5, dy=4.0, rotation_deg=-0.3)
    frames.regrid(to_new, norm=(2.0, 0.9), weight_scale=1.25)
    (f,) = frames.frames
    xy = np.array([[10.0, 20.0], [100.0, 50.0]])
    np.testing.assert_allclose(f.transform.apply(xy), to_new.apply(t.apply(xy)), atol=1e-9)
    assert f.offset == pytest.approx(5.0 * 0.9 + 2.0) and f.scale == pytest.approx(1.1 * 0.9)
    assert f.weight == pytest.approx(1.0)
    assert frames.band_rows((4176, 6248), 352 * 2**20) == 4176  # one frame: the whole height
    frames.frames = frames.frames * 12
    assert frames.band_rows((4176, 6248), 352 * 2**20) == 1152
    assert frames.band_rows((4176, 6248), 1) == 128


def test_rows_read_and_calibrated_again_match_the_whole_frames(calibrated_night: CalibratedNight) -> None:
    """With a master library (bias, dark, flat, bad pixels) the second pass reads and calibrates only the rows
    each band needs, in bands of 32 rows (many cut edges, bad pixels near them included): the stack equals the
    cached one to float rounding (1e-6 of the sky), with the same coverage and counts."""
    lights = calibrated_night.lights[:6]
    library = MasterLibrary.open(calibrated_night.root / "lib")
    calibrator = library_calibrator(library, in_place=True)
    size = np.asarray(calibrated_night.session.frames[0]).shape
    settings = PipelineSettings(final_rejection="winsorized", reference_repick_after=0,
                                final_memory_bytes=6 * size[1] * 4 * 32)
    two = stack_files(lights, settings, calibrator=calibrator)
    live = stack_files(lights, settings, calibrator=calibrator, two_pass=False)
    library.close()
    assert two.header["NCOMBINE"][0] == live.header["NCOMBINE"][0] == 6
    np.testing.assert_array_equal(np.isnan(two.image), np.isnan(live.image))
    sky = float(np.nanmedian(live.image))
    np.testing.assert_allclose(two.image, live.image, rtol=0, atol=1e-6 * sky, equal_nan=True)
    np.testing.assert_array_equal(np.asarray(two.count), np.asarray(live.count))


def test_frames_that_cannot_be_read_by_rows_are_read_whole_in_pass_two(tmp_path: Path) -> None:
    """Gzipped FITS frames cannot be read a band of rows at a time: pass two reads them whole and keeps the
    rows it needs, and the stack is the cached one's."""
    paths = []
    for path in _session_files(tmp_path, seed=74):
        packed = path.with_name(path.name + ".gz")
        packed.write_bytes(gzip.compress(path.read_bytes()))
        paths.append(packed)
    settings = PipelineSettings(final_rejection="sigma", reference_repick_after=0,
                                final_memory_bytes=5 * 320 * 4 * 64)
    two = stack_files(paths, settings)
    live = stack_files(paths, settings, two_pass=False)
    assert two.header["NCOMBINE"][0] == 5
    np.testing.assert_array_equal(two.image, live.image)
