"""The plate solver runs the real solve-field on astrod's star list and agrees with ASTAP on real frames.

The Seestar S50 frames in the shared data carry the WCS ASTAP solved. astrod never looks at it here: the header it
hands the solver has every WCS card stripped (`without_wcs`) and `use_wcs_hints=False`, so the hints are the
mount's pointing (RA/DEC keywords) and the optics (FOCALLEN, XPIXSZ) only; one frame is also solved blind.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from astrod.core.stars import StarList
from astrod.errors import SolveError
from astrod.io.fits import read_fits_header
from astrod.io.frames import read_frame
from astrod.model import FrameMeta
from astrod.pipeline.solving import SolveHints, describe_wcs, wcs_from_cards, without_wcs
from astrod.service.solver import (
    SolverSettings,
    detect_for_solving,
    missing_solver,
    solve_frame,
    solve_stars,
    wcs_copy_name,
)

MISSING = missing_solver()
needs_solver = pytest.mark.skipif(MISSING is not None, reason=f"plate solver unavailable: {MISSING}")


@pytest.fixture
def seestar(shared_data: Path) -> list[Path]:
    folder = shared_data / "seestar_s50_ngc7023_wcs"
    frames = sorted(folder.glob("*.fit"))
    if len(frames) != 4:
        pytest.skip(f"{folder}: the four Seestar frames are absent")
    return frames


def _separation_arcsec(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    s = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((r2 - r1) / 2) ** 2
    return math.degrees(2 * math.asin(math.sqrt(s))) * 3600.0


def _angle_diff(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


@needs_solver
def test_seestar_solutions_agree_with_astap(seestar: list[Path]) -> None:
    """Each of the four NGC 7023 frames, solved from a header without its WCS, agrees with ASTAP's WCS: centre
    within 5″, scale within 0.5 %, rotation within 0.1°, same mirroring."""
    for path in seestar:
        frame = read_frame(path)
        header = read_fits_header(path)
        astap = describe_wcs(wcs_from_cards(header), width=frame.meta.width, height=frame.meta.height)
        stripped = without_wcs(header)
        assert not any(k.startswith(("CRVAL", "CD", "PC", "CTYPE")) for k in stripped)
        result = solve_frame(frame.data, frame.meta, stripped, settings=SolverSettings(), name=path.name,
                             use_wcs_hints=False)
        assert _separation_arcsec(result.ra, result.dec, astap[0], astap[1]) < 5.0, path.name
        assert abs(result.scale_arcsec / astap[2] - 1.0) < 0.005, path.name
        assert _angle_diff(result.rotation_deg, astap[3]) < 0.1, path.name
        assert result.mirrored is astap[4]
        assert result.index.startswith("index-tycho2-")
        assert result.width_deg == pytest.approx(1080 * result.scale_arcsec / 3600.0)
        keys = {c[0] for c in result.cards}
        assert {"CTYPE1", "CRVAL1", "CD1_1", "A_ORDER"} <= keys  # SIP fitted


@needs_solver
@pytest.mark.slow
def test_seestar_frame_solves_blind(seestar: list[Path]) -> None:
    """With no hint at all (no position, no scale) the first frame still solves to ASTAP's centre and scale."""
    frame = read_frame(seestar[0])
    header = read_fits_header(seestar[0])
    astap = describe_wcs(wcs_from_cards(header), width=frame.meta.width, height=frame.meta.height)
    stars = detect_for_solving(frame.data, frame.meta, max_stars=300)
    result = solve_stars(stars, SolveHints(), settings=SolverSettings(timeout_s=120), name="blind")
    assert _separation_arcsec(result.ra, result.dec, astap[0], astap[1]) < 5.0
    assert abs(result.scale_arcsec / astap[2] - 1.0) < 0.005


@needs_solver
@pytest.mark.slow
def test_time_limit_is_reported(seestar: list[Path]) -> None:
    """A blind solve given one second gives up and says it reached the time limit."""
    frame = read_frame(seestar[0])
    stars = detect_for_solving(frame.data, frame.meta, max_stars=300)
    with pytest.raises(SolveError, match=r"time limit \(1 s\) reached"):
        solve_stars(stars, SolveHints(), settings=SolverSettings(timeout_s=1, blind_timeout_s=1), name="f.fits")


def _star_list(n: int, *, width: int = 1000, height: int = 800) -> StarList:
    rng = np.random.default_rng(1)
    z = np.zeros(n)
    return StarList(x=rng.uniform(0, width, n), y=rng.uniform(0, height, n), flux=np.sort(rng.uniform(1, 9, n))[::-1],
                    fwhm=z + 2, hfr=z + 1, eccentricity=z, n_detected=n, width=width, height=height)


@needs_solver
def test_too_few_stars_is_a_one_line_reason() -> None:
    """A frame with a handful of stars is not handed to the solver: the error names the count."""
    with pytest.raises(SolveError, match=r"^f.fits: only 6 stars detected"):
        solve_stars(_star_list(6), SolveHints(), settings=SolverSettings(), name="f.fits")


@needs_solver
def test_a_field_narrower_than_every_index_is_refused() -> None:
    """A hinted 8′ field is below the Tycho-2 indexes' smallest quads: the error says which files to add."""
    hints = SolveHints(scale_low=0.45, scale_high=0.5)
    with pytest.raises(SolveError, match=r"no index covers a 8′ field: add 2MASS/Gaia index files under \[solve\]"):
        solve_stars(_star_list(50), hints, settings=SolverSettings(), name="f.fits")


def test_missing_solver_program_is_named() -> None:
    """Without solve-field the error says what to install."""
    settings = SolverSettings(program="astrod-no-such-solve-field")
    assert "astrod-no-such-solve-field is not installed" in (missing_solver(settings) or "")
    with pytest.raises(SolveError, match="cannot solve: astrod-no-such-solve-field is not installed"):
        solve_stars(_star_list(50), SolveHints(), settings=settings, name="f.fits")


def test_copy_names_drop_the_frame_extension() -> None:
    """NAME.fits, NAME.fit, NAME.fits.gz and NAME.cr2 all become NAME.wcs.fits."""
    assert wcs_copy_name(Path("/a/Light 1.fit")) == "Light 1.wcs.fits"
    assert wcs_copy_name(Path("m31.FITS")) == "m31.wcs.fits"
    assert wcs_copy_name(Path("m31.fits.gz")) == "m31.wcs.fits"
    assert wcs_copy_name(Path("IMG_1.CR2")) == "IMG_1.wcs.fits"


@needs_solver
@pytest.mark.parametrize("mirrored", [False, True])
def test_synthetic_frame_of_the_real_sky_solves_to_its_wcs(mirrored: bool) -> None:
    """A 1920×1080 frame rendered from the index files' Tycho-2 stars through a known WCS (2.4″/px, rotated 23°,
    plain or mirrored) solves to that WCS: every point of the frame within 1″."""
    from astrod.demo.sky import catalogue_frame, tan_header

    header = tan_header(ra=83.82, dec=-5.39, scale_arcsec=2.4, rotation_deg=23.0, width=1920, height=1080,
                        mirrored=mirrored)
    frame = catalogue_frame(header, width=1920, height=1080, seed=5)
    assert frame.stars >= 20
    stars = detect_for_solving(frame.data, FrameMeta(), max_stars=300)
    hints = SolveHints(ra=84.5, dec=-5.0, scale_low=2.0, scale_high=2.8)
    result = solve_stars(stars, hints, settings=SolverSettings(), name="synthetic")
    grid = np.array([[x, y] for x in np.linspace(0, 1919, 7) for y in np.linspace(0, 1079, 5)])
    solved = result.wcs().all_pix2world(grid, 0)
    truth = wcs_from_cards(header).all_pix2world(grid, 0)
    errors = [_separation_arcsec(a[0], a[1], b[0], b[1]) for a, b in zip(solved, truth, strict=True)]
    assert max(errors) < 1.0
    assert result.mirrored is mirrored
    assert _angle_diff(result.rotation_deg, 23.0) < 0.05


@needs_solver
def test_catalogue_stars_come_from_the_index_files() -> None:
    """The index files' stars around the Orion nebula, each once, brightest first, all within the radius."""
    from astrod.service.solver import catalogue_stars

    stars = catalogue_stars(83.82, -5.39, 1.0)
    assert len(stars) > 50
    assert np.all(np.diff(stars.mag) >= 0)
    assert max(_separation_arcsec(83.82, -5.39, r, d) for r, d in zip(stars.ra, stars.dec, strict=True)) <= 3600.1
    assert len({(round(r, 6), round(d, 6)) for r, d in zip(stars.ra, stars.dec, strict=True)}) == len(stars)


def test_solution_goes_into_the_products_on_disk(tmp_path: Path) -> None:
    """The stack (reference grid) and the preview (2× block mean) on disk get the solution, each on its own grid,
    with their pixels and other cards kept; a cropped product and a missing one are left alone."""
    from astrod.demo.sky import tan_header
    from astrod.io.fits import write_fits
    from astrod.pipeline.solving import solve_result
    from astrod.service.solver import solution_into_products

    truth = tan_header(ra=83.82, dec=-5.39, scale_arcsec=2.4, rotation_deg=23.0, width=400, height=300)
    result = solve_result(truth, width=400, height=300, index="index-4107.fits", stars=50, seconds=1.0)
    stack = write_fits(tmp_path / "stack.fits", np.ones((3, 300, 400), dtype=np.float32), {"OBJECT": "M 42"})
    preview = write_fits(tmp_path / "preview.fits", np.full((150, 200), 2.0, dtype=np.float32),
                         {"CRVAL1": (1.0, "an old WCS")})
    cropped = write_fits(tmp_path / "final.fits", np.zeros((280, 390), dtype=np.float32), {})
    done = solution_into_products([stack, preview, cropped, tmp_path / "absent.fits"], result,
                                  frame_shape=(300, 400))
    assert done == [stack, preview]
    stack_header, preview_header = read_fits_header(stack), read_fits_header(preview)
    assert stack_header["OBJECT"] == "M 42" and stack_header["CRVAL1"] == pytest.approx(83.82)
    assert preview_header["CRVAL1"] == pytest.approx(83.82) and preview_header["CD1_2"] == pytest.approx(
        2 * truth["CD1_2"])
    assert "CRVAL1" not in read_fits_header(cropped)
    assert float(read_frame(preview).data.mean()) == 2.0


@needs_solver
def test_solve_path_solves_a_reference_frame_without_writing(seestar: list[Path], tmp_path: Path) -> None:
    """The background solve of a reference reads the frame as it is on disk and writes nothing beside it."""
    from astrod.service.solver import solve_path

    before = sorted(p.name for p in seestar[0].parent.iterdir())
    result = solve_path(seestar[1], settings=SolverSettings(), use_wcs_hints=False, previous_scale=2.37)
    assert result.scale_arcsec == pytest.approx(2.374, rel=0.005)
    assert sorted(p.name for p in seestar[0].parent.iterdir()) == before
