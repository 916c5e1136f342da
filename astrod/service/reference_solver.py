"""Plate-solving of sessions' frames in the background: one thread for the daemon, one solve at a time
(solve-field is a process of its own; two at once would only share the same two cores), never in a session
worker's way. A worker asks when its reference frame is chosen or re-picked and hears back through a callback;
its live stack never waits for a reference solve. A frame that fails star matching is solved here too (its
worker waits for that answer: `SessionWorker` registers it through the two solutions).

Every answer is journaled under the frame's content stamp (`Journal.frame_stamp`): a restarted daemon asking
again is answered from the journal at once, on the asking thread, and solve-field is not run again. A stopping
daemon kills the solve under way (`RunningSolves`): no solver process outlives it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from astrod.config import Config
from astrod.core.stars import StarList
from astrod.errors import AstrodError, SolveError
from astrod.io.journal import Journal
from astrod.pipeline.solving import SolveHints, SolveResult
from astrod.service.queue_thread import QueueThread
from astrod.service.solver import RunningSolves, SolverSettings, missing_solver, solve_path, solve_stars

log = structlog.get_logger()

Answer = Callable[[Path, SolveResult | None, str | None], None]


@dataclass(frozen=True, slots=True)
class SolveRequest:
    """Solve ``path`` (a frame of ``session``, as it is on disk), or when ``stars`` are given, those stars of it
    with ``hints``; ``done`` hears the solution, or None and the one-line reason. ``stamp``: the frame's content
    stamp, under which the answer is journaled (None: not journaled). ``finished`` is set once ``done`` has been
    called."""

    session: str
    path: Path
    done: Answer
    stamp: str | None = None
    stars: StarList | None = None
    hints: SolveHints | None = None
    finished: threading.Event = field(default_factory=threading.Event)


class ReferenceSolver(QueueThread[SolveRequest]):
    def __init__(self, settings: SolverSettings, *, rename: Mapping[str, str] | None = None,
                 journal: Journal | None = None, annotate: bool = False) -> None:
        super().__init__(name="astrod-solver")
        self.annotate = annotate  # [solve] annotate: the sessions draw their solved field on the preview JPEG
        self._settings = settings
        self._rename = rename
        self._journal = journal
        self._running = RunningSolves()

    @property
    def longest_s(self) -> float:
        """The longest one solve can take (the longer time limit, then the kill), with a margin."""
        return self._settings.longest_s + 5.0

    @property
    def stopped(self) -> bool:
        """The daemon is stopping: solves are cut short, new ones answered at once that it is."""
        return self._running.closed

    def request(self, item: SolveRequest) -> None:
        """Queue a solve; one journaled already is answered at once, on the calling thread, and so is any once
        the solver is stopped."""
        if self._answer_from_journal(item):
            return
        if self._running.closed:
            self._answer(item, None, f"{item.path}: solve stopped: astrod is stopping")
            return
        self.put(item)

    def solve_now(self, item: SolveRequest, *, timeout_s: float) -> bool:
        """Queue a solve and wait for its answer (behind the solves queued before it) up to ``timeout_s``;
        whether it was answered."""
        self.request(item)
        return item.finished.wait(timeout_s)

    def stop(self) -> None:
        """End the thread: the solve under way is killed, the ones queued are answered 'astrod is stopping'."""
        killed = self._running.kill_all()
        if killed:
            log.info("solver_stopped", killed=killed)
        super().stop()

    def close(self, timeout_s: float = 30.0) -> None:
        """`stop`, and wait for the thread to end."""
        self.stop()
        self.join(timeout_s)

    def handle(self, item: SolveRequest) -> bool:
        bound = log.bind(session=item.session, frame=str(item.path))
        try:
            if self._running.closed:
                raise SolveError(f"{item.path}: solve stopped: astrod is stopping")
            if item.stars is not None:
                result = solve_stars(item.stars, item.hints or SolveHints(), settings=self._settings,
                                     name=str(item.path), running=self._running)
            else:
                result = solve_path(item.path, settings=self._settings, rename=self._rename, running=self._running)
        except AstrodError as err:
            reason = str(err).splitlines()[0]
            bound.warning("reference_not_solved" if item.stars is None else "frame_not_solved", reason=reason)
            # a frame that cannot be solved now will not be after a restart (same stars, same limit); a solve
            # cut short by the stop, or a file that could not be read, will be tried again
            if isinstance(err, SolveError) and not self._running.closed:
                self._journal_answer(item, None, reason)
            self._answer(item, None, reason)
            return False
        event = "reference_solved" if item.stars is None else "frame_solved_alone"
        bound.info(event, ra=round(result.ra, 5), dec=round(result.dec, 5),
                   scale_arcsec=round(result.scale_arcsec, 4), rotation_deg=round(result.rotation_deg, 3),
                   index=result.index, seconds=round(result.seconds, 2))
        self._journal_answer(item, result, None)
        self._answer(item, result, None)
        return False

    def _answer_from_journal(self, item: SolveRequest) -> bool:
        if self._journal is None or item.stamp is None:
            return False
        try:
            record = self._journal.solution(item.stamp)
            result = SolveResult.from_record(record.result) if record is not None and record.result else None
        except (KeyError, TypeError, ValueError) as err:  # a record of another version: solve again
            log.warning("journaled_solution_unusable", frame=str(item.path), reason=str(err))
            return False
        except Exception as err:  # the state disk: solving again is the way on
            log.warning("journaled_solution_unreadable", frame=str(item.path), reason=str(err).splitlines()[0])
            return False
        if record is None:
            return False
        log.info("solution_reused", session=item.session, frame=str(item.path), solved=result is not None,
                 reason=record.reason)
        self._answer(item, result, record.reason)
        return True

    def _journal_answer(self, item: SolveRequest, result: SolveResult | None, reason: str | None) -> None:
        if self._journal is None or item.stamp is None:
            return
        try:
            self._journal.record_solution(item.stamp, path=item.path, session=item.session,
                                          result=None if result is None else result.record(), reason=reason)
        except Exception as err:  # the answer still goes to the session; only a restart would solve again
            log.warning("solution_not_journaled", frame=str(item.path), reason=str(err).splitlines()[0])

    @staticmethod
    def _answer(item: SolveRequest, result: SolveResult | None, reason: str | None) -> None:
        try:
            item.done(item.path, result, reason)
        finally:
            item.finished.set()


def reference_solver(config: Config, *, journal: Journal | None = None) -> ReferenceSolver | None:
    """The daemon's solver thread, or None when ``[solve] enabled`` is off or the solver is not installed (then
    said once in the log: the stacks simply carry no WCS)."""
    settings = available_solver(config)
    if settings is None:
        return None
    return ReferenceSolver(settings, rename=config.headers.rename, journal=journal, annotate=config.solve.annotate)


def available_solver(config: Config) -> SolverSettings | None:
    """The solver's settings when ``[solve] enabled`` is on and the solver is installed here; else None (a missing
    solver said in the log, once per call: the stacks simply carry no WCS)."""
    if not config.solve.enabled:
        return None
    settings = SolverSettings.from_config(config.solve)
    missing = missing_solver(settings)
    if missing is not None:
        log.warning("solver_unavailable", reason=missing)
        return None
    return settings
