"""End-to-end tests of ``astrod stack``: synthetic nights with known truth, through the command line."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from scipy.spatial import cKDTree

from astrod import __version__
from astrod.config import Config
from astrod.model import Transform
from astrod.pipeline import commands
from astrod.pipeline.commands import settings_for
from astrod.pipeline.live import TABLE_COLUMNS
from tests import synth
from tests.pipeline.conftest import (
    SIZE,
    CalibratedNight,
    aperture_flux,
    block_noise,
    grid_rms,
    read_stack,
    read_table,
    run_cli,
    table_transform,
)


def _rows_by_name(table: Path) -> dict[str, dict[str, str]]:
    return {Path(r["path"]).name: r for r in read_table(table)}


# ------------------------------------------------------------------------------------------ the calibrated night


def test_stack_header_records_provenance(calibrated_night: CalibratedNight) -> None:
    """The stack is float32 with NCOMBINE, total exposure, method, κ, rejected frames, masters and version."""
    image, header = read_stack(calibrated_night.stack)
    assert image.shape == (SIZE, SIZE)
    assert header["BITPIX"] == -32
    assert header["NCOMBINE"] == 14
    assert header["EXPTOTAL"] == pytest.approx(14 * 60.0)
    assert header["STACKMTH"] == "winsorized"
    assert header["KAPPA"] == 3.0
    assert header["NREJECT"] == 3
    assert header["CREATOR"] == f"astrod {__version__}"
    masters = {p.name for p in (calibrated_night.root / "lib").rglob("*.fits")}
    used = {str(line)[len("master: "):] for line in header["HISTORY"] if str(line).startswith("master: ")}
    assert header["NMASTERS"] == len(used) >= 2
    assert used <= masters
    assert any(name.startswith("dark") for name in used) and any(name.startswith("flat") for name in used)


def test_frames_table_lists_every_frame_with_its_reason(calibrated_night: CalibratedNight) -> None:
    """The table has the issue's columns; the frame without stars, the cloudy and the trailed frame are rejected
    with their reasons, every good frame is stacked."""
    rows = read_table(calibrated_night.table)
    assert tuple(rows[0].keys()) == TABLE_COLUMNS
    by_name = {Path(r["path"]).name: r for r in rows}
    assert len(rows) == 17
    for path in calibrated_night.lights:
        assert by_name[path.name]["status"] == "stacked"
        assert by_name[path.name]["reason"] == ""
    reasons = {kind: by_name[p.name]["reason"] for kind, p in calibrated_night.bad.items()}
    assert all(by_name[p.name]["status"] == "rejected" for p in calibrated_night.bad.values())
    assert reasons["nostars"] == "no stars detected"
    assert reasons["cloudy"].startswith("background ")
    assert "eccentricity" in reasons["trailed"]
    assert float(by_name[calibrated_night.bad["trailed"].name]["eccentricity"]) > 0.7


def test_stack_noise_is_close_to_the_sqrt_n_ideal(calibrated_night: CalibratedNight) -> None:
    """Noise of the stack (residual against the truth scene away from stars, at 8-px scale) is within 10 % of
    one calibrated frame's noise over √N_eff (N_eff from the table's weights)."""
    session = calibrated_night.session
    model = session.reference_scene(sky=True).astype(np.float64)
    near_stars = session.reference_scene(sky=False) > 0.5
    stack, _ = read_stack(calibrated_night.stack)
    single, _ = read_stack(calibrated_night.single)
    rows = [r for r in read_table(calibrated_night.table) if r["status"] == "stacked"]
    w = np.array([float(r["weight"]) for r in rows])
    n_eff = w.sum() ** 2 / np.sum(w**2)
    assert n_eff > 13.0
    ideal = block_noise(single - model, mask=near_stars) / math.sqrt(n_eff)
    assert block_noise(stack - model, mask=near_stars) == pytest.approx(ideal, rel=0.10)


def test_satellite_trail_and_cosmic_rays_are_gone(calibrated_night: CalibratedNight) -> None:
    """Where frame 3 had a satellite trail and frame 6 cosmic rays, the stack equals the stack of the same frames
    without them within the noise; a plain mean keeps the trail (so the defects were there to remove)."""
    stack, _ = read_stack(calibrated_night.stack)
    clean, _ = read_stack(calibrated_night.clean_stack)
    model = calibrated_night.session.reference_scene(sky=True).astype(np.float64)
    res = clean - model
    sigma = 1.4826 * float(np.median(np.abs(res - np.median(res))))
    diff = stack - clean
    trail, cosmic = calibrated_night.trail_mask, calibrated_night.cosmic_mask
    assert np.max(np.abs(diff[trail])) < 5 * sigma
    assert abs(float(np.mean(diff[trail]))) < 0.2 * sigma
    assert np.max(np.abs(diff[cosmic])) < 5 * sigma

    out = calibrated_night.root / "out" / "mean.fits"
    assert run_cli("stack", calibrated_night.root / "lights", "--library", calibrated_night.root / "lib",
                   "-o", out, "--method", "mean") == 0
    mean, _ = read_stack(out)
    assert float(np.mean((mean - clean)[trail])) > 10 * sigma


def test_star_fluxes_are_preserved(calibrated_night: CalibratedNight) -> None:
    """Aperture fluxes of bright isolated stars in the stack match the truth scene's within 0.5 % (the frames'
    scales differ by up to ±0.5 %: resampling alone would change fluxes by the area ratio)."""
    session = calibrated_night.session
    cat = session.catalogue
    nearest, _ = cKDTree(cat.xy).query(cat.xy, k=2)
    inside = (cat.x > 30) & (cat.x < SIZE - 30) & (cat.y > 30) & (cat.y < SIZE - 30)
    sel = inside & (nearest[:, 1] > 12) & (cat.flux > 3e4)
    assert sel.sum() >= 20
    model = session.reference_scene(sky=True).astype(np.float64)
    sky = session.reference_scene(sky=False) < 0.5
    stack, _ = read_stack(calibrated_night.stack)
    ratio = aperture_flux(stack, cat.xy[sel], sky=sky) / aperture_flux(model, cat.xy[sel], sky=sky)
    assert float(np.median(ratio)) == pytest.approx(1.0, abs=0.005)


def test_preview_is_a_stretched_image_of_the_stack(calibrated_night: CalibratedNight) -> None:
    """The preview PNG decodes to an 8-bit grey image of the stack's size, dark sky and bright stars."""
    img = cv2.imdecode(np.fromfile(calibrated_night.preview, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.dtype == np.uint8 and img.shape == (SIZE, SIZE)
    x, y = calibrated_night.session.catalogue.xy[np.argmax(calibrated_night.session.catalogue.flux)]
    assert img[round(y), round(x)] > 200 > np.median(img) > 5


# ------------------------------------------------------------------------------------------ registration


@pytest.fixture(scope="module")
def turning_night(tmp_path_factory: pytest.TempPathFactory) -> tuple[synth.Session, list[Path], Path]:
    """12 frames with shifts up to ±50 px, rotations of any angle, a meridian flip at frame 6, scale ±0.5 %,
    stacked without calibration."""
    root = tmp_path_factory.mktemp("turning")
    session = synth.make_session(n_frames=12, width=SIZE, height=SIZE, seed=21, max_shift=50.0,
                                 max_rotation_deg=180.0, meridian_flip_at=6, scale_jitter=0.005)
    paths = session.write(root / "lights")
    assert run_cli("stack", root / "lights", "-o", root / "stack.fits", "--frames-table", root / "frames.csv",
                   "--method", "online") == 0
    return session, paths, root / "frames.csv"


def test_registration_matches_the_truth(turning_night: tuple[synth.Session, list[Path], Path]) -> None:
    """The table's transforms (frame -> reference) agree with the true ones within 0.05 px RMS over the frame,
    and are no worse than astroalign's on the same frames."""
    session, paths, table = turning_night
    rows = _rows_by_name(table)
    errors = []
    for path, truth in zip(paths, session.truths, strict=True):
        row = rows[path.name]
        assert row["status"] == "stacked", row["reason"]
        errors.append(grid_rms(table_transform(row), truth.transform, width=SIZE, height=SIZE))
    rms = math.sqrt(float(np.mean(np.square(errors))))
    assert rms <= 0.05

    astroalign = pytest.importorskip("astroalign")
    reference = session.frames[0]
    aa_errors = []
    for data, truth in list(zip(session.frames, session.truths, strict=True))[1:]:
        found, _ = astroalign.find_transform(data, reference)
        aa_errors.append(grid_rms(Transform.from_array(found.params), truth.transform, width=SIZE, height=SIZE))
    aa_rms = math.sqrt(float(np.mean(np.square(aa_errors))))
    assert math.sqrt(float(np.mean(np.square(errors[1:])))) <= aa_rms


def test_reference_option_sets_the_reference(tmp_path: Path,
                                             turning_night: tuple[synth.Session, list[Path], Path]) -> None:
    """With --reference, that frame comes first with the identity and the others map onto it:
    T_i→ref = T_ref⁻¹ ∘ T_i of the truth."""
    session, paths, _ = turning_night
    ref_index = 7
    table = tmp_path / "frames.csv"
    assert run_cli("stack", *paths[:4], "--reference", paths[ref_index], "-o", tmp_path / "s.fits",
                   "--frames-table", table, "--method", "mean") == 0
    rows = read_table(table)
    assert Path(rows[0]["path"]).name == paths[ref_index].name
    assert float(rows[0]["dx"]) == 0.0 and float(rows[0]["rotation_deg"]) == 0.0
    to_ref = session.truths[ref_index].transform.inverse()
    for row, i in zip(rows[1:], range(4), strict=True):
        truth = session.truths[i].transform.compose(to_ref)
        assert grid_rms(table_transform(row), truth, width=SIZE, height=SIZE) < 0.1


# ------------------------------------------------------------------------------------------ colour


def test_bayer_session_gives_a_colour_stack(tmp_path: Path) -> None:
    """A Bayer (RGGB) session stacks into a (3, H, W) cube in R, G, B order: star flux ratios between planes
    follow the sensor's quantum efficiencies, and at star edges the QE-normalised planes agree within the noise."""
    sensor = synth.Sensor(width=SIZE, height=SIZE, seed=31, bayer="RGGB", vignetting=0.0, dust=0)
    session = synth.make_session(n_frames=10, width=SIZE, height=SIZE, seed=32, sensor=sensor, max_shift=20.0,
                                 max_rotation_deg=2.0, n_stars=120, flux_min=2e4, flux_max=1e6, fwhm=3.5)
    session.write(tmp_path / "lights")
    out = tmp_path / "colour.fits"
    assert run_cli("stack", tmp_path / "lights", "-o", out, "--preview", tmp_path / "colour.png") == 0
    cube, header = read_stack(out)
    assert cube.shape == (3, SIZE, SIZE)
    assert header["PLANES"] == "R,G,B"
    preview = cv2.imdecode(np.fromfile(tmp_path / "colour.png", dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    assert preview.shape == (SIZE, SIZE, 3)

    assert sensor.qe is not None
    qe = np.asarray(sensor.qe, dtype=np.float64)
    cat = session.catalogue
    nearest, _ = cKDTree(cat.xy).query(cat.xy, k=2)
    sel = (cat.x > 30) & (cat.x < SIZE - 30) & (cat.y > 30) & (cat.y < SIZE - 30) & (nearest[:, 1] > 16)
    sel &= cat.flux > 5e4
    assert sel.sum() >= 8
    sky = session.reference_scene(sky=False) < 0.5
    flux = np.stack([aperture_flux(cube[c], cat.xy[sel], sky=sky) for c in range(3)])
    assert np.median(flux[0] / flux[1]) == pytest.approx(qe[0] / qe[1], rel=0.02)
    assert np.median(flux[2] / flux[1]) == pytest.approx(qe[2] / qe[1], rel=0.02)

    # Fringes: the QE-normalised red (blue) plane minus green, averaged over each star's edge ring (1.5–4 px).
    # What noise alone gives is measured by stacking the two halves of the session apart: a colour error of the
    # pipeline is common to both and cancels in their difference, noise does not.
    paths = sorted((tmp_path / "lights").glob("*.fits"))
    halves = (tmp_path / "h1.fits", tmp_path / "h2.fits")
    assert run_cli("stack", *paths[:5], "-o", halves[0], "--method", "mean") == 0
    assert run_cli("stack", *paths[5:], "--reference", paths[0], "-o", halves[1], "--method", "mean") == 0
    h1, _ = read_stack(halves[0])
    h2, _ = read_stack(halves[1])
    for c in (0, 2):
        full = _edge_colour(cube, qe, c, cat.xy[sel])
        noise = (_edge_colour(h1, qe, c, cat.xy[sel]) - _edge_colour(h2, qe, c, cat.xy[sel])) / 2
        assert math.sqrt(np.mean(full**2)) < 2.5 * math.sqrt(np.mean(noise**2))


def _edge_colour(cube: npt.NDArray[np.float64], qe: npt.NDArray[np.float64], c: int,
                 xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Mean of (plane c − green), each divided by its QE, over a ring 1.5–4 px around each star."""
    diff = (cube[c] - np.median(cube[c])) / qe[c] - (cube[1] - np.median(cube[1])) / qe[1]
    yy, xx = np.mgrid[0:cube.shape[1], 0:cube.shape[2]]
    out = []
    for x, y in xy:
        r = np.hypot(xx - x, yy - y)
        out.append(float(np.mean(diff[(r >= 1.5) & (r <= 4.0)])))
    return np.asarray(out)


# ------------------------------------------------------------------------------------------ command behaviour


def test_unreadable_and_calibration_files_are_rejected_rows(tmp_path: Path) -> None:
    """A corrupt file and a dark frame among the lights are rows of the table with their reasons; the stack is
    still written."""
    session = synth.make_session(n_frames=3, width=256, height=256, seed=41, max_shift=10.0)
    paths = session.write(tmp_path / "in")
    (tmp_path / "in" / "broken.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    synth.write_fits(tmp_path / "in" / "dark.fits", session.sensor.dark(exposure=60.0, temperature=-10.0, seed=1),
                     kind="dark")
    table = tmp_path / "t.csv"
    assert run_cli("stack", tmp_path / "in", "-o", tmp_path / "s.fits", "--frames-table", table) == 0
    rows = _rows_by_name(table)
    assert all(rows[p.name]["status"] == "stacked" for p in paths)
    assert rows["broken.fits"]["status"] == "rejected" and "broken.fits" in rows["broken.fits"]["reason"]
    assert rows["dark.fits"]["reason"] == "a dark frame, not a light"


def test_exit_status_when_nothing_can_be_stacked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No input files: exit 2; only frames without stars: exit 1 and no stack file."""
    (tmp_path / "empty").mkdir()
    assert run_cli("stack", tmp_path / "empty", "-o", tmp_path / "a.fits") == 2
    sensor = synth.Sensor(width=128, height=128, seed=3)
    sky = np.full((128, 128), 100.0, dtype=np.float32)
    synth.write_fits(tmp_path / "blank" / "b.fits", sensor.light(sky, exposure=60.0, temperature=-10.0, seed=2))
    assert run_cli("stack", tmp_path / "blank", "-o", tmp_path / "b.fits") == 1
    assert not (tmp_path / "b.fits").exists()
    assert "no frame was stacked" in capsys.readouterr().err


def test_method_option_maps_onto_settings() -> None:
    """--method mean is the plain mean, online the live κσ stack, others a final re-integration; --kappa wins."""
    config = Config()
    assert math.isinf(settings_for(config, method="mean", kappa=None).kappa)
    assert settings_for(config, method="online", kappa=None).final_rejection == "none"
    assert settings_for(config, method=None, kappa=None).final_rejection == "winsorized"
    s = settings_for(config, method="sigma", kappa=2.5)
    assert (s.final_rejection, s.kappa) == ("sigma", 2.5)


def test_the_prepared_masters_stay_in_the_library_for_the_next_stack(calibrated_night: CalibratedNight,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A stack leaves its prepared masters whole in the library's `.prepared` folder; the next stack with the same
    masters maps them (not written again) and stacks the same; a library it cannot write to is not needed."""
    root = calibrated_night.root
    (prepared,) = (root / "lib" / ".prepared").iterdir()
    assert (prepared / "prepared.npz").is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in prepared.glob("*.f32")}
    assert stamps
    again = root / "out" / "again.fits"
    assert run_cli("stack", root / "clean", "--library", root / "lib", "-o", again) == 0
    assert {p.name: p.stat().st_mtime_ns for p in prepared.glob("*.f32")} == stamps
    clean, _ = read_stack(calibrated_night.clean_stack)
    np.testing.assert_array_equal(read_stack(again)[0], clean)

    monkeypatch.setattr(commands, "writable_folder", lambda folder: False)  # a read-only shared library
    elsewhere = root / "out" / "elsewhere.fits"
    assert run_cli("stack", root / "clean", "--library", root / "lib", "-o", elsewhere) == 0
    np.testing.assert_array_equal(read_stack(elsewhere)[0], clean)
    assert list((root / "lib" / ".prepared").iterdir()) == [prepared]
    assert not list((root / "out").glob(".astrod-stack-*")), "the run's own scratch folder was left behind"
