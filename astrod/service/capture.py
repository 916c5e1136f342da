"""Capture plans: a thread owned by the service layer takes each step's frames through a :class:`Camera`.

Each frame lands in the capture folder (atomically with client upload, or written by the driver with local
upload), so the daemon's watcher ingests it like any drop-folder frame: one ingest path. Progress is journaled
per frame (``<state>/capture.sqlite``): a restarted plan resumes at its first missing frame. A lost indiserver is
reconnected with back-off, settings are re-applied and the plan goes on (a runner given ``connect_attempts``, the
one-shot command's, fails after that many failed connections in a row instead); a failed exposure is retried
``indi.exposure_retries`` times. When the plan ends, ``on_plan_end(targets)`` lets the daemon close the sessions
of the plan's targets, once the daemon has taken in every frame the plan wrote.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import structlog

from astrod.config import CaptureConfig, CaptureStepConfig, Config
from astrod.errors import ConfigError
from astrod.io.atomic import atomic_write_bytes
from astrod.io.files import read_text
from astrod.io.fits import set_header_cards
from astrod.io.journal import TERMINAL, Journal
from astrod.io.plan_journal import PlanJournal, PlanRun
from astrod.pipeline.sessions import slug
from astrod.service.indi import (
    Camera,
    CameraSettings,
    ExposureError,
    IndiCamera,
    IndiConnectionError,
    IndiDeviceError,
)
from astrod.service.plan_times import step_start

log = structlog.get_logger()

CALIBRATION_FOLDERS = {"dark": "Dark", "flat": "Flat", "bias": "Bias", "darkflat": "DarkFlat"}
EventSink = Callable[[str, Mapping[str, Any]], None]


@dataclass(frozen=True, slots=True)
class PlannedFrame:
    step: int  # index into the plan's steps
    seq: int  # 1-based number of the frame within the whole plan
    path: Path


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: first, doubled each failure, capped."""

    first: float = 1.0
    factor: float = 2.0
    cap: float = 30.0

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.first * self.factor ** max(0, failures - 1)))


def plan_digest(plan: CaptureConfig) -> str:
    """Identifies a plan's steps: a changed plan starts a new run, the same plan resumes."""
    text = repr([asdict(s) for s in plan.steps])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def frame_path(capture: Path, step: CaptureStepConfig, *, seq: int, stamp: str) -> Path:
    """Where a frame goes: ``<target>/<filter>/<target>_<filter>_<exposure>s_<stamp>_<seq>.fits`` for lights,
    ``Calibration/<Kind>[/<filter>]/<kind>[_<filter>]_<exposure>s_bin<b>_<stamp>_<seq>.fits`` otherwise."""
    exposure = f"{step.exposure:g}s"
    band = slug(step.filter) if step.filter else ""
    if step.frame == "light":
        target = slug(step.target) if step.target else "target"
        band = band or "nofilter"
        return capture / target / band / f"{target}_{band}_{exposure}_{stamp}_{seq:04d}.fits"
    folder = capture / "Calibration" / CALIBRATION_FOLDERS[step.frame]
    if band and step.frame in ("flat", "darkflat"):
        folder = folder / band
    parts = [step.frame, *([band] if band else []), exposure, f"bin{step.binning}", stamp, f"{seq:04d}"]
    return folder / ("_".join(parts) + ".fits")


def plan_frames(plan: CaptureConfig, *, capture: Path, stamp: str) -> list[PlannedFrame]:
    frames: list[PlannedFrame] = []
    for i, step in enumerate(plan.steps):
        for _ in range(step.count):
            seq = len(frames) + 1
            frames.append(PlannedFrame(i, seq, frame_path(capture, step, seq=seq, stamp=stamp)))
    return frames


def load_plan(path: Path) -> CaptureConfig:
    """A capture plan from a TOML file written like the config's ``[capture]`` section (``name`` and
    ``[[capture.steps]]``); the same validation, every problem at once."""
    from astrod.config import parse_config

    try:
        text = read_text(path)
    except OSError as err:
        raise ConfigError([f"{path}: cannot read: {err.strerror or err}"]) from err
    config = parse_config(text, base=path.resolve().parent, source=str(path))
    if not config.capture.steps:
        raise ConfigError([f"{path}: no [[capture.steps]] in the plan"])
    return config.capture


def journal_settled(journal: Journal, busy: Callable[[], bool] = lambda: False,
                    ) -> Callable[[Sequence[Path]], bool]:
    """True once the daemon's journal holds every path with a final status (stacked, rejected, calibration...),
    or holds it ``queued`` in a session while the daemon is not ``busy``: such a frame has been through its
    session's pipeline and waits only for the session's next checkpoint to record it."""
    def settled(paths: Sequence[Path]) -> bool:
        idle: bool | None = None
        for path in paths:
            record = journal.file(path)
            if record is None:
                return False
            if record.status in TERMINAL:
                continue
            if record.status != "queued" or record.session is None:
                return False
            if idle is None:
                idle = not busy()
            if not idle:
                return False
        return True

    return settled


class DaemonLike(Protocol):
    config: Config
    journal: Journal

    def busy(self) -> bool: ...

    def close_sessions_of(self, targets: set[str], why: str) -> None: ...


class CaptureRunner:
    """Runs one capture plan in its own thread; ``status()`` may be called from any thread."""

    def __init__(self, config: Config, *, plan: CaptureConfig | None = None,
                 on_plan_end: Callable[[set[str]], None] | None = None, on_event: EventSink | None = None,
                 settled: Callable[[Sequence[Path]], bool] | None = None, camera: Camera | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), backoff: Backoff = Backoff(),
                 settle_timeout: float = 600.0, cooler_poll: float = 1.0,
                 connect_attempts: int | None = None) -> None:
        self.config = config
        self.plan = plan if plan is not None else config.capture
        self.capture_dir = config.paths.watch[0]
        self.journal_path = config.state_dir() / "capture.sqlite"
        self._on_plan_end = on_plan_end
        self._on_event = on_event
        self._settled = settled
        ic = config.indi
        self.camera: Camera = camera if camera is not None else IndiCamera(
            host=ic.host, port=ic.port, camera=ic.camera, filter_wheel=ic.filter_wheel, mount=ic.mount,
            upload=ic.upload, timeout=ic.connect_timeout)
        self._clock = clock
        self._backoff = backoff
        self._settle_timeout = settle_timeout
        self._cooler_poll = cooler_poll
        self._connect_attempts = connect_attempts  # None: reconnect forever (the daemon's long-running runner)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._state: dict[str, Any] = {
            "plan": self.plan.name, "state": "idle", "run": None, "connected": False, "step": None,
            "steps": [{"target": s.target, "frame": s.frame, "filter": s.filter, "exposure": s.exposure,
                       "done": 0, "failed": 0, "total": s.count} for s in self.plan.steps],
            "frames_done": 0, "frames_total": sum(s.count for s in self.plan.steps), "next_exposure_eta": None,
            "waiting_until": None, "camera_temperature": None, "last_error": None, "reconnects": 0,
            "camera": self.camera.describe}

    @classmethod
    def for_daemon(cls, daemon: DaemonLike, **kwargs: Any) -> CaptureRunner:
        """A runner wired to a daemon: at the plan's end, once the daemon has taken in every frame the plan wrote,
        the sessions of the plan's targets are closed (final stacks)."""
        def close_targets(targets: set[str]) -> None:
            daemon.close_sessions_of(targets, "capture plan finished")

        return cls(daemon.config, on_plan_end=close_targets, settled=journal_settled(daemon.journal, daemon.busy),
                   **kwargs)

    # ------------------------------------------------------------------------------------------ control
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("capture runner already started")
        self._thread = threading.Thread(target=self._main, name="astrod-capture", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop after the current exposure (or wait) and join the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            if self._thread.is_alive():
                log.warning("capture_stop_timed_out", plan=self.plan.name, seconds=timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the plan to end; True when the thread is done."""
        if self._thread is None:
            return True
        self._thread.join(timeout=timeout)
        return not self._thread.is_alive()

    @property
    def finished(self) -> bool:
        with self._lock:
            return bool(self._state["state"] == "finished")

    def status(self) -> dict[str, Any]:
        """Plan, step, frames done/total per step, next exposure ETA, camera temperature, connection, last error."""
        with self._lock:
            state = dict(self._state)
            state["steps"] = [dict(s) for s in self._state["steps"]]
        state["connected"] = self.camera.connected
        if state["connected"]:
            state["camera_temperature"] = self.camera.temperature()
        return state

    # ------------------------------------------------------------------------------------------ internals
    def _set(self, **values: Any) -> None:
        with self._lock:
            self._state.update(values)

    def _event(self, name: str, *, level: str = "info", **keys: Any) -> None:
        keys = {"plan": self.plan.name, **keys}
        getattr(log, level)(name, **keys)
        if self._on_event is not None:
            try:
                self._on_event(name, keys)
            except Exception:  # a listener's bug must not stop the plan
                log.exception("capture_event_listener_failed", event_name=name)

    def _error(self, text: str) -> None:
        self._set(last_error=text, last_error_at=self._clock().isoformat())

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stopped."""
        return self._stop.wait(max(0.0, seconds))

    def _main(self) -> None:
        journal = PlanJournal(self.journal_path)
        try:
            self._run_plan(journal)
        except Exception as err:  # the thread must report, not vanish
            log.exception("capture_plan_crashed", plan=self.plan.name)
            self._error(f"internal error: {err!r}")
            self._set(state="failed")
        finally:
            self.camera.disconnect()
            self._set(connected=False)
            journal.close()

    def _run_plan(self, journal: PlanJournal) -> None:
        if not self.plan.steps:
            self._set(state="finished")
            return
        digest = plan_digest(self.plan)
        run = journal.latest_run(self.plan.name, digest)
        if run is not None and run.finished_at is not None:
            self._event("capture_plan_already_finished", run=run.stamp, finished_at=run.finished_at)
            self._mark_done(journal, run)
            self._set(state="finished", run=run.stamp)
            return
        resumed = run is not None
        if run is None:
            run = journal.new_run(self.plan.name, digest, now=self._clock())
        frames = plan_frames(self.plan, capture=self.capture_dir, stamp=run.stamp)
        done = self._reconcile(journal, run, frames)
        self._set(run=run.stamp)
        self._event("capture_plan_started" if not resumed else "capture_plan_resumed", run=run.stamp,
                    frames=len(frames), done=len(done))
        written: list[Path] = [Path(p) for p in journal.frames(run.id).values()]
        for index, step in enumerate(self.plan.steps):
            pending = [f for f in frames if f.step == index and (f.step, f.seq) not in done]
            if not pending:
                continue
            self._set(step=index)
            if not self._wait_start(index, step):
                break
            written.extend(self._run_step(journal, run, index, step, pending))
            if self._stop.is_set():
                break
        if self._stop.is_set():
            with self._lock:  # a failure stops the plan too: keep saying it failed
                if self._state["state"] != "failed":
                    self._state["state"] = "stopped"
                self._state["next_exposure_eta"] = None
            self._event("capture_plan_stopped", run=run.stamp)
            return
        journal.finish_run(run.id, now=self._clock())
        self._set(state="finished", next_exposure_eta=None, step=None)
        self._event("capture_plan_finished", run=run.stamp, frames=len(written))
        self._end_plan(written)

    def _mark_done(self, journal: PlanJournal, run: PlanRun) -> None:
        counts = journal.frames(run.id)
        with self._lock:
            for step, _ in counts:
                self._state["steps"][step]["done"] += 1
            self._state["frames_done"] = len(counts)

    def _reconcile(self, journal: PlanJournal, run: PlanRun, frames: list[PlannedFrame]) -> set[tuple[int, int]]:
        """Frames journaled as done, plus those whose file is complete though the journal missed it (a crash
        between writing and recording): never take a finished exposure again."""
        done = set(journal.frames(run.id))
        for f in frames:
            if (f.step, f.seq) not in done and f.path.is_file() and f.path.stat().st_size > 0:
                journal.record_frame(run.id, step=f.step, seq=f.seq, path=f.path, status="done", now=self._clock())
                done.add((f.step, f.seq))
                self._event("capture_frame_recovered", frame=str(f.path))
        with self._lock:
            for step, _ in done:
                self._state["steps"][step]["done"] += 1
            self._state["frames_done"] = len(done)
        return done

    def _wait_start(self, index: int, step: CaptureStepConfig) -> bool:
        site = self.config.site
        try:
            when = step_start(step.start, now=self._clock(), latitude=site.latitude, longitude=site.longitude,
                              elevation=site.elevation)
        except ConfigError as err:
            text = "; ".join(err.problems)
            self._error(text)
            self._set(state="failed")
            self._event("capture_step_start_invalid", level="error", step=index, reason=text)
            self._stop.set()
            return False
        now = self._clock()
        if when > now:
            self._set(state="waiting", waiting_until=when.isoformat(), next_exposure_eta=when.isoformat())
            self._event("capture_step_waiting", step=index, until=when.isoformat())
            while not self._stop.is_set() and self._clock() < when:
                self._sleep(min(5.0, (when - self._clock()).total_seconds()))
            self._set(waiting_until=None)
        return not self._stop.is_set()

    def _settings(self, step: CaptureStepConfig) -> CameraSettings:
        return CameraSettings(frame=step.frame, gain=step.gain, offset=step.offset, binning=step.binning,
                              object=step.target if step.frame == "light" else "", filter=step.filter)

    def _run_step(self, journal: PlanJournal, run: PlanRun, index: int, step: CaptureStepConfig,
                  pending: list[PlannedFrame]) -> list[Path]:
        written: list[Path] = []
        applied = False
        failures = 0  # consecutive connection failures, for the back-off
        attempts = 0  # failed attempts of the current frame
        retries = self.config.indi.exposure_retries
        while pending and not self._stop.is_set():
            frame = pending[0]
            try:
                if not self.camera.connected:
                    applied = False
                    self._set(state="connecting")
                    self.camera.connect()
                    self._set(connected=True, last_error=None)
                    self._event("indi_connected", camera=self.camera.describe, reconnect=failures > 0)
                if not applied:
                    self.camera.apply(self._settings(step))
                    if step.temperature is not None:
                        self._cool(index, step.temperature)
                    applied = True
                    self._event("capture_settings_applied", step=index, frame=step.frame, filter=step.filter,
                                gain=step.gain, offset=step.offset, binning=step.binning)
                failures = 0
                path = self._expose(frame, step, index)
            except (IndiConnectionError, IndiDeviceError) as err:
                failures += 1
                if self._connect_attempts is not None and failures >= self._connect_attempts:
                    self._give_up(err, failures)
                    break
                self._connection_failed(err, failures)
                continue
            except ExposureError as err:
                attempts += 1
                self._error(str(err))
                if attempts > retries:
                    journal.record_frame(run.id, step=index, seq=frame.seq, path=frame.path, status="failed",
                                         now=self._clock())
                    self._event("capture_exposure_abandoned", level="error", step=index, seq=frame.seq,
                                attempts=attempts, reason=str(err))
                    with self._lock:
                        self._state["steps"][index]["failed"] += 1
                    pending.pop(0)
                    attempts = 0
                else:
                    self._event("capture_exposure_failed", level="warning", step=index, seq=frame.seq,
                                attempt=attempts, retries=retries, reason=str(err))
                continue
            except OSError as err:  # the capture folder: full disk, permissions
                attempts += 1
                self._error(f"{frame.path}: cannot write: {err.strerror or err}")
                self._event("capture_frame_write_failed", level="error", frame=str(frame.path), reason=str(err))
                if self._sleep(5.0):
                    break
                continue
            journal.record_frame(run.id, step=index, seq=frame.seq, path=path, status="done", now=self._clock())
            written.append(path)
            pending.pop(0)
            attempts = 0
            with self._lock:
                self._state["steps"][index]["done"] += 1
                self._state["frames_done"] += 1
        return written

    def _give_up(self, err: IndiConnectionError | IndiDeviceError, failures: int) -> None:
        self.camera.disconnect()
        self._set(connected=False, state="failed", next_exposure_eta=None)
        self._error(f"{err} (gave up after {failures} attempts)")
        self._event("capture_gave_up", level="error", reason=str(err), attempts=failures)
        self._stop.set()

    def _connection_failed(self, err: IndiConnectionError | IndiDeviceError, failures: int) -> None:
        self.camera.disconnect()
        delay = self._backoff.delay(failures)
        with self._lock:
            was_connected = self._state["connected"]
            self._state.update(connected=False, state="reconnecting", last_error=str(err),
                               last_error_at=self._clock().isoformat(),
                               next_exposure_eta=(self._clock() + timedelta(seconds=delay)).isoformat())
            if was_connected:
                self._state["reconnects"] += 1
        if was_connected:
            self._event("indi_connection_lost", level="warning", reason=str(err), retry_in_s=delay)
        else:
            self._event("indi_connect_failed", level="error", reason=str(err), attempt=failures, retry_in_s=delay)
        self._sleep(delay)

    def _cool(self, index: int, setpoint: float) -> None:
        ic = self.config.indi
        self.camera.set_cooler(setpoint)
        self._set(state="cooling")
        self._event("cooler_set", step=index, setpoint=setpoint)
        deadline = time.monotonic() + ic.cooler_timeout
        while not self._stop.is_set():
            temperature = self.camera.temperature()
            self._set(camera_temperature=temperature)
            if temperature is not None and abs(temperature - setpoint) <= ic.cooler_tolerance:
                self._event("cooler_reached", step=index, setpoint=setpoint, temperature=temperature)
                return
            if time.monotonic() >= deadline:
                self._event("cooler_setpoint_not_reached", level="warning", step=index, setpoint=setpoint,
                            temperature=temperature, waited_s=ic.cooler_timeout)
                return
            if not self.camera.connected:
                raise IndiConnectionError("connection to indiserver lost while cooling")
            self._sleep(self._cooler_poll)

    def _expose(self, frame: PlannedFrame, step: CaptureStepConfig, index: int) -> Path:
        started = self._clock()
        self._set(state="exposing", next_exposure_eta=(started + timedelta(seconds=step.exposure)).isoformat())
        t0 = time.monotonic()
        result = self.camera.expose(step.exposure, local_file=frame.path)
        self._set(camera_temperature=result.temperature)
        if result.data is not None:
            updates: dict[str, str] = {}
            if step.frame == "light" and step.target and not result.object_set:
                updates["OBJECT"] = step.target
            if step.frame == "darkflat":
                updates["IMAGETYP"] = "Dark Flat"  # INDI has no dark-flat frame type: it takes a dark
            data = set_header_cards(result.data, updates) if updates else result.data
            atomic_write_bytes(frame.path, data)
            path = frame.path
        else:
            assert result.path is not None
            path = result.path
        self._event("capture_frame_written", step=index, seq=frame.seq, frame=str(path), exposure=step.exposure,
                    temperature=result.temperature, ms=round((time.monotonic() - t0) * 1000))
        return path

    def _end_plan(self, written: list[Path]) -> None:
        targets = {s.target for s in self.plan.steps if s.frame == "light" and s.target}
        if self._settled is not None and written:
            deadline = time.monotonic() + self._settle_timeout
            while not self._settled(written):
                if time.monotonic() > deadline:
                    self._event("capture_frames_not_settled", level="warning", frames=len(written),
                                waited_s=self._settle_timeout)
                    break
                if self._sleep(0.5):
                    return
        if self._on_plan_end is not None:
            self._event("capture_plan_closing_sessions", targets=sorted(targets))
            self._on_plan_end(targets)
