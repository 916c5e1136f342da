"""A session's final products in the ``[output] formats``: each file opens with the library its users have, keeps
the stack's provenance, and gets the mode a new file gets."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from astropy.io import fits
from PIL import Image
from xisf import XISF

from astrod.pipeline.outputs import STACK_NAME, StackProduct, stack_writer, write_session_outputs, write_stack


def _product(planes: int = 3) -> StackProduct:
    rng = np.random.default_rng(1)
    image = rng.normal(500.0, 20.0, (planes, 96, 128) if planes > 1 else (96, 128)).astype(np.float32)
    image[..., 40:44, 60:64] += 3000.0  # a star
    image[..., 0, 0] = np.nan  # no frame covered this pixel
    header = {"CREATOR": ("astrod 9.9", "software"), "ASTRODV": ("9.9", "version"),
              "NCOMBINE": (7, "frames combined"), "STACKMTH": ("winsorized", "combination"),
              "PLANES": ("R,G,B", "colour planes")}
    rows: list[dict[str, object]] = [{"path": "a.jpg", "status": "stacked"}]
    return StackProduct(image=image, header=header, rows=rows, history=("master: none", "astrod: a note"))


def test_every_format_is_written_and_opens(tmp_path: Path) -> None:
    """With all five formats: stack.fits (float32 cube with the cards), stack.tif (16-bit RGB, scaling in its
    description), stack.xisf (float32 with the keywords and HISTORY), stack.png and stack.jpg (8-bit stretched
    pictures), and the frames table; all 0644 under umask 022."""
    product = _product()
    old = os.umask(0o022)
    try:
        written = write_session_outputs(product, tmp_path, formats=("fits", "tiff", "xisf", "png", "jpg"))
    finally:
        os.umask(old)
    assert [p.name for p in written] == [f"{STACK_NAME}.{s}" for s in ("fits", "tif", "xisf", "png", "jpg")]
    with fits.open(tmp_path / "stack.fits") as hdul:
        assert hdul[0].data.dtype.kind == "f" and hdul[0].data.shape == (3, 96, 128)
        assert hdul[0].header["NCOMBINE"] == 7 and "master: none" in str(hdul[0].header["HISTORY"])
    with tifffile.TiffFile(tmp_path / "stack.tif") as tif:
        samples = tif.asarray()
        scaling = json.loads(tif.pages.first.description)
    assert samples.dtype == np.uint16 and samples.shape == (96, 128, 3)
    star = scaling["offset"] + float(samples[41, 61, 0]) * scaling["scale"]
    assert star == pytest.approx(float(product.image[0, 41, 61]), abs=scaling["scale"])
    doc = XISF(str(tmp_path / "stack.xisf"))
    assert doc.read_image(0, data_format="channels_first").shape == (3, 96, 128)
    keywords = doc.get_images_metadata()[0]["FITSKeywords"]
    assert keywords["CREATOR"][0]["value"] == "astrod 9.9" and keywords["STACKMTH"][0]["value"] == "winsorized"
    assert [k["comment"] for k in keywords["HISTORY"]] == ["master: none", "astrod: a note"]
    for name in ("stack.png", "stack.jpg"):
        picture = cv2.imread(str(tmp_path / name), cv2.IMREAD_UNCHANGED)
        assert picture.dtype == np.uint8 and picture.shape == (96, 128, 3)
        assert picture[41, 61].min() > picture[80, 20].max()  # the star is brighter than the sky
    with Image.open(tmp_path / "stack.jpg") as img:
        assert img.format == "JPEG"
    for path in [*written, tmp_path / "frames.csv"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_default_formats_are_fits_and_jpg(tmp_path: Path) -> None:
    """Without a choice a session writes stack.fits and stack.jpg beside the frames table, nothing else."""
    write_session_outputs(_product(planes=1), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.csv", "stack.fits", "stack.jpg"]


def test_stack_writer_by_suffix(tmp_path: Path) -> None:
    """.fits/.fit/.fts, .tif/.tiff and .xisf (any case) name a stack writer; others are refused."""
    assert [stack_writer(Path(f"s{s}")) for s in (".fits", ".FIT", ".fts", ".tif", ".TIFF", ".xisf")] == [
        "fits", "fits", "fits", "tiff", "tiff", "xisf"]
    assert stack_writer(Path("s.png")) is None and stack_writer(Path("s.fits.gz")) is None
    with pytest.raises(ValueError, match=r"no stack writer for '\.jpg'"):
        write_stack(_product(), tmp_path / "s.jpg")
    write_stack(_product(planes=1), tmp_path / "grey.tiff")
    with Image.open(tmp_path / "grey.tiff") as img:
        assert img.mode.startswith("I;16")
