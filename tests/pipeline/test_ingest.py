"""Ingest of pictures: colour pictures are lights (not stacks), a picture without an exposure time is a light with
its exposure unknown, and the folder rules classify them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from astropy.io import fits
from PIL import Image
from xisf import XISF

from astrod.io.headers import PathRule
from astrod.pipeline.ingest import Ignored, Light, ReadOptions, Rejected, ingest

NOW = datetime(2025, 3, 2, 12, 0, tzinfo=UTC)
NO_RULES = ReadOptions.of({}, ())


def _jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 48, 3), 40, dtype=np.uint8)).save(path)
    return path


def test_colour_jpeg_in_a_lights_folder_is_a_light_without_exposure(tmp_path: Path) -> None:
    """A colour JPEG under Lights/ with no EXIF: a light of 3 planes, exposure unknown, dated by its file time."""
    path = _jpeg(tmp_path / "M42" / "Lights" / "f1.jpg")
    result = ingest(path, mtime=path.stat().st_mtime, now=NOW, options=NO_RULES)
    assert isinstance(result, Light)
    assert result.meta.planes == 3 and result.meta.exposure is None and result.meta.source_format == "jpeg"
    assert result.meta.date_obs is not None and any(n.startswith("date: none") for n in result.meta.notes)


def test_folder_rules_route_pictures(tmp_path: Path) -> None:
    """Without a Lights/ folder a picture's type is unknown (rejected with why) until a folder rule names it."""
    path = _jpeg(tmp_path / "seestar" / "M42" / "f1.jpg")
    unknown = ingest(path, mtime=0.0, now=NOW, options=NO_RULES)
    assert isinstance(unknown, Rejected) and "unknown frame type" in unknown.reason
    rules = ReadOptions.of({}, (PathRule("*/seestar/*", {"kind": "light", "object": "M 42"}),))
    routed = ingest(path, mtime=0.0, now=NOW, options=rules)
    assert isinstance(routed, Light) and routed.meta.object == "M 42"


def test_colour_fits_is_still_a_stack_and_xisf_needs_an_exposure(tmp_path: Path) -> None:
    """A 3-plane FITS light is someone's stack (ignored); an XISF light without EXPTIME is rejected as a FITS one
    is: XISF carries FITS keywords."""
    fits.PrimaryHDU(np.zeros((3, 16, 16), dtype=np.float32),
                    header=fits.Header({"IMAGETYP": "Light", "EXPTIME": 10.0})).writeto(tmp_path / "cube.fits")
    assert isinstance(ingest(tmp_path / "cube.fits", mtime=0.0, now=NOW, options=NO_RULES), Ignored)
    XISF.write(str(tmp_path / "l.xisf"), np.zeros((16, 16, 1), dtype=np.float32),
               image_metadata={"FITSKeywords": {"IMAGETYP": [{"value": "'Light'", "comment": ""}]}})
    result = ingest(tmp_path / "l.xisf", mtime=0.0, now=NOW, options=NO_RULES)
    assert isinstance(result, Rejected) and "no exposure time" in result.reason
