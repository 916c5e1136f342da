"""Fixtures of the pipeline tests: synthetic nights written as FITS (once per test session), and clean logging."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import structlog
from astropy.io import fits

from astrod.cli import main
from astrod.model import Transform
from tests import synth

F64 = npt.NDArray[np.float64]
SIZE = 384
START = datetime(2024, 10, 5, 21, 30, tzinfo=UTC)


@pytest.fixture(autouse=True)
def default_logging() -> Iterator[None]:
    """structlog as unconfigured around each test: `astrod.cli.main` binds logging to the stderr of the moment."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def run_cli(*args: str | Path) -> int:
    """``astrod ARGS...`` in this process, logging reset afterwards."""
    try:
        return main([str(a) for a in args])
    finally:
        structlog.reset_defaults()


def read_table(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def read_stack(path: Path) -> tuple[F64, fits.Header]:
    with fits.open(path) as hdul:
        return np.asarray(hdul[0].data, dtype=np.float64), hdul[0].header.copy()


def table_transform(row: dict[str, str]) -> Transform:
    """The similarity of a frames-table row (frame -> reference)."""
    return Transform.similarity(dx=float(row["dx"]), dy=float(row["dy"]), rotation_deg=float(row["rotation_deg"]),
                                scale=float(row["scale"]))


def grid_rms(a: Transform, b: Transform, *, width: int, height: int, step: int = 16) -> float:
    """RMS distance (px) between where two transforms send a grid of points covering the frame."""
    ys, xs = np.mgrid[0:height:step, 0:width:step]
    pts = np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64)
    d = a.apply(pts) - b.apply(pts)
    return float(np.sqrt(np.mean(np.sum(d**2, axis=1))))


def aperture_flux(image: F64, xy: F64, *, sky: npt.NDArray[np.bool_], radius: float = 8.0) -> F64:
    """Aperture sums minus the image's sky level (median over the ``sky`` pixels) times the aperture area.

    One sky level for the whole image keeps the measure linear: a local median of a noisy annulus that holds a
    neighbour's wings is biased differently from the same median of a noiseless image.
    """
    level = float(np.median(image[sky]))
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    out = []
    for x, y in xy:
        ap = (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
        out.append(image[ap].sum() - level * ap.sum())
    return np.asarray(out, dtype=np.float64)


def block_noise(image: F64, *, mask: npt.NDArray[np.bool_], block: int = 8, crop: int = 40) -> float:
    """Robust σ of the ``block``×``block`` means of a residual image (centre crop) over blocks with no ``mask``
    pixel: noise at a scale where the smoothing of the warp's interpolation barely matters."""
    r = image[crop:-crop, crop:-crop]
    m0 = mask[crop:-crop, crop:-crop]
    h, w = r.shape[0] // block * block, r.shape[1] // block * block
    means = r[:h, :w].reshape(h // block, block, w // block, block).mean(axis=(1, 3))
    clean = ~m0[:h, :w].reshape(h // block, block, w // block, block).any(axis=(1, 3))
    v = means[clean]
    assert v.size > 100, "too few star-free blocks to measure noise"
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


@dataclass(frozen=True)
class CalibratedNight:
    """A night with its library: 14 good lights (frame 3 with a satellite trail, frame 6 with cosmic rays),
    a frame without stars, a cloudy one and a trailed one; the same good lights without defects in ``clean``;
    stacked by `astrod stack` (winsorized) with the library."""

    root: Path
    session: synth.Session
    trail_mask: npt.NDArray[np.bool_]
    cosmic_mask: npt.NDArray[np.bool_]
    lights: list[Path]
    bad: dict[str, Path]
    stack: Path
    clean_stack: Path
    single: Path
    table: Path
    preview: Path


def _write_light(path: Path, sensor: synth.Sensor, scene: npt.NDArray[np.float32], *, seed: int, minute: int) -> Path:
    data = sensor.light(scene, exposure=60.0, temperature=-10.0, seed=seed)
    return synth.write_fits(path, data, exposure=60.0, date_obs=START + timedelta(minutes=minute))


@pytest.fixture(scope="session")
def calibrated_night(tmp_path_factory: pytest.TempPathFactory) -> CalibratedNight:
    root = tmp_path_factory.mktemp("night")
    sensor = synth.Sensor(width=SIZE, height=SIZE, seed=7)
    session = synth.make_session(n_frames=14, width=SIZE, height=SIZE, seed=8, sensor=sensor, max_shift=20.0,
                                 max_rotation_deg=2.0, n_stars=150, flux_min=2e4, flux_max=2e6)
    frames = list(session.frames)
    frames[3], trail = synth.add_satellite_trail(frames[3], x0=0.0, y0=50.0, x1=SIZE - 1.0, y1=300.0,
                                                 amplitude=3000.0)
    frames[6], cosmics = synth.add_cosmic_rays(frames[6], n=60, seed=5)
    defects = synth.Session(frames=frames, truths=session.truths, sensor=sensor, catalogue=session.catalogue,
                            exposure=session.exposure, temperature=session.temperature,
                            pier_sides=session.pier_sides)
    lights = defects.write(root / "lights")
    session.write(root / "clean")
    synth.write_calibration_set(root / "calib", sensor, seed=9, n=5)
    assert run_cli("library", "build", "--source", root / "calib", "--library", root / "lib") == 0

    # The cloudy and trailed frames show the same field, slightly shifted.
    shift = Transform.similarity(dx=5.0, dy=-3.0)
    bad = {"nostars": _write_light(root / "lights" / "zz_nostars.fits", sensor,
                                   np.full((SIZE, SIZE), 100.0, dtype=np.float32), seed=101, minute=90)}
    scene, _ = synth.render_stars(width=SIZE, height=SIZE, catalogue=session.catalogue, transform=shift, sky=100.0)
    bad["cloudy"] = _write_light(root / "lights" / "zz_cloudy.fits", sensor,
                                 synth.cloudy(scene, transmission=0.3, extra_sky=400.0), seed=102, minute=91)
    scene, _ = synth.render_stars(width=SIZE, height=SIZE, catalogue=session.catalogue, transform=shift, sky=100.0,
                                  trail=(12.0, 30.0))
    bad["trailed"] = _write_light(root / "lights" / "zz_trailed.fits", sensor, scene, seed=103, minute=92)

    out = root / "out"
    lib = root / "lib"
    assert run_cli("stack", root / "lights", "--library", lib, "-o", out / "stack.fits", "--frames-table",
                   out / "frames.csv", "--preview", out / "preview.png") == 0
    assert run_cli("stack", root / "clean", "--library", lib, "-o", out / "clean.fits") == 0
    assert run_cli("stack", lights[0], "--library", lib, "-o", out / "single.fits", "--method", "mean") == 0
    return CalibratedNight(root=root, session=session, trail_mask=trail, cosmic_mask=cosmics, lights=lights,
                           bad=bad, stack=out / "stack.fits", clean_stack=out / "clean.fits",
                           single=out / "single.fits", table=out / "frames.csv", preview=out / "preview.png")
