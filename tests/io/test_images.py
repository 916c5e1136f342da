"""Pictures as frames and products: files written by the real libraries (tifffile, Pillow, OpenCV, the xisf
package, astropy) read back through `astrod.io.frames.read_frame`, and astrod's TIFF and XISF products opened by
those libraries."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import tifffile
from astropy.io import fits
from PIL import Image
from PIL.TiffImagePlugin import IFDRational
from scipy.spatial import cKDTree
from xisf import XISF

from astrod.core.stars import detect_stars, estimate_background
from astrod.errors import FrameReadError
from astrod.io.frames import is_frame_name, read_frame, read_meta
from astrod.io.images import tiff_scaling, write_tiff16, write_xisf
from astrod.model import FrameKind
from tests import synth

W, H = 512, 384
REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _star_field(seed: int, *, n_stars: int = 120, sky: float = 300.0,
                ) -> tuple[npt.NDArray[np.float32], synth.StarField]:
    """A noiseless star field (electrons) and its truth."""
    cat = synth.make_catalogue(width=W, height=H, n_stars=n_stars, seed=seed, flux_min=4e3, flux_max=4e5,
                               min_separation=8.0)
    return synth.render_stars(width=W, height=H, catalogue=cat, fwhm=3.0, sky=sky)


def _noisy(scene: npt.NDArray[np.float32], *, seed: int) -> npt.NDArray[np.float64]:
    return np.random.default_rng(seed).poisson(np.clip(scene, 0, None)).astype(np.float64)


def _to_8bit(electrons: npt.NDArray[np.float64], *, gain: float = 12.0, black: float = 8.0) -> npt.NDArray[np.uint8]:
    """What a camera that writes 8-bit pictures makes of it: ADU = e/gain + black, rounded, clipped at 255."""
    return np.clip(np.rint(electrons / gain + black), 0, 255).astype(np.uint8)


def _matched_fraction(found: npt.NDArray[np.float64], truth: npt.NDArray[np.float64], radius: float) -> float:
    dist, _ = cKDTree(truth).query(found)
    return float(np.mean(dist <= radius)) if found.size else 0.0


# ------------------------------------------------------------------------------------------ TIFF


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int16, np.float32, np.float64])
@pytest.mark.parametrize("colour", [False, True])
def test_tiff_samples_are_read_exactly_as_float32(tmp_path: Path, dtype: type, colour: bool) -> None:
    """8/16/32-bit integer and float TIFFs, grey and RGB (interleaved), come back as float32 with the file's own
    values, grey as (H, W) and colour as (3, H, W) in R, G, B order."""
    rng = np.random.default_rng(3)
    top = 1.0 if np.issubdtype(dtype, np.floating) else min(np.iinfo(dtype).max, 2**24)
    shape = (48, 64, 3) if colour else (48, 64)
    data = (rng.random(shape) * top).astype(dtype)
    path = tmp_path / "frame.tif"
    tifffile.imwrite(path, data, photometric="rgb" if colour else "minisblack")
    frame = read_frame(path)
    expected = np.moveaxis(data, 2, 0) if colour else data
    assert frame.data.dtype == np.float32
    assert frame.data.shape == expected.shape
    np.testing.assert_array_equal(frame.data, expected.astype(np.float32))
    assert frame.meta.source_format == "tiff"
    assert (frame.meta.width, frame.meta.height, frame.meta.planes) == (64, 48, 3 if colour else 1)


def test_planar_rgba_and_multipage_tiffs(tmp_path: Path) -> None:
    """A planar RGB TIFF reads as the same planes; an alpha channel is dropped; a multi-page TIFF gives its first
    page, and the meta's notes say so."""
    rng = np.random.default_rng(4)
    rgb = (rng.random((3, 40, 50)) * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_frame(tmp_path / "planar.tif").data, rgb)
    rgba = (rng.random((40, 50, 4)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(read_frame(tmp_path / "rgba.tif").data, np.moveaxis(rgba[:, :, :3], 2, 0))
    pages = (rng.random((3, 40, 50)) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "pages.tif", pages, photometric="minisblack")
    frame = read_frame(tmp_path / "pages.tif")
    np.testing.assert_array_equal(frame.data, pages[0])
    assert any("multi-page" in note for note in frame.meta.notes)


def test_16bit_tiff_star_field_gives_the_true_stars(tmp_path: Path) -> None:
    """A 16-bit TIFF star field (as SharpCap or FireCapture write them) reads as the ADU written, and the star
    detector finds the true stars at their true places (within 0.15 px RMS)."""
    scene, truth = _star_field(11)
    adu = np.clip(np.rint(_noisy(scene, seed=12) / 0.5 + 500), 0, 65535).astype(np.uint16)
    path = tmp_path / "Light_M42_0001.tiff"
    tifffile.imwrite(path, adu, photometric="minisblack", software="SharpCap 4.1")
    frame = read_frame(path)
    np.testing.assert_array_equal(frame.data, adu)
    assert frame.meta.software == "SharpCap 4.1"
    stars = detect_stars(frame.data, max_stars=300)
    assert len(stars) >= 0.8 * truth.n
    assert _matched_fraction(stars.xy, truth.xy, 1.0) >= 0.98
    dist, _ = cKDTree(stars.xy).query(truth.xy)
    close = dist[dist < 1.0]
    assert close.size >= 0.8 * truth.n
    assert float(np.sqrt(np.mean(close**2))) < 0.15


# ------------------------------------------------------------------------------------------ PNG and JPEG


def test_png_8_and_16_bit_grey_and_colour(tmp_path: Path) -> None:
    """PNG written by Pillow (8-bit grey and RGB, 16-bit grey) and OpenCV (16-bit RGB, stored B, G, R) reads back
    exactly, colour in R, G, B order."""
    rng = np.random.default_rng(5)
    grey8 = (rng.random((30, 40)) * 255).astype(np.uint8)
    rgb8 = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    grey16 = (rng.random((30, 40)) * 65535).astype(np.uint16)
    rgb16 = (rng.random((30, 40, 3)) * 65535).astype(np.uint16)
    Image.fromarray(grey8).save(tmp_path / "g8.png")
    Image.fromarray(rgb8).save(tmp_path / "c8.png")
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    assert cv2.imwrite(str(tmp_path / "c16.png"), rgb16[:, :, ::-1])
    np.testing.assert_array_equal(read_frame(tmp_path / "g8.png").data, grey8)
    np.testing.assert_array_equal(read_frame(tmp_path / "c8.png").data, np.moveaxis(rgb8, 2, 0))
    np.testing.assert_array_equal(read_frame(tmp_path / "g16.png").data, grey16)
    np.testing.assert_array_equal(read_frame(tmp_path / "c16.png").data, np.moveaxis(rgb16, 2, 0))
    assert read_meta(tmp_path / "c16.png").source_format == "png"


def _exif(*, exposure: Fraction | None = Fraction(1, 2), offset: str | None = "+02:00") -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "ZWO"
    exif[0x0110] = "Seestar S50"
    exif[0x0131] = "Seestar 2.3"
    exif[0x0132] = "2024:07:30 22:44:36"
    sub = exif.get_ifd(0x8769)
    if exposure is not None:
        sub[0x829A] = IFDRational(exposure.numerator, exposure.denominator)
    sub[0x8827] = 800
    sub[0x9003] = "2024:07:30 22:44:36"
    if offset is not None:
        sub[0x9011] = offset
    return exif


def test_jpeg_exif_gives_date_exposure_iso_and_camera(tmp_path: Path) -> None:
    """A colour JPEG with EXIF (written by Pillow) reads as (3, H, W) float32 0-255, its metadata from the tags:
    camera, software, ISO (also the gain), exposure, and DATE-OBS in UTC from DateTimeOriginal and its offset."""
    rgb = np.zeros((96, 128, 3), dtype=np.uint8)
    rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2] = 200, 100, 50
    path = tmp_path / "Lights" / "frame.jpg"
    path.parent.mkdir()
    Image.fromarray(rgb).save(path, quality=95, exif=_exif())
    frame = read_frame(path)
    assert frame.data.shape == (3, 96, 128) and frame.data.dtype == np.float32
    assert np.abs(frame.data.mean(axis=(1, 2)) - [200, 100, 50]).max() < 2
    m = frame.meta
    assert (m.source_format, m.camera, m.software, m.iso, m.gain, m.exposure) == (
        "jpeg", "ZWO Seestar S50", "Seestar 2.3", 800, 800.0, 0.5)
    assert m.date_obs == datetime(2024, 7, 30, 20, 44, 36, tzinfo=UTC)
    assert m.kind is FrameKind.LIGHT and m.kind_reason == "folder 'Lights'"
    assert m.notes == ()


def test_picture_without_a_date_takes_its_file_time_and_says_so(tmp_path: Path) -> None:
    """Without any date tag the frame's date is the file's modification time, and a note says so; without an
    exposure tag the exposure is None and a note says it is unknown."""
    path = tmp_path / "sky.png"
    Image.fromarray(np.full((20, 30), 7, dtype=np.uint8)).save(path)
    when = datetime(2025, 3, 1, 21, 30, 5, tzinfo=UTC)
    os.utime(path, (when.timestamp(), when.timestamp()))
    meta = read_meta(path)
    assert meta.date_obs == when
    assert meta.exposure is None
    assert any(n.startswith("date: none in the file; its modification time 2025-03-01T21:30:05") for n in meta.notes)
    assert "exposure: unknown (none in the file)" in meta.notes


def test_jpeg_block_noise_is_not_taken_for_stars(tmp_path: Path) -> None:
    """8-bit colour JPEGs (quality 75, 2 ADU of noise before compression, which JPEG flattens into blocks of equal
    values): the sky noise is measured (not 0 from quantised, mostly equal values); in a star field nearly every
    detection is a true star; in the same sky without stars the few bumps of block noise found are all fainter
    than the faintest star of the field."""
    gain = 12.0
    scene, truth = _star_field(21, sky=600.0)
    starless = np.full_like(scene, 600.0)
    for name, image in (("stars.jpg", scene), ("sky.jpg", starless)):
        rgb = _to_8bit(_noisy(synth.to_rgb(image, colour=(1.0, 0.9, 0.7)), seed=22), gain=gain)
        Image.fromarray(np.ascontiguousarray(np.moveaxis(rgb, 0, 2))).save(tmp_path / name, quality=75)
    stars = detect_stars(read_frame(tmp_path / "stars.jpg").data, max_stars=300)
    assert len(stars) >= 0.5 * truth.n
    assert _matched_fraction(stars.xy, truth.xy, 1.5) >= 0.95
    sky = read_frame(tmp_path / "sky.jpg").data
    noise = estimate_background(sky, box=64).noise
    assert 0.5 * float(sky.mean(axis=0).std()) < noise < 1.5 * float(sky.mean(axis=0).std())
    faintest_star_adu = float(truth.flux.min()) / gain * (1.0 + 0.9 + 0.7) / 3
    assert all(flux < faintest_star_adu for flux in detect_stars(sky, max_stars=300).flux)


def test_corrupt_picture_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    """A truncated JPEG or a TIFF that is not one raise FrameReadError naming the file and the cause."""
    Image.fromarray(np.zeros((50, 50, 3), dtype=np.uint8)).save(tmp_path / "ok.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "ok.jpg").read_bytes()[:200])
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all" * 10)
    for name in ("cut.jpg", "bad.tif"):
        with pytest.raises(FrameReadError) as err:
            read_frame(tmp_path / name)
        text = str(err.value)
        assert text.startswith(f"{tmp_path / name}: cannot read ") and "\n" not in text


# ------------------------------------------------------------------------------------------ XISF and .fz


def test_xisf_pixels_and_fits_keywords(tmp_path: Path) -> None:
    """An XISF file written by the xisf package (float32 RGB, and uint16 grey) reads back exactly; its FITS
    keywords are normalised like a FITS header (type, exposure, object, filter, date)."""
    rng = np.random.default_rng(6)
    rgb = rng.random((40, 50, 3)).astype(np.float32)
    keywords = {"IMAGETYP": "'Light Frame'", "EXPTIME": "120.", "OBJECT": "'M 31'", "FILTER": "'L'",
                "DATE-OBS": "'2024-10-01T22:10:00.5'", "GAIN": "100", "CCD-TEMP": "-10.2"}
    meta = {"FITSKeywords": {k: [{"value": v, "comment": ""}] for k, v in keywords.items()}}
    XISF.write(str(tmp_path / "rgb.xisf"), rgb, image_metadata=meta)
    frame = read_frame(tmp_path / "rgb.xisf")
    np.testing.assert_array_equal(frame.data, np.moveaxis(rgb, 2, 0))
    m = frame.meta
    assert (m.kind, m.exposure, m.object, m.filter, m.gain, m.temperature, m.planes, m.source_format) == (
        FrameKind.LIGHT, 120.0, "M 31", "L", 100.0, -10.2, 3, "xisf")
    assert m.date_obs == datetime(2024, 10, 1, 22, 10, 0, 500000, tzinfo=UTC)
    grey = (rng.random((40, 50, 1)) * 65535).astype(np.uint16)
    XISF.write(str(tmp_path / "grey.xisf"), grey, image_metadata=meta)
    np.testing.assert_array_equal(read_frame(tmp_path / "grey.xisf").data, grey[:, :, 0])


@pytest.mark.parametrize("compression", ["RICE_1", "GZIP_1", "HCOMPRESS_1"])
def test_tile_compressed_fits(tmp_path: Path, compression: str) -> None:
    """.fits.fz (fpack-style tile compression, written by astropy) reads losslessly for 16-bit data, with the
    compressed HDU's header normalised."""
    data = (np.random.default_rng(7).random((64, 96)) * 4000 + 100).astype(np.int16)
    header = fits.Header({"IMAGETYP": "Light Frame", "EXPTIME": 30.0, "OBJECT": "NGC 7023"})
    path = tmp_path / "frame.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header=header, compression_type=compression)]
                 ).writeto(path)
    assert is_frame_name(path)
    frame = read_frame(path)
    np.testing.assert_array_equal(frame.data, data)
    assert (frame.meta.kind, frame.meta.exposure, frame.meta.object) == (FrameKind.LIGHT, 30.0, "NGC 7023")


def test_real_ccd_frame_tile_compressed_reads_as_the_original(tmp_path: Path) -> None:
    """A real SBIG ST-10 light (shared data), RICE-compressed as fpack does, reads as the original's pixels and
    header fields."""
    lights = REAL / "oscaar_tres1_sbig_st10" / "lights"
    if not lights.is_dir():
        pytest.skip(f"real data folder {lights} is absent")
    original = sorted(lights.iterdir())[0]
    with fits.open(original) as hdul:
        data, header = hdul[0].data.copy(), hdul[0].header.copy()
    packed = tmp_path / f"{original.name}.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header=header, compression_type="RICE_1")]
                 ).writeto(packed)
    plain, fz = read_frame(original), read_frame(packed)
    np.testing.assert_array_equal(fz.data, plain.data)
    assert (fz.meta.exposure, fz.meta.camera, fz.meta.date_obs) == (
        plain.meta.exposure, plain.meta.camera, plain.meta.date_obs)


# ------------------------------------------------------------------------------------------ writers


def test_tiff_product_is_16_bit_for_tifffile_and_pillow(tmp_path: Path) -> None:
    """The 16-bit TIFF product: uint16 for tifffile; for Pillow 16 bits per sample (grey in its 16-bit mode "I;16",
    RGB decoded, Pillow having no 16-bit RGB mode); 0-65535 over the stack's range, and
    the scaling in the description tag maps samples back onto the stack within half a step; NaN is 0."""
    stack = np.random.default_rng(8).normal(1000, 50, (3, 60, 80)).astype(np.float32)
    stack[0, 0, 0] = np.nan
    path = tmp_path / "stack.tif"
    scaling = write_tiff16(path, stack, software="astrod test")
    with tifffile.TiffFile(path) as tif:
        samples = tif.asarray()
        description = json.loads(tif.pages.first.description)
    assert samples.dtype == np.uint16 and samples.shape == (60, 80, 3)
    assert samples.max() == 65535 and samples[0, 0, 0] == 0
    assert description["offset"] == pytest.approx(scaling.offset) and description["scale"] == pytest.approx(
        scaling.scale)
    back = description["offset"] + np.moveaxis(samples, 2, 0) * description["scale"]
    finite = np.isfinite(stack)
    assert np.abs(back[finite] - stack[finite]).max() <= scaling.scale / 2 * 1.001
    with Image.open(path) as img:  # Pillow has no 16-bit RGB mode: it reads the 16-bit samples down to 8 bits
        assert img.tag_v2[258] == (16, 16, 16) and img.size == (80, 60)
        img.load()
    grey = tmp_path / "grey.tif"
    write_tiff16(grey, stack[1])
    with Image.open(grey) as img:
        assert img.mode.startswith("I;16")
        assert np.asarray(img).dtype.itemsize == 2
    assert tiff_scaling(np.full((4, 4), np.nan, dtype=np.float32)).scale == 1.0


def test_xisf_product_keeps_the_provenance_keywords(tmp_path: Path) -> None:
    """The XISF product opens with the xisf package: float32 pixels as written (R, G, B) and the cards and HISTORY
    lines as FITS keywords."""
    stack = np.random.default_rng(9).random((3, 30, 40)).astype(np.float32)
    cards = {"CREATOR": ("astrod 0.1", "software"), "NCOMBINE": (12, "frames combined"),
             "STACKMTH": ("winsorized", "how"), "KAPPA": (3.0, "sigma"), "FLUXCONS": (True, "flux")}
    history = ("master: dark_300s.fits", "astrod: " + "x" * 100)
    write_xisf(tmp_path / "stack.xisf", stack, cards, history)
    doc = XISF(str(tmp_path / "stack.xisf"))
    pixels = doc.read_image(0, data_format="channels_first")
    assert pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, stack)
    kw = doc.get_images_metadata()[0]["FITSKeywords"]
    assert kw["CREATOR"][0]["value"] == "astrod 0.1"
    assert kw["NCOMBINE"][0]["value"] == "12" and kw["FLUXCONS"][0]["value"] == "T"
    lines = [entry["comment"] for entry in kw["HISTORY"]]
    assert lines[0] == "master: dark_300s.fits" and "".join(lines[1:]) == "astrod: " + "x" * 100
    back = read_meta(tmp_path / "stack.xisf")
    assert back.stack_count == 12


def test_products_get_the_mode_a_new_file_gets(tmp_path: Path) -> None:
    """TIFF and XISF products are 0644 under umask 022 (not the 0600 of a temporary file)."""
    old = os.umask(0o022)
    try:
        write_tiff16(tmp_path / "a.tif", np.ones((8, 8), dtype=np.float32))
        write_xisf(tmp_path / "a.xisf", np.ones((8, 8), dtype=np.float32), {})
    finally:
        os.umask(old)
    for name in ("a.tif", "a.xisf"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "a.xisf"]
