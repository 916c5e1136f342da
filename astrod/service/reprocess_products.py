"""What ``astrod reprocess`` writes beside a session's stack, as the daemon writes it when a session closes: the
plate solution of its reference frame in the stack and the products made from it (one solve task per session,
`solve_task`, taken up by `solved`), the light curves of the configured targets (``lightcurve_<target>.csv``
and ``.png``), and once every session of a run is written, the composites of each target's night and the
projects of each target's filter (journaled, so that a run after an interrupted one rebuilds those it owes,
and a run with nothing new rebuilds none).

The plate solve as Dask work: once a session's frames are decided, its final reference frame's path goes to a
task that runs the daemon's background solve (`astrod.service.solver.solve_path`, the same hints and time
limits) and returns the small `SolveResult` (or the reason there is none); the client puts it into the stack
before the finished products are made of it, as the daemon's close does (`solved_product`). The daemon's
fallback of registering frames that star matching refuses through their own solutions is not done here.

Light curves as Dask work, one photometry task per stacked frame: the client's decisions on the session's
frames (`DecidedStack`) hand each stacked frame to `PhotometryOrders`, the observer the daemon's
`PhotometrySeries` is in a live stack, which keeps what the series needs of the frame but its pixels (its
metadata, stars, quality and its transform onto the session's first reference). A task reads and calibrates
the frame with its worker's masters and measures the stars at the positions that transform carries there
(`astrod.pipeline.photometry.measure_apart`), returning the sums; the client takes them up in the frames'
order (`PhotometrySeries.add`) and writes the files through `astrod.io`. Per frame rather than per session:
the set-up (aperture, comparison candidates) is made on the first stacked frame, every other frame's task
waits only for that one (its future is their argument), and they spread over the cluster instead of reading a
whole session in one worker one frame after another. When the first frame gives no set-up (a target given by
RA/Dec only, and no WCS in that frame's header), the others set up on their own frames as the daemon's series
would on each, and those measured after the frame whose set-up the series takes are measured again with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from distributed import Future

from astrod.io.reprocess_journal import ReprocessJournal
from astrod.pipeline.composite import update_composites
from astrod.pipeline.outputs import StackProduct
from astrod.pipeline.photometry import FrameMeasurement, PhotometrySeries, PhotometrySettings, header_locate
from astrod.pipeline.project import update_project
from astrod.pipeline.repick import one_line
from astrod.pipeline.reprocess import SessionPlan
from astrod.pipeline.reprocess_stack import DecidedStack
from astrod.pipeline.settings import FinishSettings, StackedFrame
from astrod.pipeline.solving import SolveResult, session_field_name, solved_product
from astrod.service.reprocess_tasks import PhotometryOrder, ReprocessJob, photometry_task, solve_task
from astrod.service.session_photometry import SessionPhotometry

log = structlog.get_logger()
COMPOSITES, PROJECT = "composites", "project"  # the kinds of products made of several sessions (journal keys)
Submit = Callable[..., Future[Any]]  # (fn, *args, key=...) -> its future, as the run submits every task


class PhotometryOrders:
    """A decided stack's observer: one `PhotometryOrder` per frame stacked, in order."""

    def __init__(self) -> None:
        self.orders: list[PhotometryOrder] = []

    def __call__(self, frame: StackedFrame) -> None:
        if frame.path is None:
            raise ValueError("a reprocessed frame is read from its file: it has a path")
        self.orders.append(PhotometryOrder(path=frame.path, meta=frame.meta, stars=frame.stars,
                                           quality=frame.quality, to_first=frame.to_first, pattern=frame.pattern))


def submit_photometry(submit: Submit, orders: list[PhotometryOrder], job: ReprocessJob, *,
                      key: str) -> list[Future[Any]]:
    """One task per stacked frame: the first sets up, the others wait for its result."""
    if not orders:
        return []
    first = submit(photometry_task, orders[0], None, job, key=f"{key}-0")
    return [first, *(submit(photometry_task, o, first, job, key=f"{key}-{i}") for i, o in enumerate(orders[1:], 1))]


def gather_series(submit: Submit, orders: list[PhotometryOrder], futures: list[Future[Any]], job: ReprocessJob, *,
                  key: str, session: str) -> tuple[PhotometrySeries, bool]:
    """The session's series from its tasks' results, in the frames' order (see the module docstring), and
    whether a frame's measuring failed (logged; the frame is left out of the curves). Raises what a task that
    could not run raised (a worker lost more often than Dask allows)."""
    assert job.photometry is not None
    series = PhotometrySeries(job.photometry, locate=header_locate)
    try:
        results: list[FrameMeasurement] = [f.result() for f in futures]
    finally:
        for f in futures:
            f.release()
    failed = False
    for k, order in enumerate(orders):
        measured = results[k]
        if series.setup is not None and measured.setup != series.setup:  # set up on its own frame: measured again
            given = FrameMeasurement(setup=series.setup, record=None)
            again = [submit(photometry_task, o, given, job, key=f"{key}-again-{j}") for j, o in
                     enumerate(orders[k:], k)]
            try:
                results[k:] = [f.result() for f in again]
            finally:
                for f in again:
                    f.release()
            measured = results[k]
        if measured.error is not None:
            log.error("photometry_failed", session=session, frame=str(order.path), reason=measured.error)
            failed = True
        series.add(measured)
    return series, failed


def submit_solve(submit: Submit, stack: DecidedStack, job: ReprocessJob, *, key: str) -> Future[Any] | None:
    """The solve task of a decided session's final reference frame (None: solving is off, or nothing stacked)."""
    if job.solver is None or stack.n_stacked == 0 or stack.reference_path is None:
        return None
    return submit(solve_task, Path(stack.reference_path), job, key=key)


def solved(future: Future[Any] | None, plan: SessionPlan, stack: DecidedStack, product: StackProduct,
           summary: dict[str, Any]) -> tuple[StackProduct, bool]:
    """The session's stack with its reference's solution as the daemon's close puts it there (`solved_product`:
    the WCS, the frames' sky columns, the name of a session without OBJECT, into ``summary`` too), or as it is
    when the solve found none (the reason logged); and whether the task itself failed (the session is then
    done again next run)."""
    if future is None:
        return product, False
    reference = stack.reference_path
    try:
        answer: tuple[SolveResult | None, str | None] = future.result()
    except Exception as err:  # a worker lost more often than Dask allows: products without WCS this time
        log.error("reference_not_solved", session=plan.id, frame=reference, reason=one_line(err))
        return product, True
    finally:
        future.release()
    result, reason = answer
    if result is None:
        log.warning("reference_not_solved", session=plan.id, frame=reference, reason=reason)
        return product, False
    log.info("reference_solved", session=plan.id, frame=reference, ra=round(result.ra, 5), dec=round(result.dec, 5),
             scale_arcsec=round(result.scale_arcsec, 4), rotation_deg=round(result.rotation_deg, 3),
             index=result.index, seconds=round(result.seconds, 2))
    name = session_field_name(result, plan.key.target)
    shape = stack.shape
    assert shape is not None
    product, more = solved_product(product, result, frame_shape=(int(shape[-2]), int(shape[-1])), name=name)
    summary.update(more)
    if name is not None:  # the label follows the name; the folder keeps the one made from the pointing
        summary["label"] = f"{name}/{plan.key.filter or 'no filter'}"
        log.info("session_named", session=plan.id, name=name, ra=round(result.ra, 5), dec=round(result.dec, 5))
    return product, False


def write_curves(settings: PhotometrySettings, series: PhotometrySeries, output: Path) -> list[Path]:
    """The session's light curves and their plots, as the daemon leaves them when a session closes."""
    files = SessionPhotometry(settings, output)
    files.series = series
    files.write_curves()
    files.write_plots()
    return [files.path(name, suffix) for name in series.target_names for suffix in (".csv", ".png")]


def rebuild_owed(sessions: Sequence[SessionPlan], journal: ReprocessJournal, digests: Mapping[str, str],
                 settings: FinishSettings, *, formats: tuple[str, ...]) -> list[Path]:
    """The composites of each target's night and the project of each target's filter (`combined_groups`) that
    are owed: rebuilt once after a run's sessions, as the daemon rebuilds them whenever a session closes,
    unless the journal says they were rebuilt from these very sessions. Recorded only once all their sessions
    are (a session that failed has them rebuilt again when it is done). A failure is logged by the rebuilding
    functions, never raised."""
    written: list[Path] = []
    for key, members in combined_groups(sessions).items():
        digest = _group_digest(members, digests)
        done = all((r := journal.session(s.id)) is not None and r.digest == digests[s.id] for s in members)
        if done and journal.combined(key) == digest:
            continue
        if key.startswith(COMPOSITES):
            written += update_composites(members[0].output.parent, settings, formats=formats)
        else:
            written += update_project(members[0].output, settings, formats=formats)
        if done:
            journal.record_combined(key, digest=digest, now=datetime.now(UTC))
    return written


def combined_groups(sessions: Sequence[SessionPlan]) -> dict[str, list[SessionPlan]]:
    """The products made of several sessions, by key: ``composites <output>/<night>/<target>`` (the night's
    sessions of a target, in any filter) and ``project <output>/<target>/<filter>`` (a target's sessions in one
    filter folder, any night), each with its sessions."""
    groups: dict[str, list[SessionPlan]] = {}
    for s in sessions:
        folder = s.output  # <output>/<night>/<target>/<filter>
        groups.setdefault(f"{COMPOSITES} {folder.parent}", []).append(s)
        groups.setdefault(f"{PROJECT} {folder.parents[2] / folder.parent.name / folder.name}", []).append(s)
    return groups


def _group_digest(members: Iterable[SessionPlan], digests: Mapping[str, str]) -> str:
    text = "\n".join(sorted(f"{s.id} {digests[s.id]}" for s in members))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
