"""The daemon: watcher -> router -> library (calibration frames) or session workers (lights).

Threads: the watchdog observer and its settle thread, the router (one), one worker per open session, and
APScheduler's thread for the idle and end-of-night closes. The main thread runs :meth:`Daemon.run`: it handles
signals, control requests (``astrod session close``), the status file, and systemd's notify/watchdog.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from astrod import __version__
from astrod.config import Config, load_config
from astrod.errors import AstrodError, ConfigError, LibraryError
from astrod.io.atomic import atomic_write_text
from astrod.io.frames import read_meta
from astrod.io.headers import rules_from_config
from astrod.io.journal import Journal, quick_hash
from astrod.library.build import BuildOptions, build_library
from astrod.library.masters import MasterLibrary
from astrod.model import Frame, FrameKind, FrameMeta
from astrod.pipeline.calibration import library_calibrator
from astrod.pipeline.live import Calibrated, Calibrator, PipelineSettings
from astrod.pipeline.night import next_dawn
from astrod.pipeline.sessions import Pointing, SessionKey, session_key, slug, target_of
from astrod.service.capture import CaptureRunner
from astrod.service.notify import Notifier
from astrod.service.sessions import SessionPaths, SessionWorker
from astrod.service.watcher import FolderWatcher, WatchSettings, scan_folders
from astrod.service.web import WebServer, journal_frames

log = structlog.get_logger()

STATUS_FILE = "status.json"
CONTROL_DIR = "control"
_FLUSH = object()
_STOP = object()


@dataclass(frozen=True, slots=True)
class DaemonPaths:
    state: Path
    library: Path
    output: Path

    @property
    def journal(self) -> Path:
        return self.state / "journal.sqlite"

    @property
    def status(self) -> Path:
        return self.state / STATUS_FILE

    @property
    def control(self) -> Path:
        return self.state / CONTROL_DIR

    def session_state(self, session_id: str) -> Path:
        return self.state / "sessions" / session_id


def daemon_paths(config: Config) -> DaemonPaths:
    return DaemonPaths(state=config.state_dir(), library=config.library_dir(), output=config.paths.output)


def request_close(config: Config, session: str | None) -> Path:
    """Ask the running daemon to close one session (or all, with None); returns the request file."""
    paths = daemon_paths(config)
    name = f"close-{time.time_ns()}.json"
    target = paths.control / name
    atomic_write_text(target, json.dumps({"action": "close", "session": session}) + "\n")
    return target


class Daemon:
    def __init__(self, config: Config, *, config_path: Path | None = None, env: dict[str, str] | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.config = config
        self.config_path = config_path
        self.paths = daemon_paths(config)
        self._clock = clock
        self.notifier = Notifier(env)
        self.paths.state.mkdir(parents=True, exist_ok=True)
        self.paths.output.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.paths.journal)
        self._ready: queue.Queue[object] = queue.Queue()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._lock = threading.RLock()
        self.workers: dict[str, SessionWorker] = {}
        self._keys: dict[SessionKey, str] = {}
        self._pending_calibration: list[Path] = []
        self._last_calibration = 0.0
        self._library: MasterLibrary | None = None
        self.errors: list[dict[str, str]] = []
        self.progress: dict[str, Any] = {}  # a long job under way: {"what", "done", "total"}
        self.started_at = clock()
        self._scheduler = BackgroundScheduler(timezone="UTC")
        self._router = threading.Thread(target=self._route_loop, name="astrod-router", daemon=True)
        self._watcher = FolderWatcher(self._watch_settings(), self._on_ready)
        self._status_dirty = True
        self.web: WebServer | None = None
        # INDI capture plan: the runner's frames arrive through the watcher like any other frame
        self.capture: CaptureRunner | None = (CaptureRunner.for_daemon(self)
                                              if config.indi.enabled and config.capture.steps else None)

    # ----------------------------------------------------------------------------------- set-up
    def _watch_settings(self) -> WatchSettings:
        c = self.config
        return WatchSettings(folders=c.paths.watch, stable_seconds=c.watch.stable_seconds, polling=c.watch.polling,
                             poll_interval=c.watch.poll_interval, ignore=c.watch.ignore,
                             exclude=(self.paths.output, self.paths.state, self.paths.library))

    def _read_options(self) -> dict[str, Any]:
        return {"rename": dict(self.config.headers.rename), "rules": rules_from_config(self.config.headers)}

    def _pipeline_settings(self) -> PipelineSettings:
        return PipelineSettings.from_config(self.config)

    def _open_library(self) -> MasterLibrary | None:
        with self._lock:  # the router, the workers and the web server's threads all ask
            if self._library is None:
                try:
                    # prepared masters live in mapped scratch files, not in the daemon's memory
                    self._library = MasterLibrary.open(self.paths.library, config=self.config,
                                                       scratch=self.paths.state / "prepared-masters")
                except LibraryError:
                    return None
            return self._library

    def _calibrator(self) -> Calibrator:
        """A calibrator for one session worker: it calibrates each frame in place (the worker reads every
        frame into a scratch array of its own), and follows the library as masters arrive."""
        cache: dict[int, Calibrator] = {}

        def calibrator_for(library: MasterLibrary) -> Calibrator:
            if id(library) not in cache:
                cache.clear()
                cache[id(library)] = library_calibrator(library, in_place=True)
            return cache[id(library)]

        def calibrate(frame: Frame) -> Frame | Calibrated:
            library = self._open_library()
            if library is None:  # no masters yet: stack uncalibrated, the stack's history says so
                return Calibrated(frame=frame, notes=("no master library yet",))
            return calibrator_for(library)(frame)

        return calibrate

    # ----------------------------------------------------------------------------------- running
    def start(self) -> None:
        """Restore open sessions, start the threads, queue what arrived while astrod was down."""
        self._scheduler.start()
        for record in self.journal.sessions(status="open"):
            key = _key_from_dict(record.key)
            worker = self._make_worker(record.id, key, record.info.get("label", record.id),
                                       Path(record.info.get("output", self.paths.output / record.id)))
            self._keys[key] = record.id
            for f in self.journal.files(session=record.id, status=["queued"]):
                worker.enqueue(Path(f.path))
            self._touch_idle(record.id)
        for f in self.journal.files(status=["queued"]):
            if f.session is None:
                self._ready.put(Path(f.path))
        self._router.start()
        if self.capture is not None:
            self.capture.start()
        self._watcher.start()
        for path in scan_folders(self._watch_settings()):
            self._ready.put(path)
        self._schedule_dawn()
        self._start_web()
        self.notifier.ready(self.status_line())
        log.info("daemon_started", version=__version__, state=str(self.paths.state), library=str(self.paths.library),
                 output=str(self.paths.output), sessions=len(self.workers))

    def _start_web(self, *, port: int | None = None) -> None:
        if not self.config.web.enabled:
            return
        web = WebServer(self.config, status=self.status, frames=journal_frames(self.journal, self._uncheckpointed),
                        close_session=lambda sid: self.close_session(sid, "closed from the dashboard"), port=port)
        try:
            web.start()
        except OSError as err:  # port taken: go on without the dashboard, say so in the status
            log.error("web_start_failed", host=self.config.web.host, port=self.config.web.port, reason=str(err))
            self._error("web", f"{self.config.web.host}:{self.config.web.port}: {err.strerror or err}")
            return
        self.web = web

    def run(self, *, install_signals: bool = True, until: Callable[[], bool] | None = None) -> int:
        """Run until SIGTERM/SIGINT (or ``until()``); returns the exit status."""
        if install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            signal.signal(signal.SIGINT, lambda *_: self._stop.set())
            signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        self.start()
        last_ping = last_status = 0.0
        interval = self.notifier.watchdog_interval
        try:
            while not self._stop.is_set() and not (until is not None and until()):
                now = time.monotonic()
                if interval is not None and now - last_ping >= interval:
                    self.notifier.watchdog()
                    last_ping = now
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                self._handle_control()
                if self._pending_calibration and now - self._last_calibration > 5.0:
                    self._ready.put(_FLUSH)
                    self._last_calibration = now
                if now - last_status >= 2.0 or self._status_dirty:
                    self.write_status()
                    last_status = now
                self._stop.wait(0.2)
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Stop taking frames, let every worker finish its current frame and checkpoint, then exit."""
        self.notifier.stopping()
        log.info("daemon_stopping")
        if self.capture is not None:
            self.capture.stop()
        if self.web is not None:
            self.web.stop()
        self._watcher.stop()
        self._ready.put(_STOP)
        self._router.join(timeout=30)
        with self._lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.join(timeout=60)
        self._scheduler.shutdown(wait=True)
        self.write_status(running=False)
        if self._library is not None:
            self._library.close()
        self.journal.close()
        log.info("daemon_stopped")

    def reload(self) -> None:
        """SIGHUP: re-read the config; new sessions use it, open sessions keep the settings they started with."""
        if self.config_path is None:
            return
        self.notifier.reloading()
        try:
            config = load_config(self.config_path)
        except ConfigError as err:
            log.error("config_reload_failed", problems=err.problems)
            self._error("config", "; ".join(err.problems))
        else:
            self.config = config
            log.info("config_reloaded", path=str(self.config_path))
        self.notifier.ready(self.status_line())

    # ----------------------------------------------------------------------------------- routing
    def _on_ready(self, path: Path) -> None:
        self._ready.put(path)

    def _route_loop(self) -> None:
        while True:
            item = self._ready.get()
            if item is _STOP:
                return
            try:
                if item is _FLUSH:
                    self._flush_calibration()
                else:
                    assert isinstance(item, Path)
                    self._route(item)
            except Exception as err:  # one bad file must not stop the router
                log.exception("route_failed", frame=str(item))
                self._error(str(item), f"internal error: {err}")
            finally:
                self._ready.task_done()  # busy() waits for this: a file being routed is not yet in a session
            self._status_dirty = True

    def _route(self, path: Path) -> None:
        try:
            st = path.stat()
        except OSError as err:
            try:
                lst = path.lstat()
            except OSError:
                return  # gone before we looked
            if self.journal.record_seen(path, size=lst.st_size, mtime=lst.st_mtime, hash=None):
                self._reject(path, f"{path}: cannot stat: {err.strerror or err}")
            return
        try:
            digest = quick_hash(path, size=st.st_size) if path.is_file() else None
        except OSError:
            digest = None
        if not self.journal.record_seen(path, size=st.st_size, mtime=st.st_mtime, hash=digest):
            return
        try:
            meta = read_meta(path, **self._read_options())
        except AstrodError as err:
            self._reject(path, str(err))
            return
        if meta.kind is FrameKind.UNKNOWN:
            self._reject(path, f"{path}: unknown frame type: {meta.kind_reason}", kind="unknown")
            return
        if meta.stack_count > 1 or meta.planes > 1:
            self.journal.set_file(path, status="ignored", kind=meta.kind.value,
                                  reason=f"{path}: already a stack of {meta.stack_count} frames")
            return
        if meta.kind.is_calibration:
            self.journal.set_file(path, status="calibration", kind=meta.kind.value)
            self._pending_calibration.append(path)
            self._last_calibration = time.monotonic()
            log.info("calibration_frame_seen", frame=str(path), kind=meta.kind.value)
            return
        self._route_light(path, meta, st.st_mtime)

    def _reject(self, path: Path, reason: str, *, kind: str | None = None) -> None:
        self.journal.set_file(path, status="rejected", reason=reason, kind=kind)
        log.warning("frame_rejected", frame=str(path), reason=reason)

    def _route_light(self, path: Path, meta: FrameMeta, mtime: float) -> None:
        if meta.exposure is None:
            self._reject(path, f"{path}: no exposure time (EXPTIME/EXPOSURE) in the header", kind="light")
            return
        if self._pending_calibration:
            self._flush_calibration()  # masters from the calibration frames that came first serve this light
        if meta.date_obs is None:
            meta = replace(meta, date_obs=datetime.fromtimestamp(mtime, tz=UTC))
        with self._lock:
            pointings = [Pointing(w.key["target"], w.key["ra"], w.key["dec"]) for w in self.workers.values()
                         if w.key.get("ra") is not None and not w.closing]
        target = target_of(meta, pointings=pointings, radius_arcmin=self.config.session.pointing_radius_arcmin)
        if target is None:
            self._reject(path, f"{path}: no OBJECT and no RA/DEC: cannot tell which target it belongs to",
                         kind="light")
            return
        key = session_key(meta, target=target, longitude=self.config.site.longitude)
        worker = self._session_for(key, meta)
        self.journal.set_file(path, status="queued", kind="light", session=worker.id)
        worker.enqueue(path)
        self._touch_idle(worker.id)

    def _session_for(self, key: SessionKey, meta: FrameMeta) -> SessionWorker:
        with self._lock:
            sid = self._keys.get(key)
            if sid is not None and sid in self.workers and not self.workers[sid].closing:
                return self.workers[sid]
            base = f"{key.night.isoformat()}_{slug(key.target)}_{slug(key.filter or 'nofilter')}_{key.settings_tag()}"
            n = 1
            sid = base
            while self.journal.session(sid) is not None:
                n += 1
                sid = f"{base}_{n}"
            out = self.paths.output / key.night.isoformat() / slug(key.target) / slug(key.filter or "nofilter")
            if n > 1 or any(w.paths.output == out for w in self.workers.values()):
                out = out.with_name(f"{out.name}_{n}")
            label = f"{key.target}/{key.filter or 'no filter'}"
            info = {"label": label, "output": str(out)}
            self.journal.open_session(sid, _key_dict(key, meta), info)
            worker = self._make_worker(sid, key, label, out, meta=meta)
            self._keys[key] = sid
            log.info("session_opened", session=sid, target=key.target, filter=key.filter, output=str(out))
            return worker

    def _make_worker(self, sid: str, key: SessionKey, label: str, output: Path,
                     meta: FrameMeta | None = None) -> SessionWorker:
        record = self.journal.session(sid)
        stored = record.key if record is not None else _key_dict(key, meta)
        worker = SessionWorker(
            session_id=sid, label=label, key=stored,
            paths=SessionPaths(output=output, state=self.paths.session_state(sid)), journal=self.journal,
            settings=self._pipeline_settings(), calibrator=self._calibrator(),
            checkpoint_every=self.config.session.checkpoint_every,
            checkpoint_seconds=self.config.session.checkpoint_seconds,
            preview_every_frames=self.config.stack.preview_every_frames,
            preview_every_seconds=self.config.stack.preview_every_seconds,
            read_options=self._read_options(), on_closed=self._on_session_closed, on_progress=self._set_progress)
        self.workers[sid] = worker
        worker.start()
        return worker

    def _flush_calibration(self) -> None:
        """Build or refresh the masters the new calibration frames belong to."""
        if not self._pending_calibration:
            return
        sources = [Path(f.path) for f in self.journal.files(status=["calibration"])]
        self._pending_calibration = []
        options = BuildOptions.from_config(self.config, refresh=True)
        try:
            report = build_library(self.paths.library, sources, options=options, progress=_StatusProgress(self))
        except AstrodError as err:
            self._error("library", str(err))
            log.error("library_update_failed", reason=str(err))
            return
        for skipped in report.skipped:
            self.journal.set_file(skipped.path, status="rejected", reason=skipped.reason)
        if self._library is not None:
            self._library.invalidate()
        log.info("library_updated", masters=len(report.masters), skipped=len(report.skipped))

    # ----------------------------------------------------------------------------------- closing
    def _touch_idle(self, sid: str) -> None:
        when = self._clock() + timedelta(minutes=self.config.session.idle_minutes)
        self._scheduler.add_job(self.close_session, "date", run_date=when, args=[sid, "idle"],
                                id=f"idle-{sid}", replace_existing=True)

    def _schedule_dawn(self) -> None:
        site = self.config.site
        if site.latitude is None or site.longitude is None:
            return
        dawn = next_dawn(self._clock(), latitude=site.latitude, longitude=site.longitude, elevation=site.elevation)
        if dawn is None:  # polar day or night: no dawn within 36 h, sessions close when idle
            return
        self._scheduler.add_job(self._dawn, "date", run_date=dawn, id="dawn", replace_existing=True)
        log.info("dawn_scheduled", at=dawn.isoformat())

    def _dawn(self) -> None:
        self.close_all("end of night (astronomical dawn)")
        self._schedule_dawn()

    def close_session(self, sid: str, why: str) -> bool:
        with self._lock:
            worker = self.workers.get(sid)
        if worker is None or worker.closing:
            return False
        log.info("session_close_requested", session=sid, reason=why)
        worker.request_close(why)
        return True

    def close_all(self, why: str) -> int:
        with self._lock:
            ids = list(self.workers)
        return sum(self.close_session(sid, why) for sid in ids)

    def _set_progress(self, progress: dict[str, Any] | None) -> None:
        self.progress = dict(progress) if progress else {}
        self._status_dirty = True

    def _on_session_closed(self, sid: str) -> None:
        with self._lock:
            worker = self.workers.pop(sid, None)
            self._keys = {k: v for k, v in self._keys.items() if v != sid}
        if self._scheduler.get_job(f"idle-{sid}") is not None:
            self._scheduler.remove_job(f"idle-{sid}")
        self._status_dirty = True
        del worker

    def _handle_control(self) -> None:
        if not self.paths.control.is_dir():
            return
        for request in sorted(self.paths.control.glob("*.json")):
            try:
                data = json.loads(request.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                log.warning("control_request_unreadable", path=str(request), reason=str(err))
            else:
                if data.get("action") == "close":
                    sid = data.get("session")
                    n = self.close_all("closed by request") if sid is None else int(
                        self.close_session(str(sid), "closed by request"))
                    log.info("control_close_handled", session=sid, closed=n)
            request.unlink(missing_ok=True)

    # ----------------------------------------------------------------------------------- status
    def _error(self, where: str, text: str) -> None:
        self.errors.append({"at": self._clock().isoformat(), "where": where, "error": text})
        del self.errors[:-50]
        self._status_dirty = True

    def busy(self) -> bool:
        """Whether any frame is still waiting somewhere (router queue, calibration batch, session queues)."""
        if self._ready.unfinished_tasks or self._pending_calibration:
            return True
        # (journal rows stay "queued" until their frames' checkpoint: stacked frames waiting for one are done)
        with self._lock:
            return any(w.in_flight for w in self.workers.values())

    def status_line(self) -> str:
        with self._lock:
            parts = [f"{w.label}: {w.stats.stacked} stacked, {w.stats.rejected} rejected"
                     for w in self.workers.values()]
        return "; ".join(parts) if parts else "idle, watching"

    def _uncheckpointed(self, session_id: str) -> dict[str, tuple[str, str | None, dict[str, Any]]]:
        with self._lock:
            worker = self.workers.get(session_id)
        return {} if worker is None else worker.uncheckpointed()

    def status(self, *, running: bool = True) -> dict[str, Any]:
        files = self.journal.counts()
        with self._lock:
            # frames through their session since its last checkpoint are counted as what they became
            for worker in self.workers.values():
                for outcome, _, _ in worker.uncheckpointed().values():
                    files["queued"] = files.get("queued", 0) - 1
                    files[outcome] = files.get(outcome, 0) + 1
            if files.get("queued", 0) <= 0:
                files.pop("queued", None)
            sessions = [{"id": w.id, "label": w.label, "target": w.key.get("target"), "filter": w.key.get("filter"),
                         "night": w.key.get("night"), "stacked": w.stats.stacked, "rejected": w.stats.rejected,
                         "total_exposure_s": w.stats.exposure, "queue": w.queue_length,
                         "last_frame": w.stats.last_metrics, "rejections": w.stats.rejections,
                         "output": str(w.paths.output), "closing": w.closing}
                        for w in self.workers.values()]
        library = self._open_library()
        lib_summary: dict[str, Any] = {"path": str(self.paths.library)}
        if library is not None:
            counts: dict[str, int] = {}
            for record in library.records():
                counts[record.kind.value] = counts.get(record.kind.value, 0) + 1
            lib_summary["masters"] = counts
        progress = dict(self.progress) if self.progress else None
        return {"running": running, "pid": os.getpid(), "version": __version__, "progress": progress,
                "started_at": self.started_at.isoformat(), "updated_at": self._clock().isoformat(),
                "queue": self._ready.qsize(), "files": files, "sessions": sessions,
                "closed_sessions": [{"id": s.id, "label": s.info.get("label"), "output": s.info.get("output"),
                                     "closed_at": s.closed_at, **s.info.get("stats", {})}
                                    for s in self.journal.sessions(status="closed")][-50:],
                "library": lib_summary, "errors": self.errors[-20:], "status_line": self.status_line(),
                "capture": self.capture.status() if self.capture is not None else None}

    def write_status(self, *, running: bool = True) -> None:
        self._status_dirty = False
        status = self.status(running=running)
        atomic_write_text(self.paths.status, json.dumps(status, indent=2, default=str) + "\n")
        self.notifier.status(status["status_line"])


class _StatusProgress:
    """Library-build progress as the status file shows it (the dashboard renders it)."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def start(self, stage: str, total: int) -> None:
        self._daemon.progress = {"what": f"library {stage}", "done": 0, "total": total}
        self._daemon._status_dirty = True

    def advance(self, item: str = "", n: int = 1) -> None:
        p = self._daemon.progress
        if p:
            self._daemon.progress = {**p, "done": p["done"] + n, "item": item}
            self._daemon._status_dirty = True

    def finish(self) -> None:
        self._daemon.progress = {}
        self._daemon._status_dirty = True


def _key_dict(key: SessionKey, meta: FrameMeta | None) -> dict[str, Any]:
    out = key.as_dict()
    out["ra"] = meta.ra if meta is not None else None
    out["dec"] = meta.dec if meta is not None else None
    return out


def _key_from_dict(data: dict[str, Any]) -> SessionKey:
    from datetime import date

    return SessionKey(night=date.fromisoformat(data["night"]), target=data["target"], filter=data["filter"],
                      camera=data["camera"], gain=data["gain"], offset=data["offset"],
                      binning=(int(data["binning"][0]), int(data["binning"][1])), bayer=data["bayer"])


def read_status(config: Config) -> dict[str, Any] | None:
    """The status the daemon last wrote, with ``running`` corrected when its process is gone."""
    path = daemon_paths(config).status
    try:
        status: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = int(status.get("pid", 0))
    alive = False
    if pid > 0:
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
    status["running"] = bool(status.get("running")) and alive
    return status
