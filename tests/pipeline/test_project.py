"""Tests of astrod.pipeline.project: a target's stacks of several nights combined into one project stack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from astrod.core.background import background_mask
from astrod.io.fits import read_fits, write_fits
from astrod.model import Transform
from astrod.pipeline.project import PROJECTS, list_projects, rebuild_project
from astrod.pipeline.settings import FinishSettings
from tests import synth

W, H = 300, 220
SIGMA_600 = 6.0  # noise of a stack of 600 s of frames
NIGHTS = {"2026-11-19": (600.0, (0, 0), 300.0), "2026-11-20": (1200.0, (7, -4), 420.0),
          "2026-11-21": (2400.0, (-5, 9), 250.0)}  # exposure, whole-pixel offset of its grid, sky


def three_nights(output: Path) -> None:
    """One target seen on three nights: each night's stack is the same scene on its own grid (whole-pixel
    offsets, so that registration copies pixels and adds no interpolation smoothing to the noise), on that
    night's sky, with the noise of its total exposure (σ ∝ 1/√t)."""
    cat = synth.make_catalogue(width=W, height=H, n_stars=120, seed=31, margin=20.0, flux_min=1e4, flux_max=5e5)
    rng = np.random.default_rng(31)
    for night, (exposure, (dx, dy), sky) in NIGHTS.items():
        scene, _ = synth.render_stars(width=W, height=H, catalogue=cat, sky=sky, fwhm=3.0,
                                      transform=Transform.similarity(dx=dx, dy=dy))
        sigma = SIGMA_600 * np.sqrt(600.0 / exposure)
        image = (scene + rng.standard_normal(scene.shape) * sigma).astype(np.float32)
        folder = output / night / "M_31" / "L"
        folder.mkdir(parents=True)
        write_fits(folder / "stack.fits", image, {"EXPTOTAL": exposure, "NCOMBINE": int(exposure // 60),
                                                  "FILTER": "L", "OBJECT": "M 31", "DATE-OBS": f"{night}T21:00:00"})


def noise(image: np.ndarray) -> float:
    """Per-pixel noise of the sky: the MAD of horizontal neighbour differences on star-free pixels, /√2."""
    keep = background_mask(image)
    diff = np.diff(image, axis=1)[keep[:, 1:] & keep[:, :-1]]
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2.0))


def test_three_nights_reach_the_noise_of_their_total_exposure(tmp_path: Path) -> None:
    """The project stack's noise is within 10 % of the ideal for the total exposure (σ_600·√(600 / 4200)), its
    provenance names the three nights, and the finished picture is written beside it."""
    three_nights(tmp_path)
    assert list(list_projects(tmp_path)) == [("M_31", "L")]
    written = rebuild_project(tmp_path, "M_31", "L", FinishSettings(), formats=("fits", "jpg"))
    folder = tmp_path / PROJECTS / "M_31" / "L"
    assert {"stack.fits", "final.fits", "final.jpg"} <= {p.name for p in written}
    image, header = read_fits(folder / "stack.fits")
    inner = image[15:H - 15, 15:W - 15]  # where all three nights overlap
    ideal = SIGMA_600 * np.sqrt(600.0 / 4200.0)
    assert noise(inner) == pytest.approx(ideal, rel=0.10)
    assert header["NNIGHTS"] == 3 and header["EXPTOTAL"] == 4200.0 and header["NCOMBINE"] == 70
    nights = [str(h) for h in header["HISTORY"] if str(h).startswith("night: ")]
    assert nights == [f"night: {n}/stack.fits" for n in NIGHTS]


def test_one_night_is_no_project(tmp_path: Path) -> None:
    """A target seen on one night only has no project stack."""
    three_nights(tmp_path)
    for night in ("2026-11-20", "2026-11-21"):
        (tmp_path / night / "M_31" / "L" / "stack.fits").unlink()
    assert rebuild_project(tmp_path, "M_31", "L", FinishSettings()) == []
    assert not (tmp_path / PROJECTS).exists()


def test_project_commands_and_the_update_after_a_close(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`astrod project list` shows the target with its three nights and exposure; `astrod project rebuild M_31`
    builds it; after a session of it closes (`update_project` with the session's folder) it is rebuilt, and a
    failure (a night whose stack cannot be registered) is logged, not raised."""
    from astrod.pipeline.project import update_project
    from tests.pipeline.conftest import run_cli

    output = tmp_path / "stacks"
    three_nights(output)
    config = tmp_path / "astrod.toml"
    config.write_text('[paths]\noutput = "stacks"\n', encoding="utf-8")
    assert run_cli("project", "list", "--config", config) == 0
    assert "M_31/L: 3 night(s), 1.17 h (2026-11-19, 2026-11-20, 2026-11-21) - not built yet" in capsys.readouterr().out
    assert run_cli("project", "rebuild", "M_31", "--config", config) == 0
    assert "M_31/L: stack.fits" in capsys.readouterr().out
    assert (output / PROJECTS / "M_31" / "L" / "final.fits").is_file()
    session = output / "2026-11-21" / "M_31" / "L"
    assert any(p.name == "stack.fits" for p in update_project(session, FinishSettings()))
    write_fits(session / "stack.fits", np.zeros((H, W), np.float32), {"EXPTOTAL": 60.0, "NCOMBINE": 1})
    assert update_project(session, FinishSettings()) == []
