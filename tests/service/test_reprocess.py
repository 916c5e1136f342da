"""``astrod reprocess`` on a real Dask cluster: a LocalCluster of 2 processes, then a ``dask scheduler`` and two
``dask worker`` processes started here on 127.0.0.1 (one of them SIGKILLed mid-run). The products must be those
of ``astrod stack`` on each session's frames, and a run must redo only what changed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from astrod.config import Config, PhotometryTargetConfig, SolveConfig
from astrod.demo.archive import FILTERS, NIGHTS, TARGETS, Archive, make_archive
from astrod.io.headers import rules_from_config
from astrod.io.lightcurves import lightcurve_text, read_lightcurve
from astrod.library.masters import MasterLibrary
from astrod.library.match import MatchRules
from astrod.pipeline.calibration import library_calibrator
from astrod.pipeline.commands import settings_for
from astrod.pipeline.oneshot import stack_files
from astrod.pipeline.outputs import FRAMES, SESSION, STACK
from astrod.pipeline.photometry import CSV_COLUMNS, PhotometrySeries, header_locate
from astrod.service.reprocess import ReprocessReport, ReprocessRequest, run_reprocess
from astrod.service.session_photometry import photometry_for
from tests.pipeline.conftest import run_cli

# Plate solving is on by default; the synthetic skies cannot be solved, and a blind solve of one would take its
# whole time limit of CPU.
NO_SOLVING = SolveConfig(enabled=False)

REPO = Path(__file__).resolve().parents[2]
DASK = Path(sys.executable).parent / "dask"


@dataclass(frozen=True, slots=True)
class LocalRun:
    archive: Archive
    request: ReprocessRequest
    report: ReprocessReport


def _request(archive: Archive, output: Path, config: Config | None = None, **kw: object) -> ReprocessRequest:
    config = config or Config(solve=NO_SOLVING)
    return ReprocessRequest(archives=(archive.root / "lights", archive.calibration), output=output,
                            library=archive.root / "lib", config=config,
                            settings=settings_for(config, method=None, kappa=None), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, dask_cluster: tuple[str, list[Any]]) -> LocalRun:
    """The archive reprocessed on a local cluster of 2 processes (the external cluster of `dask_cluster` is
    started first: its workers import astrod while the archive is written and processed), with a light curve
    target: a bright star near the middle of the first session's field."""
    del dask_cluster
    archive = make_archive(tmp_path_factory.mktemp("archive"), frames=3)
    # bands of 64 KiB of samples: 4 band tasks per session of 3 frames, assembled by the client
    request = _request(archive, archive.root / "out", _target_config(archive), workers=2, band_bytes=2**16)
    return LocalRun(archive, request, run_reprocess(request, say=lambda _: None))


def _target_config(archive: Archive) -> Config:
    """The default config with one ``[[photometry.targets]]``: the brightest unsaturated star near the middle of
    the first session's field (its truth, 1-based); in the other sessions' fields it is wherever it falls."""
    cat = archive.catalogues[(NIGHTS[0].date().isoformat(), TARGETS[0], FILTERS[0])]
    size = 128
    central = (np.abs(cat.x - size / 2) < 30) & (np.abs(cat.y - size / 2) < 30) & (cat.flux < 3e5)
    star = int(np.flatnonzero(central)[np.argmax(cat.flux[central])])
    target = PhotometryTargetConfig(name="T 1", x=float(cat.x[star]) + 1.0, y=float(cat.y[star]) + 1.0)
    config = Config(solve=NO_SOLVING)
    return replace(config, photometry=replace(config.photometry, targets=(target,)))


def _table(path: Path) -> list[tuple[str, str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [(r["path"], r["status"], r["reason"]) for r in csv.DictReader(handle)]


def _products(output: Path) -> dict[str, tuple[np.ndarray, list[tuple[str, str, str]]]]:
    """Each session folder (relative) -> its stack's pixels and its frames table (path, status, reason)."""
    return {str(f.parent.relative_to(output)): (fits.getdata(f.parent / STACK), _table(f.parent / FRAMES))
            for f in sorted(output.glob("*/*/*/" + SESSION))}


def _same_stack(mine: np.ndarray, theirs: np.ndarray) -> None:
    finite = np.isfinite(theirs)
    assert np.array_equal(finite, np.isfinite(mine))
    scale = float(np.nanmax(np.abs(theirs)))
    assert float(np.max(np.abs(mine[finite] - theirs[finite]))) <= 1e-5 * scale


def test_products_equal_astrod_stack(local_run: LocalRun, tmp_path: Path) -> None:
    """12 sessions (3 nights × 2 targets × 2 filters), in the daemon's folders, each stack within 1e-5 of
    ``astrod stack`` on the session's frames with the library, the same frames stacked and rejected for the same
    reasons (the cloudy frames rejected by the gates)."""
    plan, output = local_run.report.plan, local_run.request.output
    assert len(plan.sessions) == 12 and len(local_run.report.written) == 12
    assert len(plan.calibration) == 24
    products = _products(output)
    assert sorted(products) == sorted(str(s.output.relative_to(output)) for s in plan.sessions)
    assert all(p.count("/") == 2 for p in products)  # <night>/<target>/<filter>
    rejected = 0
    for session in plan.sessions:
        stack, table = tmp_path / f"{session.id}.fits", tmp_path / f"{session.id}.csv"
        assert run_cli("stack", *session.frames, "--library", local_run.archive.root / "lib", "-o", stack,
                       "--frames-table", table) == 0
        image, rows = products[str(session.output.relative_to(output))]
        assert rows == _table(table)
        _same_stack(image, fits.getdata(stack))
        rejected += sum(status == "rejected" for _, status, _ in rows)
    assert rejected == 3  # one cloudy frame a night
    # a measure per light, a warp and a photometry task per stacked frame, 4 bands each
    assert local_run.report.tasks == 39 + 36 + 36 + 4 * 12
    for session in plan.sessions:  # and the finished products a closed session of the daemon has
        summary = json.loads((session.output / SESSION).read_text(encoding="utf-8"))
        assert {"final.fits", "report.html"} <= set(summary["products"])
        assert (session.output / "final.fits").is_file() and (session.output / "report.html").is_file()


def test_second_run_submits_no_task(local_run: LocalRun) -> None:
    """Nothing changed: every session is skipped before any cluster is started."""
    report = run_reprocess(local_run.request, say=lambda _: None)
    assert report.tasks == 0 and report.written == [] and len(report.skipped) == 12


def test_light_curves_equal_the_live_stacks(local_run: LocalRun) -> None:
    """Each session's lightcurve_T_1.csv is, to the character, the curve the daemon's `PhotometrySeries` gives
    as the observer of a live stack of the session's frames with the same library and settings (the same rows
    of the same frames, the same sums), and its plot is written beside it; in the first session the target is
    measured on its three stacked frames, never saturated or clipped."""
    request, plan = local_run.request, local_run.report.plan
    psettings = photometry_for(request.config)
    assert psettings is not None
    library = MasterLibrary.open(local_run.archive.root / "lib", rules=MatchRules.from_config(request.config))
    try:
        for session in plan.sessions:
            series = PhotometrySeries(psettings, locate=header_locate)
            stack_files(session.frames, request.settings, calibrator=library_calibrator(library, in_place=True),
                        rename=request.config.headers.rename, rules=rules_from_config(request.config.headers),
                        observer=series)
            curve = series.curve("T 1")
            text = (session.output / "lightcurve_T_1.csv").read_text(encoding="utf-8")
            assert text == lightcurve_text(curve.comment, curve.rows, CSV_COLUMNS)
            assert len(curve.rows) == sum(s == "stacked" for _, s, _ in _table(session.output / FRAMES))
            assert (session.output / "lightcurve_T_1.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        library.close()
    first = plan.sessions[0]
    _, rows = read_lightcurve(first.output / "lightcurve_T_1.csv")
    assert [r["frame"] for r in rows] == [p.name for p in first.frames[:3]]  # the cloudy fourth is rejected
    # the field is too crowded for an isolated comparison (tests/service/test_reprocess_products.py has an
    # ensemble): the target's own sums, neither saturated nor clipped
    assert all(r["flags"] == "no_comparisons" and float(r["flux"]) > 0 for r in rows)


def test_dry_run_plans_without_writing(local_run: LocalRun, tmp_path: Path) -> None:
    """A dry run into a new folder lists the 12 sessions to do and writes nothing (not even its journal)."""
    said: list[str] = []
    report = run_reprocess(replace(local_run.request, output=tmp_path / "new", dry_run=True), say=said.append)
    assert report.tasks == 0 and len(report.todo) == 12
    assert said[0].startswith("12 sessions, 39 lights, 24 calibration frames")
    assert not (tmp_path / "new").exists()


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """``dask scheduler`` and two ``dask worker`` processes (no nanny: a killed worker stays dead)."""
    folder = tmp_path_factory.mktemp("dask")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    info = folder / "scheduler.json"
    procs = [subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(info)], env=env, cwd=folder,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not info.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert info.is_file(), "dask scheduler did not start"
        for _ in range(2):
            procs.append(subprocess.Popen([str(DASK), "worker", "--scheduler-file", str(info), "--nthreads", "1",
                                           "--no-nanny", "--host", "127.0.0.1", "--no-dashboard",
                                           "--preload", "astrod.service.reprocess_tasks"], env=env,
                                          cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        address = json.loads(info.read_text())["address"]
        yield address, procs
    finally:
        for proc in reversed(procs):  # workers first; nothing of theirs is worth a graceful close
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _wait_for_workers(address: str, n: int) -> None:
    from distributed import Client

    with Client(address, timeout=30) as client:
        client.wait_for_workers(n, timeout=60)


class _StopAfter:
    """A progress that interrupts the run (as Ctrl-C would) once ``sessions`` sessions are written."""

    def __init__(self, sessions: int) -> None:
        self.sessions, self.written = sessions, 0

    def start(self, stage: str, total: int) -> None:
        del stage, total

    def advance(self, item: str = "", n: int = 1) -> None:
        if item.endswith(" written"):
            self.written += 1
            if self.written >= self.sessions:
                raise KeyboardInterrupt

    def finish(self) -> None:
        pass


def test_external_scheduler_interrupted_run_continues(local_run: LocalRun, dask_cluster: tuple[str, list[Any]],
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two external workers: a run interrupted after 3 sessions, then ``astrod reprocess --scheduler`` writes the
    other 9 only, and the products are those of the local cluster."""
    address, _ = dask_cluster
    _wait_for_workers(address, 2)
    archive, out = local_run.archive, tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_reprocess(_request(archive, out, scheduler=address), progress=_StopAfter(3), say=lambda _: None)
    config = tmp_path / "astrod.toml"
    config.write_text("[solve]\nenabled = false\n", encoding="utf-8")  # as the first run's (NO_SOLVING)
    assert run_cli("reprocess", archive.root / "lights", archive.calibration, "-o", out, "--library",
                   archive.root / "lib", "--scheduler", address, "--config", config) == 0
    assert "9 sessions written, 3 already done" in capsys.readouterr().out
    _compare_outputs(out, local_run.request.output)


class _KillAfter:
    """A progress that SIGKILLs a worker once ``after`` frames are decided (tasks are then in flight)."""

    def __init__(self, proc: subprocess.Popen[bytes], after: int) -> None:
        self.proc, self.after, self.done = proc, after, 0

    def start(self, stage: str, total: int) -> None:
        del stage, total

    def advance(self, item: str = "", n: int = 1) -> None:
        del item
        self.done += n
        if self.done >= self.after and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def finish(self) -> None:
        pass


def test_worker_killed_mid_run_gives_the_same_products(local_run: LocalRun, dask_cluster: tuple[str, list[Any]],
                                                       tmp_path: Path) -> None:
    """One of the two workers SIGKILLed after the first frames: Dask reruns its lost tasks on the other, and the
    products are the same, light curves included."""
    address, procs = dask_cluster
    _wait_for_workers(address, 2)
    killer = _KillAfter(procs[1], after=2)
    request = _request(local_run.archive, tmp_path / "out", local_run.request.config, scheduler=address)
    report = run_reprocess(request, progress=killer, say=lambda _: None)
    assert procs[1].poll() == -signal.SIGKILL
    assert len(report.written) == 12
    _compare_outputs(tmp_path / "out", local_run.request.output, curves=True)


def _compare_outputs(mine: Path, theirs: Path, *, curves: bool = False) -> None:
    a, b = _products(mine), _products(theirs)
    assert sorted(a) == sorted(b)
    for name, (image, rows) in a.items():
        assert rows == b[name][1]
        _same_stack(image, b[name][0])
        if curves:
            assert (mine / name / "lightcurve_T_1.csv").read_text(encoding="utf-8") == (
                theirs / name / "lightcurve_T_1.csv").read_text(encoding="utf-8")


def test_one_changed_frame_redoes_its_session_only(local_run: LocalRun, dask_cluster: tuple[str, list[Any]]) -> None:
    """A light rewritten with other content: its session alone is stacked again and its light curve measured
    again (the others are skipped; on the external cluster, already running, whichever of its workers is
    left)."""
    address, _ = dask_cluster
    _wait_for_workers(address, 1)
    plan = local_run.report.plan
    session = plan.sessions[5]
    curves = {s.id: (s.output / "lightcurve_T_1.csv").stat().st_mtime_ns for s in plan.sessions}
    with fits.open(session.frames[1], mode="update") as hdul:  # a few pixels brighter: other content
        hdul[0].data[10:20, 10:20] += 50
    report = run_reprocess(replace(local_run.request, scheduler=address), say=lambda _: None)
    assert report.written == [session.id] and report.frames == len(session.frames)
    assert len(report.skipped) == 11
    # its light curve with it, the others' left as they were
    assert [s.id for s in plan.sessions
            if (s.output / "lightcurve_T_1.csv").stat().st_mtime_ns != curves[s.id]] == [session.id]



@pytest.mark.usefixtures("dask_offload_thread")
def test_failed_tasks_are_recorded_and_done_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an in-process cluster: a frame whose measure task raises is rejected as an internal error and its
    session written but not journaled; a session whose warp task raises is not written; the next run does both
    sessions again and the command's exit status says so."""
    from distributed import LocalCluster

    from astrod.demo import synth
    from astrod.service import reprocess_tasks

    sessions = {}
    for name, seed in (("A", 1), ("B", 2)):
        s = synth.make_session(n_frames=3, width=128, height=128, seed=seed, max_shift=5.0, n_stars=70,
                               flux_min=2e4, flux_max=1e6)
        sessions[name] = s.write(tmp_path / "arch", object=name)
    broken_frame = sessions["A"][1]
    real_measure, real_warp = reprocess_tasks.measure_frame, reprocess_tasks.warp_frame

    def measure(path: Path, *args: Any, **kw: Any) -> Any:
        if path == broken_frame:
            raise RuntimeError("measure went wrong")
        return real_measure(path, *args, **kw)

    def warp(order: Any, *args: Any, **kw: Any) -> Any:
        if order.path in sessions["B"]:
            raise RuntimeError("warp went wrong")
        return real_warp(order, *args, **kw)

    config = Config(solve=NO_SOLVING)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        request = ReprocessRequest(archives=(tmp_path / "arch",), output=tmp_path / "out", library=tmp_path / "lib",
                                   config=config, settings=settings_for(config, method=None, kappa=None),
                                   scheduler=cluster.scheduler_address)
        monkeypatch.setattr(reprocess_tasks, "measure_frame", measure)
        monkeypatch.setattr(reprocess_tasks, "warp_frame", warp)
        report = run_reprocess(request, say=lambda _: None)
        a, b = report.plan.sessions
        assert report.written == [a.id] and sorted(report.failed) == sorted([a.id, b.id])
        rows = _table(a.output / FRAMES)
        assert rows[1] == (str(broken_frame), "rejected",
                           f"{broken_frame}: internal error while processing: measure went wrong")
        assert not b.output.exists()
        monkeypatch.undo()
        again = run_reprocess(request, say=lambda _: None)
        assert sorted(again.written) == sorted([a.id, b.id]) and again.failed == []
    assert _table(a.output / FRAMES)[1][1] == "stacked"
