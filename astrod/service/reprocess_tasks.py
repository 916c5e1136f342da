"""What runs in the Dask workers of ``astrod reprocess``: small functions of a path (or a band's rows) and a
`ReprocessJob`, over the pipeline's own per-frame functions (`astrod.pipeline.reprocess_stack`).

Each worker opens the master library once (`LibraryPlugin`, registered by the client): the masters are read
by the worker that calibrates, from the library folder every worker sees at the same path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from distributed import WorkerPlugin, get_worker

from astrod.core.quality import FrameQuality
from astrod.core.stars import StarList
from astrod.errors import AstrodError
from astrod.library.masters import MasterLibrary
from astrod.library.match import MatchRules
from astrod.model import FrameMeta, Transform
from astrod.pipeline.calibration import library_calibrator
from astrod.pipeline.ingest import ReadOptions
from astrod.pipeline.live import Calibrator
from astrod.pipeline.photometry import FrameMeasurement, PhotometrySettings, header_locate, measure_apart
from astrod.pipeline.repick import one_line
from astrod.pipeline.reprocess_stack import (
    FrameMeasure,
    Integration,
    WarpOrder,
    calibrated_pixels,
    integrate_rows,
    measure_frame,
    warp_frame,
)
from astrod.pipeline.settings import PipelineSettings, StackedFrame
from astrod.pipeline.solving import SolveResult
from astrod.service.solver import RunningSolves, SolverSettings, solve_path

PLUGIN = "astrod-library"
SolveAnswer = tuple[SolveResult | None, str | None]  # the solution, or None and why not


@dataclass(frozen=True, slots=True)
class ReprocessJob:
    """What every task of a run needs: the pipeline settings, how frames are read, the run's time (which
    judges a DATE-OBS plausible), the memory one band of an integration may take, and the light curves'
    settings (None: no target configured)."""

    settings: PipelineSettings
    options: ReadOptions
    now: datetime
    band_bytes: int
    photometry: PhotometrySettings | None = None
    solver: SolverSettings | None = None  # None: the sessions' reference frames are not plate-solved


@dataclass(frozen=True, slots=True, eq=False)
class PhotometryOrder:
    """A stacked frame to measure for the light curves: what the live stack's observer sees of it, without
    the pixels (``to_first``: its pixels onto the session's first reference, decided by the client)."""

    path: Path
    meta: FrameMeta
    stars: StarList
    quality: FrameQuality
    to_first: Transform
    pattern: str | None


class LibraryPlugin(WorkerPlugin):
    """Opens the master library in each worker (None: frames are stacked uncalibrated), and keeps the worker's
    running plate solves, killed when the worker closes (solve-field runs in a process group of its own, which
    the worker's end would not reach: none outlives a run, as none outlives the daemon)."""

    name = PLUGIN

    def __init__(self, folder: str | None, rules: MatchRules) -> None:
        self.folder = folder
        self.rules = rules
        self.library: MasterLibrary | None = None
        self.calibrator: Calibrator | None = None
        self.solves: RunningSolves | None = None

    def setup(self, worker: Any) -> None:
        del worker
        self.solves = RunningSolves()
        if self.folder is not None:
            # masters in memory: a worker calibrates many frames of the same few masters
            self.library = MasterLibrary.open(self.folder, rules=self.rules)
            self.calibrator = library_calibrator(self.library, in_place=True)

    def teardown(self, worker: Any) -> None:
        del worker
        if self.solves is not None:
            self.solves.kill_all()
        if self.library is not None:
            self.library.close()
            self.library, self.calibrator = None, None


def _calibrator() -> Calibrator | None:
    plugin = get_worker().plugins.get(PLUGIN)
    return None if plugin is None else plugin.calibrator  # type: ignore[attr-defined,no-any-return]


def _solves() -> RunningSolves | None:
    plugin = get_worker().plugins.get(PLUGIN)
    return None if plugin is None else plugin.solves  # type: ignore[attr-defined,no-any-return]


def measure_task(path: Path, job: ReprocessJob) -> FrameMeasure:
    """Read, calibrate and measure one light; small results only."""
    return measure_frame(path, job.settings, options=job.options, calibrator=_calibrator(), now=job.now)


def warp_task(order: WarpOrder, cache: Path, job: ReprocessJob) -> str:
    """Warp one stacked frame onto its session's reference grid into the session's cache folder."""
    return warp_frame(order, cache, job.settings, options=job.options, calibrator=_calibrator())


def band_task(integration: Integration, cache: Path, row0: int, row1: int, job: ReprocessJob,
              *warped: str) -> tuple[int, int, npt.NDArray[np.float32], npt.NDArray[np.uint16]]:
    """Rows [row0, row1) of a session's stack, once every frame is warped (``warped``: the warp tasks'
    results, which make this task wait for them)."""
    if list(warped) != list(integration.files):
        raise RuntimeError(f"warped files {warped} are not the integration's {integration.files}")
    image, count = integrate_rows(integration, cache, row0, row1, memory_bytes=job.band_bytes)
    return row0, row1, image, count


def photometry_task(order: PhotometryOrder, given: FrameMeasurement | None, job: ReprocessJob) -> FrameMeasurement:
    """Read and calibrate one stacked frame again and measure the light curves' stars on it, with the set-up
    of ``given`` (the session's first stacked frame's measurement; None: this frame is the first, set up on
    it). Small results only: the sums, the set-up, notes."""
    assert job.photometry is not None
    setup = None if given is None else given.setup
    try:
        data = calibrated_pixels(order.path, options=job.options, calibrator=_calibrator())
    except (AstrodError, OSError) as err:  # left out of the curves, as a frame the daemon could not measure
        return FrameMeasurement(setup=setup, record=None, error=one_line(err))
    frame = StackedFrame(path=order.path, meta=order.meta, data=data, stars=order.stars, quality=order.quality,
                         to_first=order.to_first, pattern=order.pattern)
    return measure_apart(job.photometry, setup, frame, locate=header_locate)


def solve_task(path: Path, job: ReprocessJob) -> SolveAnswer:
    """Plate-solve a session's final reference frame as the daemon's background solver does (`solve_path`: the
    frame as it is on disk, the hints its header gives, the solver's time limits); small results only."""
    assert job.solver is not None
    try:
        return solve_path(path, settings=job.solver, rename=job.options.rename, running=_solves()), None
    except AstrodError as err:  # no solution, or the frame unreadable: the products carry no WCS
        return None, one_line(err)
