"""The daemon's solver thread: answers are journaled under the frame's content stamp and a later request for the same
frame is answered from the journal without running the solver; stopping kills the solve under way (no process
is left behind); a blind solve gets the longer time limit.

A stand-in `solve-field` (a shell script) takes the real one's place: these tests are about the thread, the
journal and the processes, not about astrometry (tests/service/test_solver.py and test_daemon_solving.py run the
real one)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from astrod.core.stars import StarList
from astrod.io.journal import Journal
from astrod.pipeline.solving import SolveHints, SolveResult
from astrod.service.reference_solver import ReferenceSolver, SolveRequest
from astrod.service.solver import SolverSettings


def _fake_solver(tmp_path: Path, body: str) -> SolverSettings:
    """Settings whose solve-field is a script running ``body`` (one index file stand-in beside it)."""
    program = tmp_path / "fake-solve-field"
    program.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    program.chmod(0o755)
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "index-4107.fits").write_bytes(b"")
    return SolverSettings(timeout_s=30.0, index_dirs=(tmp_path / "index",), program=str(program), min_stars=3)


def _stars() -> StarList:
    n = 5
    ones = np.ones(n)
    return StarList(x=np.linspace(10.0, 170.0, n), y=np.array([20.0, 80.0, 40.0, 110.0, 60.0]),
                    flux=np.arange(n, 0, -1, dtype=np.float64), fwhm=2.0 * ones, hfr=ones, eccentricity=0.1 * ones,
                    n_detected=n, width=200, height=150)


def _result() -> SolveResult:
    cards = (("CTYPE1", "RA---TAN", ""), ("CTYPE2", "DEC--TAN", ""), ("CRPIX1", 100.5, ""), ("CRPIX2", 75.5, ""),
             ("CRVAL1", 315.4, ""), ("CRVAL2", 68.2, ""), ("CD1_1", -6.6e-4, ""), ("CD1_2", 0.0, ""),
             ("CD2_1", 0.0, ""), ("CD2_2", 6.6e-4, ""))
    return SolveResult(ra=315.4, dec=68.2, scale_arcsec=2.376, rotation_deg=0.0, mirrored=False, width_deg=0.13,
                       height_deg=0.1, index="index-4107.fits", stars=5, seconds=1.5, cards=cards)


class _Answers:
    def __init__(self) -> None:
        self.got: list[tuple[SolveResult | None, str | None]] = []

    def __call__(self, _path: Path, result: SolveResult | None, reason: str | None) -> None:
        self.got.append((result, reason))


def test_a_journaled_solution_is_reused_without_running_the_solver(tmp_path: Path) -> None:
    """A frame whose solution the journal holds under its stamp is answered at once, on the asking thread, with
    that solution; the solver is never run (its stand-in would leave a mark)."""
    mark = tmp_path / "ran"
    settings = _fake_solver(tmp_path, f"touch '{mark}'")
    journal = Journal(tmp_path / "journal.sqlite")
    try:
        journal.record_solution("a.fits|10|abc", path=Path("a.fits"), session="s", result=_result().record(),
                                reason=None)
        solver = ReferenceSolver(settings, journal=journal)  # not started: only the journal can answer
        answers = _Answers()
        request = SolveRequest(session="s", path=Path("a.fits"), done=answers, stamp="a.fits|10|abc")
        solver.request(request)
        assert request.finished.is_set() and answers.got == [(_result(), None)]
        other = SolveRequest(session="s", path=Path("a.fits"), done=answers, stamp="a.fits|10|changed")
        solver.request(other)  # the same path with other content: to be solved
        assert not other.finished.is_set() and solver.backlog == 1
    finally:
        journal.close()
    assert not mark.exists()


def test_a_failure_is_journaled_and_reused(tmp_path: Path) -> None:
    """A frame that cannot be solved is journaled with its reason; asked again (a restart), the reason comes
    back from the journal and the solver does not run a second time."""
    runs = tmp_path / "runs"
    settings = _fake_solver(tmp_path, f"echo run >> '{runs}'")  # writes no .wcs: no solution
    journal = Journal(tmp_path / "journal.sqlite")
    solver = ReferenceSolver(settings, journal=journal)
    solver.start()
    try:
        answers = _Answers()
        first = SolveRequest(session="s", path=Path("b.fits"), done=answers, stamp="b|1", stars=_stars(),
                             hints=SolveHints(ra=10.0, dec=20.0))
        assert solver.solve_now(first, timeout_s=20)
        again = SolveRequest(session="s", path=Path("b.fits"), done=answers, stamp="b|1")
        solver.request(again)
        assert again.finished.is_set()
    finally:
        solver.close()
        journal.close()
    (r1, why1), (r2, why2) = answers.got
    assert r1 is None and r2 is None and why1 == why2 and "no solution" in str(why1)
    assert runs.read_text().count("run") == 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running any more
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_closing_the_solver_kills_the_solve_under_way(tmp_path: Path) -> None:
    """A solve running when the daemon stops is killed with its process group (the stand-in's child too): the
    close returns in seconds, no process is left, the session hears 'astrod is stopping', and nothing is
    journaled (a restart solves that frame again); a solve asked afterwards is answered at once."""
    pids = tmp_path / "pids"
    settings = _fake_solver(tmp_path, f"sleep 300 & echo $$ $! > '{pids}'; wait")
    journal = Journal(tmp_path / "journal.sqlite")
    solver = ReferenceSolver(settings, journal=journal)
    solver.start()
    answers = _Answers()
    request = SolveRequest(session="s", path=Path("c.fits"), done=answers, stamp="c|1", stars=_stars(),
                           hints=SolveHints(ra=10.0, dec=20.0))
    try:
        solver.request(request)
        deadline = time.monotonic() + 20
        while not (pids.exists() and pids.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        shell, child = (int(p) for p in pids.read_text().split())
        assert _alive(shell) and _alive(child)
        started = time.monotonic()
        solver.close(timeout_s=20)
        assert time.monotonic() - started < 10 and not solver.alive
        assert request.finished.is_set()
        assert not _alive(shell) and not _alive(child)
        (result, reason), = answers.got[:1]
        assert result is None and "astrod is stopping" in str(reason)
        assert journal.solution("c|1") is None
        late = SolveRequest(session="s", path=Path("d.fits"), done=answers, stamp="d|1", stars=_stars())
        assert solver.solve_now(late, timeout_s=0.0) and solver.stopped  # asked after the stop: answered at once
        assert "astrod is stopping" in str(answers.got[-1][1])
    finally:
        journal.close()


def test_a_blind_solve_gets_the_longer_time_limit() -> None:
    """Without an RA/Dec hint the whole sky is searched: the blind limit applies; with one, the hinted limit."""
    settings = SolverSettings(timeout_s=30.0, blind_timeout_s=120.0)
    assert settings.limit_s(SolveHints(ra=1.0, dec=2.0)) == 30.0
    assert settings.limit_s(SolveHints(scale_low=1.0, scale_high=2.0)) == 120.0
    assert SolverSettings(timeout_s=60.0, blind_timeout_s=10.0).limit_s(SolveHints()) == 60.0
    assert settings.longest_s >= 120.0


@pytest.fixture(autouse=True)
def _no_thread_left() -> object:
    before = set(threading.enumerate())
    yield None
    assert not [t for t in threading.enumerate() if t not in before and t.name == "astrod-solver" and t.is_alive()]


def test_without_the_solver_the_daemon_goes_on_after_one_notice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Solving is on by default; where solve-field is missing the daemon gets no solver thread and the log says
    why, once; with solving off nothing is said."""
    import astrod.service.solver as solver_module
    from astrod.config import Config, SolveConfig
    from astrod.service.reference_solver import reference_solver

    assert Config().solve.enabled
    monkeypatch.setattr(solver_module.shutil, "which", lambda _name: None)
    with capture_logs() as logs:
        assert reference_solver(Config()) is None
        assert reference_solver(Config(solve=SolveConfig(enabled=False))) is None
    (notice,) = logs
    assert notice["event"] == "solver_unavailable" and "solve-field is not installed" in notice["reason"]
