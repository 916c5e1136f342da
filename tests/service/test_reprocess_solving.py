"""``astrod reprocess`` plate-solves each session's final reference frame as one Dask task and puts the solution
into its products as the daemon's close does: the real Seestar S50 subs of the shared data (raw GRBG, each with
the WCS ASTAP solved) reprocessed with the real solve-field, on an in-process cluster of one worker; and, where
the solver is missing or finds nothing, products without WCS and the reason in the log."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from structlog.testing import capture_logs

from astrod.config import Config, SolveConfig
from astrod.demo import synth
from astrod.errors import SolveError
from astrod.io.catalogue import catalogue_missing
from astrod.pipeline.commands import settings_for
from astrod.pipeline.outputs import FRAMES, SESSION, STACK
from astrod.pipeline.solving import describe_wcs, is_wcs_key
from astrod.service.reprocess import ReprocessReport, ReprocessRequest, run_reprocess
from astrod.service.solver import missing_solver
from tests.service.test_daemon_solving import _separation_arcsec, _stripped

MISSING = missing_solver()
NO_CATALOGUE = catalogue_missing()


@pytest.fixture
def seestar(shared_data: Path) -> list[Path]:
    frames = sorted((shared_data / "seestar_s50_ngc7023_wcs").glob("*.fit"))
    if len(frames) != 4:
        pytest.skip("the four Seestar frames of the shared data are absent")
    return frames


def _run(archive: Path, tmp_path: Path, config: Config, address: str) -> ReprocessReport:
    request = ReprocessRequest(archives=(archive,), output=tmp_path / "out", library=tmp_path / "lib", config=config,
                               settings=settings_for(config, method=None, kappa=None), scheduler=address)
    return run_reprocess(request, say=lambda _: None)


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def _final_offset(header: fits.Header) -> tuple[int, int]:
    """(x0, y0) of the finished picture's crop of the stack (its FINCROP card, 1-based)."""
    found = re.fullmatch(r"\[(\d+):\d+,(\d+):\d+\]", str(header["FINCROP"]))
    assert found is not None, header["FINCROP"]
    return int(found.group(1)) - 1, int(found.group(2)) - 1


@pytest.mark.usefixtures("dask_offload_thread")
@pytest.mark.skipif(MISSING is not None, reason=f"plate solver unavailable: {MISSING}")
def test_seestar_session_carries_its_reference_solution(seestar: list[Path], tmp_path: Path) -> None:
    """The four subs, without their WCS and OBJECT (reprocess must find both itself), with ``[solve]`` on by
    default: stack.fits's WCS puts its corners and centre within 5″ of where ASTAP's WCS of the reference sub
    puts them, final.fits's is the same sky moved by the crop, every stacked frame's sky columns in frames.csv
    are within 5″ (centre), 0.5 % (scale) and 0.1° (rotation) of ASTAP's for that sub, and the session is
    named after the object in the field (OBJECT, session.json's name and label) while its folder keeps the name
    made from the pointing. One solve task, the reference solved once; a second run submits nothing."""
    from distributed import LocalCluster

    archive = tmp_path / "archive"
    archive.mkdir()
    for path in seestar:
        _stripped(path, archive / path.name)  # the test's input only: a stripped copy in tmp_path
    config = Config()
    assert config.solve.enabled  # on by default, as the daemon's
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        with capture_logs() as logs:
            report = _run(archive, tmp_path, config, cluster.scheduler_address)
        again = _run(archive, tmp_path, config, cluster.scheduler_address)
    (session,) = report.plan.sessions
    assert report.written == [session.id] and report.failed == []
    (solved,) = _events(logs, "reference_solved")
    assert again.tasks == 0 and again.written == [] and again.skipped == [session.id]

    header = fits.getheader(session.output / STACK)
    assert header["PLTSOLVD"] is True and str(solved["frame"]).endswith(header["REFFRAME"])
    reference = next(p for p in seestar if p.name == header["REFFRAME"])
    ours, astap = WCS(header, naxis=2), WCS(fits.getheader(reference))
    h, w = int(header["NAXIS2"]), int(header["NAXIS1"])
    grid = np.array([[x, y] for x in (0, w / 2, w - 1) for y in (0, h / 2, h - 1)], dtype=float)
    sky_ours, sky_astap = ours.all_pix2world(grid, 0), astap.all_pix2world(grid, 0)
    assert max(_separation_arcsec(tuple(a), tuple(b)) for a, b in zip(sky_ours, sky_astap, strict=True)) < 5.0

    final = fits.getheader(session.output / "final.fits")
    x0, y0 = _final_offset(final)
    assert final["PLTSOLVD"] is True and (x0, y0) != (0, 0)
    moved = WCS(final, naxis=2).all_pix2world(grid[:1], 0)[0]
    assert _separation_arcsec(tuple(moved), tuple(ours.all_pix2world([[x0, y0]], 0)[0])) < 0.01

    name = "NGC 7023" if NO_CATALOGUE is None else "RA 21h01m Dec +68°07'"
    summary = json.loads((session.output / SESSION).read_text(encoding="utf-8"))
    assert summary["name"] == name and summary["label"] == f"{name}/{session.key.filter or 'no filter'}"
    assert header["OBJECT"] == name and final["OBJECT"] == name
    assert abs(summary["wcs"]["scale_arcsec"] - 2.39) < 0.1 and summary["wcs"]["index"].startswith("index-")
    assert session.key.target.startswith("RA ") and session.output.parent.name.startswith("RA_")

    rows = {Path(r["path"]).name: r for r in csv.DictReader((session.output / FRAMES).open(encoding="utf-8"))}
    assert sorted(rows) == sorted(p.name for p in seestar)
    for path in seestar:
        row = rows[path.name]
        assert row["status"] == "stacked", row
        truth = describe_wcs(WCS(fits.getheader(path)), width=1080, height=1920)
        assert _separation_arcsec((float(row["ra"]), float(row["dec"])), truth[:2]) < 5.0
        assert abs(float(row["scale_arcsec"]) / truth[2] - 1.0) < 0.005
        assert abs((float(row["sky_rotation_deg"]) - truth[3] + 180.0) % 360.0 - 180.0) < 0.1


@pytest.mark.usefixtures("dask_offload_thread")
def test_without_a_solution_products_carry_no_wcs_and_the_log_says_why(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``[solve]`` on but solve-field missing: one notice in the log, no solve task, a stack, final picture and
    frames table without WCS or sky columns (the digest as with solving off: turning it off redoes nothing).
    Then with the solver there: a solve task that fails leaves the products without WCS and the session not
    journaled (the error logged); one that finds no solution redoes it (the solver's settings are in its digest)
    with one solve task, the reason logged once, the products again without WCS, and the next run does
    nothing."""
    from distributed import LocalCluster

    import astrod.service.solver as solver_module
    from astrod.service import reference_solver, reprocess_tasks

    field = synth.make_session(n_frames=3, width=96, height=96, seed=7, max_shift=4.0, n_stars=40,
                               flux_min=2e4, flux_max=1e6)
    archive = tmp_path / "archive"
    field.write(archive, object="M 42")
    config = Config()
    monkeypatch.setattr(solver_module.shutil, "which", lambda _name: None)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        address = cluster.scheduler_address
        with capture_logs() as logs:
            missing = _run(archive, tmp_path, config, address)
        (notice,) = _events(logs, "solver_unavailable")
        assert "solve-field is not installed" in notice["reason"]
        (session,) = missing.plan.sessions
        assert missing.written == [session.id] and not _events(logs, "reference_solved")
        _assert_unsolved(session.output)
        off = _run(archive, tmp_path, replace(config, solve=SolveConfig(enabled=False)), address)
        assert off.tasks == 0 and off.written == []

        def crashed(path: Path, **_: Any) -> Any:
            raise RuntimeError("the solver went wrong")

        def no_solution(path: Path, **_: Any) -> Any:
            raise SolveError(f"{path}: no solution (40 stars, no hints)")

        monkeypatch.setattr(reference_solver, "missing_solver", lambda _settings: None)
        monkeypatch.setattr(reprocess_tasks, "solve_path", crashed)
        with capture_logs() as logs:  # a task that failed: written without WCS, not journaled
            broken = _run(archive, tmp_path, config, address)
        assert broken.written == [session.id] and broken.failed == [session.id]
        (error,) = _events(logs, "reference_not_solved")
        assert error["log_level"] == "error" and "the solver went wrong" in error["reason"]
        _assert_unsolved(session.output)
        monkeypatch.setattr(reprocess_tasks, "solve_path", no_solution)
        with capture_logs() as logs:  # an answer without a solution: as the daemon's, and journaled
            failed = _run(archive, tmp_path, config, address)
        assert failed.written == [session.id] and failed.failed == []
        assert failed.tasks == missing.tasks + 1  # the solve task
        (unsolved,) = _events(logs, "reference_not_solved")
        assert unsolved["session"] == session.id and unsolved["reason"].endswith("no solution (40 stars, no hints)")
        _assert_unsolved(session.output)
        again = _run(archive, tmp_path, config, address)
        assert again.tasks == 0 and again.written == []


def _assert_unsolved(output: Path) -> None:
    for product in (STACK, "final.fits"):
        header = fits.getheader(output / product)
        assert "PLTSOLVD" not in header and not [k for k in header if k and is_wcs_key(k)], product
    rows = list(csv.DictReader((output / FRAMES).open(encoding="utf-8")))
    assert [r["status"] for r in rows] == ["stacked"] * 3
    assert all(r["ra"] == "" and r["dec"] == "" for r in rows)
    summary = json.loads((output / SESSION).read_text(encoding="utf-8"))
    assert "wcs" not in summary and "name" not in summary


def test_a_closing_worker_kills_its_running_solve() -> None:
    """A worker's library plugin keeps the solves under way (solve-field in a process group of its own) and kills
    them when the worker closes: no solver process outlives a run."""
    import subprocess

    from astrod.library.match import MatchRules
    from astrod.service.reprocess_tasks import LibraryPlugin

    plugin = LibraryPlugin(None, MatchRules())
    plugin.setup(None)
    assert plugin.solves is not None
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a stand-in for solve-field
    try:
        plugin.solves.started(proc)
        plugin.teardown(None)
        assert proc.wait(timeout=10) == -9
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
