"""A session's solves: the reference's solution kept in the checkpoint comes back without asking the solver, a
new reference is asked for, and a session whose target was made from its pointing is named from its field."""

from __future__ import annotations

from pathlib import Path

from astrod.demo.sky import tan_header
from astrod.io.catalogue import catalogue_missing
from astrod.io.journal import Journal
from astrod.pipeline.sessions import pointing_name
from astrod.pipeline.solving import SolveResult, solve_result
from astrod.service.reference_solver import ReferenceSolver
from astrod.service.session_solving import SessionSolves
from astrod.service.solver import SolverSettings


def _result() -> SolveResult:
    header = tan_header(ra=315.44, dec=68.13, scale_arcsec=2.376, rotation_deg=57.9, width=1080, height=1920)
    return solve_result(header, width=1080, height=1920, index="index-4107.fits", stars=200, seconds=2.0)


def test_a_checkpointed_solution_comes_back_without_asking_the_solver(tmp_path: Path) -> None:
    """What `record` gives for the checkpoint, `restore` takes back for the same reference only: the solution is
    known at once and nothing is queued; a re-picked reference is asked for."""
    journal = Journal(tmp_path / "journal.sqlite")
    try:
        solver = ReferenceSolver(SolverSettings(), journal=journal)  # never started: what is asked stays queued
        first = SessionSolves(session_id="s", solver=solver, journal=journal)
        first.restore("ref.fits", {"reference": "ref.fits", "result": _result().record()})
        record = first.record("ref.fits")
        assert record is not None and first.record("other.fits") is None

        again = SessionSolves(session_id="s", solver=solver, journal=journal)
        again.restore("ref.fits", record)
        again.ask("ref.fits")
        assert again.solution("ref.fits") == _result() and solver.backlog == 0
        again.restore("other.fits", record)  # another reference's solution is not this one's
        again.ask("other.fits")
        assert again.solution("other.fits") is None and solver.backlog == 1
        again.restore("ref.fits", {"reference": "ref.fits", "result": {"ra": 1.0}})  # unusable: ignored
        assert again.solution("ref.fits") == _result()
    finally:
        journal.close()


def test_only_a_session_named_from_its_pointing_is_named_from_its_field(tmp_path: Path) -> None:
    """Lights without OBJECT (target made from the pointing): named after the object in the solved field, or
    its centre's coordinates without the catalogue; a session whose lights named their object keeps it."""
    journal = Journal(tmp_path / "journal.sqlite")
    try:
        solves = SessionSolves(session_id="s", solver=ReferenceSolver(SolverSettings(), journal=journal),
                               journal=journal)
        target = pointing_name(315.5, 68.2)
        assert solves.field_name("ref.fits", target) is None  # not solved yet
        solves.restore("ref.fits", {"reference": "ref.fits", "result": _result().record()})
        expected = "NGC 7023" if catalogue_missing() is None else pointing_name(315.44, 68.13)
        assert solves.field_name("ref.fits", target) == expected
        assert solves.field_name("ref.fits", "M 31") is None
    finally:
        journal.close()
