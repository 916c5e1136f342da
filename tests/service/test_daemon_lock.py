"""One daemon per state folder: a second `astrod run` on the same config exits at once, naming the first."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from astropy.io import fits

from tests import synth
from tests.service.daemon_harness import DaemonProcess, Observatory

W, H = 160, 120
START = datetime(2026, 11, 21, 20, 0, tzinfo=UTC)


def test_a_second_daemon_on_the_same_state_folder_exits_1_naming_the_first(tmp_path: Path) -> None:
    """While a daemon runs, `astrod run` with the same config exits within a few seconds with status 1 and one
    line "astrod: another astrod (pid N) holds STATE" (N the first daemon's pid, no traceback); the first
    daemon goes on and stacks a frame published afterwards, and its state folder is untouched by the second."""
    obs = Observatory(tmp_path / "obs")
    obs.root.mkdir()
    obs.write_config()
    (light,) = synth.make_session(n_frames=1, width=W, height=H, seed=81, n_stars=60, max_shift=0.0,
                                  max_rotation_deg=0.0).write(tmp_path / "src", object="M 81", filter="L",
                                                              start=START)
    first = DaemonProcess(obs)
    try:
        first.wait_started()
        started = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "astrod", "run", "--config", str(obs.config)],
                                capture_output=True, text=True, timeout=60, check=False, cwd=obs.root)
        took = time.monotonic() - started
        assert second.returncode == 1, (second.returncode, second.stderr[-2000:])
        assert took < 10.0, took
        assert f"astrod: another astrod (pid {first.proc.pid}) holds {obs.state}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr, second.stderr
        assert (obs.state / "astrod.lock").read_text().strip() == str(first.proc.pid)
        assert first.proc.poll() is None
        assert f'"pid": {first.proc.pid}' in (obs.state / "status.json").read_text(encoding="utf-8")
        obs.publish(light, f"Lights/{light.name}")
        obs.wait_for(lambda: obs.statuses().get(light.name) == "stacked", message="the first daemon stacks")
        first.close_all()
        obs.wait_for(lambda: any(obs.stacks.rglob("stack.fits")), message="the first daemon closes")
    finally:
        assert first.terminate() == 0
    (stack,) = obs.stacks.rglob("stack.fits")
    assert fits.getheader(stack)["NCOMBINE"] == 1
