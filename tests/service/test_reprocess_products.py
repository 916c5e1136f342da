"""What ``astrod reprocess`` writes beside the stacks (`astrod.service.reprocess_products`), on an in-process
Dask cluster: the light curves of a configured target, equal to those the daemon's series gives as the observer
of a live stack of the same frames, and the composites and projects the daemon rebuilds when sessions close."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from astrod.config import Config, PhotometryTargetConfig, SolveConfig
from astrod.demo import synth
from astrod.io.lightcurves import lightcurve_text
from astrod.pipeline.commands import settings_for
from astrod.pipeline.oneshot import stack_files
from astrod.pipeline.photometry import CSV_COLUMNS, PhotometrySeries, header_locate
from astrod.pipeline.project import PROJECTS
from astrod.service.reprocess import ReprocessRequest, run_reprocess
from astrod.service.session_photometry import photometry_for

# Plate solving is on by default; the synthetic skies cannot be solved, and a blind solve of one would take its
# whole time limit of CPU.
NO_SOLVING = SolveConfig(enabled=False)

NIGHT = datetime(2024, 10, 5, 21, 0, tzinfo=UTC)


class _StopAfter:
    """A progress that interrupts the run (as Ctrl-C would) once ``sessions`` sessions are written."""

    def __init__(self, sessions: int) -> None:
        self.sessions, self.written = sessions, 0

    def start(self, stage: str, total: int) -> None:
        del stage, total

    def advance(self, item: str = "", n: int = 1) -> None:
        del n
        if item.endswith(" written"):
            self.written += 1
            if self.written >= self.sessions:
                raise KeyboardInterrupt

    def finish(self) -> None:
        pass


def _config(x: float, y: float) -> Config:
    """A target at 1-based x, y; an annulus small enough for isolated comparisons in a 128 px field."""
    config = Config(solve=NO_SOLVING)
    target = PhotometryTargetConfig(name="V1", x=x, y=y)
    return replace(config, photometry=replace(config.photometry, targets=(target,), annulus_inner_fwhm=2.0,
                                              annulus_outer_fwhm=3.5))


@pytest.mark.usefixtures("dask_offload_thread")
def test_light_curves_composites_and_projects(tmp_path: Path) -> None:
    """One field in Ha and OIII on a night and in Ha the next: each session's lightcurve_V1.csv is, to the
    character, the daemon series' curve of a live stack of its frames (with a comparison ensemble) and its plot
    is written; the night's HOO composite and the Ha project (two nights) are built once the sessions are
    written (by the next run when a run is interrupted before); a run after that submits nothing and rebuilds
    nothing; another target redoes every session."""
    from distributed import LocalCluster

    field = synth.make_session(n_frames=4, width=128, height=128, seed=4, max_shift=5.0, n_stars=15,
                               flux_min=2e4, flux_max=1e6, fwhm=2.5)
    archive = tmp_path / "archive"
    field.write(archive / "n1", object="M 42", filter="Ha", start=NIGHT)
    field.write(archive / "n1", object="M 42", filter="OIII", start=NIGHT + timedelta(hours=1))
    field.write(archive / "n2", object="M 42", filter="Ha", start=NIGHT + timedelta(days=1))
    cat = field.catalogue  # the truth on the first frame: a central star of about 4e4 e-
    central = np.flatnonzero((np.abs(cat.x - 64) < 25) & (np.abs(cat.y - 64) < 25))
    star = int(central[np.argmin(np.abs(np.log(cat.flux[central] / 4e4)))])
    config = _config(float(cat.x[star]) + 1.0, float(cat.y[star]) + 1.0)
    out = tmp_path / "out"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        request = ReprocessRequest(archives=(archive,), output=out, library=tmp_path / "lib", config=config,
                                   settings=settings_for(config, method=None, kappa=None),
                                   scheduler=cluster.scheduler_address)
        with pytest.raises(KeyboardInterrupt):  # once the last session is written: before its composites
            run_reprocess(request, progress=_StopAfter(3), say=lambda _: None)
        assert not list(out.rglob("composite_*")) and not (out / PROJECTS).exists()
        report = run_reprocess(request, say=lambda _: None)  # no session to do: the composites owed only
        assert report.tasks == 0 and report.written == []
        psettings = photometry_for(config)
        assert psettings is not None
        for session in report.plan.sessions:
            series = PhotometrySeries(psettings, locate=header_locate)
            stack_files(session.frames, request.settings, observer=series)
            curve = series.curve("V1")
            assert len(curve.rows) == 4 and len(curve.comparisons) >= 2
            text = (session.output / "lightcurve_V1.csv").read_text(encoding="utf-8")
            assert text == lightcurve_text(curve.comment, curve.rows, CSV_COLUMNS)
            assert (session.output / "lightcurve_V1.png").read_bytes()[:4] == b"\x89PNG"
        target_folder = report.plan.sessions[0].output.parent  # <out>/<night>/<target>
        composite = target_folder / "composite_hoo.fits"
        project = out / PROJECTS / target_folder.name / "Ha"
        assert composite.is_file() and composite in report.combined
        assert (project / "stack.fits").is_file() and project / "stack.fits" in report.combined
        stamps = {p: p.stat().st_mtime_ns for p in report.combined}

        again = run_reprocess(request, say=lambda _: None)
        assert again.tasks == 0 and again.written == [] and again.combined == []
        assert {p: p.stat().st_mtime_ns for p in report.combined} == stamps

        moved = replace(request, config=_config(float(cat.x[star]) + 2.0, float(cat.y[star]) + 1.0))
        redone = run_reprocess(moved, say=lambda _: None)
        assert sorted(redone.written) == sorted(s.id for s in report.plan.sessions)


@pytest.mark.usefixtures("dask_offload_thread")
def test_a_first_frame_without_set_up_is_followed_as_the_daemon_follows_it(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A target given by RA/Dec whose place the first frame cannot give (no plate solution in its header): the
    series is set up on the second frame, and the frames measured meanwhile with set-ups of their own are
    measured again with that one: the curve is the daemon series' (3 rows, from the second frame on)."""
    from distributed import LocalCluster

    from astrod.service import reprocess_tasks

    field = synth.make_session(n_frames=4, width=128, height=128, seed=4, max_shift=5.0, n_stars=15,
                               flux_min=2e4, flux_max=1e6, fwhm=2.5)
    paths = field.write(tmp_path / "archive", object="M 42", filter="Ha", start=NIGHT)
    cat = field.catalogue
    star = int(np.argmin(np.hypot(cat.x - 64, cat.y - 64)))

    def locate(path: str, ra: float, dec: float) -> tuple[float, float] | None:
        """The star's place on each frame but the first (the truth's transforms)."""
        del ra, dec
        k = paths.index(Path(path))
        if k == 0:
            return None
        x, y = field.transforms[k].inverse().apply([[cat.x[star], cat.y[star]]])[0]
        return float(x), float(y)

    monkeypatch.setattr(reprocess_tasks, "header_locate", locate)
    config = Config(solve=NO_SOLVING)
    config = replace(config, photometry=replace(config.photometry, targets=(
        PhotometryTargetConfig(name="V1", ra=84.0, dec=-5.4),), annulus_inner_fwhm=2.0, annulus_outer_fwhm=3.5))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        request = ReprocessRequest(archives=(tmp_path / "archive",), output=tmp_path / "out",
                                   library=tmp_path / "lib", config=config,
                                   settings=settings_for(config, method=None, kappa=None),
                                   scheduler=cluster.scheduler_address)
        report = run_reprocess(request, say=lambda _: None)
    (session,) = report.plan.sessions
    psettings = photometry_for(config)
    assert psettings is not None
    series = PhotometrySeries(psettings, locate=locate)
    stack_files(session.frames, request.settings, observer=series)
    curve = series.curve("V1")
    assert [r["frame"] for r in curve.rows] == [p.name for p in paths[1:]]
    text = (session.output / "lightcurve_V1.csv").read_text(encoding="utf-8")
    assert text == lightcurve_text(curve.comment, curve.rows, CSV_COLUMNS)
    # a measure, a warp and a photometry task per frame, one band, then frames 3 and 4 again with the set-up
    # made on frame 2
    assert report.tasks == 4 + 4 + 4 + 1 + 2
