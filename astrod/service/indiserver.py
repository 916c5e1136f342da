"""Running a local indiserver with the INDI simulators (the demo, and the tests of INDI capture).

The CCD simulator draws stars only when a program named ``gsc`` is on the server's PATH; Debian has none, so a
small deterministic stand-in (astrod/demo/bin/gsc) is copied into the server's own bin folder. HOME points into
the server's folder so the drivers' saved configuration stays there.
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

from astrod.io.files import appending, ensure_folder, install_executable, read_tail

FAKE_GSC = Path(__file__).resolve().parents[1] / "demo" / "bin" / "gsc"
CAMERA = "CCD Simulator"
MOUNT = "Telescope Simulator"
WIDTH, HEIGHT = 640, 512  # the simulator's smallest height is 512
PROGRAMS = ("indiserver", "indi_simulator_ccd", "indi_simulator_telescope", "indi_setprop")


def missing_indi() -> str | None:
    """What is missing to run the simulators (a program or PyIndi), or None."""
    for program in PROGRAMS:
        if shutil.which(program) is None:
            return f"{program} is not installed"
    try:
        import PyIndi  # noqa: F401
    except ImportError:
        return "pyindi-client is not installed"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class IndiServer:
    """``indiserver -p PORT -u SOCKET indi_simulator_ccd indi_simulator_telescope`` in its own process group."""

    def __init__(self, root: Path, *, drivers: tuple[str, ...] = ("indi_simulator_ccd", "indi_simulator_telescope"),
                 port: int | None = None) -> None:
        self.root = root
        ensure_folder(self.root)
        self.port = port or free_port()
        self.drivers = drivers
        self.log = root / "indiserver.log"
        self.home = root / "home"
        ensure_folder(self.home)
        self.bin = root / "bin"
        ensure_folder(self.bin)
        install_executable(FAKE_GSC, self.bin / "gsc")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> IndiServer:
        env = {**os.environ, "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(self.home)}
        with appending(self.log) as log:
            self.proc = subprocess.Popen(
                ["indiserver", "-p", str(self.port), "-r", "0", "-u", str(self.root / f"indi-{self.port}.sock"),
                 *self.drivers], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root,
                start_new_session=True)
        self.set_property(f"{CAMERA}.SIMULATOR_SETTINGS.SIM_XRES;SIM_YRES={WIDTH};{HEIGHT}")
        return self

    def set_property(self, assignment: str, timeout: float = 20.0) -> None:
        """``indi_setprop`` until the driver accepts it (drivers define their properties after starting)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"indiserver exited: {read_tail(self.log, 2000)}")
            result = subprocess.run(["indi_setprop", "-p", str(self.port), "-t", "2", assignment],
                                    capture_output=True, text=True, timeout=30, check=False)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"indi_setprop {assignment} failed: {result.stderr.strip()}")
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
