"""read_frame with a reused pixel buffer: FITS decodes into it, raw frames are copied into it, and a buffer
that does not fit is ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from astropy.io import fits

from astrod.io.frames import is_frame_name, read_frame
from tests.io.test_raw import write_dng


def test_fits_frame_decodes_into_buffer(tmp_path: Path) -> None:
    """A FITS frame's pixels land in the supplied buffer (same object), with the values a fresh read gives
    and the written uint16 values as float32."""
    data = np.random.default_rng(5).integers(0, 65535, size=(41, 67), dtype=np.uint16)
    path = tmp_path / "light.fits"
    fits.PrimaryHDU(data).writeto(path)
    out = np.full(data.shape, np.nan, dtype=np.float32)
    frame = read_frame(path, out=out)
    assert frame.data is out
    np.testing.assert_array_equal(out, data.astype(np.float32))
    np.testing.assert_array_equal(read_frame(path).data, out)
    other = read_frame(path, out=np.zeros((41, 66), np.float32))
    np.testing.assert_array_equal(other.data, out)
    assert not np.shares_memory(other.data, out)


def test_raw_frame_is_copied_into_fitting_buffer(tmp_path: Path) -> None:
    """A raw frame's visible mosaic is copied into a buffer of its size (values as read_raw gives them) and
    a buffer of another size is left alone."""
    mosaic = np.random.default_rng(7).integers(200, 4000, size=(48, 64), dtype=np.uint16)
    path = tmp_path / "tiny.dng"
    write_dng(path, mosaic, active_area=(2, 2, 46, 62), black=128, white=4000, iso=1600, exposure=(300, 1),
              date="2024:03:09 22:15:07", subsec="5", utc_offset="+02:00", serial="TM1-0042")
    expected = mosaic[2:46, 2:62].astype(np.float32)  # libraw's visible area for this ActiveArea
    out = np.full(expected.shape, np.nan, dtype=np.float32)
    frame = read_frame(path, out=out)
    assert frame.data is out
    np.testing.assert_array_equal(out, expected)
    small = np.zeros((10, 10), np.float32)
    other = read_frame(path, out=small)
    assert not np.shares_memory(other.data, small) and not small.any()
    np.testing.assert_array_equal(other.data, expected)


def test_picture_names_are_frame_names() -> None:
    """TIFF, PNG, JPEG, XISF and tile-compressed FITS are frame names (any case); other pictures are not."""
    for name in ("a.tif", "a.TIFF", "a.png", "a.jpg", "a.JPEG", "a.xisf", "a.fits.fz", "a.fz"):
        assert is_frame_name(Path(name)), name
    for name in ("a.gif", "a.bmp", "a.webp", "a.txt"):
        assert not is_frame_name(Path(name)), name


def test_tiff_frame_is_copied_into_fitting_buffer(tmp_path: Path) -> None:
    """A 16-bit TIFF's pixels land in a reused float32 buffer of the same size, as FITS and raw ones do."""
    data = (np.random.default_rng(2).random((40, 50)) * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "f.tif", data)
    buffer = np.empty(40 * 50, dtype=np.float32)
    frame = read_frame(tmp_path / "f.tif", out=buffer)
    assert np.shares_memory(frame.data, buffer)
    np.testing.assert_array_equal(frame.data, data)
