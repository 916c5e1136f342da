"""FITS reading (fast path and astropy fallback) and atomic writing, against astropy's own reading."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from astrod.errors import FrameReadError
from astrod.io.fits import read_fits, read_fits_header, write_fits
from astrod.io.frames import read_frame, read_meta


def astropy_float(path: Path) -> np.ndarray:
    with fits.open(path) as hdul:
        for hdu in hdul:
            if hdu.data is not None:
                return np.asarray(hdu.data, dtype=np.float64).astype(np.float32)
    raise AssertionError("no data")


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "uint32", "float32", "float64"])
def test_every_bitpix_reads_like_astropy(tmp_path: Path, dtype: str) -> None:
    """Every BITPIX, including BZERO-scaled unsigned types, gives astropy's physical values as float32."""
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype) if dtype[0] in "ui" else None
    if info is not None:
        data = rng.integers(info.min, info.max, size=(37, 53), dtype=np.int64, endpoint=True).astype(dtype)
    else:
        data = rng.normal(0, 1e3, size=(37, 53)).astype(dtype)
    path = tmp_path / f"{dtype}.fits"
    fits.PrimaryHDU(data).writeto(path)
    got, header = read_fits(path)
    assert got.dtype == np.float32 and got.shape == (37, 53)
    np.testing.assert_array_equal(got, astropy_float(path))
    assert header["NAXIS1"] == 53


def test_bscale_is_applied(tmp_path: Path) -> None:
    """BSCALE and BZERO both apply: physical = raw * BSCALE + BZERO."""
    raw = np.arange(20, dtype=np.int16).reshape(4, 5)
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BSCALE"] = 0.5
    hdu.header["BZERO"] = 100.0
    path = tmp_path / "scaled.fits"
    hdu.writeto(path)
    got, _ = read_fits(path)
    np.testing.assert_allclose(got, raw * 0.5 + 100.0)


def test_first_image_extension_and_gzip(tmp_path: Path) -> None:
    """An empty primary HDU with the image in the first extension, plain and gzipped, merges both headers."""
    data = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    primary = fits.PrimaryHDU()
    primary.header["IMAGETYP"] = "FLAT"
    ext = fits.ImageHDU(data)
    ext.header["FILTER"] = "V"
    plain = tmp_path / "mef.fits"
    fits.HDUList([primary, ext]).writeto(plain)
    zipped = tmp_path / "mef.fits.gz"
    with plain.open("rb") as src, gzip.open(zipped, "wb") as dst:
        shutil.copyfileobj(src, dst)
    for path in (plain, zipped):
        got, header = read_fits(path)
        np.testing.assert_array_equal(got, data.astype(np.float32))
        assert header["IMAGETYP"] == "FLAT" and header["FILTER"] == "V"
        assert read_meta(path).filter == "V"


def test_real_multi_extension_uint32_gzip_flat(shared_data: Path) -> None:
    """The real NOT/ALFOSC flat (MEF, uint32 with BZERO 2^31, gzip) reads like astropy and classifies as flat."""
    path = shared_data / "eso_midas_not_flat" / "NOT.fits.gz"
    frame = read_frame(path)
    assert frame.data.shape == (2052, 2148)
    np.testing.assert_array_equal(frame.data, astropy_float(path))
    assert frame.meta.kind.value == "flat"


def test_real_overscan_frame_header(shared_data: Path) -> None:
    """The SAAO frame keeps its old-style BIASSEC/TRIMSEC and date-only DATE-OBS with TIME-OBS."""
    frame = read_frame(shared_data / "ccdproc_saao_raw" / "a8280271.fits")
    assert frame.data.shape == (520, 536)
    assert frame.meta.biassec == "[4:13,1:520]" and frame.meta.trimsec == "[17:528,1:520]"
    assert frame.meta.kind.value == "light" and frame.meta.exposure == pytest.approx(150.04)
    np.testing.assert_array_equal(frame.data, astropy_float(shared_data / "ccdproc_saao_raw" / "a8280271.fits"))


def test_truncated_and_corrupt_files_give_one_line_errors(tmp_path: Path) -> None:
    """Truncated data, a truncated header, a non-FITS file and a folder each raise FrameReadError naming the
    file and the cause; the source files are left as they were."""
    good = tmp_path / "good.fits"
    fits.PrimaryHDU(np.ones((100, 100), dtype=np.uint16)).writeto(good)
    blob = good.read_bytes()
    cut = tmp_path / "cut.fits"
    cut.write_bytes(blob[: 2880 + 5000])
    with pytest.raises(FrameReadError, match=r"cut\.fits: truncated: the image needs 20000 bytes"):
        read_fits(cut)
    assert cut.stat().st_size == 2880 + 5000
    header_cut = tmp_path / "headercut.fits"
    header_cut.write_bytes(blob[:400])
    with pytest.raises(FrameReadError, match=r"headercut\.fits: corrupt FITS"):
        read_fits(header_cut)
    text = tmp_path / "text.fits"
    text.write_text("hello")
    with pytest.raises(FrameReadError, match="not a FITS file"):
        read_fits_header(text)
    with pytest.raises(FrameReadError, match="not a regular file"):
        read_frame(tmp_path)
    for err_path in (cut, header_cut, text):
        with pytest.raises(FrameReadError) as info:
            read_frame(err_path)
        assert "\n" not in str(info.value) and str(err_path) in str(info.value)


def test_write_is_atomic_and_round_trips(tmp_path: Path) -> None:
    """write_fits leaves no temporary file, replaces an existing file whole, and round-trips float32."""
    data = np.random.default_rng(1).normal(size=(30, 40)).astype(np.float32)
    path = tmp_path / "out" / "x.fits"
    write_fits(path, data, {"IMAGETYP": "Master Dark", "NCOMBINE": (12, "frames combined")})
    write_fits(path, data * 2, {"IMAGETYP": "Master Dark"})
    got, header = read_fits(path)
    np.testing.assert_array_equal(got, data * 2)
    assert header["IMAGETYP"] == "Master Dark"
    assert [p.name for p in path.parent.iterdir()] == ["x.fits"]
