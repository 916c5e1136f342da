"""Session workers: one thread and one queue per session, so frames of a session are stacked in arrival order.

A worker reads each frame, runs it through the pipeline's LiveStack, checkpoints the stack together with the
journal rows of the frames it holds, refreshes the preview on schedule, and on close writes the final outputs.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from astrod.errors import AstrodError
from astrod.io.atomic import atomic_write_text
from astrod.io.frames import is_scratch, read_frame
from astrod.io.journal import Journal
from astrod.model import Frame
from astrod.pipeline.live import Calibrator, FrameResult, LiveStack, PipelineSettings
from astrod.pipeline.outputs import write_preview, write_session_outputs

log = structlog.get_logger()

_CLOSE = object()
_STOP = object()


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


def _reason_class(reason: str | None, path: Path) -> str:
    """The kind of a rejection, for counts by reason: 'truncated', 'registration failed', 'FWHM 5.1 px is ...'."""
    text = (reason or "unknown").strip()
    prefix = f"{path}: "
    if text.startswith(prefix):
        text = text[len(prefix):]
    text = text.split(":")[0].strip()
    return text if len(text) <= 40 else text[:40]


class SessionWorker:
    """Owns one session's LiveStack and thread. All methods but the thread body are called from other threads."""

    def __init__(self, *, session_id: str, label: str, key: dict[str, Any], paths: SessionPaths, journal: Journal,
                 settings: PipelineSettings, calibrator: Calibrator | None,
                 checkpoint_every: int, preview_every_frames: int, preview_every_seconds: float,
                 checkpoint_seconds: float = 600.0,
                 read_options: dict[str, Any], on_closed: Callable[[str], None],
                 on_progress: Callable[[dict[str, Any] | None], None] = lambda _: None) -> None:
        self.id = session_id
        self.label = label
        self.key = key
        self.paths = paths
        self._journal = journal
        self._settings = settings
        self._calibrator = calibrator
        self._checkpoint_every = checkpoint_every
        self._checkpoint_seconds = checkpoint_seconds
        self._last_checkpoint = time.monotonic()
        self._preview_frames = preview_every_frames
        self._preview_seconds = preview_every_seconds
        self._read_options = read_options
        # every frame is read into the same scratch array (and calibrated in place there): no fresh 100 MB
        # array and its page faults per frame
        self._scratch: npt.NDArray[np.float32] | None = None
        self._on_closed = on_closed
        self._on_progress = on_progress
        self._queue: queue.Queue[object] = queue.Queue()
        self._pending: list[tuple[Path, str, str | None, dict[str, Any]]] = []
        self._count_lock = threading.Lock()
        self._enqueued = 0
        self._finished = 0
        self._seq = 0
        self._since_preview = 0
        self._last_preview = time.monotonic()
        self._previewed = False  # the first stacked frame shows at once, not after preview_every_frames
        self.stats = SessionStats()
        self.closing = False
        self.closed = False
        self._live = self._restore()
        self._thread = threading.Thread(target=self._run, name=f"astrod-session-{session_id}", daemon=True)
        self._log = log.bind(session=session_id)

    # ------------------------------------------------------------------------------------ life cycle
    def _restore(self) -> LiveStack:
        record = self._journal.session(self.id)
        self.paths.state.mkdir(parents=True, exist_ok=True)
        if record is not None and record.checkpoint and Path(record.checkpoint).exists():
            live = LiveStack.load(Path(record.checkpoint), self._settings, calibrator=self._calibrator,
                                  cache_dir=self.paths.cache)
            self._seq = record.checkpoint_seq
            stats = record.info.get("stats", {})
            self.stats = SessionStats(stacked=stats.get("stacked", 0), rejected=stats.get("rejected", 0),
                                      exposure=stats.get("exposure", 0.0), last_frame=stats.get("last_frame"),
                                      last_metrics=stats.get("last_metrics", {}),
                                      rejections=stats.get("rejections", {}))
            log.info("session_restored", session=self.id, checkpoint=record.checkpoint, stacked=self.stats.stacked)
            return live
        return LiveStack(self._settings, calibrator=self._calibrator, cache_dir=self.paths.cache)

    def start(self) -> None:
        self._thread.start()

    def enqueue(self, path: Path) -> None:
        with self._count_lock:
            self._enqueued += 1
        self._queue.put(path)

    def request_close(self, why: str) -> None:
        if not self.closing:
            self.closing = True
            self._queue.put((_CLOSE, why))

    def stop(self) -> None:
        """Finish the current frame, checkpoint, and end the thread (the session stays open)."""
        self._queue.put(_STOP)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def queue_length(self) -> int:
        return self._queue.qsize()

    def uncheckpointed(self) -> dict[str, tuple[str, str | None, dict[str, Any]]]:
        """By path, the outcome (status, reason, metrics) of the frames processed since the last checkpoint:
        the journal still has them queued until the next one records them."""
        return {str(path): (status, reason, metrics) for path, status, reason, metrics in list(self._pending)}

    @property
    def in_flight(self) -> int:
        """Frames given to this worker and not yet through the pipeline (queued, or being processed now);
        frames through it but not yet checkpointed do not count."""
        with self._count_lock:
            return self._enqueued - self._finished

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._checkpoint_due_in())
            except queue.Empty:  # no frame for a while: the frames stacked so far get their checkpoint
                self._checkpoint()
                continue
            if item is _STOP:
                self._checkpoint()
                return
            if isinstance(item, tuple) and item and item[0] is _CLOSE:
                try:
                    self._close(str(item[1]))
                except Exception:  # a failed close must not leave the daemon waiting: log, keep the checkpoint
                    self._log.exception("session_close_failed")
                    self.closing = False
                    continue
                return
            assert isinstance(item, Path)
            try:
                self._process(item)
            except Exception:  # a bug on one frame must not end the session: log and go on
                self._log.exception("frame_failed", frame=str(item))
                self._add_result(item, "rejected", "internal error while processing (see log)", {})
            finally:
                with self._count_lock:
                    self._finished += 1

    # ------------------------------------------------------------------------------------ frames
    def _process(self, path: Path) -> None:
        started = time.perf_counter()
        try:
            frame = read_frame(path, **self._read_options, out=self._scratch)
        except AstrodError as err:
            self._add_result(path, "rejected", str(err), {})
            return
        if is_scratch(frame.data):
            self._scratch = frame.data
        reason = self._precheck(frame)
        if reason is not None:
            self._add_result(path, "rejected", f"{path}: {reason}", {})
            return
        result: FrameResult = self._live.process(frame)
        ms = (time.perf_counter() - started) * 1e3
        metrics = {k: v for k, v in result.metrics.items()}
        metrics["ms_total"] = round(ms, 1)
        self.stats.timings_ms.append(ms)
        del self.stats.timings_ms[:-200]
        if result.status == "stacked" and frame.meta.exposure is not None:
            self.stats.exposure += frame.meta.exposure
        self._add_result(path, result.status, result.reason, metrics, seen_by_pipeline=True)
        self._log.info("frame_" + result.status, frame=str(path), reason=result.reason, ms=round(ms, 1),
                       fwhm=metrics.get("fwhm"), stars=metrics.get("stars"))
        self._maybe_preview()

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
                self._live.note_rejected(path, reason or "rejected")
        self.stats.last_frame = str(path)
        self.stats.last_metrics = {"path": str(path), "status": status, "reason": reason, **metrics}
        self._pending.append((path, status, reason, metrics))
        if len(self._pending) >= self._checkpoint_every or self._checkpoint_due_in() == 0.0:
            self._checkpoint()

    def _checkpoint_due_in(self) -> float | None:
        """Seconds until the pending frames are due for a checkpoint (None: nothing pending)."""
        if not self._pending:
            return None
        return max(0.0, self._last_checkpoint + self._checkpoint_seconds - time.monotonic())

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
        self._live.save(target)
        self._journal.commit_checkpoint(self.id, checkpoint=target, seq=seq, frames=self._pending,
                                        info=self._stats_info())
        old = self.paths.checkpoint(self._seq)
        self._seq = seq
        self._pending = []
        self._last_checkpoint = time.monotonic()
        if old != target:
            old.unlink(missing_ok=True)

    def _maybe_preview(self, *, force: bool = False) -> None:
        self._since_preview += 1
        due = (not self._previewed or self._since_preview >= self._preview_frames
               or time.monotonic() - self._last_preview >= self._preview_seconds)
        if (force or due) and self._live.n_stacked > 0:
            linear, stretched = self._live.preview()
            write_preview(self.paths.output, linear=linear, stretched=stretched)
            self._previewed = True
            self._since_preview = 0
            self._last_preview = time.monotonic()
            self._log.info("preview_written", path=str(self.paths.output / "preview.jpg"), frames=self._live.n_stacked)

    def _close(self, why: str) -> None:
        self._checkpoint()
        self._scratch = None  # the frame array is not needed any more: the final stack is made in its room
        started = time.perf_counter()
        if self._live.n_stacked > 0:
            self._maybe_preview(force=True)
            self._on_progress({"what": f"final stack of {self.label}", "done": 0, "total": 1})
            try:
                product = self._live.finalize()
            finally:
                self._on_progress(None)
            info = self._stats_info()
            timings = self.stats.timings_ms
            summary = {
                "session": self.id, "label": self.label, "key": self.key, "closed_because": why,
                "stacked": self.stats.stacked, "rejected": self.stats.rejected,
                "total_exposure_s": self.stats.exposure, "rejections": self.stats.rejections,
                "masters": list(product.masters),
                "timings_ms": {"per_frame_median": float(np.median(timings)) if timings else None,
                               "per_frame_worst": float(np.max(timings)) if timings else None,
                               "finalize": None},
            }
            write_session_outputs(product, self.paths.output)
            summary["timings_ms"]["finalize"] = round((time.perf_counter() - started) * 1e3, 1)  # type: ignore[index]
            atomic_write_text(self.paths.output / "session.json", json.dumps(summary, indent=2, default=str) + "\n")
        else:
            info = self._stats_info()
            self._log.warning("session_closed_empty", reason=why)
        self._journal.update_session(self.id, status="closed", info=info)
        shutil.rmtree(self.paths.state, ignore_errors=True)  # checkpoints and the registered-frame cache
        self.closed = True
        self._log.info("session_closed", reason=why, stacked=self.stats.stacked, rejected=self.stats.rejected,
                       output=str(self.paths.output))
        self._on_closed(self.id)
