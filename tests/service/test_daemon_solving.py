"""The daemon plate-solves a session's reference frame in the background and its products carry the WCS: the real
Seestar S50 frames of the shared data (raw GRBG subs, each with the WCS ASTAP solved), stacked live by a real
daemon with the real solve-field. The stack is on the reference frame's grid, so its WCS must put every pixel
where ASTAP's WCS of that frame does.

The frames are published without their WCS and without OBJECT (the daemon must find both itself), the daemon is
killed with SIGKILL after the reference is solved and started again (the journaled solution is reused, the
reference is not solved again), and one more frame is the same field through a 10 % shorter focal length,
turned by 15°: star matching refuses its scale, so it is solved on its own and registered through the two
solutions. The preview JPEG is annotated ([solve] annotate)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astrod.io.catalogue import catalogue_missing
from astrod.pipeline.solving import describe_wcs, is_wcs_key
from astrod.service.solver import missing_solver
from tests.service.daemon_harness import DaemonProcess, Observatory

MISSING = missing_solver()
NO_CATALOGUE = catalogue_missing()
ZOOM, TURN_DEG = 0.9, 15.0  # the odd frame: its pixels see 1/0.9 as much sky, turned by 15°


@pytest.fixture
def seestar(shared_data: Path) -> list[Path]:
    frames = sorted((shared_data / "seestar_s50_ngc7023_wcs").glob("*.fit"))
    if len(frames) != 4:
        pytest.skip("the four Seestar frames of the shared data are absent")
    return frames


def _stripped(source: Path, target: Path, *, zoom: float = 1.0, turn_deg: float = 0.0) -> Path:
    """A copy of a frame whose header has no WCS and no OBJECT (the daemon must find its own, not read ASTAP's),
    optionally the same sky through other optics: each Bayer plane resampled by ``zoom`` and turned by
    ``turn_deg`` about the centre, scaled so that stars keep their flux (the sky per pixel grows)."""
    with fits.open(source) as hdul:
        header = hdul[0].header.copy()
        data = np.asarray(hdul[0].data, dtype=np.float32)
    for key in [k for k in header if is_wcs_key(k)] + ["OBJECT"]:
        del header[key]
    if zoom != 1.0 or turn_deg:
        out = np.empty_like(data)
        for dy in (0, 1):
            for dx in (0, 1):
                plane = data[dy::2, dx::2]
                h, w = plane.shape
                m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), turn_deg, zoom)
                out[dy::2, dx::2] = cv2.warpAffine(plane, m, (w, h), flags=cv2.INTER_LINEAR,
                                                   borderMode=cv2.BORDER_CONSTANT, borderValue=float(np.median(plane)))
        data = np.clip(out / zoom**2, 0, 65535)
        header["DATE-OBS"] = "2024-07-31T02:45:30.000000"
    header.pop("BZERO", None)
    header.pop("BSCALE", None)
    fits.PrimaryHDU(np.round(data).astype(np.uint16), header).writeto(target)
    return target


def _log_events(daemon: DaemonProcess, since: int = 0) -> list[dict[str, object]]:
    events = []
    for line in daemon.log.read_text(encoding="utf-8")[since:].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def _named(events: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [e for e in events if e.get("event") == name]


def _separation_arcsec(a: tuple[float, float], b: tuple[float, float]) -> float:
    dra = (a[0] - b[0] + 180.0) % 360.0 - 180.0
    return math.hypot(dra * math.cos(math.radians(b[1])), a[1] - b[1]) * 3600.0


@pytest.mark.slow
@pytest.mark.skipif(MISSING is not None, reason=f"plate solver unavailable: {MISSING}")
def test_solved_session_survives_a_kill_names_itself_and_stacks_a_frame_by_wcs(
        obs: Observatory, seestar: list[Path], tmp_path: Path) -> None:
    obs.write_config(extra="[solve]\nenabled = true\nannotate = true\n")
    frames = [_stripped(p, tmp_path / p.name) for p in seestar]
    odd = _stripped(seestar[1], tmp_path / "Light_odd_optics.fit", zoom=ZOOM, turn_deg=TURN_DEG)
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        for path in frames[:2]:
            obs.publish(path, f"Lights/{path.name}")
        obs.wait_for(lambda: list(obs.statuses().values()).count("stacked") == 2, timeout=180,
                     message=f"2 stacked frames, journal: {obs.statuses()}")
        obs.wait_for(lambda: _named(_log_events(daemon), "reference_solved"), timeout=120,
                     message="the reference frame solved")
    finally:
        daemon.kill()  # SIGKILL: nothing is written on the way out
    before = len(daemon.log.read_text(encoding="utf-8"))
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        for path in [*frames[2:], odd]:
            obs.publish(path, f"Lights/{path.name}")
        obs.wait_for(lambda: list(obs.statuses().values()).count("stacked") == 5, timeout=240,
                     message=f"5 stacked frames, journal: {obs.statuses()}")
        daemon.close_all()
        obs.wait_for(lambda: any(obs.stacks.rglob("session.json")), timeout=120, message="the closed session")
    finally:
        assert daemon.terminate() == 0
    after = _log_events(daemon, before)
    # the solution came back (from the checkpoint, or from the journal when the kill came before a checkpoint
    # had it): the reference was not solved again, solve-field ran once (the odd frame)
    assert _named(after, "solution_restored") or _named(after, "solution_reused")
    assert not _named(after, "reference_solved")
    assert len(_named(after, "frame_solved")) == 1
    (by_wcs,) = _named(after, "registered_by_wcs")
    assert str(by_wcs["frame"]).endswith(odd.name) and "registration failed" in str(by_wcs["star_matching"])

    (folder,) = {p.parent for p in obs.stacks.rglob("session.json")}
    header = fits.getheader(folder / "stack.fits")
    assert header["PLTSOLVD"] is True
    reference = next(p for p in seestar if p.name == header["REFFRAME"])
    astap = WCS(fits.getheader(reference))
    ours = WCS(header, naxis=2)  # the colour cube: the WCS of its image planes
    h, w = int(header["NAXIS2"]), int(header["NAXIS1"])
    grid = np.array([[x, y] for x in (0, w / 2, w - 1) for y in (0, h / 2, h - 1)], dtype=float)
    sky_ours, sky_astap = ours.all_pix2world(grid, 0), astap.all_pix2world(grid, 0)
    assert max(_separation_arcsec(tuple(a), tuple(b)) for a, b in zip(sky_ours, sky_astap, strict=True)) < 5.0

    # lights without OBJECT: named after the object in the solved field (the folder keeps its opening name);
    # without the catalogue (pyongc not installed) after the solved centre
    summary = json.loads((folder / "session.json").read_text())
    name = "NGC 7023" if NO_CATALOGUE is None else "RA 21h01m Dec +68°07'"
    assert summary["name"] == name and summary["label"].startswith(f"{name}/")
    assert header["OBJECT"] == name and fits.getheader(folder / "preview.fits")["OBJECT"] == name
    assert summary["wcs"]["index"] and abs(summary["wcs"]["scale_arcsec"] - 2.39) < 0.1
    # [solve] annotate: the preview JPEG carries NGC 7023's circle (warm yellow: no star or sky has that colour)
    preview = cv2.cvtColor(cv2.imread(str(folder / "preview.jpg")), cv2.COLOR_BGR2RGB).astype(int)
    warm = (preview[..., 0] > 200) & (preview[..., 1] > 150) & (preview[..., 2] < 140)
    assert np.count_nonzero(warm) > 100 or NO_CATALOGUE is not None

    # frames.csv: how each frame was registered, and where it points (ASTAP's WCS of each frame as the truth)
    rows = {Path(r["path"]).name: r for r in csv.DictReader((folder / "frames.csv").open())}
    assert all(r["status"] == "stacked" for r in rows.values()), rows
    for path in seestar:
        row = rows[path.name]
        truth = describe_wcs(WCS(fits.getheader(path)), width=1080, height=1920)
        assert row["registration"] == "stars"
        assert _separation_arcsec((float(row["ra"]), float(row["dec"])), truth[:2]) < 5.0
        assert abs(float(row["scale_arcsec"]) / truth[2] - 1.0) < 0.005
        assert abs((float(row["sky_rotation_deg"]) - truth[3] + 180.0) % 360.0 - 180.0) < 0.1
    row = rows[odd.name]
    truth = describe_wcs(WCS(fits.getheader(seestar[1])), width=1080, height=1920)
    assert row["registration"] == "wcs"
    assert _separation_arcsec((float(row["ra"]), float(row["dec"])), truth[:2]) < 10.0
    assert abs(float(row["scale_arcsec"]) / (truth[2] / ZOOM) - 1.0) < 0.01
    turned = abs((float(row["sky_rotation_deg"]) - truth[3] + 180.0) % 360.0 - 180.0)
    assert abs(turned - TURN_DEG) < 0.5
