"""The built-in demo: a synthetic observatory night written to a folder, then processed.

The synthetic generator (``astrod.demo.synth``) is the same one the tests use (``tests/synth.py``), so the demo
shows what the tests check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from astrod.config import Config, PathsConfig, SessionConfig, SolveConfig, StackConfig, WatchConfig
from astrod.io.atomic import atomic_write_bytes
from astrod.io.files import ensure_folder, files_matching, new_folder, read_bytes, remove_folder
from astrod.model import Transform
from astrod.service.feeder import FeedStep

if TYPE_CHECKING:  # imported where used: `astrod demo --help` need not load the daemon
    from astrod.service.daemon import Daemon


@dataclass(frozen=True, slots=True)
class DemoNight:
    """What was written: the folder and the files by kind, plus one deliberately broken frame."""

    root: Path
    calibration: tuple[Path, ...]
    lights: tuple[Path, ...]
    bad: Path


def write_demo_night(root: Path, *, seed: int = 2026, size: tuple[int, int] = (384, 256),
                     lights_per_target: int = 4) -> DemoNight:
    """A small night: biases, darks and flats, lights of two targets in two filters, one truncated frame."""
    from astrod.demo import synth

    width, height = size
    sensor = synth.Sensor(width=width, height=height, seed=seed, hot_pixels=30, dust=2)
    start = datetime(2026, 11, 21, 19, 0, tzinfo=UTC)
    calibration: list[Path] = []
    common: dict[str, Any] = {"gain": 100, "offset": 50, "temperature": -10.0, "set_temperature": -10.0,
              "camera": "ZWO ASI2600MM Pro"}
    for i in range(5):
        calibration.append(synth.write_fits(root / "capture" / "Bias" / f"bias_{i:03d}.fits",
                                            sensor.bias(seed=100 + i), kind="bias", exposure=0.0001,
                                            filter=None, object=None, date_obs=start + timedelta(seconds=i),
                                            **common))
        calibration.append(synth.write_fits(root / "capture" / "Darks" / f"dark_60s_{i:03d}.fits",
                                            sensor.dark(exposure=60.0, temperature=-10.0, seed=200 + i),
                                            kind="dark", exposure=60.0, filter=None, object=None,
                                            date_obs=start + timedelta(minutes=1, seconds=i), **common))
    for band in ("L", "Ha"):
        for i in range(5):
            calibration.append(synth.write_fits(root / "capture" / "Flats" / band / f"flat_{band}_{i:03d}.fits",
                                                sensor.flat(level=20000.0, seed=300 + i), kind="flat",
                                                exposure=2.0, filter=band, object=None,
                                                date_obs=start + timedelta(minutes=5, seconds=i), **common))
    lights: list[Path] = []
    rng = np.random.default_rng(seed)
    for t_index, (target, ra, dec) in enumerate((("M 31", 10.68, 41.27), ("NGC 7000", 314.7, 44.3))):
        catalogue = synth.make_catalogue(width=width, height=height, n_stars=120, seed=seed + t_index,
                                         margin=40)
        for band in ("L", "Ha"):
            for i in range(lights_per_target):
                shift = rng.uniform(-8, 8, size=2)
                transform = Transform.similarity(dx=float(shift[0]), dy=float(shift[1]),
                                                 rotation_deg=float(rng.uniform(-0.5, 0.5)))
                scene, _ = synth.render_stars(width=width, height=height, catalogue=catalogue,
                                              transform=transform, fwhm=2.8, sky=150.0 if band == "L" else 40.0)
                data = sensor.light(scene, exposure=60.0, temperature=-10.0, seed=1000 + len(lights))
                dialect = "indi" if target == "NGC 7000" else "nina"
                name = f"{target.replace(' ', '')}_{band}_{i:03d}.fits"
                lights.append(synth.write_fits(root / "capture" / "Lights" / target / band / name, data,
                                               dialect=dialect, kind="light", exposure=60.0, filter=band,
                                               object=target, ra=ra, dec=dec,
                                               date_obs=start + timedelta(hours=1, minutes=len(lights)),
                                               **common))
    bad = root / "capture" / "Lights" / "M 31" / "L" / "M31_L_truncated.fits"
    blob = read_bytes(lights[0])
    atomic_write_bytes(bad, blob[: len(blob) // 3])
    return DemoNight(root=root, calibration=tuple(calibration), lights=tuple(lights), bad=bad)


def _feed_plan(night: DemoNight, root: Path, *, interval: float) -> list[FeedStep]:
    """Calibration frames first (quickly), then lights of both targets and filters in turn, the broken one
    in the middle."""
    def step(delay: float, path: Path) -> FeedStep:
        return FeedStep(delay=delay, source=path, target=root / path.relative_to(night.root))

    steps = [step(0.05, p) for p in night.calibration]
    lights = sorted(night.lights, key=lambda p: (p.name[-8:], p.as_posix()))  # interleave targets and filters
    for i, path in enumerate(lights):
        steps.append(step(interval, path))
        if i == len(lights) // 2:
            steps.append(step(interval, night.bad))
    return steps


def demo_config(root: Path) -> Config:
    return Config(paths=PathsConfig(watch=(root / "capture",), output=root / "stacks", state=root / "state",
                                    library=root / "library"),
                  watch=WatchConfig(stable_seconds=2.0), session=SessionConfig(idle_minutes=60.0),
                  stack=StackConfig(preview_every_frames=2, preview_every_seconds=5.0),
                  solve=SolveConfig(enabled=False))  # its star fields are random: no sky to solve


def run_demo(*, workdir: Path | None = None, clean: bool = False, interval: float = 1.0) -> int:
    """Start the daemon on a temporary observatory folder and feed it a synthetic night in real time."""
    from astrod.service.daemon import Daemon
    from astrod.service.feeder import Feeder
    from astrod.service.logging import configure_logging
    from astrod.service.preload import start_kernel_preload

    root = ensure_folder(workdir) if workdir is not None else new_folder("astrod-demo-")
    configure_logging(level="warning")
    print(f"astrod demo: a synthetic night in {root}")
    night = write_demo_night(root / ".night")
    steps = _feed_plan(night, root, interval=interval)
    print(f"  feeding {len(night.calibration)} calibration frames, then {len(night.lights)} lights of 2 targets in "
          f"2 filters (and 1 broken frame), one every {interval:g} s")
    start_kernel_preload()
    daemon = Daemon(demo_config(root), env={})
    feeder = Feeder(steps, on_fed=lambda s: print(f"  + {s.target.relative_to(root)}", flush=True))
    phase = {"closing": False, "last": 0.0}

    def finished() -> bool:
        now = time.monotonic()
        if now - phase["last"] >= 3.0:
            phase["last"] = now
            print(f"  [{daemon.status_line()}]", flush=True)
        if not feeder.done.is_set() or daemon.busy():
            return False
        if any(daemon.journal.file(step.target) is None for step in steps):
            return False  # the watcher has not reported the last files yet
        if not phase["closing"]:
            print("  all frames in: closing the sessions (final stacks)", flush=True)
            daemon.close_all("end of the demo night")
            phase["closing"] = True
            return False
        return not daemon.workers

    feeder.start()
    return _run_to_the_end(daemon, root, finished, stop=feeder.stop, clean=clean, sessions=4, broken_frame=True)


def _run_to_the_end(daemon: Daemon, root: Path, finished: Callable[[], bool], *, stop: Callable[[], None],
                    clean: bool, sessions: int, broken_frame: bool) -> int:
    """Run the daemon until ``finished``, then stop the frame source, print the summary, and exit 0 when the
    night gave ``sessions`` sessions (and the broken frame was rejected, when there was one)."""
    try:
        status = daemon.run(install_signals=False, until=finished)
    finally:
        stop()
    summary = daemon_summary(root)
    print(summary["text"])
    ok = status == 0 and summary["sessions"] == sessions and (summary["rejected_bad"] or not broken_frame)
    _finish(root, clean=clean)
    return 0 if ok else 1


def _finish(root: Path, *, clean: bool) -> None:
    if clean:
        remove_folder(root)
        print(f"(demo folder {root} removed)")
    else:
        print(f"the demo's files stay in {root} (remove them with: rm -rf '{root}')")


INDI_PLAN = """
[[capture.steps]]
frame = "bias"
exposure = 0.01
count = 3

[[capture.steps]]
frame = "dark"
exposure = 1.0
count = 3

[[capture.steps]]
target = "M 31"
exposure = 1.0
count = 6
"""


def run_indi_demo(*, workdir: Path | None = None, clean: bool = False) -> int:
    """The demo with a real camera protocol: indiserver with the INDI CCD and telescope simulators, a capture
    plan (biases, darks, then lights of M 31) run by the daemon, stacked live, closed at the plan's end."""
    from astrod.config import parse_config
    from astrod.service.daemon import Daemon
    from astrod.service.indiserver import CAMERA, MOUNT, IndiServer, missing_indi
    from astrod.service.logging import configure_logging

    reason = missing_indi()
    if reason is not None:
        print(f"astrod demo --indi: {reason} (install indi-bin, and pyindi-client with --no-deps)")
        return 1
    root = ensure_folder(workdir) if workdir is not None else new_folder("astrod-indi-demo-")
    configure_logging(level="warning")
    server = IndiServer(root / "indi").start()
    print(f"astrod demo --indi: indiserver with the CCD and telescope simulators on port {server.port}; "
          f"observatory in {root}")
    config = parse_config(f"""
[paths]
watch = ["capture"]
output = "stacks"
state = "state"
library = "library"
[watch]
stable_seconds = 1.0
[stack]
preview_every_frames = 2
[solve]
enabled = false
[indi]
enabled = true
host = "127.0.0.1"
port = {server.port}
camera = "{CAMERA}"
mount = "{MOUNT}"
[capture]
name = "demo"
{INDI_PLAN}
""", base=root)
    daemon = Daemon(config, env={})
    runner = daemon.capture
    assert runner is not None
    last = {"t": 0.0}

    def finished() -> bool:
        now = time.monotonic()
        if now - last["t"] >= 3.0:
            last["t"] = now
            st = runner.status()
            print(f"  [plan step {st.get('step')}: {st.get('frames_done')}/{st.get('frames_total')} frames; "
                  f"{daemon.status_line()}]", flush=True)
        return runner.finished and not daemon.workers and not daemon.busy()

    return _run_to_the_end(daemon, root, finished, stop=server.stop, clean=clean, sessions=1, broken_frame=False)


def daemon_summary(root: Path) -> dict[str, Any]:
    """What the demo night produced: one line per session with its outputs, and the rejected frames."""
    from astrod.io.journal import Journal

    journal = Journal(root / "state" / "journal.sqlite")
    try:
        lines = ["results:"]
        sessions = journal.sessions(status="closed")
        for s in sessions:
            stats = s.info.get("stats", {})
            out = Path(str(s.info.get("output")))
            lines.append(f"  {s.info.get('label')}: {stats.get('stacked', 0)} stacked, {stats.get('rejected', 0)} "
                         f"rejected -> {out}")
            lines.extend(f"      {path}" for path in files_matching(out, "*"))  # every product the session wrote
        rejected = journal.files(status=["rejected"])
        for r in rejected:
            lines.append(f"  rejected: {r.reason}")
        bad = any("truncated" in (r.reason or "") for r in rejected)
        masters = files_matching(root / "library", "*.fits", recursive=True)
        lines.append(f"  library: {len(masters)} masters in {root / 'library'}")
        return {"text": "\n".join(lines), "sessions": len(sessions), "rejected_bad": bad}
    finally:
        journal.close()
