"""FITS reading (fast path and astropy fallback) and atomic writing, against astropy's own reading."""

from __future__ import annotations

import gzip
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from astrod.core import convert
from astrod.errors import FrameReadError
from astrod.io import fits as fitsio
from astrod.io.fits import read_fits, read_fits_header, read_fits_rows, write_fits
from astrod.io.frames import read_frame, read_frame_rows, read_meta


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


@pytest.mark.parametrize("dtype", ["uint16", "int32", "float32"])
def test_rows_read_alone_are_the_whole_image_s(tmp_path: Path, dtype: str) -> None:
    """read_fits_rows (and read_frame_rows) give rows of what read_fits gives, from a primary or extension
    image, into a buffer given; rows outside the image, a 3-D image and non-FITS frames are one-line errors."""
    rng = np.random.default_rng(8)
    data = (rng.integers(0, 60000, size=(41, 29)) if dtype[0] in "ui" else rng.normal(0, 1e3, (41, 29))).astype(dtype)
    primary, extension = tmp_path / "p.fits", tmp_path / "e.fits"
    fits.PrimaryHDU(data).writeto(primary)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data)]).writeto(extension)
    for path in (primary, extension):
        whole, _ = read_fits(path)
        np.testing.assert_array_equal(read_fits_rows(path, 7, 30), whole[7:30])
        out = np.empty(2 * 29, dtype=np.float32)
        got = read_frame_rows(path, 39, 41, out=out)
        assert np.shares_memory(got, out)
        np.testing.assert_array_equal(got, whole[39:41])
    with pytest.raises(FrameReadError, match=r"p\.fits: rows \[40, 42\) are outside the image's 41 rows"):
        read_fits_rows(primary, 40, 42)
    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.zeros((3, 4, 5), np.float32)).writeto(cube)
    with pytest.raises(FrameReadError, match="2-D FITS"):
        read_fits_rows(cube, 0, 2)
    with pytest.raises(FrameReadError, match="only from FITS"):
        read_frame_rows(tmp_path / "x.tif", 0, 2)


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


def write_image(path: Path, data: np.ndarray) -> Path:
    """``data`` as the primary image; astropy stores unsigned types as signed with BZERO (uint16: 32768)."""
    fits.PrimaryHDU(data).writeto(path)
    return path


def seeded(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(3)
    if dtype[0] in "ui":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=np.int64, endpoint=True).astype(dtype)
    return rng.normal(0, 1e3, size=shape).astype(dtype)


INTO_CASES = [("uint8", (37, 53)), ("uint16", (37, 53)), ("int32", (37, 53)), ("uint32", (37, 53)),
              ("float32", (37, 53)), ("float64", (37, 53)), ("uint16", (3, 37, 53))]


@pytest.mark.parametrize(("dtype", "shape"), INTO_CASES)
def test_read_into_buffer_is_bit_identical_and_in_place(tmp_path: Path, dtype: str, shape: tuple[int, ...]) -> None:
    """Decoding into a supplied buffer gives exactly a fresh read's values (and astropy's) for BITPIX 8, 16
    with BZERO 32768, 32 (plain and BZERO 2**31), -32, -64 and a 3-D cube; the result is the buffer itself
    when its shape matches, and a view of it when only the element count does."""
    path = write_image(tmp_path / "x.fits", seeded(dtype, shape))
    fresh, _ = read_fits(path)
    out = np.full(shape, np.nan, dtype=np.float32)
    got, header = read_fits(path, out=out)
    assert got is out
    np.testing.assert_array_equal(out, fresh)
    np.testing.assert_array_equal(out, astropy_float(path))
    assert header["NAXIS1"] == shape[-1]
    flat = np.full(math.prod(shape), np.nan, dtype=np.float32)
    view, _ = read_fits(path, out=flat)
    assert view.shape == shape and np.shares_memory(view, flat)
    np.testing.assert_array_equal(view, fresh)


@pytest.mark.parametrize("bad", ["shape", "dtype", "strided", "readonly"])
def test_unfit_buffer_is_ignored(tmp_path: Path, bad: str) -> None:
    """A buffer of the wrong size or dtype, non-contiguous or read-only is left untouched and a fresh array
    with the right values is returned instead."""
    data = seeded("uint16", (37, 53))
    path = write_image(tmp_path / "x.fits", data)
    buffers: dict[str, np.ndarray] = {"shape": np.zeros((37, 52), np.float32), "dtype": np.zeros((37, 53), np.float64),
           "strided": np.zeros((37, 106), np.float32)[:, ::2], "readonly": np.zeros((37, 53), np.float32)}
    out = buffers[bad]
    out.flags.writeable = bad != "readonly"
    got, _ = read_fits(path, out=out)  # type: ignore[arg-type]
    assert not np.shares_memory(got, out) and got.dtype == np.float32
    np.testing.assert_array_equal(got, data.astype(np.float32))
    assert not out.any()


def test_gzip_reads_into_buffer(tmp_path: Path) -> None:
    """A gzipped file (astropy path) fills a fitting buffer with the same values as a fresh read."""
    data = seeded("uint16", (21, 34))
    plain = write_image(tmp_path / "x.fits", data)
    zipped = tmp_path / "x.fits.gz"
    with plain.open("rb") as src, gzip.open(zipped, "wb") as dst:
        shutil.copyfileobj(src, dst)
    out = np.full(data.shape, np.nan, dtype=np.float32)
    got, _ = read_fits(zipped, out=out)
    assert got is out
    np.testing.assert_array_equal(out, data.astype(np.float32))


@pytest.mark.parametrize(("dtype", "chunk_bytes"), [("uint16", 2 * 71), ("uint16", 2 * 71 + 1), ("int32", 4 * 100),
                                                    ("uint32", 4 * 29), ("float64", 3), ("uint8", 1000)])
@pytest.mark.parametrize("readers", ["one", "several", "no-pread"])
def test_multi_chunk_read_is_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str,
                                       chunk_bytes: int, readers: str) -> None:
    """Reading in many small chunks (boundaries mid-row, chunk sizes not a whole number of pixels, even
    smaller than one pixel), by one thread, by several, or by one without pread (as on Windows), gives
    astropy's values, fresh and into a buffer."""
    path = write_image(tmp_path / "x.fits", seeded(dtype, (2, 37, 53)))
    monkeypatch.setattr(fitsio, "_CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(fitsio, "_MAX_READERS", 1 if readers == "one" else 3)
    if readers == "no-pread" and hasattr(os, "preadv"):
        monkeypatch.delattr(os, "preadv")
    expected = astropy_float(path)
    fresh, _ = read_fits(path)
    np.testing.assert_array_equal(fresh, expected)
    out = np.full(expected.shape, np.nan, dtype=np.float32)
    assert read_fits(path, out=out)[0] is out
    np.testing.assert_array_equal(out, expected)


def test_truncated_pixels_into_buffer_give_the_same_error(tmp_path: Path) -> None:
    """A file cut in the middle of its pixel data gives the one-line truncation error with a buffer too."""
    good = write_image(tmp_path / "good.fits", np.ones((100, 100), dtype=np.uint16))
    cut = tmp_path / "cut.fits"
    cut.write_bytes(good.read_bytes()[: 2880 + 5000])
    with pytest.raises(FrameReadError, match=r"cut\.fits: truncated: the image needs 20000 bytes, the file has 5000$"):
        read_fits(cut, out=np.empty((100, 100), np.float32))


@pytest.mark.parametrize("readers", [1, 3])
def test_file_shrinking_while_read_gives_truncation_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          readers: int) -> None:
    """A file cut short after the size check (the writer truncates it mid-read) ends in the one-line
    truncation error naming the bytes now there, not in garbage pixels, a hang or a crash."""
    path = write_image(tmp_path / "shrink.fits", seeded("uint16", (100, 100)))
    monkeypatch.setattr(fitsio, "_CHUNK_BYTES", 4000)
    monkeypatch.setattr(fitsio, "_MAX_READERS", readers)
    real = convert.int16be_to_float32
    calls: list[int] = []

    def cut_at_first_chunk(buf: np.ndarray, **kwargs: Any) -> np.ndarray:
        if not calls:
            with path.open("r+b") as handle:
                handle.truncate(2880 + 6000)
        calls.append(buf.size)
        return real(buf, **kwargs)

    monkeypatch.setattr(fitsio, "int16be_to_float32", cut_at_first_chunk)
    with pytest.raises(FrameReadError) as info:
        read_fits(path)
    assert str(info.value) == f"{path}: truncated: the image needs 20000 bytes, the file has 6000"
    assert 1 <= len(calls) < 5  # the cut happened during the read, which stopped before the end


def test_concurrent_reads_into_own_buffers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several threads reading different files at once, each into its own buffer and each read itself split
    over reader threads, all get their own file's values."""
    monkeypatch.setattr(fitsio, "_CHUNK_BYTES", 1000)
    datas = [seeded("uint16", (61, 47)) + i for i in range(6)]
    paths = [write_image(tmp_path / f"x{i}.fits", d) for i, d in enumerate(datas)]
    outs = [np.full(d.shape, np.nan, dtype=np.float32) for d in datas]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda i: read_fits(paths[i], out=outs[i])[0], range(6)))
    for data, out, got in zip(datas, outs, results, strict=True):
        assert got is out
        np.testing.assert_array_equal(out, data.astype(np.float32))


MEMORY_PROBE = """
import re, sys
import numpy as np
from astrod.io import fits as fitsio

def peak_kib():
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\\s+(\\d+)", status.read()).group(1))

path, warm, height, width = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fitsio.read_fits(warm)  # imports, numba cache load and astropy header parsing happen before the baseline
out = np.full((height, width), -1.0, np.float32)  # written, so resident before the baseline (zeros would not be)
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # reset this process's peak RSS to its current RSS
base = peak_kib()
got, _ = fitsio.read_fits(path, out=out)
peak = peak_kib()
same = got is out and np.array_equal(out, np.arange(height * width, dtype=np.uint16).reshape(height, width))
print(base, peak, fitsio._CHUNK_BYTES * fitsio._MAX_READERS, int(same))
"""


def test_reading_into_buffer_does_not_hold_the_whole_file(tmp_path: Path) -> None:
    """Reading a 3000x2000 uint16 frame (11.4 MiB on disk) into a supplied buffer raises the process's peak
    RSS by no more than the reader threads' chunk buffers plus 3 MiB, less than the file itself: the file is
    neither mapped nor copied whole, and no second frame-sized array appears.

    Peak RSS is VmHWM in a fresh interpreter, reset just before the read. ``ru_maxrss`` cannot serve: a child
    starts with its parent's peak (pytest's, hundreds of MB, inherited at exec) and the reset does not touch
    it. The 3 MiB slack covers what a read allocates besides the chunks: the parsed header, Python objects,
    reader thread stacks and allocator rounding (measured at well under 1 MiB). The old whole-file map added
    11.4 MiB (35 MiB with its fresh output).
    """
    status = Path("/proc/self/status")
    if not status.exists() or "VmHWM" not in status.read_text():
        pytest.skip("needs Linux /proc peak RSS")
    height, width = 2000, 3000
    path = write_image(tmp_path / "big.fits",
                       np.arange(height * width, dtype=np.uint16).reshape(height, width))
    warm = write_image(tmp_path / "warm.fits", np.ones((16, 16), dtype=np.uint16))
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path), str(warm), str(height), str(width)],
                            capture_output=True, text=True, timeout=120, check=True)
    base, peak, chunks, same = (int(v) for v in result.stdout.split())
    assert same == 1
    bound = chunks + (3 << 20)
    assert bound < path.stat().st_size  # otherwise the test could not tell a whole-file read apart
    assert (peak - base) * 1024 < bound, f"peak RSS grew by {peak - base} KiB"


def test_extensions_are_written_atomically_and_read_by_name(tmp_path: Path) -> None:
    """Extra images written with the primary one are invisible to read_fits (the first image) and come back
    by EXTNAME with their own cards; a missing name gives None; duplicate or PRIMARY names are refused."""
    path = tmp_path / "m.fits"
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    noise = np.full((3, 4), 2.5, np.float32)
    write_fits(path, image, {"OBJECT": "m"}, extensions=[("noise", noise, {"BUNIT": ("adu", "unit")})])
    data, header = read_fits(path)
    np.testing.assert_array_equal(data, image)
    assert header["OBJECT"] == "m" and "BUNIT" not in header
    found = fitsio.read_fits_extension(path, "NOISE")
    assert found is not None
    np.testing.assert_array_equal(found[0], noise)
    assert found[1]["BUNIT"] == "adu" and found[1]["EXTNAME"] == "NOISE"
    assert fitsio.read_fits_extension(path, "OTHER") is None
    assert [p.name for p in tmp_path.iterdir()] == ["m.fits"]  # no temporary left behind
    with pytest.raises(ValueError, match="distinct"):
        write_fits(path, image, extensions=[("A", noise, None), ("a", noise, None)])
