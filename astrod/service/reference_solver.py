"""Plate-solving of sessions' reference frames in the background: one thread for the daemon, one solve at a time
(solve-field is a process of its own; two at once would only share the same two cores), never in a session
worker's way. A worker asks when its reference frame is chosen or re-picked and hears back through a callback;
its live stack never waits for a solve."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from astrod.config import Config
from astrod.errors import AstrodError
from astrod.pipeline.solving import SolveResult
from astrod.service.queue_thread import QueueThread
from astrod.service.solver import KILL_GRACE_S, SolverSettings, missing_solver, solve_path

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class SolveRequest:
    """Solve ``path`` (the reference frame of ``session``, as it is on disk); ``done`` hears the solution, or
    None and the one-line reason. ``finished`` is set once ``done`` has been called."""

    session: str
    path: Path
    done: Callable[[Path, SolveResult | None, str | None], None]
    finished: threading.Event = field(default_factory=threading.Event)


class ReferenceSolver(QueueThread[SolveRequest]):
    def __init__(self, settings: SolverSettings, *, rename: Mapping[str, str] | None = None) -> None:
        super().__init__(name="astrod-solver")
        self._settings = settings
        self._rename = rename

    @property
    def longest_s(self) -> float:
        """The longest one solve can take (its time limit, then the kill), with a margin."""
        return self._settings.timeout_s + KILL_GRACE_S + 5.0

    def request(self, item: SolveRequest) -> None:
        self.put(item)

    def handle(self, item: SolveRequest) -> bool:
        bound = log.bind(session=item.session, frame=str(item.path))
        try:
            result = solve_path(item.path, settings=self._settings, rename=self._rename)
        except AstrodError as err:
            reason = str(err).splitlines()[0]
            bound.warning("reference_not_solved", reason=reason)
            self._answer(item, None, reason)
            return False
        bound.info("reference_solved", ra=round(result.ra, 5), dec=round(result.dec, 5),
                   scale_arcsec=round(result.scale_arcsec, 4), rotation_deg=round(result.rotation_deg, 3),
                   index=result.index, seconds=round(result.seconds, 2))
        self._answer(item, result, None)
        return False

    @staticmethod
    def _answer(item: SolveRequest, result: SolveResult | None, reason: str | None) -> None:
        try:
            item.done(item.path, result, reason)
        finally:
            item.finished.set()


def reference_solver(config: Config) -> ReferenceSolver | None:
    """The daemon's solver thread, or None when ``[solve] enabled`` is off or the solver is not installed (then
    said once in the log: the stacks simply carry no WCS)."""
    if not config.solve.enabled:
        return None
    settings = SolverSettings.from_config(config.solve)
    missing = missing_solver(settings)
    if missing is not None:
        log.warning("solver_unavailable", reason=missing)
        return None
    return ReferenceSolver(settings, rename=config.headers.rename)
