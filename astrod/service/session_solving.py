"""A session worker's plate solutions: its reference frame's, asked in the background whenever the reference is new
(the first, a re-picked one, the one a restored checkpoint holds), and those of frames that fail star matching,
registered through the two solutions instead of being rejected.

The worker's thread asks and reads; the solver's thread answers (`ReferenceSolver`); what both touch is behind
one lock. Answers are journaled by the solver under each frame's content stamp, so a restarted session gets its
reference's solution back from the journal, without solving again.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from astrod.core.annotate import annotate
from astrod.core.register import Model, Registration
from astrod.errors import AstrodError, RegistrationError
from astrod.io.catalogue import CatalogueObject
from astrod.io.fits import is_fits_name, read_fits_header
from astrod.io.journal import Journal
from astrod.pipeline.annotation import annotation_layer
from astrod.pipeline.live import Measured
from astrod.pipeline.sessions import is_pointing_name
from astrod.pipeline.solving import SolveResult, field_name, field_objects, frame_hints, wcs_transform
from astrod.service.reference_solver import ReferenceSolver, SolveRequest

log = structlog.get_logger()


class SessionSolves:
    """The plate solutions of one session (see the module docstring). Without a solver (solving off or not
    installed) nothing is asked and nothing is known."""

    def __init__(self, *, session_id: str, solver: ReferenceSolver | None, journal: Journal) -> None:
        self._session = session_id
        self._solver = solver
        self._journal = journal
        self._lock = threading.Lock()
        self._asked: SolveRequest | None = None
        self._solution: tuple[str, SolveResult] | None = None
        self._failure: tuple[str, str] | None = None
        self._name: tuple[str, str] | None = None  # (reference, the field's name)
        self._field: tuple[str, list[CatalogueObject]] | None = None  # (reference, the objects in its field)
        self._log = log.bind(session=session_id)

    @property
    def enabled(self) -> bool:
        return self._solver is not None

    @property
    def stopped(self) -> bool:
        """The daemon is stopping: a frame that needed a solve could not be judged."""
        return self._solver is not None and self._solver.stopped

    def record(self, reference: str | None) -> dict[str, Any] | None:
        """The reference's solution as a checkpoint keeps it (None when it has none)."""
        solution = self.solution(reference)
        return None if solution is None else {"reference": reference, "result": solution.record()}

    def restore(self, reference: str | None, record: Any) -> None:
        """Take back the solution a checkpoint kept (`record`) when it is the reference's."""
        if not isinstance(record, dict) or not reference or record.get("reference") != reference:
            return
        try:
            result = SolveResult.from_record(record["result"])
        except (KeyError, TypeError, ValueError) as err:  # another version's: the journal or a solve answers
            self._log.warning("checkpoint_solution_unusable", reason=str(err))
            return
        with self._lock:
            self._solution = (reference, result)
        self._log.info("solution_restored", frame=reference, ra=round(result.ra, 5), dec=round(result.dec, 5))

    def ask(self, reference: str | None) -> None:
        """Ask for a solve of the reference frame ``reference`` when it is new (nothing when it was asked, or its
        solution is known)."""
        if self._solver is None or not reference or self.solution(reference) is not None:
            return
        if self._asked is not None and str(self._asked.path) == reference:
            return
        path = Path(reference)
        self._asked = SolveRequest(session=self._session, path=path, done=self._answered,
                                   stamp=self._stamp(path))
        self._solver.request(self._asked)

    def _answered(self, path: Path, result: SolveResult | None, reason: str | None) -> None:
        """The solver's answer about the reference (called on the solver's thread, or at once from the
        journal)."""
        with self._lock:
            if result is not None:
                self._solution = (str(path), result)
            elif reason is not None:
                self._failure = (str(path), reason)

    def solution(self, reference: str | None, *, wait: bool = False) -> SolveResult | None:
        """The solution of the reference frame ``reference``, if there is one (``wait``: for a solve under way,
        up to the solver's time limit)."""
        asked = self._asked
        if wait and self._solver is not None and asked is not None and str(asked.path) == reference:
            asked.finished.wait(self._solver.longest_s)
        with self._lock:
            solution = self._solution
        if solution is None or solution[0] != reference:
            return None  # not solved, or solved for a reference that was re-picked since
        return solution[1]

    def failure(self, reference: str | None) -> str | None:
        """Why the reference ``reference`` could not be solved (None: solved, not yet answered, or not asked)."""
        with self._lock:
            failure = self._failure
        return failure[1] if failure is not None and failure[0] == reference else None

    def field_name(self, reference: str | None, target: str) -> str | None:
        """The name of a session of lights without OBJECT (its ``target`` made from their pointing), from its
        reference's solution: the catalogued object nearest the centre in the field (OpenNGC), else the solved
        centre's coordinates. None while unsolved, and for a session whose frames name their object."""
        if not is_pointing_name(target):
            return None
        solution = self.solution(reference)
        if solution is None or reference is None:
            return None
        if self._name is None or self._name[0] != reference:
            self._name = (reference, field_name(solution, self._objects(reference, solution)))
            self._log.info("session_named", name=self._name[1], ra=round(solution.ra, 5), dec=round(solution.dec, 5))
        return self._name[1]

    def _objects(self, reference: str, solution: SolveResult) -> list[CatalogueObject]:
        """The catalogued objects of the reference's field (looked up once per reference)."""
        if self._field is None or self._field[0] != reference:
            self._field = (reference, field_objects(solution))
        return self._field[1]

    def annotated(self, picture: npt.NDArray[np.uint8], *, reference: str | None,
                  frame_shape: tuple[int, int]) -> npt.NDArray[np.uint8]:
        """The preview picture with the solved field's objects and RA/Dec grid drawn on it when ``[solve]
        annotate`` is on and the reference is solved; else the picture as it is."""
        solution = self.solution(reference)
        if self._solver is None or not self._solver.annotate or solution is None or reference is None:
            return picture
        layer = annotation_layer(solution, self._objects(reference, solution), frame_shape=frame_shape,
                                 image_shape=picture.shape)
        if layer is None:
            return picture
        markers, grid = layer
        return annotate(picture, markers=markers, grid=grid)

    def _stamp(self, path: Path) -> str | None:
        try:
            return self._journal.frame_stamp(path)
        except Exception as err:  # the state disk: the solve is then not journaled
            self._log.warning("frame_stamp_unreadable", frame=str(path), reason=str(err).splitlines()[0])
            return None

    # ------------------------------------------------------------------------------------ registration
    def register(self, measured: Measured, *, reference: str | None, frame_shape: tuple[int, int],
                 model: Model, why: str) -> Registration:
        """Register a frame that failed star matching (``why``) through its own solution and the reference's
        (waiting for either, within the solver's limit). Raises RegistrationError with the reason it cannot."""
        solver = self._solver
        if solver is None or measured.stars is None or measured.path is None:
            raise RegistrationError("not solved (plate solving is off)")
        ref = self.solution(reference, wait=True)
        if ref is None:
            reason = self.failure(reference) or "no answer within the solver's time limit"
            raise RegistrationError(f"the reference frame is not solved ({reason})")
        path = measured.path
        try:
            header = read_fits_header(path) if is_fits_name(path) else {}
        except (AstrodError, OSError, ValueError):  # hints only: the reference's centre and scale do without it
            header = {}
        answer: dict[str, object] = {}

        def done(_path: Path, result: SolveResult | None, reason: str | None) -> None:
            answer.update(result=result, reason=reason)

        request = SolveRequest(session=self._session, path=path, done=done, stamp=self._stamp(path),
                               stars=measured.stars, hints=frame_hints(measured.meta, header, ref))
        if not solver.solve_now(request, timeout_s=2 * solver.longest_s):  # behind the solve under way
            raise RegistrationError("the frame is not solved (no answer within the solver's time limit)")
        result = answer.get("result")
        if not isinstance(result, SolveResult):
            raise RegistrationError(f"the frame is not solved ({answer.get('reason')})")
        try:
            transform, residual = wcs_transform(result, ref, frame_shape=frame_shape, model=model)
        except ValueError as err:
            raise RegistrationError(f"registration through the plate solutions failed: {err}") from err
        self._log.info("registered_by_wcs", frame=str(path), star_matching=why, dx=round(transform.dx, 2),
                       dy=round(transform.dy, 2), rotation_deg=round(transform.rotation_deg, 3),
                       scale=round(transform.scale, 5), residual_px=round(residual, 3))
        return Registration(transform=transform, matched=0, residual_px=residual, method="wcs")
