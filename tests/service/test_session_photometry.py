"""Light curves in the daemon (`astrod.service.session_photometry`): a session with a configured target writes
lightcurve_<target>.csv as frames are stacked and its plot with the preview; SIGKILL and restart leave every
frame in it exactly once."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest

from astrod.io.lightcurves import read_lightcurve
from tests import synth
from tests.service.daemon_harness import DaemonProcess, H, Observatory, W, lights


def _rows(obs: Observatory) -> int:
    found = list(obs.stacks.rglob("lightcurve_T.csv"))
    return len(read_lightcurve(found[0])[1]) if found else 0


@pytest.mark.slow
def test_light_curve_rows_survive_sigkill_exactly_once(obs: Observatory, tmp_path: Path) -> None:
    """Six frames, checkpoints every 3 frames, SIGKILL once the light curve shows frame 4 (the restart takes
    the measurements of frames 0-2 up from the checkpoint; the rows of frames 3-4, stacked after it, were
    written, and are lost with the process and measured again):
    the final lightcurve_T.csv has one row per frame, in order, the target's position following the field's
    dither, and lightcurve_T.png is written."""
    n, seed = 6, 41
    session = synth.make_session(n_frames=n, width=W, height=H, seed=seed, n_stars=60, max_shift=6.0,
                                 max_rotation_deg=0.5)
    cat = session.catalogue
    central = (np.abs(cat.x - W / 2) < 25) & (np.abs(cat.y - H / 2) < 20)
    star = int(np.flatnonzero(central)[np.argmax(cat.flux[central])])
    x, y = float(cat.x[star]) + 1.0, float(cat.y[star]) + 1.0
    obs.write_config(checkpoint_every=3, checkpoint_seconds=600.0,
                     extra=f'[[photometry.targets]]\nname = "T"\nx = {x}\ny = {y}\n')
    sources = lights(tmp_path / "src", n=n, seed=seed, target="M 33")
    rng = random.Random(5)
    daemon = DaemonProcess(obs)
    daemon.wait_started()
    try:
        for i, source in enumerate(sources):
            target = obs.publish(source, f"Lights/{source.name}")
            obs.wait_for(lambda k=i + 1: _rows(obs) == k, timeout=60, message=f"{target.name} in the light curve")
            if i == 4:
                time.sleep(rng.uniform(0.0, 0.2))
                daemon.kill()
                daemon = DaemonProcess(obs)
                daemon.wait_started()
        obs.wait_for(lambda: sum(s == "stacked" for s in obs.statuses().values()) == n, timeout=120,
                     message="all stacked")
        daemon.close_all()
        obs.wait_for(lambda: any(obs.stacks.rglob("stack.fits")), timeout=120, message="final stack")
    finally:
        assert daemon.terminate() == 0
    (csv_path,) = obs.stacks.rglob("lightcurve_T.csv")
    comment, rows = read_lightcurve(csv_path)
    assert comment.startswith("# target T at")
    assert [r["frame"] for r in rows] == [p.name for p in sources]  # each exactly once, in order
    truth = np.array([t.inverse().apply([[x - 1.0, y - 1.0]])[0] + 1.0 for t in session.transforms])
    measured = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    assert np.abs(measured - truth).max() < 0.2
    assert (csv_path.parent / "lightcurve_T.png").read_bytes()[:4] == b"\x89PNG"
