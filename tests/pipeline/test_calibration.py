"""Tests of astrod.pipeline.calibration: the library calibrator handed to LiveStack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from astrod.errors import FrameRejected
from astrod.io.frames import read_frame
from astrod.library.masters import MasterLibrary
from astrod.model import Frame, FrameKind, FrameMeta
from astrod.pipeline.calibration import library_calibrator
from astrod.pipeline.live import Calibrated
from tests import synth
from tests.pipeline.conftest import SIZE, CalibratedNight


def test_library_calibrator_calibrates_and_names_its_masters(calibrated_night: CalibratedNight) -> None:
    """A light comes back calibrated (sky at the true 100 e⁻ per pixel, the bias gone, vignetting flattened)
    with the names of the library's masters that did it; the input frame is untouched."""
    frame = read_frame(calibrated_night.lights[1])
    raw = frame.data.copy()
    with MasterLibrary.open(calibrated_night.root / "lib") as library:
        out = library_calibrator(library)(frame)
        names = {p.name for p in (calibrated_night.root / "lib").rglob("*.fits")}
    assert isinstance(out, Calibrated)
    assert set(out.masters) <= names and any(m.startswith("flat") for m in out.masters)
    assert out.notes == ()
    assert np.array_equal(frame.data, raw)
    sky = calibrated_night.session.reference_scene(sky=False) < 0.5
    centre, corner = out.frame.data[150:230, 150:230], out.frame.data[:60, :60]
    assert float(np.median(out.frame.data[sky])) == pytest.approx(100.0, abs=2.0)
    assert float(np.median(corner)) == pytest.approx(float(np.median(centre)), abs=3.0)


def test_missing_master_is_a_note_or_a_rejection(calibrated_night: CalibratedNight, tmp_path: Path) -> None:
    """A light in a filter without flats is calibrated without a flat and says so, or is rejected when
    complete calibration is required."""
    sensor = synth.Sensor(width=SIZE, height=SIZE, seed=7)
    data = sensor.light(np.full((SIZE, SIZE), 100.0, dtype=np.float32), exposure=60.0, temperature=-10.0, seed=4)
    frame = read_frame(synth.write_fits(tmp_path / "ha.fits", data, filter="Ha"))
    with MasterLibrary.open(calibrated_night.root / "lib") as library:
        out = library_calibrator(library)(frame)
        assert isinstance(out, Calibrated)
        assert any("flat" in note for note in out.notes)
        with pytest.raises(FrameRejected, match="missing masters"):
            library_calibrator(library, require_complete=True)(frame)


def test_colour_frames_pass_uncalibrated_with_the_reason(calibrated_night: CalibratedNight) -> None:
    """A debayered (3, H, W) frame goes through the library calibrator untouched, with the note that no colour
    master exists (so `astrod stack --library` stacks colour pictures instead of rejecting them)."""
    data = np.full((3, 32, 48), 40.0, dtype=np.float32)
    frame = Frame(meta=FrameMeta(kind=FrameKind.LIGHT, width=48, height=32, planes=3, source_format="jpeg"),
                  data=data)
    with MasterLibrary.open(calibrated_night.root / "lib") as library:
        out = library_calibrator(library)(frame)
    assert isinstance(out, Calibrated) and out.frame is frame and out.masters == ()
    assert len(out.notes) == 1 and "colour (RGB) frame" in out.notes[0]
