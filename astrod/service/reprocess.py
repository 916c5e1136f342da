"""``astrod reprocess``: an archive of nights stacked again as Dask tasks, on a local cluster or any Dask cluster.

The client plans (`astrod.pipeline.reprocess`), builds or refreshes the masters, then for each session still to
do: submits one measure task per frame, decides the session's frames in their order as the live stack does
(`DecidedStack`), submits one warp task per stacked frame and one integration task per band of rows (and with
photometry targets one photometry task per stacked frame, and with ``[solve]`` on and the solver installed one
plate-solve task of its final reference frame: `astrod.service.reprocess_products`), gathers the
bands and writes the products through `astrod.io` — the only writer of products; once the sessions are
written, the composites and projects they are part of. Workers write only the
registered frames into a scratch folder under the output (``.astrod-reprocess/cache/<session>``), removed once
the session's products are written.

Where the data must live: the archive, the master library and the output folder at the same paths on the
client and every worker (a shared file system), since tasks are given paths, never pixels.

At most `window` sessions are in flight: their measures and bands are what the cluster holds at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import structlog
from distributed import Client, Future, LocalCluster

from astrod.config import Config
from astrod.errors import AstrodError
from astrod.io.atomic import atomic_write_text
from astrod.io.files import ensure_folder, remove_folder
from astrod.io.frames import expand_frame_paths
from astrod.io.headers import rules_from_config
from astrod.io.index import MasterIndex
from astrod.io.previews import write_frames_table
from astrod.io.reprocess_journal import JOURNAL_NAME, STATE_FOLDER, ReprocessJournal, content_stamp, folder_stamp
from astrod.library.build import BuildOptions, build_library
from astrod.library.match import MatchRules
from astrod.library.progress import NoProgress, Progress
from astrod.pipeline.finishing import finish_session
from astrod.pipeline.ingest import ReadOptions
from astrod.pipeline.outputs import FRAMES, SESSION
from astrod.pipeline.repick import one_line
from astrod.pipeline.reprocess import ArchivePlan, SessionPlan, plan_archive, session_digest
from astrod.pipeline.reprocess_stack import DecidedStack, FrameMeasure, assemble, session_summary
from astrod.pipeline.settings import PipelineSettings
from astrod.pipeline.state import TABLE_COLUMNS
from astrod.service.reference_solver import available_solver
from astrod.service.reprocess_products import (
    PhotometryOrders,
    gather_series,
    rebuild_owed,
    solved,
    submit_photometry,
    submit_solve,
    write_curves,
)
from astrod.service.reprocess_tasks import (
    LibraryPlugin,
    PhotometryOrder,
    ReprocessJob,
    band_task,
    measure_task,
    warp_task,
)
from astrod.service.session_photometry import photometry_for

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class ReprocessRequest:
    """One run: the archive folders, where products go, the library, the cluster (``scheduler``: an address;
    otherwise a local cluster of ``workers`` processes), nights from ``since`` only, or a ``dry_run``."""

    archives: tuple[Path, ...]
    output: Path
    library: Path
    config: Config
    settings: PipelineSettings
    scheduler: str | None = None
    workers: int = 2
    since: date | None = None
    dry_run: bool = False
    band_bytes: int | None = None  # one band task's samples; None: the settings' final_memory_bytes


@dataclass(slots=True)
class ReprocessReport:
    """What a run did: the plan, the sessions written and skipped (done already), the tasks submitted."""

    plan: ArchivePlan
    todo: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # a task failed: not journaled, done again next run
    tasks: int = 0
    frames: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0  # planning, the library and the cluster's start (of ``seconds``)
    decide_seconds: float = 0.0  # the client's decisions on measured frames (gates, registration, re-pick)
    dashboard: str | None = None
    combined: list[Path] = field(default_factory=list)  # composites and projects rebuilt after the sessions


class RunProgress:
    """Frames measured and sessions written, on one bar (`Progress` stages ``frames`` then ``sessions``
    counts are shown together in the item text)."""

    def __init__(self, bar: Progress, *, frames: int, sessions: int) -> None:
        self._bar = bar
        self._frames, self._sessions = frames, sessions
        self._frames_done = self._sessions_done = 0
        bar.start("frames", frames)

    def frame(self, name: str) -> None:
        self._frames_done += 1
        self._bar.advance(f"sessions {self._sessions_done}/{self._sessions}  {name}")

    def session(self, sid: str) -> None:
        self._sessions_done += 1
        self._bar.advance(f"sessions {self._sessions_done}/{self._sessions}  {sid} written", n=0)

    def finish(self) -> None:
        self._bar.finish()


def plan_request(request: ReprocessRequest, *, now: datetime) -> ArchivePlan:
    """The archive's plan: every frame file under the archive folders (not the output's own files)."""
    own = {request.output.resolve(), request.library.resolve()}  # products and masters are not frames to stack
    paths = [p for p in expand_frame_paths(request.archives) if not own & set(p.resolve().parents)]
    mtimes = {p: p.stat().st_mtime for p in paths}
    c = request.config
    return plan_archive(paths, options=_read_options(c), output=request.output, now=now, mtimes=mtimes,
                        radius_arcmin=c.session.pointing_radius_arcmin, longitude=c.site.longitude,
                        since=request.since)


def _read_options(config: Config) -> ReadOptions:
    return ReadOptions.of(config.headers.rename, rules_from_config(config.headers))


def run_reprocess(request: ReprocessRequest, *, progress: Progress | None = None,
                  say: Callable[[str], None] = print) -> ReprocessReport:
    """Plan, build the masters, and write every session's products that are not written already."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    bar = progress if progress is not None else NoProgress()
    plan = plan_request(request, now=now)
    report = ReprocessReport(plan=plan)
    log.info("reprocess_planned", sessions=len(plan.sessions), lights=plan.n_lights,
             calibration=len(plan.calibration), rejected=len(plan.rejected), ignored=len(plan.ignored))
    for path, reason in plan.rejected:  # as the daemon's router logs them
        log.warning("frame_rejected", frame=str(path), reason=reason)
    if plan.calibration and not request.dry_run:
        built = build_library(request.library, plan.calibration,
                              options=BuildOptions.from_config(request.config, refresh=True), progress=bar)
        log.info("library_updated", masters=len(built.masters), skipped=len(built.skipped))
    library = request.library if _has_index(request.library) else None
    masters = folder_stamp(library)
    options = _read_options(request.config)
    stamps = {p: content_stamp(p) for s in plan.sessions for p in s.frames}
    photometry = photometry_for(request.config)
    solver = available_solver(request.config)  # the daemon's: [solve] enabled and solve-field installed here
    solve = None if solver is None else dataclasses.asdict(solver)
    digests = {s.id: session_digest(s, stamps=stamps, masters=masters, settings=request.settings, options=options,
                                    formats=request.config.output.formats, photometry=photometry, solve=solve)
               for s in plan.sessions}
    state = request.output / STATE_FOLDER
    journal = ReprocessJournal(state / JOURNAL_NAME) if not request.dry_run or state.is_dir() else None
    try:
        todo = [s for s in plan.sessions if not _done(journal, s, digests[s.id])]
        report.todo = [s.id for s in todo]
        report.skipped = [s.id for s in plan.sessions if s not in todo]
        for s in report.skipped:
            log.info("session_skipped", session=s, reason="products written from the same frames and settings")
        if request.dry_run or not todo or journal is None:
            _say_plan(plan, todo, say)
        if request.dry_run or journal is None:
            return report
        if todo:
            job = ReprocessJob(settings=request.settings, options=options, now=now, photometry=photometry,
                               band_bytes=request.band_bytes or request.settings.final_memory_bytes, solver=solver)
            with _client(request) as client:
                report.startup_seconds = time.perf_counter() - started
                report.dashboard = _dashboard(client)
                if report.dashboard:
                    say(f"Dask dashboard: {report.dashboard}")
                client.register_plugin(LibraryPlugin(None if library is None else str(library),
                                                     MatchRules.from_config(request.config)))
                run = _Run(client, job, journal, request, digests, report)
                run.sessions(todo, RunProgress(bar, frames=sum(len(s.frames) for s in todo), sessions=len(todo)))
        # after every session, and in a run with none to do when an interrupted one had not come this far
        report.combined = rebuild_owed(plan.sessions, journal, digests, request.settings.finish,
                                       formats=request.config.output.formats)
    finally:
        if journal is not None:
            journal.close()
    report.seconds = time.perf_counter() - started
    log.info("reprocess_finished", sessions=len(report.written), skipped=len(report.skipped), tasks=report.tasks,
             frames=report.frames, seconds=round(report.seconds, 1), decide_s=round(report.decide_seconds, 2))
    return report


def _has_index(folder: Path) -> bool:
    try:
        MasterIndex.open(folder, create=False).close()
    except AstrodError:  # no library there (or not one astrod can read): the frames are stacked uncalibrated
        return False
    return True


def _done(journal: ReprocessJournal | None, plan: SessionPlan, digest: str) -> bool:
    record = None if journal is None else journal.session(plan.id)
    return record is not None and record.digest == digest and (plan.output / SESSION).is_file()


def _say_plan(plan: ArchivePlan, todo: Sequence[SessionPlan], say: Callable[[str], None]) -> None:
    say(f"{len(plan.sessions)} sessions, {plan.n_lights} lights, {len(plan.calibration)} calibration frames, "
        f"{len(plan.rejected)} rejected, {len(plan.ignored)} ignored; {len(todo)} sessions to do")
    for s in todo:
        say(f"  {s.id}: {len(s.frames)} lights -> {s.output}")


@contextlib.contextmanager
def _client(request: ReprocessRequest) -> Iterator[Client]:
    """A client of the given scheduler, or of a local cluster of worker processes (one thread each: the
    kernels use their own threads, and one frame per process bounds memory)."""
    if request.scheduler is not None:
        with Client(request.scheduler) as client:
            yield client
        return
    # the dashboard needs bokeh; without it the cluster runs the same, with no address to print
    with LocalCluster(n_workers=request.workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")}) as cluster, \
            Client(cluster) as client:
        yield client


def _dashboard(client: Client) -> str | None:
    try:
        link = client.dashboard_link
    except Exception:  # a scheduler without a dashboard: nothing to print
        return None
    return str(link) if link else None


@dataclass(slots=True)
class _Pending:
    """A session decided, its integration and photometry tasks in flight."""

    plan: SessionPlan
    stack: DecidedStack
    bands: list[Future[Any]]
    failed: bool
    orders: list[PhotometryOrder]
    photometry: list[Future[Any]]
    solve: Future[Any] | None = None  # the plate solve of its final reference frame


class _Run:
    """One run's sessions through the cluster, at most ``window`` in flight."""

    def __init__(self, client: Client, job: ReprocessJob, journal: ReprocessJournal, request: ReprocessRequest,
                 digests: dict[str, str], report: ReprocessReport) -> None:
        self.client, self.job, self.journal, self.request = client, job, journal, request
        self.digests, self.report = digests, report
        workers = len(client.scheduler_info().get("workers", {})) or request.workers
        self.window = max(2, workers)
        self.cache_root = request.output / STATE_FOLDER / "cache"
        # task keys of this run only: a cluster that served an earlier run may still hold that run's results
        self.token = f"{os.getpid()}-{time.time_ns()}"

    def sessions(self, todo: list[SessionPlan], bar: RunProgress) -> None:
        measures: dict[str, list[Future[Any]]] = {}
        pending: deque[_Pending] = deque()
        for i, plan in enumerate(todo):
            for ahead in todo[i:i + self.window]:  # the next sessions' frames are measured meanwhile
                if ahead.id not in measures:
                    measures[ahead.id] = [self._submit(measure_task, p, self.job, key=f"measure-{ahead.id}-{j}")
                                          for j, p in enumerate(ahead.frames)]
            orders = PhotometryOrders() if self.job.photometry is not None else None
            stack, failed = DecidedStack(self.job.settings, observer=orders), False
            for path, future in zip(plan.frames, measures.pop(plan.id), strict=True):
                try:
                    measure: FrameMeasure = future.result()
                except Exception as err:  # a bug, or a frame that took its workers down: recorded, not fatal
                    log.error("frame_failed", session=plan.id, frame=str(path), reason=one_line(err))
                    measure = FrameMeasure(path=path, measured=None,
                                           unread=f"{path}: internal error while processing: {one_line(err)}")
                    failed = True
                future.release()
                t0 = time.perf_counter()
                result = stack.offer(measure)
                self.report.decide_seconds += time.perf_counter() - t0
                self.report.frames += 1
                log.debug("frame_decided", session=plan.id, frame=str(measure.path), status=result.status,
                          reason=result.reason)
                bar.frame(measure.path.name)
            photometry = [] if orders is None else submit_photometry(self._submit, orders.orders, self.job,
                                                                     key=f"photometry-{plan.id}")
            solve = submit_solve(self._submit, stack, self.job, key=f"solve-{plan.id}")
            pending.append(_Pending(plan, stack, self._integrate(plan, stack), failed,
                                    [] if orders is None else orders.orders, photometry, solve))
            while len(pending) >= self.window:
                self._finish(pending.popleft(), bar)
        while pending:
            self._finish(pending.popleft(), bar)
        bar.finish()

    def _submit(self, fn: Callable[..., Any], *args: Any, key: str) -> Future[Any]:
        self.report.tasks += 1
        return self.client.submit(fn, *args, key=f"{key}-{self.token}", pure=False)

    def _curves(self, pending: _Pending) -> bool:
        """The session's light curves (when targets are configured), written before its stack as the daemon
        writes them on close; False when a frame's photometry failed."""
        job = self.job
        if job.photometry is None or not pending.orders:
            return True
        try:
            series, failed = gather_series(self._submit, pending.orders, pending.photometry, job,
                                           key=f"photometry-{pending.plan.id}", session=pending.plan.id)
        except Exception as err:  # tasks lost: the stack is written, the session done again next run
            log.error("photometry_failed", session=pending.plan.id, reason=one_line(err))
            return False
        written = write_curves(job.photometry, series, pending.plan.output)
        log.info("lightcurves_written", session=pending.plan.id, frames=series.frames, files=len(written))
        return not failed

    def _integrate(self, plan: SessionPlan, stack: DecidedStack) -> list[Future[Any]]:
        """The warp tasks of the session's stacked frames and the band tasks that wait for them."""
        if stack.n_stacked == 0:
            return []
        cache = ensure_folder(self.cache_root / plan.id)
        warped = [self._submit(warp_task, order, cache, self.job, key=f"warp-{plan.id}-{i}")
                  for i, order in enumerate(stack.orders)]
        integration = stack.integration()
        return [self._submit(band_task, integration, cache, r0, r1, self.job, *warped, key=f"band-{plan.id}-{r0}")
                for r0, r1 in integration.bands(self.job.band_bytes)]

    def _finish(self, pending: _Pending, bar: RunProgress) -> None:
        """Gather the session's bands and write its products (stack, frames table, summary, light curves). A
        session whose warp or band tasks failed is not written; one with a frame that failed (measuring it, or
        its photometry) is written but not journaled: the next run does both again."""
        plan, stack, bands, failed = pending.plan, pending.stack, pending.bands, pending.failed
        t0 = time.perf_counter()
        summary = session_summary(plan, stack)
        try:
            parts = [f.result() for f in bands]
        except Exception as err:  # one session's failure does not end the archive's run
            log.error("session_failed", session=plan.id, reason=one_line(err))
            self.report.failed.append(plan.id)
            remove_folder(self.cache_root / plan.id)
            for f in [*pending.photometry, *([pending.solve] if pending.solve is not None else [])]:
                f.release()
            return
        finally:
            for f in bands:
                f.release()
        ensure_folder(plan.output)
        if bands:
            image, count = assemble(stack.integration().shape, parts)
            product = stack.product(image, count)
            summary["masters"] = list(product.masters)
            product, unsolved = solved(pending.solve, plan, stack, product, summary)
            failed = not self._curves(pending) or unsolved or failed
            # the daemon's products of a closed session: the stack, the finished picture and the report
            written = finish_session(product, self.job.settings.finish, plan.output, frames=stack.n_stacked,
                                     formats=self.request.config.output.formats, summary=summary)
            summary["products"] = [p.name for p in written]
        else:
            write_frames_table(plan.output / FRAMES, stack.rows, TABLE_COLUMNS)
        summary["timings_ms"] = {"finalize": round((time.perf_counter() - t0) * 1e3, 1)}
        atomic_write_text(plan.output / SESSION, json.dumps(summary, indent=2, default=str) + "\n")
        remove_folder(self.cache_root / plan.id)
        self.report.written.append(plan.id)
        if failed:
            self.report.failed.append(plan.id)
        else:
            self.journal.record_session(plan.id, digest=self.digests[plan.id], output=plan.output,
                                        stacked=stack.n_stacked, rejected=stack.n_rejected, now=datetime.now(UTC))
        bar.session(plan.id)
        log.info("session_reprocessed", session=plan.id, stacked=stack.n_stacked, rejected=stack.n_rejected,
                 output=str(plan.output))
