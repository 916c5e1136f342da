"""A real indiserver with the INDI simulators on a free loopback port, for the INDI and capture tests.

The fake ``gsc`` catalogue beside this file goes first on the server's PATH so the CCD simulator draws stars;
HOME points into the test's folder so the drivers' saved configuration stays there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

FAKE_GSC = Path(__file__).resolve().parent / "fake_gsc"
CAMERA = "CCD Simulator"
MOUNT = "Telescope Simulator"
WIDTH, HEIGHT = 640, 512  # the simulator's smallest height is 512


def require_indi() -> None:
    """Skip the test when indiserver, the simulators or pyindi-client are not installed."""
    for program in ("indiserver", "indi_simulator_ccd", "indi_simulator_telescope", "indi_setprop"):
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed")
    pytest.importorskip("PyIndi")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class IndiServer:
    """``indiserver -p PORT -u SOCKET indi_simulator_ccd indi_simulator_telescope`` in its own process group."""

    def __init__(self, root: Path, *, drivers: tuple[str, ...] = ("indi_simulator_ccd", "indi_simulator_telescope"),
                 port: int | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.drivers = drivers
        self.log = root / "indiserver.log"
        self.home = root / "home"
        self.home.mkdir(exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> IndiServer:
        env = {**os.environ, "PATH": f"{FAKE_GSC}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(self.home)}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["indiserver", "-p", str(self.port), "-r", "0", "-u", str(self.root / f"indi-{self.port}.sock"),
                 *self.drivers], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root,
                start_new_session=True)
        self._set_until_ok(f"{CAMERA}.SIMULATOR_SETTINGS.SIM_XRES;SIM_YRES={WIDTH};{HEIGHT}")
        return self

    def _set_until_ok(self, assignment: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"indiserver exited: {self.log.read_text()[-2000:]}")
            result = subprocess.run(["indi_setprop", "-p", str(self.port), "-t", "2", assignment],
                                    capture_output=True, text=True, timeout=30, check=False)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"indi_setprop {assignment} failed: {result.stderr}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the server and its drivers (the whole process group it leads)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        self.kill()
