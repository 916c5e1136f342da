"""siril-cli as an independent reference for ``astrod stack`` (skipped where siril-cli is not installed)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess

import numpy as np
import numpy.typing as npt
import pytest
from scipy.spatial import cKDTree

from astrod.core.stars import detect_stars
from tests import synth
from tests.pipeline.conftest import aperture_flux, block_noise, read_stack, run_cli

SIZE = 256
N_FRAMES = 8
# Siril 1.0 script: convert the lights into a sequence, register (global star alignment onto the first frame),
# stack with winsorized rejection at 3σ/3σ and additive+scale normalisation, as the issue asks; a second stack
# without normalisation shows what the scaling does to fluxes.
SCRIPT = """requires 0.99.4
cd lights
convert light -out=../process
cd ../process
register light
stack r_light rej 3 3 -norm=addscale -out=../addscale
stack r_light rej 3 3 -nonorm -out=../nonorm
close
"""

F64 = npt.NDArray[np.float64]


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> tuple[synth.Session, dict[str, F64]]:
    """8 frames of 256×256 with known shifts from a clean sensor, stacked by siril-cli and by astrod."""
    siril = shutil.which("siril-cli")
    if siril is None:
        pytest.skip("siril-cli is not installed")
    root = tmp_path_factory.mktemp("siril")
    sensor = synth.Sensor(width=SIZE, height=SIZE, seed=70, vignetting=0.0, dust=0, hot_pixels=0, prnu=0.0)
    session = synth.make_session(n_frames=N_FRAMES, width=SIZE, height=SIZE, seed=71, sensor=sensor,
                                 max_shift=20.0, max_rotation_deg=0.0, scale_jitter=0.0, n_stars=80, flux_min=2e4,
                                 flux_max=3e5)
    session.write(root / "lights")
    (root / "script.ssf").write_text(SCRIPT, encoding="utf-8")
    # siril writes its settings under $HOME/.config: keep them in the test folder
    env = dict(os.environ, HOME=str(root), XDG_CONFIG_HOME=str(root / ".config"))
    done = subprocess.run([siril, "-s", str(root / "script.ssf"), "-d", str(root)], capture_output=True, text=True,
                          timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert run_cli("stack", root / "lights", "-o", root / "astrod.fits", "--method", "winsorized") == 0
    out: dict[str, F64] = {"astrod": read_stack(root / "astrod.fits")[0]}
    for name in ("addscale", "nonorm"):
        image, header = read_stack(root / f"{name}.fit")
        assert header.get("STACKCNT", N_FRAMES) == N_FRAMES
        # siril keeps 32-bit results in [0, 1]: back to the 16-bit ADU of the input
        out[name] = image * 65535.0
    out["single"] = session.frames[0].astype(np.float64)
    return session, out


def _oriented(image: F64, like: F64) -> F64:
    """``image`` as is or flipped top-down, whichever puts its stars on ``like``'s (siril's row order may differ)."""
    ref = detect_stars(like.astype(np.float32))
    best, best_n = image, -1
    for candidate in (image, image[::-1]):
        found = detect_stars(np.ascontiguousarray(candidate, dtype=np.float32))
        dist, _ = cKDTree(ref.xy).query(found.xy, distance_upper_bound=1.0)
        n = int(np.count_nonzero(np.isfinite(dist)))
        if n > best_n:
            best, best_n = candidate, n
    return best


def test_star_positions_agree_with_siril(stacks: tuple[synth.Session, dict[str, F64]]) -> None:
    """Stars of siril's stack and of astrod's lie within 0.1 px RMS of each other (no offset beyond 0.05 px),
    and astrod's within 0.15 px RMS of the truth catalogue."""
    session, out = stacks
    ours = detect_stars(out["astrod"].astype(np.float32))
    theirs = detect_stars(_oriented(out["addscale"], out["astrod"]).astype(np.float32))
    dist, idx = cKDTree(ours.xy).query(theirs.xy, distance_upper_bound=1.0)
    ok = np.isfinite(dist)
    assert ok.sum() >= 30
    d = theirs.xy[ok] - ours.xy[idx[ok]]
    assert np.all(np.abs(np.median(d, axis=0)) < 0.05)
    assert math.sqrt(float(np.mean(np.sum(d**2, axis=1)))) < 0.1
    dist, idx = cKDTree(session.catalogue.xy).query(ours.xy, distance_upper_bound=1.0)
    ok = np.isfinite(dist)
    truth = session.catalogue.xy[idx[ok]]
    assert math.sqrt(float(np.mean(np.sum((ours.xy[ok] - truth) ** 2, axis=1)))) < 0.15


def test_star_fluxes_agree_with_siril(stacks: tuple[synth.Session, dict[str, F64]]) -> None:
    """Aperture fluxes of isolated stars: astrod matches the truth within 0.5 % and siril's unnormalised stack
    within 1 %; siril's addscale stack (which also scales star fluxes) within 5 %."""
    session, out = stacks
    cat = session.catalogue
    nearest, _ = cKDTree(cat.xy).query(cat.xy, k=2)
    sel = (cat.x > 25) & (cat.x < SIZE - 25) & (cat.y > 25) & (cat.y < SIZE - 25) & (nearest[:, 1] > 14)
    sel &= cat.flux > 3e4
    assert sel.sum() >= 8
    sky = session.reference_scene(sky=False) < 0.5
    flux = {name: aperture_flux(_oriented(img, out["astrod"]) if name != "astrod" else img, cat.xy[sel], sky=sky)
            for name, img in out.items() if name != "single"}
    truth = aperture_flux(session.reference_scene(sky=True).astype(np.float64), cat.xy[sel], sky=sky)
    assert float(np.median(flux["astrod"] / truth)) == pytest.approx(1.0, abs=0.005)
    assert float(np.median(flux["astrod"] / flux["nonorm"])) == pytest.approx(1.0, abs=0.01)
    assert float(np.median(flux["astrod"] / flux["addscale"])) == pytest.approx(1.0, abs=0.05)


def test_noise_of_both_stacks_is_near_the_sqrt_n_ideal(stacks: tuple[synth.Session, dict[str, F64]]) -> None:
    """Sky noise at 8-px scale (residual against the truth scene, away from stars) of both stacks is within 15 %
    of one frame's over √8."""
    session, out = stacks
    model = session.reference_scene(sky=True).astype(np.float64)
    near = session.reference_scene(sky=False) > 0.5
    sky = ~near

    def noise(image: F64) -> float:
        res = image - model
        return block_noise(res - np.median(res[sky]), mask=near, block=8, crop=25)

    ideal = noise(out["single"]) / math.sqrt(N_FRAMES)
    assert noise(out["astrod"]) == pytest.approx(ideal, rel=0.15)
    assert noise(_oriented(out["addscale"], out["astrod"])) == pytest.approx(ideal, rel=0.15)
