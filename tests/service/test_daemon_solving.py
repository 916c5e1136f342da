"""The daemon plate-solves a session's reference frame in the background and its products carry the WCS: the real
Seestar S50 frames of the shared data (raw GRBG subs, each with the WCS ASTAP solved), stacked live by a real
daemon with the real solve-field. The stack is on the reference frame's grid, so its WCS must put every pixel
where ASTAP's WCS of that frame does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astrod.pipeline.solving import is_wcs_key
from astrod.service.solver import missing_solver
from tests.service.daemon_harness import DaemonProcess, Observatory

MISSING = missing_solver()


@pytest.fixture
def seestar(shared_data: Path) -> list[Path]:
    frames = sorted((shared_data / "seestar_s50_ngc7023_wcs").glob("*.fit"))
    if len(frames) != 4:
        pytest.skip("the four Seestar frames of the shared data are absent")
    return frames


def _without_wcs(source: Path, target: Path) -> Path:
    """A copy of a frame whose header has no WCS: the daemon must find its own, not read ASTAP's."""
    with fits.open(source) as hdul:
        header = hdul[0].header.copy()
        for key in [k for k in header if is_wcs_key(k)]:
            del header[key]
        fits.PrimaryHDU(hdul[0].data, header).writeto(target)
    return target


@pytest.mark.slow
@pytest.mark.skipif(MISSING is not None, reason=f"plate solver unavailable: {MISSING}")
def test_stack_and_preview_carry_the_reference_frames_wcs(obs: Observatory, seestar: list[Path],
                                                         tmp_path: Path) -> None:
    obs.write_config(extra="[solve]\nenabled = true\n")
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        for path in seestar:
            obs.publish(_without_wcs(path, tmp_path / path.name), f"Lights/{path.name}")
        obs.wait_for(lambda: list(obs.statuses().values()).count("stacked") == 4, timeout=180,
                     message=f"4 stacked frames, journal: {obs.statuses()}")
        obs.wait_for(lambda: "reference_solved" in daemon.log.read_text(encoding="utf-8"), timeout=120,
                     message="the reference frame solved")
        daemon.close_all()
        obs.wait_for(lambda: any(obs.stacks.rglob("session.json")), timeout=120, message="the closed session")
    finally:
        assert daemon.terminate() == 0
    (folder,) = {p.parent for p in obs.stacks.rglob("session.json")}
    header = fits.getheader(folder / "stack.fits")
    assert header["PLTSOLVD"] is True
    reference = next(p for p in seestar if p.name == header["REFFRAME"])
    astap = WCS(fits.getheader(reference))
    ours = WCS(header, naxis=2)  # the colour cube: the WCS of its image planes
    h, w = int(header["NAXIS2"]), int(header["NAXIS1"])
    grid = np.array([[x, y] for x in (0, w / 2, w - 1) for y in (0, h / 2, h - 1)], dtype=float)
    sky_ours = ours.all_pix2world(grid, 0)
    sky_astap = astap.all_pix2world(grid, 0)
    dra = (sky_ours[:, 0] - sky_astap[:, 0]) * np.cos(np.radians(sky_astap[:, 1]))
    ddec = sky_ours[:, 1] - sky_astap[:, 1]
    assert np.max(np.hypot(dra, ddec)) * 3600.0 < 5.0  # the 5″, over the whole field
    summary = json.loads((folder / "session.json").read_text())
    assert summary["wcs"]["index"] and abs(summary["wcs"]["scale_arcsec"] - 2.39) < 0.1
    preview = fits.getheader(folder / "preview.fits")
    assert preview["PLTSOLVD"] is True and "CRVAL1" in preview
