"""`astrod photometry` on FITS files: the light curve's CSV and plot, and its exit statuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from astrod.cli import main
from astrod.demo.synth import write_fits
from astrod.demo.transit import make_transit_sequence
from astrod.io.lightcurves import read_lightcurve
from astrod.pipeline.photometry import CSV_COLUMNS


@pytest.fixture(scope="module")
def lights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[float, float], list[np.ndarray]]:
    folder = tmp_path_factory.mktemp("lights")
    seq = make_transit_sequence(seed=3, n_frames=8, width=256, height=256, n_field=40)
    x0, y0 = seq.target_xy
    # the first frame carries a TAN WCS with the target at RA 286.04, Dec 36.63 (a plate solution's)
    wcs = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": x0 + 1.0, "CRPIX2": y0 + 1.0, "CRVAL1": 286.04,
           "CRVAL2": 36.63, "CD1_1": -3e-4, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 3e-4}
    for i, raw in enumerate(seq.frames):
        write_fits(folder / f"t_{i:03d}.fits", raw, exposure=seq.exposure, date_obs=seq.starts[i],
                   egain=seq.sensor.gain, object="T", filter="V", extra=wcs if i == 0 else None)
    truth = [t.inverse().apply([seq.target_xy])[0] + 1.0 for t in seq.transforms]
    return folder, seq.target_xy, truth


def test_photometry_writes_the_light_curve_and_its_plot(lights, tmp_path: Path) -> None:
    """Eight frames, a target by 1-based pixel position with coordinates and a site: the CSV has the comment
    line naming the comparisons and the aperture, every required column, one row per frame with BJD_TDB and
    airmass and the target's position following the field's drift; the plot is a PNG."""
    folder, (x, y), truth = lights
    out, plot = tmp_path / "out" / "lc.csv", tmp_path / "out" / "lc.png"
    code = main(["photometry", str(folder), "--target", f"T@{x + 1:.2f},{y + 1:.2f}",
                 "--target-coords", "286.04,36.63", "--site", "38.99,-76.96,50", "-o", str(out), "--plot", str(plot)])
    assert code == 0
    comment, rows = read_lightcurve(out)
    assert comment.startswith("# target T at") and "aperture r=" in comment and "C1@" in comment
    assert list(rows[0]) == list(CSV_COLUMNS) and len(rows) == 8
    assert all(r["bjd_tdb"] and r["airmass"] and float(r["rel_flux"]) > 0 for r in rows)
    xy = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    assert np.abs(xy - np.array(truth)).max() < 0.15
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_target_by_coordinates_is_placed_by_the_reference_frames_wcs(lights, tmp_path: Path) -> None:
    """``--target NAME=RA,DEC`` with a WCS in the first frame's header: the target is measured where that WCS
    puts it (following the drift in later frames), and its own coordinates give BJD_TDB."""
    folder, _, truth = lights
    out = tmp_path / "lc.csv"
    assert main(["photometry", str(folder), "--target", "T=286.04,36.63", "--site", "38.99,-76.96", "-o",
                 str(out)]) == 0
    _, rows = read_lightcurve(out)
    xy = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    assert np.abs(xy - np.array(truth)).max() < 0.15 and all(r["bjd_tdb"] for r in rows)


def test_bad_targets_and_empty_input_are_refused(lights, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A target that does not parse exits 2 with one error line; frames of which none can be measured exit 1."""
    folder, _, _ = lights
    assert main(["photometry", str(folder), "--target", "T", "-o", str(tmp_path / "a.csv")]) == 2
    assert "expected NAME@X,Y or NAME=RA,DEC" in capsys.readouterr().err
    assert main(["photometry", str(tmp_path / "none"), "--target", "T@1,1", "-o", str(tmp_path / "a.csv")]) == 1
    assert "no frame was stacked" in capsys.readouterr().err and not (tmp_path / "a.csv").exists()
