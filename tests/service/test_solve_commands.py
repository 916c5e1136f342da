"""`astrod solve`: a copy of each frame with its WCS, the solution printed (or as JSON), the source untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from astrod.cli import main
from astrod.service.solve_commands import JSON_FIELDS
from astrod.service.solver import missing_solver

MISSING = missing_solver()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"plate solver unavailable: {MISSING}")


@pytest.fixture
def seestar_frame(shared_data: Path, tmp_path: Path) -> Path:
    source = shared_data / "seestar_s50_ngc7023_wcs" / "Light_NGC 7023_10.0s_IRCUT_20240730-224436.fit"
    if not source.is_file():
        pytest.skip(f"{source} is absent")
    frame = tmp_path / "frames" / source.name  # a copy: the command writes beside its frame by default
    frame.parent.mkdir()
    shutil.copyfile(source, frame)
    return frame


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_solve_writes_a_copy_beside_the_frame(seestar_frame: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """By default the copy is NAME.wcs.fits beside the frame, with the new WCS and the frame's pixels; the
    printed line gives centre, scale, rotation, field and index; the frame is unchanged."""
    before = _digest(seestar_frame)
    assert main(["solve", str(seestar_frame)]) == 0
    out = capsys.readouterr().out
    copy = seestar_frame.with_name("Light_NGC 7023_10.0s_IRCUT_20240730-224436.wcs.fits")
    assert _digest(seestar_frame) == before
    assert "centre RA 21:01:4" in out and "Dec +68:07:" in out and '2.374"/px' in out
    assert "E of N" in out and "index index-tycho2-" in out and str(copy) in out
    with fits.open(copy) as hdul, fits.open(seestar_frame) as src:
        h = hdul[0].header
        assert h["CTYPE1"] == "RA---TAN-SIP" and h["PLTSOLVD"] is True and "PC1_1" not in h
        assert h["OBJECT"] == "NGC 7023"
        np.testing.assert_array_equal(hdul[0].data, src[0].data)


def test_solve_json_into_a_folder(seestar_frame: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With -o DIR the copy goes there; --json prints one array of objects with every documented field."""
    out_dir = tmp_path / "solved"
    assert main(["solve", str(seestar_frame), "-o", str(out_dir), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 1 and tuple(records[0]) == JSON_FIELDS
    record = records[0]
    assert record["error"] is None and record["path"] == str(seestar_frame)
    assert Path(record["output"]).parent == out_dir and Path(record["output"]).is_file()
    assert record["ra"] == pytest.approx(315.4433, abs=0.002) and record["dec"] == pytest.approx(68.1263, abs=0.002)
    assert record["scale_arcsec"] == pytest.approx(2.374, rel=0.005)
    assert record["width_deg"] == pytest.approx(0.712, rel=0.01) and record["seconds"] > 0
    assert not any(p.name.endswith(".wcs.fits") for p in seestar_frame.parent.iterdir())


def test_unsolvable_frame_exits_1_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A frame of noise cannot be solved: exit 1, one line naming the file and the cause, and no copy."""
    frame = tmp_path / "noise.fits"
    rng = np.random.default_rng(3)
    fits.PrimaryHDU(data=rng.normal(1000, 10, (300, 400)).astype(np.float32)).writeto(frame)
    assert main(["solve", str(frame)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and str(frame) in err[0] and "stars detected" in err[0]
    assert not (tmp_path / "noise.wcs.fits").exists()


def test_a_frame_too_small_for_detection_is_a_one_line_error(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A 6×6 frame cannot be binned for detection: exit 1 with the reason, no traceback."""
    frame = tmp_path / "tiny.fits"
    fits.PrimaryHDU(data=np.ones((6, 6), dtype=np.float32)).writeto(frame)
    assert main(["solve", str(frame), "--json"]) == 1
    records = json.loads(capsys.readouterr().out)
    assert records[0]["output"] is None and "cannot detect stars" in records[0]["error"]
