"""The plate solver's files: the xylist astrometry.net reads, its config, index files, the copy with the WCS."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from astrod.core.stars import StarList
from astrod.errors import SolveError
from astrod.io.solve_files import (
    INDEX_QUAD_ARCMIN,
    find_index_files,
    index_scale,
    read_catalogue_table,
    read_wcs_header,
    write_solver_config,
    write_with_wcs,
    write_xylist,
)


def _stars(x: list[float], y: list[float], flux: list[float]) -> StarList:
    z = np.zeros(len(x))
    return StarList(x=np.array(x), y=np.array(y), flux=np.array(flux), fwhm=z, hfr=z, eccentricity=z,
                    n_detected=len(x), width=640, height=480)


def test_xylist_is_one_based_in_the_star_lists_order(tmp_path: Path) -> None:
    """The xylist holds X, Y as FITS pixels (astrod's 0-based centres + 1) and FLUX, brightest first as given,
    with the image size in IMAGEW/IMAGEH."""
    path = write_xylist(tmp_path / "s.xyls", _stars([0.0, 10.25, 639.0], [0.0, 5.5, 479.0], [900.0, 50.0, 7.0]))
    with fits.open(path) as hdul:
        table = hdul[1].data
        assert hdul[1].header["IMAGEW"] == 640 and hdul[1].header["IMAGEH"] == 480
        np.testing.assert_array_equal(table["X"], [1.0, 11.25, 640.0])
        np.testing.assert_array_equal(table["Y"], [1.0, 6.5, 480.0])
        np.testing.assert_array_equal(table["FLUX"], [900.0, 50.0, 7.0])


def test_index_scale_reads_the_three_naming_schemes() -> None:
    """Tycho-2 (Debian), 4100/4200 and 5200 index names give their scale number; other names none."""
    assert index_scale("index-tycho2-07.littleendian.fits") == 7
    assert index_scale("index-4107.fits") == 7
    assert index_scale("index-5206-03.fits") == 6
    assert index_scale("index-4219.fits") == 19
    assert index_scale("my-index.fits") is None
    assert INDEX_QUAD_ARCMIN[7] == (22.0, 30.0)


def test_find_index_files_lists_index_files_with_their_quad_sizes(tmp_path: Path) -> None:
    """Only index-*.fits files directly in the folders count; a missing folder holds none."""
    (tmp_path / "index-5205-00.fits").write_bytes(b"")
    (tmp_path / "index-tycho2-09.littleendian.fits").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    found = find_index_files([tmp_path, tmp_path / "missing"])
    assert [f.path.name for f in found] == ["index-5205-00.fits", "index-tycho2-09.littleendian.fits"]
    assert [f.quad_arcmin for f in found] == [(11.0, 16.0), (42.0, 60.0)]


def test_solver_config_names_every_index_folder(tmp_path: Path) -> None:
    """The engine config adds each folder, loads all index files in them and carries the CPU limit."""
    path = write_solver_config(tmp_path / "a.cfg", [Path("/data/gaia"), Path("/usr/share/astrometry")],
                               cpulimit_s=29.6)
    lines = path.read_text().splitlines()
    assert lines == ["cpulimit 30", "inparallel", "add_path /data/gaia", "add_path /usr/share/astrometry",
                     "autoindex"]


def _frame(path: Path) -> Path:
    header = fits.Header()
    header["OBJECT"] = "M 1"
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["PC1_1"] = 0.5
    header["CDELT1"] = 1.0
    data = (np.arange(48, dtype=np.uint16) * 1000).reshape(6, 8)
    fits.PrimaryHDU(data=data, header=header).writeto(path)
    return path


def test_copy_with_wcs_keeps_the_pixels_and_replaces_the_old_wcs(tmp_path: Path) -> None:
    """The copy holds the source's stored pixels and other cards, the new WCS cards and none of the removed
    ones; the source file is unchanged byte for byte."""
    source = _frame(tmp_path / "f.fits")
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    cards = [("CTYPE1", "RA---TAN-SIP", "TAN + SIP"), ("CTYPE2", "DEC--TAN-SIP", ""), ("CD1_1", 1e-4, "")]
    target = write_with_wcs(source, tmp_path / "out" / "f.wcs.fits", cards,
                            remove=["CTYPE1", "CTYPE2", "PC1_1", "CDELT1"])
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before
    with fits.open(target) as hdul, fits.open(source) as src:
        h = hdul[0].header
        assert h["OBJECT"] == "M 1" and h["CTYPE1"] == "RA---TAN-SIP" and h["CD1_1"] == 1e-4
        assert "PC1_1" not in h and "CDELT1" not in h
        assert hdul[0].data.dtype == src[0].data.dtype
        np.testing.assert_array_equal(hdul[0].data, src[0].data)


def test_copy_of_a_non_fits_frame_is_a_fits_of_its_pixels(tmp_path: Path) -> None:
    """A camera raw frame cannot carry FITS cards: its copy is a FITS file of the pixels with the WCS."""
    source = tmp_path / "f.cr2"
    source.write_bytes(b"raw")
    pixels = np.ones((4, 5), dtype=np.float32)
    target = write_with_wcs(source, tmp_path / "f.wcs.fits", [("CRVAL1", 10.0, "")], remove=[], pixels=pixels)
    with fits.open(target) as hdul:
        assert hdul[0].header["CRVAL1"] == 10.0 and hdul[0].data.shape == (4, 5)


def test_copy_never_overwrites_its_source(tmp_path: Path) -> None:
    """Naming the source as the target is refused before anything is written."""
    source = _frame(tmp_path / "f.fits")
    with pytest.raises(SolveError, match="would overwrite the frame itself"):
        write_with_wcs(source, source, [], remove=[])


def test_unreadable_wcs_answer_names_the_file(tmp_path: Path) -> None:
    """A broken .wcs file gives a SolveError naming it."""
    bad = tmp_path / "s.wcs"
    bad.write_bytes(b"not fits")
    with pytest.raises(SolveError, match=r"s\.wcs: cannot read the solver's WCS"):
        read_wcs_header(bad)


def _catalogue_answer(path: Path, ra: list[float], dec: list[float], mag: list[float]) -> Path:
    cols = [fits.Column(name="MAG_VT", format="E", array=np.array(mag)),
            fits.Column(name="RA", format="D", array=np.array(ra)),
            fits.Column(name="DEC", format="D", array=np.array(dec))]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path)
    return path


def test_catalogue_answers_merge_each_star_once_brightest_first(tmp_path: Path) -> None:
    """Two index files' answers sharing a star give it once; a missing answer (nothing in range) adds none."""
    a = _catalogue_answer(tmp_path / "a.fits", [10.0, 10.5], [20.0, 20.5], [9.0, 7.0])
    b = _catalogue_answer(tmp_path / "b.fits", [10.5, 11.0], [20.5, 21.0], [7.0, 8.0])
    stars = read_catalogue_table([a, b, tmp_path / "none.fits"])
    assert len(stars) == 3
    np.testing.assert_array_equal(stars.mag, [7.0, 8.0, 9.0])
    np.testing.assert_array_equal(stars.ra, [10.5, 11.0, 10.0])
    assert len(read_catalogue_table([])) == 0
