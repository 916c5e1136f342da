"""Tests of astrod.pipeline.composite: a target's per-filter stacks registered and combined into composites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from astrod.io.fits import read_fits, read_fits_header, write_fits
from astrod.model import Transform
from astrod.pipeline.composite import rebuild_composites, register_stacks, target_stacks
from tests import synth

W, H = 320, 240
# each filter's stack lies on its own grid (another night's reference, a re-framed target)
OFFSETS = {"L": (0.0, 0.0, 0.0), "R": (3.3, -2.1, 0.2), "G": (-4.7, 1.9, -0.3), "B": (6.2, 5.5, 0.4),
           "Ha": (-8.4, -6.6, 0.5), "OIII": (2.8, 7.7, -0.6), "SII": (-1.2, -9.3, 0.25)}
THROUGHPUT = {"L": 3.0, "R": 0.8, "G": 1.0, "B": 0.5, "Ha": 0.3, "OIII": 0.2, "SII": 0.1}


def truth(name: str) -> Transform:
    dx, dy, rot = OFFSETS[name]
    return Transform.similarity(dx=dx, dy=dy, rotation_deg=rot)


def night_of_stacks(target: Path) -> None:
    """Seven mono stacks of one star field (the same catalogue, each rendered through its known transform,
    each filter's throughput and sky), written as <target>/<filter>/stack.fits with FILTER cards."""
    cat = synth.make_catalogue(width=W, height=H, n_stars=150, seed=12, margin=30.0, flux_min=1e4, flux_max=5e5)
    rng = np.random.default_rng(12)
    for name, throughput in THROUGHPUT.items():
        scene, _ = synth.render_stars(width=W, height=H, catalogue=cat, transform=truth(name), fwhm=2.8,
                                      sky=200.0 * throughput)
        image = (scene * throughput + rng.standard_normal(scene.shape) * 3.0).astype(np.float32)
        folder = target / ("Lum" if name == "L" else name)
        folder.mkdir(parents=True)
        write_fits(folder / "stack.fits", image, {"FILTER": name if name != "L" else "Luminance"})


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("night") / "2026-11-21" / "M_42"
    night_of_stacks(folder)
    return folder


def test_stacks_register_to_a_tenth_of_a_pixel(target: Path) -> None:
    """Every filter's stack is registered onto L's grid to within 0.1 px of the truth over the whole field."""
    stacks = target_stacks(target)
    assert set(stacks) == {"L", "R", "G", "B", "Ha", "OIII", "SII"} and stacks["L"][0] == "Luminance"
    registered = register_stacks({c: (name, read_fits(path)[0]) for c, (name, path) in stacks.items()})
    grid = np.array([(x, y) for x in np.linspace(0, W - 1, 9) for y in np.linspace(0, H - 1, 7)])
    for channel, reg in registered.items():
        error = np.hypot(*(reg.transform.apply(grid) - truth(channel).apply(grid)).T)
        assert error.max() <= 0.1, (channel, error.max())


def test_night_gives_lrgb_sho_and_hoo(target: Path) -> None:
    """L, R, G, B, Ha, OIII and SII give composite_lrgb, _sho and _hoo (not a separate RGB), each a 3-plane
    float32 FITS with its provenance, a JPEG and a 16-bit TIFF; their planes are registered (the stars of every
    plane sit where L's do)."""
    written = rebuild_composites(target, kinds=("lrgb", "rgb", "sho", "hoo"), formats=("fits", "jpg", "tiff"))
    names = {p.name for p in written}
    assert names == {f"composite_{k}.{s}" for k in ("lrgb", "sho", "hoo") for s in ("fits", "jpg", "tif")}
    cube, header = read_fits(target / "composite_sho.fits")
    assert cube.shape == (3, H, W) and header["COMPOSIT"] == "SHO"
    assert any("SII from SII" in str(h) for h in header["HISTORY"])
    lum = read_fits(target / "Lum" / "stack.fits")[0]
    peak = np.unravel_index(np.argmax(lum[20:-20, 20:-20]), lum[20:-20, 20:-20].shape)
    y, x = peak[0] + 20, peak[1] + 20
    for plane in cube:  # the brightest star of L is a local maximum of every registered plane
        window = plane[y - 2:y + 3, x - 2:x + 3]
        assert np.nanargmax(window) == 12
    assert read_fits_header(target / "composite_lrgb.fits")["PLANES"] == "R,G,B"


def test_update_after_a_close_follows_the_config_and_never_raises(target: Path, tmp_path: Path) -> None:
    """After a session closes: no kinds configured, no composites; a target with one filter gets none; a stack
    that cannot be registered (no stars) leaves the composites unbuilt, logged, without raising."""
    from astrod.pipeline.composite import update_composites
    from astrod.pipeline.settings import FinishSettings

    assert update_composites(target, FinishSettings(composite_kinds=())) == []
    assert [p.name for p in update_composites(target, FinishSettings(composite_kinds=("hoo",)),
                                              formats=("xisf", "png"))] == ["composite_hoo.fits",
                                                                             "composite_hoo.png"]
    lonely = tmp_path / "M_1"
    (lonely / "Ha").mkdir(parents=True)
    write_fits(lonely / "Ha" / "stack.fits", np.zeros((60, 80), np.float32), {"FILTER": "Ha"})
    assert update_composites(lonely, FinishSettings()) == []
    (lonely / "OIII").mkdir()
    write_fits(lonely / "OIII" / "stack.fits", np.ones((60, 80), np.float32), {"FILTER": "OIII"})
    assert update_composites(lonely, FinishSettings()) == []
    assert not list(lonely.glob("composite_*"))
