"""Capture plans: the runner against a scripted camera, and end to end against the real INDI simulators with
the daemon taking in, stacking and closing what the plan captures."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from structlog.testing import capture_logs

from astrod.config import CaptureConfig, CaptureStepConfig, Config
from astrod.io.config_file import load_config
from astrod.io.plan_journal import PlanJournal
from astrod.service.capture import Backoff, CaptureRunner, frame_path, plan_digest, plan_frames
from astrod.service.daemon import Daemon
from astrod.service.indi import CameraSettings, Exposure, ExposureError, IndiConnectionError
from tests import synth
from tests.service.daemon_harness import Observatory
from tests.service.indi_harness import CAMERA, MOUNT, IndiServer, free_port, require_indi

pytestmark = pytest.mark.timeout(300)


# ------------------------------------------------------------------------------------------------ scripted camera
def _fits_bytes(*, object_: str, frame: str, seed: int) -> bytes:
    data = np.random.default_rng(seed).integers(0, 1000, size=(8, 8), dtype=np.uint16)
    hdu = fits.PrimaryHDU(data)
    hdu.header["OBJECT"] = object_
    hdu.header["IMAGETYP"] = f"{frame.capitalize()} Frame"
    import io

    out = io.BytesIO()
    hdu.writeto(out)
    return out.getvalue()


class ScriptedCamera:
    """A Camera whose failures are scripted: ``script`` maps an exposure call number (1-based) to an exception."""

    def __init__(self, script: dict[int, Exception] | None = None, *, refuse_connects: int = 0) -> None:
        self.script = script or {}
        self.refuse_connects = refuse_connects
        self.connects = 0
        self.calls = 0
        self.applied: list[CameraSettings] = []
        self._connected = False
        self.cooler: float | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def describe(self) -> str:
        return "scripted camera"

    def connect(self) -> None:
        self.connects += 1
        if self.connects <= self.refuse_connects:
            raise IndiConnectionError("cannot reach indiserver at nowhere:1")
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False

    def apply(self, settings: CameraSettings) -> None:
        self.applied.append(settings)

    def set_cooler(self, celsius: float) -> None:
        self.cooler = celsius

    def temperature(self) -> float | None:
        return self.cooler

    def expose(self, seconds: float, *, local_file: Path | None = None) -> Exposure:
        self.calls += 1
        err = self.script.get(self.calls)
        if err is not None:
            if isinstance(err, IndiConnectionError):
                self._connected = False
            raise err
        frame = self.applied[-1].frame if self.applied else "light"
        return Exposure(data=_fits_bytes(object_="", frame=frame, seed=self.calls), path=None,
                        temperature=self.cooler, object_set=False)


def _config(tmp_path: Path, steps: tuple[CaptureStepConfig, ...], *, retries: int = 2) -> Config:
    base = load_config(None)
    paths = replace(base.paths, watch=(tmp_path / "capture",), output=tmp_path / "stacks", state=tmp_path / "state",
                    library=tmp_path / "library")
    return replace(base, paths=paths, indi=replace(base.indi, enabled=True, exposure_retries=retries),
                   capture=CaptureConfig(name="test", steps=steps), solve=replace(base.solve, enabled=False))


FAST = Backoff(first=0.01, factor=2.0, cap=0.05)
LIGHTS = (CaptureStepConfig(target="M 31", filter="L", exposure=1.0, count=3),
          CaptureStepConfig(frame="dark", exposure=1.0, count=2, temperature=-10.0))


def _run(config: Config, camera: ScriptedCamera, **kwargs: Any) -> CaptureRunner:
    runner = CaptureRunner(config, camera=camera, backoff=FAST, cooler_poll=0.01, **kwargs)
    runner.start()
    assert runner.join(timeout=30)
    return runner


def test_frame_names_are_unique_and_laid_out_for_the_router(tmp_path: Path) -> None:
    """Lights go to <target>/<filter>/, calibration to Calibration/<Kind>/, every name of a plan is unique and
    carries the run stamp, so two runs of one plan never overwrite each other."""
    plan = CaptureConfig(name="p", steps=(*LIGHTS, CaptureStepConfig(frame="flat", filter="Ha", exposure=0.5,
                                                                     count=2)))
    frames = plan_frames(plan, capture=tmp_path, stamp="20261121T200000")
    assert len({f.path for f in frames}) == len(frames) == 7
    assert frames[0].path == tmp_path / "M_31" / "L" / "M_31_L_1s_20261121T200000_0001.fits"
    assert frames[3].path.parent == tmp_path / "Calibration" / "Dark"
    assert frames[5].path.parent == tmp_path / "Calibration" / "Flat" / "Ha"
    other = frame_path(tmp_path, plan.steps[0], seq=1, stamp="20261122T200000")
    assert other != frames[0].path


def test_plan_writes_every_frame_with_object_and_records_it(tmp_path: Path) -> None:
    """Every frame of the plan lands in the capture folder with OBJECT set for lights, the journal records each
    one, the cooler is set for the step that asks, and status() says finished with all frames done."""
    config = _config(tmp_path, LIGHTS)
    camera = ScriptedCamera()
    ended: list[set[str]] = []
    runner = _run(config, camera, on_plan_end=ended.append)
    status = runner.status()
    assert status["state"] == "finished" and status["frames_done"] == status["frames_total"] == 5
    assert [s["done"] for s in status["steps"]] == [3, 2]
    files = sorted((tmp_path / "capture").rglob("*.fits"))
    assert len(files) == 5
    lights = [f for f in files if "Calibration" not in f.parts]
    assert all(fits.getheader(f)["OBJECT"] == "M 31" for f in lights)
    assert camera.cooler == -10.0
    assert ended == [{"M 31"}]
    journal = PlanJournal(config.state_dir() / "capture.sqlite")
    try:
        run = journal.latest_run("test", plan_digest(config.capture))
        assert run is not None and run.finished_at is not None
        assert sorted(Path(p) for p in journal.frames(run.id).values()) == files
    finally:
        journal.close()


def test_failed_exposures_are_retried_then_abandoned(tmp_path: Path) -> None:
    """An exposure failing once is retried and the frame still taken; one failing more often than the retries
    allow is recorded as failed and the plan goes on, with the error in status and the log."""
    config = _config(tmp_path, (CaptureStepConfig(target="M 31", exposure=1.0, count=3),), retries=1)
    # call 1 fails then 2 succeeds (frame 1); calls 3 and 4 fail (frame 2 abandoned); 5 succeeds (frame 3)
    boom = ExposureError("CCD Simulator: exposure of 1 s failed")
    camera = ScriptedCamera({1: boom, 3: boom, 4: boom})
    with capture_logs() as logs:
        runner = _run(config, camera)
    status = runner.status()
    assert status["steps"][0]["done"] == 2 and status["steps"][0]["failed"] == 1
    assert "exposure of 1 s failed" in status["last_error"]
    events = [e["event"] for e in logs]
    assert events.count("capture_exposure_failed") == 2 and events.count("capture_exposure_abandoned") == 1
    assert len(list((tmp_path / "capture").rglob("*.fits"))) == 2


def test_lost_connection_reconnects_and_reapplies_settings(tmp_path: Path) -> None:
    """A connection lost during an exposure is not a failed exposure: the runner reconnects with back-off,
    applies the step's settings again and takes every frame once."""
    config = _config(tmp_path, (CaptureStepConfig(target="M 31", exposure=1.0, count=3, gain=100),), retries=0)
    camera = ScriptedCamera({2: IndiConnectionError("connection to indiserver lost")}, refuse_connects=0)
    with capture_logs() as logs:
        runner = _run(config, camera)
    assert runner.status()["frames_done"] == 3 and runner.status()["reconnects"] == 1
    assert camera.connects == 2 and len(camera.applied) == 2 and camera.applied[1].gain == 100
    assert len(list((tmp_path / "capture").rglob("*.fits"))) == 3
    assert any(e["event"] == "indi_connection_lost" for e in logs)
    assert any(e["event"] == "indi_connected" and e["reconnect"] for e in logs)


def test_restart_resumes_without_repeating_a_finished_exposure(tmp_path: Path) -> None:
    """A plan stopped part-way resumes in a new runner at the first missing frame; a frame whose file was written
    but not journaled (a crash in between) is recovered, not taken again; a finished plan does nothing."""
    config = _config(tmp_path, (CaptureStepConfig(target="M 31", exposure=1.0, count=4),))
    slow = ScriptedCamera()
    gate = threading.Event()
    original = slow.expose

    def expose(seconds: float, *, local_file: Path | None = None) -> Exposure:
        result = original(seconds, local_file=local_file)
        if slow.calls == 2:
            gate.set()
            time.sleep(0.3)
        return result

    slow.expose = expose  # type: ignore[method-assign]
    first = CaptureRunner(config, camera=slow, backoff=FAST)
    first.start()
    assert gate.wait(10)
    first.stop()
    done_first = first.status()["frames_done"]
    assert done_first == 2
    # a crash after writing frame 3 but before journaling it
    journal = PlanJournal(config.state_dir() / "capture.sqlite")
    run = journal.latest_run("test", plan_digest(config.capture))
    journal.close()
    assert run is not None
    frames = plan_frames(config.capture, capture=tmp_path / "capture", stamp=run.stamp)
    frames[2].path.write_bytes(_fits_bytes(object_="M 31", frame="light", seed=99))
    second_camera = ScriptedCamera()
    with capture_logs() as logs:
        second = _run(config, second_camera)
    assert second.status()["frames_done"] == 4 and second_camera.calls == 1
    assert any(e["event"] == "capture_frame_recovered" for e in logs)
    assert sorted((tmp_path / "capture").rglob("*.fits")) == sorted(f.path for f in frames)
    third_camera = ScriptedCamera()
    third = _run(config, third_camera)
    assert third.status()["state"] == "finished" and third_camera.calls == 0


def test_unreachable_server_is_retried_with_the_error_in_status(tmp_path: Path) -> None:
    """While the camera cannot be reached the runner keeps retrying with back-off and says why in status()."""
    config = _config(tmp_path, (CaptureStepConfig(target="M 31", exposure=1.0, count=1),))
    camera = ScriptedCamera(refuse_connects=3)
    with capture_logs() as logs:
        runner = _run(config, camera)
    assert camera.connects == 4 and runner.status()["frames_done"] == 1
    assert [e["event"] for e in logs].count("indi_connect_failed") == 3
    assert all("nowhere:1" in e["reason"] for e in logs if e["event"] == "indi_connect_failed")


def test_a_bounded_runner_gives_up_on_an_unreachable_server(tmp_path: Path) -> None:
    """With ``connect_attempts`` (the one-shot command's setting) the runner stops after that many failed
    connections in a row: state "failed", the reason and the attempts in last_error, no frame taken."""
    config = _config(tmp_path, (CaptureStepConfig(target="M 31", exposure=1.0, count=2),))
    camera = ScriptedCamera(refuse_connects=100)
    with capture_logs() as logs:
        runner = _run(config, camera, connect_attempts=3)
    status = runner.status()
    assert camera.connects == 3 and camera.calls == 0
    assert status["state"] == "failed" and status["frames_done"] == 0
    assert status["last_error"] == "cannot reach indiserver at nowhere:1 (gave up after 3 attempts)"
    assert [e["event"] for e in logs].count("capture_gave_up") == 1


def test_capture_command_fails_at_once_without_indiserver(tmp_path: Path) -> None:
    """`astrod capture --plan F` with nothing listening on the configured port is a one-shot command: it tries a
    few times, then exits 1 with one line naming host:port and the reason (it used to retry forever; the
    subprocess time-out is the bound)."""
    from astrod.service.indi import pyindi_available

    if not pyindi_available():
        pytest.skip("pyindi-client is not installed")
    port = free_port()
    config = tmp_path / "astrod.toml"
    config.write_text(f'[paths]\nstate = "state"\nlibrary = "library"\n[indi]\nhost = "127.0.0.1"\nport = {port}\n'
                      '[log]\nformat = "json"\n', encoding="utf-8")
    plan = tmp_path / "plan.toml"
    plan.write_text('[capture]\nname = "quick"\n[[capture.steps]]\ntarget = "M 31"\nexposure = 1.0\ncount = 1\n',
                    encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "astrod", "capture", "--plan", str(plan), "--config", str(config)],
                            capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("capture plan quick failed: ")]
    assert lines == [f"capture plan quick failed: cannot reach indiserver at 127.0.0.1:{port}: Connection refused "
                     f"(gave up after 3 attempts)"], result.stderr


# ------------------------------------------------------------------------------------------------ end to end
def _observatory_config(tmp_path: Path, *, port: int, steps: str, name: str = "night") -> Config:
    obs = Observatory(tmp_path / "obs")
    obs.root.mkdir(exist_ok=True)
    return load_config(obs.write_config(extra=f"""
[indi]
enabled = true
host = "127.0.0.1"
port = {port}
camera = "{CAMERA}"
mount = "{MOUNT}"
connect_timeout = 5.0
[capture]
name = "{name}"
{steps}
"""))


Until = Callable[[Daemon, CaptureRunner], bool]
During = Callable[[Daemon, CaptureRunner], None]


def _run_daemon_with_plan(config: Config, until: Until, *, timeout: float,
                          during: During | None = None) -> tuple[Daemon, dict[str, Any]]:
    daemon = Daemon(config, env={})  # [indi] enabled with plan steps: the daemon wires its own runner
    runner = daemon.capture
    assert runner is not None
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}

    def stop() -> bool:
        if during is not None:
            during(daemon, runner)
        if time.monotonic() > deadline:
            state["timed_out"] = True
            return True
        return until(daemon, runner)

    daemon.run(install_signals=False, until=stop)  # starts the runner, and stops it on the way out
    state["capture"] = runner.status()
    return daemon, state


LIGHT_PLAN = """
[[capture.steps]]
target = "M 31"
filter = "Luminance"
exposure = 1.0
count = 5
"""


@pytest.mark.slow
def test_light_plan_is_stacked_live_and_closed_at_its_end(tmp_path: Path, server: IndiServer) -> None:
    """Five 1 s lights from the CCD simulator (stars from the fake catalogue) reach the daemon through the capture
    folder, are stacked live, and the plan's end closes the session: its final stack holds 5 frames."""
    config = _observatory_config(tmp_path, port=server.port, steps=LIGHT_PLAN)
    stacks = config.paths.output

    def closed(daemon: Daemon, runner: CaptureRunner) -> bool:
        return runner.finished and any(stacks.rglob("frames.csv")) and not daemon.workers

    with capture_logs() as logs:
        _, state = _run_daemon_with_plan(config, closed, timeout=180)
    assert "timed_out" not in state, (state, [e for e in logs if e.get("log_level") in ("warning", "error")])
    assert state["capture"]["frames_done"] == 5
    (frames_csv,) = list(stacks.rglob("frames.csv"))
    rows = frames_csv.read_text().splitlines()
    assert len(rows) == 6
    assert fits.getheader(frames_csv.parent / "stack.fits")["NCOMBINE"] == 5
    assert any(e["event"] == "session_close_requested" and e["reason"] == "capture plan finished" for e in logs)


CALIBRATION_PLAN = """
[[capture.steps]]
frame = "dark"
exposure = 1.0
count = 3
[[capture.steps]]
frame = "bias"
exposure = 0.01
count = 3
[[capture.steps]]
frame = "flat"
filter = "Luminance"
exposure = 0.05
count = 3
"""


@pytest.mark.slow
def test_calibration_plan_builds_the_masters(tmp_path: Path, server: IndiServer) -> None:
    """Three darks, three biases and three flats from the simulator become a master dark, bias and flat in
    the library."""
    config = _observatory_config(tmp_path, port=server.port, steps=CALIBRATION_PLAN, name="calibration")
    masters_dir = config.library_dir() / "masters"

    def built(daemon: Daemon, runner: CaptureRunner) -> bool:
        kinds = {p.parent.parent.name for p in masters_dir.rglob("*.fits")} if masters_dir.is_dir() else set()
        return runner.finished and {"bias", "dark", "flat"} <= kinds and not daemon.busy()

    _, state = _run_daemon_with_plan(config, built, timeout=120)
    assert "timed_out" not in state, state
    kinds = sorted(p.parent.parent.name for p in masters_dir.rglob("*.fits"))
    assert {"bias", "dark", "flat"} <= set(kinds)


@pytest.mark.slow
def test_indiserver_killed_mid_plan_the_plan_completes_once(tmp_path: Path, server: IndiServer) -> None:
    """indiserver is killed after the second frame and restarted: the runner reconnects (logged), the plan ends
    with exactly its 5 frames, none taken twice, and the final stack holds 5 frames."""
    config = _observatory_config(tmp_path, port=server.port, steps=LIGHT_PLAN)
    stacks = config.paths.output
    events: dict[str, bool] = {}

    def chaos(daemon: Daemon, runner: CaptureRunner) -> None:
        if not events.get("killed") and runner.status()["frames_done"] >= 2:
            server.kill()
            events["killed"] = True
        elif events.get("killed") and not events.get("restarted") and not runner.status()["connected"]:
            server.start()
            events["restarted"] = True

    def closed(daemon: Daemon, runner: CaptureRunner) -> bool:
        return runner.finished and any(stacks.rglob("frames.csv")) and not daemon.workers

    with capture_logs() as logs:
        _, state = _run_daemon_with_plan(config, closed, timeout=180, during=chaos)
    assert "timed_out" not in state, state
    assert events.get("restarted")
    lights = sorted(p.name for p in config.paths.watch[0].rglob("*.fits"))
    assert len(lights) == len(set(lights)) == 5
    assert any(e["event"] == "indi_connection_lost" for e in logs)
    assert any(e["event"] == "indi_connected" and e["reconnect"] for e in logs)
    assert [e["event"] for e in logs].count("capture_frame_written") == 5
    (frames_csv,) = list(stacks.rglob("frames.csv"))
    assert len(frames_csv.read_text().splitlines()) == 6


@pytest.mark.slow
def test_wrong_port_is_reported_and_drop_folder_frames_still_stack(tmp_path: Path) -> None:
    """With no indiserver at the configured port the capture status and the log say so clearly, and the daemon
    goes on stacking frames dropped into the capture folder by other programs."""
    require_indi()
    port = free_port()
    config = _observatory_config(tmp_path, port=port, steps=LIGHT_PLAN)
    session = synth.make_session(n_frames=3, width=160, height=120, seed=4, n_stars=60, max_shift=5.0)
    written = session.write(tmp_path / "drop", dialect="nina", object="M 42", filter="L")
    drop = config.paths.watch[0] / "Lights"

    def published(daemon: Daemon, runner: CaptureRunner) -> None:
        if not drop.exists() and runner.status()["last_error"]:
            drop.mkdir(parents=True)
            for p in written:
                (drop / p.name).write_bytes(p.read_bytes())

    def stacked(daemon: Daemon, runner: CaptureRunner) -> bool:
        return daemon.journal.counts().get("stacked", 0) == 3

    with capture_logs() as logs:
        _, state = _run_daemon_with_plan(config, stacked, timeout=90, during=published)
    assert "timed_out" not in state, state
    capture = state["capture"]
    assert not capture["connected"] and capture["frames_done"] == 0
    assert f"cannot reach indiserver at 127.0.0.1:{port}" in capture["last_error"]
    assert any(e["event"] == "indi_connect_failed" and str(port) in e["reason"] for e in logs)
