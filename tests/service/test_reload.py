"""SIGHUP: which config changes the running daemon applies and which need a restart — `compare` on its own,
and the real daemon (a subprocess) moved to a new watch folder and a new output folder by a SIGHUP."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from astropy.io import fits

from astrod.config import Config, parse_config
from astrod.service.reload import compare
from tests import synth
from tests.service.daemon_harness import DaemonProcess, Observatory

W, H = 160, 120
START = datetime(2026, 11, 21, 20, 0, tzinfo=UTC)

BASE = """
[paths]
watch = ["capture"]
output = "stacks"
state = "state"
library = "library"
[session]
idle_minutes = 60
"""


def _config(tmp_path: Path, extra: str = "", **paths: str) -> Config:
    text = BASE
    for key, value in paths.items():
        old = next(line for line in BASE.splitlines() if line.startswith(f"{key} = "))
        text = text.replace(old, f"{key} = {value}")
    return parse_config(text + extra, base=tmp_path, check_disk=False)


# ------------------------------------------------------------------------------------------------ compare
def test_an_unchanged_config_changes_nothing(tmp_path: Path) -> None:
    """The same file read twice: nothing applied, nothing needing a restart."""
    change = compare(_config(tmp_path), _config(tmp_path))
    assert change.applied == () and change.needs_restart == ()


def test_watch_and_output_are_applied_state_and_library_need_a_restart(tmp_path: Path) -> None:
    """[paths] is compared option by option: watch and output apply at once; state and library (where the
    daemon's own files are) wait for a restart."""
    old = _config(tmp_path)
    moved = _config(tmp_path, watch='["capture2", "capture3"]', output='"stacks2"')
    assert compare(old, moved).applied == ("paths.watch", "paths.output")
    assert compare(old, moved).needs_restart == ()
    relocated = _config(tmp_path, state='"state2"', library='"library2"')
    assert compare(old, relocated).applied == ()
    assert compare(old, relocated).needs_restart == ("paths.state", "paths.library")


def test_sections_split_into_applied_and_needing_a_restart(tmp_path: Path) -> None:
    """Session, site, web, log, stack, quality, headers, library and watch settings are applied; INDI and the
    capture plan need a restart; several changes at once are all listed, in the config's order."""
    old = _config(tmp_path)
    applied_cases = {
        "session": "[session]\nidle_minutes = 5\n",
        "site": "[site]\nlatitude = 48.0\nlongitude = 11.0\n",
        "web": "[web]\nport = 8181\n",
        "log": "[log]\nlevel = \"debug\"\n",
        "watch": "[watch]\nstable_seconds = 3.0\n",
        "stack": "[stack]\npreview_every_frames = 7\n",
    }
    for section, extra in applied_cases.items():
        text = BASE.replace("[session]\nidle_minutes = 60\n", "") if section == "session" else BASE
        new = parse_config(text + extra, base=tmp_path, check_disk=False)
        assert compare(old, new).applied == (section,), section
        assert compare(old, new).needs_restart == (), section
    indi = _config(tmp_path, "[indi]\nport = 7625\n")
    assert compare(old, indi).applied == () and compare(old, indi).needs_restart == ("indi",)
    everything = _config(tmp_path, "[site]\nlatitude = 48.0\nlongitude = 11.0\n[indi]\nport = 7625\n",
                         output='"elsewhere"', state='"state2"')
    change = compare(old, everything)
    assert change.applied == ("paths.output", "site")
    assert change.needs_restart == ("paths.state", "indi")


def test_a_capture_plan_change_needs_a_restart(tmp_path: Path) -> None:
    """A new capture plan is not started by a SIGHUP."""
    old = _config(tmp_path)
    plan = _config(tmp_path, '[[capture.steps]]\ntarget = "M 31"\nexposure = 10.0\ncount = 3\n')
    assert compare(old, plan).needs_restart == ("capture",) and compare(old, plan).applied == ()


# ------------------------------------------------------------------------------------------------ SIGHUP
def _write_config(obs: Observatory, *, watch: str, output: str, state: str = "state",
                  library: str = "library", path: Path | None = None) -> Path:
    target = path or obs.config
    target.write_text(f"""
[paths]
watch = ["{watch}"]
output = "{output}"
state = "{state}"
library = "{library}"
[watch]
stable_seconds = 1.0
[session]
idle_minutes = 60
checkpoint_every = 1
[stack]
preview_every_frames = 1
preview_every_seconds = 1.0
[solve]
enabled = false
""", encoding="utf-8")
    return target


def _light(tmp_path: Path, *, target: str, seed: int) -> Path:
    session = synth.make_session(n_frames=1, width=W, height=H, seed=seed, n_stars=60, max_shift=0.0,
                                 max_rotation_deg=0.0)
    (path,) = session.write(tmp_path / "src" / target.replace(" ", ""), object=target, filter="L", start=START)
    return path


def _publish_into(folder: Path, source: Path) -> Path:
    target = folder / "Lights" / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    shutil.copyfile(source, tmp)
    tmp.replace(target)
    return target


def _status_json(config: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "astrod", "status", "--json", "--config", str(config)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    data: dict[str, Any] = json.loads(out)
    return data


def _log_count(daemon: DaemonProcess, event: str) -> int:
    return daemon.log.read_text(encoding="utf-8", errors="replace").count(event)


def test_sighup_moves_watching_and_output_and_reports_state_changes(obs: Observatory, tmp_path: Path) -> None:
    """Watching `capture` and writing to `stacks`, the daemon gets a SIGHUP with a config that watches
    `capture2` and writes to `stacks2`: a frame published into capture2 afterwards is journaled and its new
    session's preview and final stack are written under stacks2, while a frame dropped into the old folder is
    no longer picked up. A second SIGHUP moving [paths] state and library is reported in `astrod status --json`
    problems as needing a restart (the daemon keeps its state folder). The daemon stays up throughout."""
    _write_config(obs, watch="capture", output="stacks")
    first, moved, stray = (_light(tmp_path, target=t, seed=s) for t, s in (("M 31", 71), ("M 33", 72),
                                                                             ("M 101", 73)))
    (obs.root / "capture2").mkdir()
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        _publish_into(obs.capture, first)
        obs.wait_for(lambda: obs.statuses().get(first.name) == "stacked", message="the first light stacked")
        assert any(obs.stacks.rglob("preview.jpg"))
        _write_config(obs, watch="capture2", output="stacks2")
        daemon.proc.send_signal(signal.SIGHUP)
        obs.wait_for(lambda: _log_count(daemon, "config_reloaded") == 1, message="config_reloaded")
        _publish_into(obs.capture, stray)
        _publish_into(obs.root / "capture2", moved)
        obs.wait_for(lambda: obs.statuses().get(moved.name) == "stacked", message="the capture2 light stacked")
        stacks2 = obs.root / "stacks2"
        obs.wait_for(lambda: any(stacks2.rglob("preview.jpg")), message="a preview under stacks2")
        time.sleep(2.0)  # the old folder's frame (settled after 1 s) would have been journaled by now
        assert stray.name not in obs.statuses()
        sessions = {s["target"]: s for s in obs.status()["sessions"]}
        assert Path(sessions["M 33"]["output"]).is_relative_to(stacks2)
        assert not [p for p in obs.stacks.rglob("*") if "M_33" in str(p)]

        _write_config(obs, watch="capture2", output="stacks2", state="state2", library="library2")
        old_place = _write_config(obs, watch="capture2", output="stacks2", path=obs.root / "old-state.toml")
        daemon.proc.send_signal(signal.SIGHUP)
        obs.wait_for(lambda: _log_count(daemon, "config_reloaded") == 2, message="the second config_reloaded")

        def restart_problem() -> list[dict[str, Any]]:
            return [p for p in _status_json(old_place).get("problems", []) if p.get("where") == "config"]

        (problem,) = _wait_value(restart_problem)
        assert "need a restart" in problem["problem"]
        assert "paths.state" in problem["problem"] and "paths.library" in problem["problem"]
        assert not (obs.root / "state2").exists()  # the daemon keeps its state folder until a restart
        assert daemon.proc.poll() is None

        # (the CLI finds the daemon through the state folder the config names: until the restart, that is the
        # old one)
        closed = subprocess.run([sys.executable, "-m", "astrod", "session", "close", "--all", "--config",
                                 str(old_place)], capture_output=True, text=True, timeout=60, check=False)
        assert closed.returncode == 0, closed.stderr
        obs.wait_for(lambda: len(list(stacks2.rglob("stack.fits"))) == 1, message="the M 33 stack in stacks2")
    finally:
        assert daemon.terminate() == 0
    (stack,) = stacks2.rglob("stack.fits")
    assert fits.getheader(stack)["OBJECT"] == "M 33" and fits.getheader(stack)["NCOMBINE"] == 1
    assert stray.name not in obs.statuses()


def _wait_value(what: Callable[[], list[dict[str, Any]]], timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
