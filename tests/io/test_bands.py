"""Banded row reading: any row range of a frame equals the same rows read whole by astropy."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from astrod.errors import FrameReadError
from astrod.io.bands import locate_rows, open_rows, read_band, read_rows


def astropy_float(path: Path) -> np.ndarray:
    with fits.open(path) as hdul:
        for hdu in hdul:
            if hdu.data is not None:
                return np.asarray(hdu.data, dtype=np.float64).astype(np.float32)
    raise AssertionError("no data")


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "float32", "float64"])
def test_rows_equal_astropy_for_every_bitpix(tmp_path: Path, dtype: str) -> None:
    """For every BITPIX (BZERO-scaled uint16 included), rows [r0, r1) equal astropy's rows, float32."""
    rng = np.random.default_rng(3)
    if dtype[0] in "ui":
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, size=(41, 29), dtype=np.int64, endpoint=True).astype(dtype)
    else:
        data = rng.normal(0, 1e3, size=(41, 29)).astype(dtype)
    path = tmp_path / f"{dtype}.fits"
    fits.PrimaryHDU(data).writeto(path)
    whole = astropy_float(path)
    for r0, r1 in [(0, 41), (0, 1), (5, 17), (40, 41), (13, 13)]:
        got = read_rows(path, r0, r1)
        assert got.dtype == np.float32 and got.shape == (r1 - r0, 29)
        np.testing.assert_array_equal(got, whole[r0:r1])


def test_image_in_an_extension_and_out_buffer(tmp_path: Path) -> None:
    """A frame in the first image extension is found, and rows land in the caller's ``out`` array."""
    data = (np.arange(60 * 30, dtype=np.uint16).reshape(60, 30) * 7) % 60000
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data)]).writeto(tmp_path / "ext.fits")
    layout = locate_rows(tmp_path / "ext.fits")
    assert layout.shape == (60, 30)
    out = np.full((10, 30), -1.0, dtype=np.float32)
    got = read_rows(tmp_path / "ext.fits", 20, 30, layout=layout, out=out)
    assert got is out
    np.testing.assert_array_equal(out, data[20:30].astype(np.float32))


def test_band_of_several_frames(tmp_path: Path) -> None:
    """read_band stacks the same rows of every frame; frames of another size are refused."""
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 65535, size=(25, 18)).astype(np.uint16) for _ in range(4)]
    layouts = []
    for i, f in enumerate(frames):
        fits.PrimaryHDU(f).writeto(tmp_path / f"f{i}.fits")
        layouts.append(locate_rows(tmp_path / f"f{i}.fits"))
    band = read_band(layouts, 3, 11)
    np.testing.assert_array_equal(band, np.stack([f[3:11] for f in frames]).astype(np.float32))
    fits.PrimaryHDU(np.zeros((25, 19), dtype=np.uint16)).writeto(tmp_path / "other.fits")
    with pytest.raises(ValueError, match="19x25"):
        read_band([*layouts, locate_rows(tmp_path / "other.fits")], 0, 5)


def test_rows_outside_the_frame_are_refused(tmp_path: Path) -> None:
    """Row ranges outside [0, height] or reversed raise ValueError."""
    fits.PrimaryHDU(np.zeros((10, 10), dtype=np.int16)).writeto(tmp_path / "a.fits")
    for r0, r1 in [(-1, 3), (5, 11), (6, 5)]:
        with pytest.raises(ValueError, match="outside"):
            read_rows(tmp_path / "a.fits", r0, r1)


def test_truncated_and_changed_files_raise_one_line_errors(tmp_path: Path) -> None:
    """A truncated file fails on locating; a file changed after locating fails on reading; both name it."""
    path = tmp_path / "t.fits"
    fits.PrimaryHDU(np.ones((100, 100), dtype=np.uint16)).writeto(path)
    layout = locate_rows(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 10000])
    with pytest.raises(FrameReadError, match="truncated") as err:
        locate_rows(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FrameReadError, match="changed"):
        read_rows(path, 0, 10, layout=layout)


def test_not_fits_and_3d_are_refused(tmp_path: Path) -> None:
    """A non-FITS file and a 3-plane image cannot be read in bands."""
    (tmp_path / "x.fits").write_bytes(b"hello" * 1000)
    with pytest.raises(FrameReadError, match="not an uncompressed FITS"):
        locate_rows(tmp_path / "x.fits")
    fits.PrimaryHDU(np.zeros((3, 8, 8), dtype=np.int16)).writeto(tmp_path / "rgb.fits")
    with pytest.raises(FrameReadError, match="2-D"):
        locate_rows(tmp_path / "rgb.fits")


def test_compressed_frames_are_spooled(tmp_path: Path) -> None:
    """A gzipped FITS cannot be mapped; with a spool folder it is decoded once and read like any other."""
    data = np.arange(30 * 20, dtype=np.uint16).reshape(30, 20) * 3
    plain = tmp_path / "p.fits"
    fits.PrimaryHDU(data).writeto(plain)
    packed = tmp_path / "p.fits.gz"
    with plain.open("rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    with pytest.raises(FrameReadError, match="cannot be mapped"):
        open_rows(packed)
    layout = open_rows(packed, spool_dir=tmp_path / "spool")
    assert layout.source == packed and layout.path.parent == tmp_path / "spool"
    np.testing.assert_array_equal(read_rows(layout.path, 4, 9, layout=layout), data[4:9].astype(np.float32))


def test_bscale_and_uint32_bzero_rows(tmp_path: Path) -> None:
    """Scaled data (BSCALE, BZERO) and uint32 (BZERO 2**31, beyond float32's exact integers) read the rows
    exactly as astropy's float64 values rounded to float32."""
    raw = np.arange(-600, 600, dtype=np.int16).reshape(40, 30)
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BSCALE"] = 0.25
    hdu.header["BZERO"] = 1000.5
    hdu.writeto(tmp_path / "scaled.fits")
    big = (np.arange(40 * 30, dtype=np.uint64).reshape(40, 30) * 3_000_001 + 7).astype(np.uint32)
    fits.PrimaryHDU(big).writeto(tmp_path / "u32.fits")
    for name in ("scaled.fits", "u32.fits"):
        whole = astropy_float(tmp_path / name)
        np.testing.assert_array_equal(read_rows(tmp_path / name, 7, 23), whole[7:23])
