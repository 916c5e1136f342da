"""The daemon: a frame's way is watcher -> ingest (what the file is: `astrod.pipeline.ingest`) -> router (which
session: `astrod.pipeline.router`) -> the library (calibration frames) or a session worker (lights:
`astrod.service.sessions`). The daemon owns the threads, and records each decision in the journal once.

Threads: the watchdog observer and its settle thread, the router (one), and one worker per open session. The
main thread runs :meth:`Daemon.run`: it handles signals, control requests (``astrod session close``), the idle
and end-of-night closes (a periodic check, see `astrod.service.closing`), the status file, and systemd's
notify/watchdog.

The daemon never stops on its own state: one daemon per state folder (a lock); a damaged journal is moved aside
and rebuilt (`astrod.service.recovery`), at start or, found while running, by starting again in the same
process; a full state disk is waited out (the problem in the status), and files routed again later.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from astrod import __version__
from astrod.config import Config
from astrod.errors import AstrodError, ConfigError, LibraryError
from astrod.io.config_file import load_config
from astrod.io.control import ControlInbox
from astrod.io.files import ensure_folder
from astrod.io.headers import rules_from_config
from astrod.io.journal import FileRecord, Journal, Seen, quick_hash
from astrod.io.sqlite import StateCorrupt, is_corrupt, is_disk_problem
from astrod.io.state_lock import StateLock
from astrod.library.build import BuildOptions, build_library
from astrod.library.masters import MasterLibrary
from astrod.model import FrameMeta
from astrod.pipeline.calibration import following_calibrator
from astrod.pipeline.ingest import Calibration, Ignored, Light, ReadOptions, Rejected, ingest
from astrod.pipeline.live import Calibrator, PipelineSettings
from astrod.pipeline.router import route
from astrod.pipeline.sessions import Pointing, SessionKey, slug
from astrod.service.capture import CaptureRunner
from astrod.service.closing import CloseClock, dawn_at_site
from astrod.service.notify import Notifier
from astrod.service.paths import daemon_paths
from astrod.service.problems import Problems
from astrod.service.queue_thread import QueueThread
from astrod.service.recovery import open_journal
from astrod.service.reference_solver import reference_solver
from astrod.service.reload import compare
from astrod.service.sessions import QueuedFrame, SessionPaths, SessionWorker, photometry_for
from astrod.service.status import (
    StatusProgress,
    closed_sessions,
    file_counts,
    library_summary,
    problem_entries,
    recent_rejections,
    session_entry,
    short_status,
    write_status_quietly,
)
from astrod.service.watcher import FolderWatcher, WatchSettings, scan_folders
from astrod.service.web import WebServer, journal_frames

log = structlog.get_logger()

RESTART = 75  # run()'s exit status when the daemon must start again (a damaged journal found while running)
STATE_RETRY_S = 5.0


class FlushCalibration:
    """The router's cue to build the masters of the calibration frames seen so far."""


_FLUSH = FlushCalibration()


class _Router(QueueThread["Path | FlushCalibration"]):
    """The router thread: one file (or calibration flush) at a time, in arrival order."""

    def __init__(self, route: Callable[[Path | FlushCalibration], None]) -> None:
        super().__init__(name="astrod-router")
        self._route = route

    def handle(self, item: Path | FlushCalibration) -> bool:
        self._route(item)
        return False


class StoppedBeforeStart(AstrodError):
    """SIGTERM while the daemon waited for its state folder to work."""


class Daemon:
    def __init__(self, config: Config, *, config_path: Path | None = None, env: dict[str, str] | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 monotonic: Callable[[], float] = time.monotonic, rebuild_journal: bool = False,
                 stop: threading.Event | None = None) -> None:
        self.config = config
        # set by SIGTERM/SIGINT; given by `run_daemon`, which installs the handlers before the state is opened
        self._stop = stop if stop is not None else threading.Event()
        self.config_path = config_path
        self.paths = daemon_paths(config)
        self._clock = clock
        self._monotonic = monotonic
        self.notifier = Notifier(env)
        self._status_dirty = True
        self.problems = Problems(clock, on_change=self._mark_dirty)
        self.started_at = clock()
        self._lock_file = StateLock(self.paths.state)
        self._lock_file.acquire()  # StateLocked: another daemon runs on this state folder
        self._ensure_output()
        self.journal = self._open_state(rebuild=rebuild_journal)
        self._deferred: list[tuple[float, Path]] = []  # routing failed on the state disk: (retry at, path)
        self._reload = threading.Event()
        self._restart_reason: str | None = None
        self._lock = threading.RLock()
        self.workers: dict[str, SessionWorker] = {}
        self._keys: dict[SessionKey, str] = {}
        self._pending_calibration: list[Path] = []
        self._last_calibration = 0.0
        self._library: MasterLibrary | None = None
        self.progress: dict[str, Any] = {}  # a long job under way: {"what", "done", "total"}
        self._inbox = ControlInbox(self.paths.control, memory=self.paths.state / "control-handled.json")
        if self._inbox.stuck:
            self.problems.set("control", f"{len(self._inbox.stuck)} handled request(s) in {self.paths.control} "
                              "cannot be removed (they are not acted on again)")
        self._closes = CloseClock(idle_s=config.session.idle_minutes * 60.0, wall=clock, monotonic=monotonic,
                                  dawn_after=dawn_at_site(config.site))
        self._router = _Router(self._route_item)
        self._solver = reference_solver(config, journal=self.journal)
        self._watcher = FolderWatcher(self._watch_settings(), self._on_ready)
        self.web: WebServer | None = None
        # INDI capture plan: the runner's frames arrive through the watcher like any other frame
        self.capture: CaptureRunner | None = (CaptureRunner.for_daemon(self)
                                              if config.indi.enabled and config.capture.steps else None)

    def _mark_dirty(self) -> None:
        self._status_dirty = True

    # ----------------------------------------------------------------------------------- set-up
    def _ensure_output(self) -> None:
        try:
            ensure_folder(self.paths.output)
        except OSError as err:  # sessions retry their writes; the status says why they fail
            self.problems.set("output", f"output folder {self.paths.output}: {err.strerror or err}")
        else:
            self.problems.set("output", None)

    def _open_state(self, *, rebuild: bool) -> Journal:
        """The journal (rebuilt when damaged); while the state disk fails, wait and say so (never exit)."""
        while True:
            try:
                journal, rebuilt = open_journal(self.paths.journal, sessions_dir=self.paths.sessions,
                                                output=self.paths.output, force_rebuild=rebuild)
            except Exception as err:
                if not is_disk_problem(err):
                    raise
                text = f"state folder unusable, waiting for it to work again: {err} ({self.paths.state})"
                log.error("state_unusable", state=str(self.paths.state), reason=str(err))
                self.problems.set("state", text)
                self.notifier.status(text)
                self.notifier.watchdog()
                self._write_status_quietly(starting=True)
                if self._stop.wait(STATE_RETRY_S):
                    self._lock_file.release()
                    raise StoppedBeforeStart(text) from err
                continue
            self.problems.set("state", None)
            if rebuilt is not None:
                self.problems.error("journal", f"{self.paths.journal} was damaged: moved to {rebuilt.moved_to} "
                                    f"and rebuilt ({rebuilt.open_sessions} open and {rebuilt.closed_sessions} "
                                    f"closed sessions, {rebuilt.files} frames)")
            return journal

    def _watch_settings(self) -> WatchSettings:
        c = self.config
        return WatchSettings(folders=c.paths.watch, stable_seconds=c.watch.stable_seconds, polling=c.watch.polling,
                             poll_interval=c.watch.poll_interval, ignore=c.watch.ignore,
                             exclude=(self.paths.output, self.paths.state, self.paths.library))

    def _read_options(self) -> ReadOptions:
        return ReadOptions.of(self.config.headers.rename, rules_from_config(self.config.headers))

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
        """A calibrator for one session worker (in place: the worker reads every frame into its own scratch
        array), following the library as masters arrive."""
        return following_calibrator(self._open_library, in_place=True)

    # ----------------------------------------------------------------------------------- running
    def start(self) -> None:
        """Restore open sessions, start the threads, queue what arrived while astrod was down."""
        for record in self.journal.sessions(status="open"):
            self._restore_session(record.id, record.key, record.info, close_reason=record.close_reason)
        for f in self.journal.files(status=["queued"]):
            if f.session is None or f.session not in self.workers:  # never routed, or its session has closed
                self._router.put(Path(f.path))
        self._router.start()
        if self._solver is not None:  # plate-solves the sessions' reference frames
            self._solver.start()
        if self.capture is not None:
            self.capture.start()
        self._watcher.start()
        for path in scan_folders(self._watch_settings()):
            self._router.put(path)
        self._start_web()
        self.notifier.ready(self.status_line())
        log.info("daemon_started", version=__version__, state=str(self.paths.state), library=str(self.paths.library),
                 output=str(self.paths.output), sessions=len(self.workers))

    def _restore_session(self, sid: str, key_data: dict[str, Any], info: dict[str, Any], *,
                         close_reason: str | None = None) -> SessionWorker:
        """A worker for a session the journal has open, with the frames queued for it."""
        key = SessionKey.from_record(key_data)
        worker = self._make_worker(sid, key, Pointing.from_record(key_data), info.get("label", sid),
                                   Path(info.get("output", self.paths.output / sid)))
        self._keys[key] = sid
        for f in self.journal.files(session=sid, status=["queued"]):
            worker.enqueue(Path(f.path), f.arrival)
        self._closes.mark_active(sid)
        if close_reason is not None:  # a close was under way when astrod stopped: it is done now
            self.close_session(sid, close_reason)
        return worker

    def _start_web(self, *, port: int | None = None) -> None:
        if not self.config.web.enabled:
            return
        web = WebServer(self.config, status=self.status, frames=journal_frames(self.journal, self._uncheckpointed),
                        close_session=lambda sid: self.close_session(sid, "closed from the dashboard"), port=port)
        try:
            web.start()
        except OSError as err:  # port taken: go on without the dashboard, say so in the status
            log.error("web_start_failed", host=self.config.web.host, port=self.config.web.port, reason=str(err))
            self.problems.set("web", f"{self.config.web.host}:{self.config.web.port}: {err.strerror or err}")
            return
        self.problems.set("web", None)
        self.web = web

    def run(self, *, install_signals: bool = True, until: Callable[[], bool] | None = None) -> int:
        """Run until SIGTERM/SIGINT (or ``until()``); returns the exit status (`RESTART`: start again)."""
        if install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            signal.signal(signal.SIGINT, lambda *_: self._stop.set())
            signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        self.start()
        last_ping = last_status = last_check = 0.0
        interval = self.notifier.watchdog_interval
        try:
            while not self._stop.is_set() and not (until is not None and until()):
                if self._restart_reason is not None:
                    return RESTART
                now = time.monotonic()
                if interval is not None and now - last_ping >= interval:
                    self.notifier.watchdog()
                    last_ping = now
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                if now - last_check >= 1.0:
                    self._periodic()
                    last_check = now
                if self._pending_calibration and now - self._last_calibration > 5.0:
                    self._router.put(_FLUSH)
                    self._last_calibration = now
                if now - last_status >= 2.0 or self._status_dirty:
                    self.write_status()
                    last_status = now
                self._stop.wait(0.2)
        finally:
            self.shutdown()
        return 0

    def _periodic(self) -> None:
        """Once a second: control requests, due closes, deferred files, and workers that must not be dead."""
        self._handle_control()
        decision = self._closes.check(busy=self._session_busy)
        if decision.dawn:
            self.close_all("end of night (astronomical dawn)")
        for sid in decision.idle:
            self.close_session(sid, "idle")
        now = self._monotonic()
        due = [p for t, p in self._deferred if t <= now]
        if due:
            self._deferred = [(t, p) for t, p in self._deferred if t > now]
            for path in due:
                self._router.put(path)
        with self._lock:
            dead = [w for w in self.workers.values() if not w.alive and not w.closed]
        for worker in dead:  # cannot happen by design (the worker catches everything); if it does, start it again
            log.error("session_worker_died", session=worker.id)
            self.problems.error(worker.id, f"{worker.label}: its worker thread ended unexpectedly; restarted")
            with self._lock:
                self.workers.pop(worker.id, None)
            record = self.journal.session(worker.id)
            if record is not None and record.status == "open":
                self._restore_session(record.id, record.key, record.info, close_reason=record.close_reason)

    def _session_busy(self, sid: str) -> bool:
        with self._lock:
            worker = self.workers.get(sid)
        return worker is not None and worker.in_flight > 0

    def shutdown(self) -> None:
        """Stop taking frames, let every worker finish its current frame and checkpoint, then exit."""
        self.notifier.stopping()
        log.info("daemon_stopping")
        if self.capture is not None:
            self.capture.stop()
        if self.web is not None:
            self.web.stop()
        self._watcher.stop()
        self._router.stop()
        self._router.join(timeout=30)
        if self._solver is not None:  # first: a worker waiting for a solve hears at once (and keeps that frame queued)
            self._solver.close()
        with self._lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.join(timeout=60)
        self.write_status(running=False)
        if self._library is not None:
            self._library.close()
        self.journal.close()
        self._lock_file.release()
        log.info("daemon_stopped")

    def reload(self) -> None:
        """SIGHUP: re-read the config and apply it: watch folders, output, web, closes and logging at once; the
        pipeline settings for new sessions (open ones keep theirs); state and library paths need a restart."""
        if self.config_path is None:
            return
        self.notifier.reloading()
        try:
            config = load_config(self.config_path)
        except ConfigError as err:
            log.error("config_reload_failed", problems=err.problems)
            self.problems.error("config", "; ".join(err.problems))
            self.notifier.ready(self.status_line())
            return
        change = compare(self.config, config)
        old = self.config
        self.config = replace(config, paths=replace(config.paths, state=old.paths.state, library=old.paths.library))
        if "paths.output" in change.applied:
            self.paths = replace(self.paths, output=config.paths.output)
            self._ensure_output()
        if {"paths.watch", "watch", "paths.output"} & set(change.applied):
            self._watcher.stop()
            self._watcher = FolderWatcher(self._watch_settings(), self._on_ready)
            self._watcher.start()
            for path in scan_folders(self._watch_settings()):
                self._router.put(path)
        if {"session", "site"} & set(change.applied):
            self._closes.reconfigure(idle_s=config.session.idle_minutes * 60.0, dawn_after=dawn_at_site(config.site))
        if "log" in change.applied:
            from astrod.service.logging import configure_logging

            configure_logging(level=config.log.level, fmt=config.log.format)
        if "web" in change.applied:
            if self.web is not None:
                self.web.stop()
                self.web = None
            self._start_web()
        self.problems.set("config", None if not change.needs_restart else
                          "config changes that need a restart: " + ", ".join(change.needs_restart))
        log.info("config_reloaded", path=str(self.config_path), applied=list(change.applied),
                 needs_restart=list(change.needs_restart))
        self.notifier.ready(self.status_line())

    # ----------------------------------------------------------------------------------- routing
    def _on_ready(self, path: Path) -> None:
        self._router.put(path)

    def _route_item(self, item: Path | FlushCalibration) -> None:
        try:
            if isinstance(item, FlushCalibration):
                self._flush_calibration()
            else:
                self._route(item)
        except Exception as err:  # one bad file must not stop the router
            self._route_failed(item, err)
        finally:
            self._status_dirty = True

    def _route_failed(self, item: object, err: Exception) -> None:
        if self.state_failed(err):
            if isinstance(item, Path):  # the file is routed again once the state disk works
                self._deferred.append((self._monotonic() + STATE_RETRY_S, item))
            return
        log.exception("route_failed", frame=str(item))
        self.problems.error(str(item), f"internal error: {err}")
        if isinstance(item, Path):  # a final record, so that it is not routed (and failing) at every start
            try:
                self.journal.set_file(item, status="rejected", reason=f"{item}: internal error while routing: {err}")
            except Exception as again:
                self.state_failed(again)

    def state_failed(self, err: BaseException) -> bool:
        """Whether ``err`` is the state (journal) failing; if so it is reported, and a damaged journal makes
        the daemon start again (the start rebuilds it). Other errors (a frame's own disk, a bug) are not."""
        if not isinstance(err, sqlite3.Error | StateCorrupt):
            return False
        if is_corrupt(err):
            log.error("journal_damaged_while_running", reason=str(err))
            self.problems.set("state", f"{self.paths.journal} is damaged ({err}): starting again to rebuild it")
            self._restart_reason = str(err)
            return True
        if is_disk_problem(err):
            log.error("state_write_failed", reason=str(err))
            self.problems.set("state", f"state folder {self.paths.state}: {err}; retrying")
            return True
        return False

    def _route(self, path: Path) -> None:
        try:
            st = path.stat()
        except OSError as err:
            try:
                lst = path.lstat()
            except OSError:
                return  # gone before we looked
            if self.journal.record_seen(path, size=lst.st_size, mtime=lst.st_mtime, hash=None).queued:
                self._reject(path, f"{path}: cannot stat: {err.strerror or err}")
            return
        try:
            digest = quick_hash(path, size=st.st_size) if path.is_file() else None
        except OSError:
            digest = None
        sighting = self.journal.record_seen(path, size=st.st_size, mtime=st.st_mtime, hash=digest)
        self.problems.set("state", None)
        if sighting.seen is Seen.DUPLICATE:
            log.info("frame_duplicate", frame=str(path), original=sighting.original)
            return
        if sighting.seen is Seen.KNOWN:
            record = sighting.previous
            if record is None or record.status != "queued" or self._routed_to_open_session(record):
                return
            # queued but never routed (astrod stopped in between), or left behind by a session that closed
        if sighting.seen is Seen.CHANGED and sighting.previous is not None:
            self._forget_old_version(path, sighting.previous)
        ingested = ingest(path, mtime=st.st_mtime, now=self._clock(), options=self._read_options())
        if isinstance(ingested, Rejected):
            self._reject(path, ingested.reason, kind=ingested.kind)
        elif isinstance(ingested, Ignored):
            self.journal.set_file(path, status="ignored", kind=ingested.kind, reason=ingested.reason)
        elif isinstance(ingested, Calibration):
            self.journal.set_file(path, status="calibration", kind=ingested.meta.kind.value)
            self._pending_calibration.append(path)
            self._last_calibration = time.monotonic()
            log.info("calibration_frame_seen", frame=str(path), kind=ingested.meta.kind.value)
        else:
            self._route_light(path, ingested, sighting.arrival)

    def _routed_to_open_session(self, record: FileRecord) -> bool:
        with self._lock:
            return record.session is not None and record.session in self.workers

    def _forget_old_version(self, path: Path, old: FileRecord) -> None:
        """A file was overwritten with other content: the old version's contribution goes (its session is
        stacked again from its files; a closed one is reopened), and the new version is routed as a new frame."""
        if old.session is None:
            return
        with self._lock:
            worker = self.workers.get(old.session)
        in_stack = old.status == "stacked" or (worker is not None and str(path) in worker.uncheckpointed())
        if not in_stack:
            return
        why = f"{path} was overwritten with other content after it was stacked"
        log.warning("stacked_frame_overwritten", frame=str(path), session=old.session)
        self.problems.error(str(path), f"{why}: session {old.session} is stacked again from its files")
        if worker is not None:
            worker.restack(why)
            return
        record = self.journal.session(old.session)
        if record is None:
            return
        self.journal.reopen_session(old.session)  # its products are written again when it closes
        with self._lock:
            self._restore_session(record.id, record.key, record.info)

    def _reject(self, path: Path, reason: str, *, kind: str | None = None) -> None:
        self.journal.set_file(path, status="rejected", reason=reason, kind=kind)
        log.warning("frame_rejected", frame=str(path), reason=reason)

    def _route_light(self, path: Path, light: Light, arrival: int) -> None:
        if self._pending_calibration:
            self._flush_calibration()  # masters from the calibration frames that came first serve this light
        if light.date_note is not None:
            log.warning("frame_date_implausible", frame=str(path), date_obs=str(light.meta.date_obs))
            self.problems.error(str(path), light.date_note)
        with self._lock:
            pointings = [w.pointing for w in self.workers.values() if w.pointing is not None and not w.closing]
        decision = route(path, light.meta, pointings=pointings,
                         radius_arcmin=self.config.session.pointing_radius_arcmin, longitude=self.config.site.longitude)
        if isinstance(decision, Rejected):
            self._reject(path, decision.reason, kind=decision.kind)
            return
        worker = self._session_for(decision.key, light.meta)
        self.journal.set_file(path, status="queued", kind="light", session=worker.id)
        worker.enqueue(path, arrival)
        self._closes.mark_active(worker.id)

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
            pointing = Pointing.of(key, meta)
            self.journal.open_session(sid, key.record(pointing), info)
            worker = self._make_worker(sid, key, pointing, label, out)
            self._keys[key] = sid
            log.info("session_opened", session=sid, target=key.target, filter=key.filter, output=str(out))
            return worker

    def _make_worker(self, sid: str, key: SessionKey, pointing: Pointing | None, label: str,
                     output: Path) -> SessionWorker:
        worker = SessionWorker(
            session_id=sid, label=label, key=key, pointing=pointing,
            paths=SessionPaths(output=output, state=self.paths.session_state(sid)), journal=self.journal,
            settings=self._pipeline_settings(), calibrator=self._calibrator(),
            checkpoint_every=self.config.session.checkpoint_every, photometry=photometry_for(self.config),
            checkpoint_seconds=self.config.session.checkpoint_seconds, output_formats=self.config.output.formats,
            preview_every_frames=self.config.stack.preview_every_frames,
            preview_every_seconds=self.config.stack.preview_every_seconds,
            read_options=self._read_options(), on_closed=self._on_session_closed, on_progress=self._set_progress,
            on_problem=self.problems.set, on_state_error=self.state_failed, clock=self._clock, solver=self._solver)
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
            progress = StatusProgress(lambda: self.progress, self._set_progress)
            report = build_library(self.paths.library, sources, options=options, progress=progress)
        except AstrodError as err:
            self.problems.set("library", str(err))
            log.error("library_update_failed", reason=str(err))
            return
        self.problems.set("library", None)
        for skipped in report.skipped:
            self.journal.set_file(skipped.path, status="rejected", reason=skipped.reason)
        if self._library is not None:
            self._library.invalidate()
        log.info("library_updated", masters=len(report.masters), skipped=len(report.skipped))

    # ----------------------------------------------------------------------------------- closing
    def close_sessions_of(self, targets: set[str], why: str) -> None:
        """Close the open sessions of these targets (a capture plan's, at its end)."""
        with self._lock:
            ids = [sid for sid, w in self.workers.items() if w.key.target in targets and not w.closing]
        for sid in ids:
            self.close_session(sid, why)

    def close_session(self, sid: str, why: str) -> bool:
        with self._lock:
            worker = self.workers.get(sid)
        if worker is None or worker.closing:
            return False
        log.info("session_close_requested", session=sid, reason=why)
        try:  # remembered, so that a restart in the middle of the close closes the session again
            self.journal.request_close(sid, why)
        except Exception as err:
            if not self.state_failed(err):
                raise
        worker.request_close(why)
        return True

    def close_all(self, why: str) -> int:
        with self._lock:
            ids = list(self.workers)
        return sum(self.close_session(sid, why) for sid in ids)

    def _set_progress(self, progress: dict[str, Any] | None) -> None:
        self.progress = dict(progress) if progress else {}
        self._status_dirty = True

    def _on_session_closed(self, sid: str, leftovers: list[QueuedFrame]) -> None:
        with self._lock:
            self.workers.pop(sid, None)
            self._keys = {k: v for k, v in self._keys.items() if v != sid}
        self._closes.forget(sid)
        for item in leftovers:  # routed to the session as it closed: they go to the next one
            self._router.put(item.path)
        self._status_dirty = True

    def _handle_control(self) -> None:
        for request in self._inbox.poll():
            data = request.data
            if data is None:
                log.warning("control_request_unreadable", path=str(self.paths.control / request.name),
                            reason=request.error)
            elif data.get("action") == "close":
                sid = data.get("session")
                n = self.close_all("closed by request") if sid is None else int(
                    self.close_session(str(sid), "closed by request"))
                log.info("control_close_handled", session=sid, closed=n)
            problem = self._inbox.done(request)
            if problem is not None:
                log.warning("control_request_not_removed", reason=problem)
                self.problems.set("control", problem)
            self._status_dirty = True

    # ----------------------------------------------------------------------------------- status
    def busy(self) -> bool:
        """Whether any frame is still waiting somewhere (router queue, calibration batch, session queues)."""
        if self._router.unfinished or self._pending_calibration or self._deferred:
            return True
        # (journal rows stay "queued" until their frames' checkpoint: stacked frames waiting for one are done)
        with self._lock:
            return any(w.in_flight for w in self.workers.values())

    def status_line(self) -> str:
        with self._lock:
            parts = [f"{w.label}: {w.stats.stacked} stacked, {w.stats.rejected} rejected"
                     for w in self.workers.values()]
        problems = self.problems.current()
        line = "; ".join(parts) if parts else "idle, watching"
        return line + (f"; PROBLEM: {problems[0].text}" if problems else "")

    def _uncheckpointed(self, session_id: str) -> dict[str, tuple[str, str | None, dict[str, Any]]]:
        with self._lock:
            worker = self.workers.get(session_id)
        return {} if worker is None else worker.uncheckpointed()

    def status(self, *, running: bool = True) -> dict[str, Any]:
        with self._lock:
            workers = list(self.workers.values())
            files = file_counts(self.journal.counts(), workers)
            sessions = [session_entry(w) for w in workers]
        return {"running": running, "pid": os.getpid(), "version": __version__,
                "progress": dict(self.progress) if self.progress else None,
                "started_at": self.started_at.isoformat(), "updated_at": self._clock().isoformat(),
                "queue": self._router.backlog, "files": files, "sessions": sessions,
                "closed_sessions": closed_sessions(self.journal),
                "library": library_summary(self.paths.library, self._open_library()),
                "errors": self.problems.history(), "problems": problem_entries(self.problems),
                "recent_rejections": recent_rejections(self.journal), "control_handled": self._inbox.handled,
                "status_line": self.status_line(),
                "capture": self.capture.status() if self.capture is not None else None}

    def write_status(self, *, running: bool = True) -> None:
        self._status_dirty = False
        try:
            status = self.status(running=running)
        except Exception as err:  # the journal itself failing: say so in a short status
            if not self.state_failed(err):
                raise
            self._write_status_quietly(running=running)
            return
        self._write_status_file(status)

    def _write_status_quietly(self, *, running: bool = True, starting: bool = False) -> None:
        """A short status that needs nothing but the problems (the journal may be what fails)."""
        line = "; ".join(p.text for p in self.problems.current()) if starting else self.status_line()
        self._write_status_file(short_status(self.problems, running=running, starting=starting, line=line,
                                             started_at=self.started_at, now=self._clock()))

    def _write_status_file(self, status: dict[str, Any]) -> None:
        write_status_quietly(self.paths.status, status)
        self.notifier.status(str(status.get("status_line", "")))
