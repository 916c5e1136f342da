"""Session workers: one thread and one queue per session, so frames of a session are stacked in arrival order.

A worker reads each frame, runs it through the pipeline's LiveStack, checkpoints the stack together with the
journal rows of the frames it holds, refreshes the preview on schedule, and on close writes the final outputs.

Failures never end the thread. A frame that fails is recorded once, as rejected with the reason. A checkpoint,
a preview or a close that fails (full or read-only disk, a file where a folder should be) is reported as a
problem, retried with back-off, and cleared when it succeeds; the frames it concerns stay in memory meanwhile
and keep exactly one record. A checkpoint that is missing or cannot be read makes the session stack again from
its source files (the journal knows them).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from astrod.core.register import Registration
from astrod.errors import AstrodError
from astrod.io.atomic import atomic_write_text
from astrod.io.files import ensure_folder, remove_file, remove_folder
from astrod.io.frames import is_scratch, read_frame
from astrod.io.journal import Journal
from astrod.io.previews import write_frames_table
from astrod.model import Frame
from astrod.pipeline.composite import update_composites
from astrod.pipeline.finishing import finish_session
from astrod.pipeline.ingest import ReadOptions
from astrod.pipeline.live import TABLE_COLUMNS, Calibrator, LiveStack, Measured, PipelineSettings
from astrod.pipeline.outputs import FRAMES, SESSION, write_preview
from astrod.pipeline.photometry import PhotometrySettings
from astrod.pipeline.project import update_project
from astrod.pipeline.sessions import Pointing, SessionKey, plausible_date
from astrod.pipeline.settings import FrameObserver
from astrod.pipeline.solving import SolveResult, product_wcs_cards, solved_product
from astrod.service.queue_thread import QueueThread
from astrod.service.reference_solver import ReferenceSolver
from astrod.service.session_photometry import SessionPhotometry, photometry_for
from astrod.service.session_solving import SessionSolves

__all__ = ["QueuedFrame", "SessionPaths", "SessionWorker", "photometry_for"]

log = structlog.get_logger()

_CLOSE = "close"
_RESTACK = "restack"
FIRST_RETRY_S = 2.0
MAX_RETRY_S = 300.0

ProblemSink = Callable[[str, str | None], None]  # (key, text) sets a problem; (key, None) clears it


@dataclass(frozen=True, slots=True)
class QueuedFrame:
    """A frame for the worker: its path and the journal's arrival number of the version routed here (a later
    version of the same path, or a re-route elsewhere, makes this one stale)."""

    path: Path
    arrival: int


@dataclass(frozen=True, slots=True)
class _Control:
    action: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SessionPaths:
    output: Path  # <output>/<night>/<target>/<filter>/
    state: Path  # <state>/sessions/<id>/ : checkpoints and the registered-frame cache

    @property
    def cache(self) -> Path:
        return self.state / "cache"

    def checkpoint(self, seq: int) -> Path:
        return self.state / f"checkpoint-{seq:06d}.npz"


@dataclass(slots=True)
class SessionStats:
    stacked: int = 0
    rejected: int = 0
    exposure: float = 0.0
    last_frame: str | None = None
    last_metrics: dict[str, Any] = field(default_factory=dict)
    rejections: dict[str, int] = field(default_factory=dict)
    timings_ms: list[float] = field(default_factory=list)


@dataclass(slots=True)
class _Retry:
    """Back-off of one kind of failing work: the next attempt is due at ``due`` (monotonic seconds)."""

    due: float = 0.0
    delay: float = FIRST_RETRY_S
    failing: bool = False

    def failed(self, now: float) -> None:
        self.due = now + self.delay
        self.delay = min(self.delay * 2.0, MAX_RETRY_S)
        self.failing = True

    def succeeded(self) -> None:
        self.due, self.delay, self.failing = 0.0, FIRST_RETRY_S, False


def _reason_class(reason: str | None, path: Path) -> str:
    """The kind of a rejection, for counts by reason: 'truncated', 'registration failed', 'FWHM 5.1 px is ...'."""
    text = (reason or "unknown").strip()
    prefix = f"{path}: "
    if text.startswith(prefix):
        text = text[len(prefix):]
    text = text.split(":")[0].strip()
    return text if len(text) <= 40 else text[:40]


class SessionWorker(QueueThread["QueuedFrame | _Control"]):
    """Owns one session's LiveStack and thread. All methods but the thread's hooks (`handle`, `idle`,
    `stopping`) are called from other threads; what they share is behind ``_state_lock``."""

    def __init__(self, *, session_id: str, label: str, key: SessionKey, pointing: Pointing | None,
                 paths: SessionPaths, journal: Journal,
                 settings: PipelineSettings, calibrator: Calibrator | None,
                 checkpoint_every: int, preview_every_frames: int, preview_every_seconds: float,
                 checkpoint_seconds: float = 600.0, output_formats: tuple[str, ...] = ("fits", "jpg"),
                 read_options: ReadOptions, on_closed: Callable[[str, list[QueuedFrame]], None],
                 on_progress: Callable[[dict[str, Any] | None], None] = lambda _: None,
                 on_problem: ProblemSink = lambda _key, _text: None,
                 on_state_error: Callable[[BaseException], bool] = lambda _err: False,
                 solver: ReferenceSolver | None = None, photometry: PhotometrySettings | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.id = session_id
        self.label = label
        self.key = key
        self.pointing = pointing
        self.paths = paths
        self._journal = journal
        self._settings = settings
        self._calibrator = calibrator
        self._checkpoint_every = checkpoint_every
        self._checkpoint_seconds = checkpoint_seconds
        self._last_checkpoint = time.monotonic()
        self._preview_frames = preview_every_frames
        self._output_formats = output_formats
        self._preview_seconds = preview_every_seconds
        self._read_options = read_options
        # every frame is read into the same scratch array (and calibrated in place there): no fresh 100 MB
        # array and its page faults per frame
        self._scratch: npt.NDArray[np.float32] | None = None
        self._on_closed = on_closed
        self._on_progress = on_progress
        self._on_problem = on_problem
        self._on_state_error = on_state_error  # the daemon's judgement of journal errors (damaged: restart)
        self._clock = clock
        # the reference frame's plate solution, solved in the background (`ReferenceSolver`): its WCS goes into
        # the previews and the final stack while the reference stays the one solved; frames that fail star
        # matching are registered through their own solution
        self._solves = SessionSolves(session_id=session_id, solver=solver, journal=journal)
        # light curves of the configured targets, measured on each stacked frame (`SessionPhotometry`)
        self._phot = None if photometry is None else SessionPhotometry(photometry, paths.output)
        super().__init__(name=f"astrod-session-{session_id}")
        self._state_lock = threading.Lock()  # _pending and closing: the status thread reads them
        self._pending: list[tuple[Path, str, str | None, dict[str, Any]]] = []
        self._done: set[tuple[str, int]] = set()  # frames in the current stack (a re-stack starts a new set)
        self._count_lock = threading.Lock()
        self._enqueued = 0
        self._finished = 0
        self._seq = 0
        self._since_preview = 0
        self._last_preview = time.monotonic()
        self._previewed = False  # the first stacked frame shows at once, not after preview_every_frames
        self._preview_owed = False  # a preview failed to write: it is written again when its retry is due
        self._retries = {"checkpoint": _Retry(), "preview": _Retry(), "close": _Retry(), "lightcurve": _Retry()}
        self._close_why: str | None = None
        self.stats = SessionStats()
        self.closing = False
        self.closed = False
        self._log = log.bind(session=session_id)
        self._live = self._restore()
        # a restored reference: its solution from the checkpoint or the journal, or solved now
        self._solves.restore(self._live.reference_path, self._live.extra.get("solution"))
        self._solves.ask(self._live.reference_path)

    # ------------------------------------------------------------------------------------ life cycle
    def _restore(self) -> LiveStack:
        record = self._journal.session(self.id)
        ensure_folder(self.paths.state)
        problem: str | None = None
        if record is not None and record.checkpoint:
            try:
                live = LiveStack.load(Path(record.checkpoint), self._settings, calibrator=self._calibrator,
                                      cache_dir=self.paths.cache, observer=self._observer,
                                      wcs_registrar=self._registrar())
            except Exception as err:  # missing, truncated, garbled, of another version: stack again from sources
                problem = str(err).splitlines()[0]
            else:
                self._seq = record.checkpoint_seq
                stats = record.info.get("stats", {})
                self.stats = SessionStats(stacked=stats.get("stacked", 0), rejected=stats.get("rejected", 0),
                                          exposure=stats.get("exposure", 0.0), last_frame=stats.get("last_frame"),
                                          last_metrics=stats.get("last_metrics", {}),
                                          rejections=stats.get("rejections", {}))
                self._log.info("session_restored", checkpoint=record.checkpoint, stacked=self.stats.stacked)
                if self._phot is not None:  # its rows are the checkpoint's frames: later ones are measured again
                    self._phot.restore(live.extra)
                    self._attempt("lightcurve", self._phot.write_curves)
                return live
        elif record is not None and self._journal.files(session=self.id, status=["stacked", "rejected"]):
            problem = "its checkpoint is not recorded"
        if problem is not None and record is not None:
            self._seq = record.checkpoint_seq  # new checkpoints never take the name of one that may be there
            n = self._journal.requeue_session(self.id)
            remove_folder(self.paths.cache)
            self._log.error("session_restacking", reason=problem, frames=n)
            self._on_problem(f"{self.id}:restack",
                             f"{self.label}: checkpoint unusable ({problem}); stacking its {n} frames again "
                             "from their files")
        return LiveStack(self._settings, calibrator=self._calibrator, cache_dir=self.paths.cache,
                         observer=self._observer, wcs_registrar=self._registrar())

    @property
    def _observer(self) -> FrameObserver | None:
        return None if self._phot is None else self._phot.observe

    def enqueue(self, path: Path, arrival: int) -> None:
        with self._count_lock:
            self._enqueued += 1
        self.put(QueuedFrame(path, arrival))

    def request_close(self, why: str) -> None:
        with self._state_lock:
            if self.closing:
                return
            self.closing = True
        self.put(_Control(_CLOSE, why))

    def restack(self, why: str) -> None:
        """Stack the session again from its source files (a stacked frame's file was overwritten)."""
        self.put(_Control(_RESTACK, why))

    @property
    def queue_length(self) -> int:
        return self.backlog

    @property
    def problems(self) -> list[str]:
        """What is failing now (checkpoint, preview, close), retried with back-off."""
        return [what for what, retry in self._retries.items() if retry.failing]

    def uncheckpointed(self) -> dict[str, tuple[str, str | None, dict[str, Any]]]:
        """By path, the outcome (status, reason, metrics) of the frames processed since the last checkpoint:
        the journal still has them queued until the next one records them."""
        with self._state_lock:
            pending = list(self._pending)
        return {str(path): (status, reason, metrics) for path, status, reason, metrics in pending}

    @property
    def in_flight(self) -> int:
        """Frames given to this worker and not yet through the pipeline (queued, or being processed now);
        frames through it but not yet checkpointed do not count."""
        with self._count_lock:
            return self._enqueued - self._finished

    # ------------------------------------------------------------------------------------ the thread's hooks
    def handle(self, item: QueuedFrame | _Control) -> bool:
        """One frame, or a close or re-stack request; True when the session closed (the thread ends)."""
        if isinstance(item, QueuedFrame):
            try:
                self._frame(item)
            finally:
                with self._count_lock:
                    self._finished += 1
            return self._due_work()
        if item.action == _RESTACK:
            self._restack(item.reason)
            return False
        self._close_why = item.reason
        return self._try_close()

    def wait_s(self) -> float | None:
        return self._due_in()

    def idle(self) -> bool:
        return self._due_work()

    def stopping(self) -> None:
        """astrod stops: the frames stacked so far get their checkpoint (the session stays open)."""
        self._attempt("checkpoint", self._checkpoint)

    def failed(self, err: Exception) -> None:  # a bug here must not end the session silently
        self._log.error("session_worker_error", error=str(err), exc_info=err)
        self._on_problem(f"{self.id}:worker", f"{self.label}: internal error: {err}")

    # ------------------------------------------------------------------------------------ scheduled work
    def _due_in(self) -> float | None:
        """Seconds until the next checkpoint, owed preview or close retry is due (None: nothing is)."""
        now = time.monotonic()
        dues: list[float] = []
        if self._pending:
            due = (self._last_checkpoint if len(self._pending) >= self._checkpoint_every
                   else self._last_checkpoint + self._checkpoint_seconds)
            dues.append(max(due, self._retries["checkpoint"].due))
        if self._preview_owed:
            dues.append(self._retries["preview"].due)
        if self._close_why is not None:
            dues.append(self._retries["close"].due)
        return max(0.0, min(dues) - now) if dues else None

    def _due_work(self) -> bool:
        """Retries and checkpoints that are due; True when a retried close succeeded (the thread ends)."""
        now = time.monotonic()
        if self._close_why is not None and now >= self._retries["close"].due and self._try_close():
            return True
        if self._pending and now >= self._retries["checkpoint"].due and (
                len(self._pending) >= self._checkpoint_every
                or now >= self._last_checkpoint + self._checkpoint_seconds):
            self._attempt("checkpoint", self._checkpoint)
        if self._preview_owed and now >= self._retries["preview"].due:
            self._attempt("preview", self._write_preview)
        return False

    def _attempt(self, what: str, work: Callable[[], None]) -> bool:
        """Run ``work``; on failure report the problem and schedule a retry with back-off."""
        retry = self._retries[what]
        try:
            work()
        except Exception as err:
            self._on_state_error(err)
            retry.failed(time.monotonic())
            text = str(err).splitlines()[0] if str(err) else type(err).__name__
            self._log.error(f"{what}_failed", error=text, retry_in_s=round(retry.due - time.monotonic(), 1))
            self._on_problem(f"{self.id}:{what}", f"{self.label}: {what} failed: {text} (retrying)")
            return False
        if retry.failing:
            self._log.info(f"{what}_recovered")
            self._on_problem(f"{self.id}:{what}", None)
        retry.succeeded()
        return True

    # ------------------------------------------------------------------------------------ frames
    def _frame(self, item: QueuedFrame) -> None:
        stamp = (str(item.path), item.arrival)
        record = self._journal.file(item.path)
        if stamp in self._done or record is None or record.arrival != item.arrival or record.session != self.id:
            # stacked already in this stack, or the file changed (or was re-routed) since it was queued here:
            # the newer version has its own queue entry
            self._log.debug("frame_skipped_stale", frame=str(item.path))
            return
        self._done.add(stamp)
        try:
            status, reason, metrics, seen = self._process(item.path)
        except Exception as err:  # a bug on one frame must not end the session: record it once, go on
            self._log.exception("frame_failed", frame=str(item.path))
            status, reason, metrics = "rejected", f"{item.path}: internal error while processing: {err}", {}
            seen = self._live.rows[-1:] != [] and self._live.rows[-1].get("path") == str(item.path)
        if status == "rejected" and self._solves.stopped and (not seen or self._live.forget_rejected(item.path)):
            # astrod is stopping: the solve that might have registered it was cut short; queued again at the start
            self._done.discard(stamp)
            self._log.info("frame_left_queued", frame=str(item.path), reason=reason)
            return
        self._add_result(item.path, status, reason, metrics, seen_by_pipeline=seen)
        if status == "stacked":
            self._log.info("frame_stacked", frame=str(item.path), ms=metrics.get("ms_total"),
                           fwhm=metrics.get("fwhm"), stars=metrics.get("stars"))
            self._since_preview += 1
            self._preview_owed = self._preview_owed or self._preview_due()
            self._solves.ask(self._live.reference_path)  # when it is new
            if self._phot is not None:
                self._attempt("lightcurve", self._phot.write_curves)
        else:
            self._log.warning("frame_rejected", frame=str(item.path), reason=reason)
        if self._preview_owed and time.monotonic() >= self._retries["preview"].due:
            self._attempt("preview", self._write_preview)

    def _process(self, path: Path) -> tuple[str, str | None, dict[str, Any], bool]:
        """(status, reason, metrics, whether the live stack has a row for it already)."""
        started = time.perf_counter()
        source = self._readable(path)
        try:
            frame = read_frame(source, rename=self._read_options.rename, rules=self._read_options.rules,
                               out=self._scratch)
        except AstrodError as err:
            return "rejected", str(err), {}, False
        if is_scratch(frame.data):
            self._scratch = frame.data
        if source != path:  # the exposure is recorded (journal and frames table) under its first path
            frame = replace(frame, path=path)
        date = frame.meta.date_obs
        if date is not None and not plausible_date(date, self._clock()):  # as the router did: the file's time
            file_time = datetime.fromtimestamp(source.stat().st_mtime, tz=UTC)
            frame = replace(frame, meta=replace(frame.meta, date_obs=file_time))
        reason = self._precheck(frame)
        if reason is not None:
            return "rejected", f"{path}: {reason}", {}, False
        result = self._live.process(frame)
        ms = (time.perf_counter() - started) * 1e3
        metrics = dict(result.metrics)
        metrics["ms_total"] = round(ms, 1)
        self.stats.timings_ms.append(ms)
        del self.stats.timings_ms[:-200]
        if result.status == "stacked" and frame.meta.exposure is not None:
            self.stats.exposure += frame.meta.exposure
        return result.status, result.reason, metrics, True

    def _readable(self, path: Path) -> Path:
        """``path``, or when it was renamed or moved away before its turn came, the duplicate the journal
        recorded under its new name (the exposure is stacked once, under its first path)."""
        if path.exists():
            return path
        for other in self._journal.duplicates_of(path):
            if Path(other).exists():
                self._log.info("frame_read_from_new_name", frame=str(path), now_at=other)
                return Path(other)
        return path

    def _precheck(self, frame: Frame) -> str | None:
        shape = self._live.shape
        if shape is not None and tuple(frame.data.shape[-2:]) != tuple(shape[-2:]):
            return (f"frame is {frame.data.shape[-1]}x{frame.data.shape[-2]}, the session's stack is "
                    f"{shape[-1]}x{shape[-2]}")
        finite = np.isfinite(frame.data)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            if bad > 0.01 * finite.size:
                return f"{bad} of {finite.size} pixels are NaN or infinite"
        return None

    def _add_result(self, path: Path, status: str, reason: str | None, metrics: dict[str, Any], *,
                    seen_by_pipeline: bool = False) -> None:
        if status == "stacked":
            self.stats.stacked += 1
        else:
            self.stats.rejected += 1
            cls = _reason_class(reason, path)
            self.stats.rejections[cls] = self.stats.rejections.get(cls, 0) + 1
            if not seen_by_pipeline:  # unreadable or mismatched: still a row of the frames table
                self._live.reject(path, reason or "rejected")
        self.stats.last_frame = str(path)
        self.stats.last_metrics = {"path": str(path), "status": status, "reason": reason, **metrics}
        with self._state_lock:
            self._pending.append((path, status, reason, metrics))

    def _stats_info(self) -> dict[str, Any]:
        s = self.stats
        return {"label": self.label, "output": str(self.paths.output),
                "stats": {"stacked": s.stacked, "rejected": s.rejected, "exposure": s.exposure,
                          "last_frame": s.last_frame, "last_metrics": s.last_metrics, "rejections": s.rejections}}

    def _checkpoint(self) -> None:
        if not self._pending:
            return
        seq = self._seq + 1
        target = self.paths.checkpoint(seq)
        info = self._stats_info()
        # the session's identity (and its reference's solution) rides along, so that a lost journal can be rebuilt
        # from the checkpoints without solving again
        extra = {"session": {"id": self.id, "key": self.key.record(self.pointing), "info": info},
                 "solution": self._solves.record(self._live.reference_path),
                 **(self._phot.extra() if self._phot is not None else {})}
        self._live.save(target, extra=extra)
        self._journal.commit_checkpoint(self.id, checkpoint=target, seq=seq, frames=self._pending, info=info)
        old = self.paths.checkpoint(self._seq)
        self._seq = seq
        with self._state_lock:
            self._pending = []
        self._last_checkpoint = time.monotonic()
        if old != target:
            remove_file(old)

    def _preview_due(self) -> bool:
        return (not self._previewed or self._since_preview >= self._preview_frames
                or time.monotonic() - self._last_preview >= self._preview_seconds)

    def _write_preview(self) -> None:
        if self._live.n_stacked == 0:
            self._preview_owed = False
            return
        linear, stretched = self._live.preview()
        balance = self._live.preview_balance
        cards = {**(self._wcs_cards(linear.shape) or {}), **(balance.cards() if balance is not None else {})}
        stretched = self._solves.annotated(stretched, reference=self._live.reference_path,
                                           frame_shape=self._frame_shape())
        write_preview(self.paths.output, linear=linear, stretched=stretched, wcs=cards)
        if self._phot is not None:
            self._phot.write_plots()
        self._previewed = True
        self._preview_owed = False
        self._since_preview = 0
        self._last_preview = time.monotonic()
        self._log.info("preview_written", path=str(self.paths.output / "preview.jpg"), frames=self._live.n_stacked)

    # ------------------------------------------------------------------------------------ plate solving
    def _reference_solution(self, *, wait: bool = False) -> SolveResult | None:
        """The solution of the current reference frame, if there is one (``wait``: for a solve under way, up to
        the solver's time limit: the final stack is written once)."""
        return self._solves.solution(self._live.reference_path, wait=wait)

    def _registrar(self) -> Callable[[Measured, str], Registration] | None:
        return self._register_by_wcs if self._solves.enabled else None

    def _register_by_wcs(self, measured: Measured, why: str) -> Registration:
        """A frame that failed star matching, registered through its plate solution and the reference's (the
        live stack calls this on the worker's thread)."""
        assert measured.data is not None
        return self._solves.register(measured, reference=self._live.reference_path,
                                     frame_shape=(int(measured.data.shape[-2]), int(measured.data.shape[-1])),
                                     model=self._settings.transform, why=why)

    def _frame_shape(self) -> tuple[int, int]:
        shape = self._live.shape
        assert shape is not None
        return int(shape[-2]), int(shape[-1])

    def _wcs_cards(self, image_shape: tuple[int, ...]) -> dict[str, tuple[Any, str]] | None:
        solution = self._reference_solution()
        if solution is None:
            return None
        cards = product_wcs_cards(solution, frame_shape=self._frame_shape(), image_shape=image_shape)
        name = self._field_name()
        if cards is not None and name is not None:
            cards["OBJECT"] = (name, "named from the plate-solved field")
        return cards

    def _field_name(self) -> str | None:
        """A session of lights without OBJECT named from its solved field (the label follows: status, logs);
        its folder keeps the name it was opened with (see `SessionSolves.field_name`)."""
        name = self._solves.field_name(self._live.reference_path, self.key.target)
        if name is not None:
            self.label = f"{name}/{self.key.filter or 'no filter'}"
        return name

    # ------------------------------------------------------------------------------------ re-stacking
    def _restack(self, why: str) -> None:
        """Start the stack again and queue every frame of the session from its file, in arrival order."""
        n = self._journal.requeue_session(self.id)
        self._log.warning("session_restacking", reason=why, frames=n)
        held = self._take_all()  # what is queued now goes behind the session's frames
        with self._count_lock:
            self._finished += sum(isinstance(h, QueuedFrame) for h in held)
        if self._phot is not None:
            self._phot.reset()
        self._live = LiveStack(self._settings, calibrator=self._calibrator, cache_dir=self.paths.cache,
                               observer=self._observer, wcs_registrar=self._registrar())
        remove_folder(self.paths.cache)
        self.stats = SessionStats()
        with self._state_lock:
            self._pending = []
        self._done = set()
        self._previewed = False
        for record in self._journal.files(session=self.id, status=["queued"]):
            self.enqueue(Path(record.path), record.arrival)
        for h in held:  # stale or repeated frames among them are skipped when their turn comes
            if isinstance(h, QueuedFrame):
                self.enqueue(h.path, h.arrival)
            else:
                self._put_back([h])

    # ------------------------------------------------------------------------------------ closing
    def _try_close(self) -> bool:
        """Close now; on failure the close is retried with back-off (the session keeps its frames)."""
        why = self._close_why or "closed"
        if not self._attempt("close", lambda: self._close(why)):
            return False
        # frames routed here while the close ran belong to the next session of this key
        leftovers = [item for item in self._take_all() if isinstance(item, QueuedFrame)]
        with self._count_lock:
            self._finished += len(leftovers)
        self._on_closed(self.id, leftovers)
        return True

    def _close(self, why: str) -> None:
        self._checkpoint()
        self._scratch = None  # the frame array is not needed any more: the final stack is made in its room
        started = time.perf_counter()
        timings = self.stats.timings_ms
        rows = self._live.rows
        summary: dict[str, Any] = {
            "session": self.id, "label": self.label, "key": self.key.record(self.pointing), "closed_because": why,
            "stacked": self.stats.stacked, "rejected": self.stats.rejected,
            "total_exposure_s": self.stats.exposure, "rejections": self.stats.rejections,
            "rejected_frames": [{"path": r.get("path"), "reason": r.get("reason")} for r in rows
                                if r.get("status") != "stacked"],
            "masters": [],
            "timings_ms": {"per_frame_median": float(np.median(timings)) if timings else None,
                           "per_frame_worst": float(np.max(timings)) if timings else None,
                           "finalize": None},
        }
        if self._live.n_stacked > 0:
            self._write_preview()
            if self._phot is not None:
                self._phot.write_curves()
            self._on_progress({"what": f"final stack of {self.label}", "done": 0, "total": 1})
            try:
                product = self._live.finalize()
            finally:
                self._on_progress(None)
            summary["masters"] = list(product.masters)
            solution = self._reference_solution(wait=True)
            if solution is not None:
                name = self._field_name()
                product, solved = solved_product(product, solution, frame_shape=self._frame_shape(), name=name)
                summary.update(solved)
                if name is not None:
                    summary["label"] = self.label  # it follows the name (`_field_name`)
            # the stack, then the finished picture made in its pixels, and the report
            written = finish_session(product, self._settings.finish, self.paths.output, frames=self.stats.stacked,
                                     formats=self._output_formats, summary=summary)
            summary["products"] = [p.name for p in written]
            # the target's other filters of the night: its composites are made again with this stack
            composites = update_composites(self.paths.output.parent, self._settings.finish,
                                           formats=self._output_formats)
            summary["composites"] = [p.name for p in composites]
            project = update_project(self.paths.output, self._settings.finish, formats=self._output_formats)
            summary["project"] = [str(p) for p in project]
            summary["timings_ms"]["finalize"] = round((time.perf_counter() - started) * 1e3, 1)
        else:  # no stack, but the frames table and the summary say what became of every frame
            write_frames_table(self.paths.output / FRAMES, rows, TABLE_COLUMNS)
            self._log.warning("session_closed_empty", reason=why)
        atomic_write_text(self.paths.output / SESSION, json.dumps(summary, indent=2, default=str) + "\n")
        self._journal.update_session(self.id, status="closed", info=self._stats_info())
        self.closed = True
        remove_folder(self.paths.state)  # checkpoints and the registered-frame cache
        for what in self._retries:
            self._on_problem(f"{self.id}:{what}", None)
        self._on_problem(f"{self.id}:restack", None)
        self._log.info("session_closed", reason=why, stacked=self.stats.stacked, rejected=self.stats.rejected,
                       output=str(self.paths.output))
