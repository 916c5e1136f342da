"""The files of a plate solve: the star list handed to astrometry.net (an ``xylist``), its config, the ``.wcs``
it answers with, the index files it searches, and the copy of a frame with the solution in its header.

The solver process itself is run by `astrod.service.solver`; this module only reads and writes files.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.utils.exceptions import AstropyWarning

from astrod.core.stars import StarList
from astrod.errors import FrameReadError, SolveError
from astrod.io.atomic import atomic_write, atomic_write_text
from astrod.io.fits import is_fits_name, write_fits

# Where Debian's astrometry-data-* packages put their index files; always searched.
SYSTEM_INDEX_DIR = Path("/usr/share/astrometry")

# Quad sizes (arcmin) of astrometry.net's index scales 00..19 (its "index-42XX/52XX/tycho2-XX" numbering): an
# index of scale s finds fields in which quads of [lo, hi] fit, i.e. fields of about lo and wider.
INDEX_QUAD_ARCMIN: dict[int, tuple[float, float]] = {
    0: (2.0, 2.8), 1: (2.8, 4.0), 2: (4.0, 5.6), 3: (5.6, 8.0), 4: (8.0, 11.0), 5: (11.0, 16.0), 6: (16.0, 22.0),
    7: (22.0, 30.0), 8: (30.0, 42.0), 9: (42.0, 60.0), 10: (60.0, 85.0), 11: (85.0, 120.0), 12: (120.0, 170.0),
    13: (170.0, 240.0), 14: (240.0, 340.0), 15: (340.0, 480.0), 16: (480.0, 680.0), 17: (680.0, 1000.0),
    18: (1000.0, 1400.0), 19: (1400.0, 2000.0),
}
_INDEX_NAME = re.compile(r"^index-(?:tycho2-(\d\d)|\d\d(\d\d))(?:[-.]|$)")


@dataclass(frozen=True, slots=True)
class IndexFile:
    """One astrometry.net index file and the quad sizes (arcmin) it holds, when its name says (else None)."""

    path: Path
    quad_arcmin: tuple[float, float] | None


def index_scale(name: str) -> int | None:
    """The scale number of an index file from its name (index-4107.fits, index-5206-03.fits,
    index-tycho2-07.littleendian.fits -> 7, 6, 7); None for names that do not follow the convention."""
    m = _INDEX_NAME.match(name)
    if m is None:
        return None
    return int(m.group(1) or m.group(2))


def find_index_files(folders: Iterable[Path]) -> list[IndexFile]:
    """The index files (``index-*.fits``) directly in ``folders``, sorted; a missing folder holds none."""
    found: list[IndexFile] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("index-*.fits")):
            scale = index_scale(path.name)
            found.append(IndexFile(path=path, quad_arcmin=INDEX_QUAD_ARCMIN.get(scale) if scale is not None
                                   else None))
    return found


def write_xylist(path: Path, stars: StarList) -> Path:
    """Write ``stars`` as an astrometry.net xylist: a FITS table of X, Y (1-based FITS pixels: astrod's 0-based
    centres plus one) and FLUX, in the star list's order (brightest first), with the image size in IMAGEW and
    IMAGEH. Atomic; returns ``path``."""
    columns = [fits.Column(name="X", format="D", array=np.asarray(stars.x, dtype=np.float64) + 1.0),
               fits.Column(name="Y", format="D", array=np.asarray(stars.y, dtype=np.float64) + 1.0),
               fits.Column(name="FLUX", format="D", array=np.asarray(stars.flux, dtype=np.float64))]
    table = fits.BinTableHDU.from_columns(columns)
    table.header["IMAGEW"] = (stars.width, "image width, pixels")
    table.header["IMAGEH"] = (stars.height, "image height, pixels")
    with atomic_write(path, "wb") as handle:
        fits.HDUList([fits.PrimaryHDU(), table]).writeto(handle)
    return path


def write_solver_config(path: Path, index_dirs: Sequence[Path], *, cpulimit_s: float) -> Path:
    """Write the astrometry-engine config: the index folders (``autoindex`` loads every index file in them),
    all loaded at once, and the CPU-time limit. Atomic; returns ``path``."""
    lines = [f"cpulimit {max(1, round(cpulimit_s))}", "inparallel"]
    lines += [f"add_path {folder}" for folder in index_dirs]
    lines.append("autoindex")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def read_wcs_header(path: Path) -> fits.Header:
    """The header of astrometry.net's ``.wcs`` answer (a data-less FITS file). Raises SolveError naming the file
    and the cause when it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            return fits.getheader(path, 0)
    except (OSError, ValueError) as err:
        raise SolveError(f"{path}: cannot read the solver's WCS: {err}") from err


@dataclass(frozen=True, slots=True, eq=False)
class CatalogueStars:
    """Catalogue stars (degrees, J2000) with their magnitudes, as astrometry.net's index files hold them."""

    ra: np.ndarray[Any, np.dtype[np.float64]]
    dec: np.ndarray[Any, np.dtype[np.float64]]
    mag: np.ndarray[Any, np.dtype[np.float64]]

    def __len__(self) -> int:
        return int(self.ra.size)


def read_catalogue_table(paths: Iterable[Path]) -> CatalogueStars:
    """The stars in ``query-starkd`` answers (FITS tables of RA, DEC and a magnitude column such as MAG_VT),
    merged, each star once (index files of several scales share stars), brightest first. A missing answer file
    (query-starkd writes none when nothing is in range) holds no star."""
    ra: list[np.ndarray[Any, Any]] = []
    dec: list[np.ndarray[Any, Any]] = []
    mag: list[np.ndarray[Any, Any]] = []
    for path in paths:
        if not path.is_file():
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AstropyWarning)
                with fits.open(path, memmap=False) as hdul:
                    table = hdul[1].data if len(hdul) > 1 else None
                    if table is None or len(table) == 0:
                        continue
                    mag_col = next((c for c in table.columns.names if c.upper().startswith("MAG")), None)
                    ra.append(np.asarray(table["RA"], dtype=np.float64))
                    dec.append(np.asarray(table["DEC"], dtype=np.float64))
                    mag.append(np.asarray(table[mag_col], dtype=np.float64) if mag_col
                               else np.full(len(table), np.nan))
        except (OSError, ValueError, KeyError) as err:
            raise SolveError(f"{path}: cannot read the catalogue stars: {err}") from err
    if not ra:
        empty = np.empty(0, dtype=np.float64)
        return CatalogueStars(ra=empty, dec=empty, mag=empty)
    all_ra, all_dec, all_mag = np.concatenate(ra), np.concatenate(dec), np.concatenate(mag)
    _, first = np.unique(np.round(np.column_stack([all_ra, all_dec]) * 3.6e5), axis=0, return_index=True)
    order = first[np.argsort(np.nan_to_num(all_mag[first], nan=99.0), kind="stable")]
    return CatalogueStars(ra=all_ra[order], dec=all_dec[order], mag=all_mag[order])


def write_with_wcs(source: Path, target: Path, cards: Sequence[tuple[str, Any, str]], *,
                   remove: Iterable[str], pixels: np.ndarray[Any, Any] | None = None) -> Path:
    """Write a copy of the frame ``source`` to ``target`` with the WCS ``cards`` in its image header, the
    ``remove`` keywords (a previous WCS) taken out first. A FITS source is copied as stored (its pixel values and
    every other HDU unchanged); any other frame (a camera raw file) is written as a FITS of ``pixels``. The
    source is never changed. Atomic; returns ``target``."""
    if source.resolve() == target.resolve():
        raise SolveError(f"{source}: the copy with the WCS would overwrite the frame itself")
    drop = set(remove)
    if not is_fits_name(source):
        if pixels is None:
            raise SolveError(f"{source}: not a FITS file and no pixels to write")
        return write_fits(target, pixels, _with_cards(fits.Header(), cards, drop))
    return _copy_with_cards(source, target, cards, drop)


def put_wcs_into(path: Path, cards: Sequence[tuple[str, Any, str]], *, remove: Iterable[str]) -> Path:
    """Put the WCS ``cards`` into the image header of astrod's own FITS product ``path`` (a stack, a preview),
    the ``remove`` keywords taken out first; pixels and other cards unchanged. Atomic: a reader sees the old
    file or the new one. The caller makes sure nobody rewrites the product meanwhile. Returns ``path``."""
    return _copy_with_cards(path, path, cards, set(remove))


def _copy_with_cards(source: Path, target: Path, cards: Sequence[tuple[str, Any, str]], drop: set[str]) -> Path:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            warnings.simplefilter("ignore", VerifyWarning)
            with fits.open(source, memmap=False, do_not_scale_image_data=True) as hdul:
                image = next((h for h in hdul if h.is_image and h.header.get("NAXIS", 0) >= 2), None)
                if image is None:
                    raise SolveError(f"{source}: no image HDU to carry the WCS")
                _with_cards(image.header, cards, drop)
                with atomic_write(target, "wb") as handle:
                    hdul.writeto(handle, output_verify="silentfix")
    except (OSError, ValueError) as err:
        raise FrameReadError(f"{source}: cannot write the WCS: {err}") from err
    return target


def _with_cards(header: fits.Header, cards: Sequence[tuple[str, Any, str]], drop: set[str]) -> fits.Header:
    for key in [k for k in header if k in drop]:
        header.remove(key, ignore_missing=True, remove_all=True)
    for key, value, comment in cards:
        header[key] = (value, comment)
    return header
