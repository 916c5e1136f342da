"""Control requests the daemon cannot remove: the daemon runs as an unprivileged user (``nobody``) while root
writes a close request into a root-owned control folder, as happens when the observer runs ``sudo astrod session
close`` against a daemon running under its own account. The request is acted on once, the problem is shown,
and neither the daemon nor its restart stops on it.

These tests need root (to run the daemon as ``nobody`` and to own the control folder); they skip elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from astropy.io import fits

from tests import synth
from tests.service.daemon_harness import Observatory

W, H = 160, 120
START = datetime(2026, 11, 21, 20, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]
USER = "nobody"
PROBE = "import astrod.service.daemon, astropy.io.fits, numpy, cv2, watchdog"


def _run_as_nobody(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, user=USER, group=_group(), extra_groups=[], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def _group() -> int:
    return pwd.getpwnam(USER).pw_gid


def _interpreter(home: Path) -> tuple[str, dict[str, str]]:
    """A Python that ``nobody`` can run with this venv's packages: the venv's own, or, where the venv's
    interpreter lives in a folder ``nobody`` may not enter (a pyenv build under /root), the system Python of the
    same minor version with the venv's site-packages and the project on PYTHONPATH. Skips when neither works."""
    base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates: list[tuple[str, dict[str, str]]] = [(sys.executable, {})]
    system = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    if system is not None:
        site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
        candidates.append((system, {"PYTHONPATH": os.pathsep.join([str(REPO), *dict.fromkeys(site)])}))
    failures = []
    for exe, extra in candidates:
        env = {**base_env, **extra}
        try:
            probe = _run_as_nobody([exe, "-c", PROBE], env, home)
        except OSError as err:
            failures.append(f"{exe}: {err}")
            continue
        if probe.returncode == 0:
            return exe, env
        failures.append(f"{exe}: {probe.stderr.strip().splitlines()[-1:]}")
    pytest.skip(f"user {USER} cannot run this venv's Python with its packages: " + "; ".join(failures))


def _numba_cache(folder: Path) -> dict[str, str]:
    """A numba cache ``nobody`` can use, seeded with the kernels already compiled into the project's own
    (root-owned, so unwritable) __pycache__ folders: without it numba compiles every kernel again at each start
    (about a minute), since it keeps no cache where it cannot write. Same layout as numba's NUMBA_CACHE_DIR
    locator: ``<folder>/<parent name>_<sha1 of the source folder>/``."""
    folder.mkdir()
    for pycache in (REPO / "astrod").rglob("__pycache__"):
        kernels = [p for p in pycache.iterdir() if p.suffix in (".nbi", ".nbc")]
        if not kernels:
            continue
        source = str(pycache.parent)
        target = folder / f"{pycache.parent.name}_{hashlib.sha1(source.encode()).hexdigest()}"
        target.mkdir()
        for p in kernels:
            shutil.copy2(p, target / p.name)
    for path in [folder, *folder.rglob("*")]:
        _chown(path)
    return {"NUMBA_CACHE_DIR": str(folder)}


class NobodyDaemon:
    """`astrod run` as ``nobody`` (the harness's DaemonProcess runs it as the test's user)."""

    def __init__(self, obs: Observatory, exe: str, env: dict[str, str]) -> None:
        self.obs = obs
        self.log = obs.root / "daemon.log"
        self.start_offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([exe, "-m", "astrod", "run", "--config", str(obs.config)],
                                         user=USER, group=_group(), extra_groups=[], env=env, cwd=obs.root,
                                         stdout=subprocess.DEVNULL, stderr=log)

    def text(self) -> str:
        """This process's part of the log."""
        return self.log.read_bytes()[self.start_offset:].decode("utf-8", "replace")

    def wait_started(self, timeout: float = 60.0) -> None:
        def started() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}: {self.text()[-3000:]}")
            return self.obs.status().get("pid") == self.proc.pid

        self.obs.wait_for(started, timeout=timeout, message="daemon start")

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def _chown(path: Path) -> None:
    entry = pwd.getpwnam(USER)
    os.chown(path, entry.pw_uid, entry.pw_gid)


@pytest.fixture
def nobody_obs() -> Iterator[tuple[Observatory, str, dict[str, str]]]:
    """An observatory owned by ``nobody`` under a fresh folder in /tmp (pytest's tmp_path lies under
    /tmp/pytest-of-root, mode 0700: ``nobody`` could not enter it), except its control folder: root's, mode
    0755, which ``nobody`` can read but not change. Yields it with the interpreter and environment to run the
    daemon as ``nobody``."""
    if os.geteuid() != 0:
        pytest.skip("running the daemon as another user needs root")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"no user {USER!r} here")
    base = Path(tempfile.mkdtemp(prefix="astrod-control-", dir="/tmp"))
    try:
        base.chmod(0o755)
        obs = Observatory(base / "obs")
        for folder in (obs.root, obs.capture, obs.state):
            folder.mkdir()
            folder.chmod(0o755)
            _chown(folder)
        control = obs.state / "control"
        control.mkdir()
        control.chmod(0o755)  # root's: the daemon reads requests here but cannot remove them
        obs.write_config(idle_minutes=60.0)
        obs.config.chmod(0o644)
        exe, env = _interpreter(obs.root)
        yield obs, exe, {**env, **_numba_cache(base / "numba-cache")}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _lights(tmp: Path, *, n: int, seed: int) -> list[Path]:
    session = synth.make_session(n_frames=n, width=W, height=H, seed=seed, n_stars=60, max_shift=6.0,
                                 max_rotation_deg=0.5)
    return session.write(tmp, object="M 57", filter="L", start=START + timedelta(minutes=seed % 7))


def _open(obs: Observatory) -> list[dict[str, Any]]:
    return list(obs.status().get("sessions", []))


def _wait(obs: Observatory, what: Callable[[], bool], message: str, timeout: float = 60.0) -> None:
    obs.wait_for(what, timeout=timeout, message=message)


def _close_all_as_root(obs: Observatory) -> str:
    """`astrod session close --all` as root (it writes the request into the root-owned control folder and
    waits for the daemon's acknowledgement); returns the request's file name."""
    before = set(os.listdir(obs.state / "control"))
    result = obs.cli("session", "close", "--all")
    assert result.returncode == 0 and "acknowledged" in result.stdout, (result.stdout, result.stderr)
    (name,) = set(os.listdir(obs.state / "control")) - before
    request = obs.state / "control" / name
    assert request.stat().st_uid == 0 and json.loads(request.read_text())["action"] == "close"
    return name


def test_a_request_the_daemon_cannot_remove_is_handled_once(nobody_obs: tuple[Observatory, str, dict[str, str]],
                                                            tmp_path: Path) -> None:
    """The daemon (as nobody) stacks two lights; root asks it to close all sessions through a request file in
    the root-owned control folder: the session closes once (one final stack of both frames), the log says once
    that the request could not be removed (not at every poll), status.json shows the problem and names the
    request as handled; a light arriving afterwards opens a new session that the stale request does not
    close. The daemon stays up, and a restart with the request still there starts and keeps running."""
    obs, exe, env = nobody_obs
    first, second, later = _lights(tmp_path / "src", n=3, seed=51)
    daemon = NobodyDaemon(obs, exe, env)
    try:
        daemon.wait_started()
        for p in (first, second):
            obs.publish(p, f"Lights/{p.name}")
        _wait(obs, lambda: [s["stacked"] for s in _open(obs)] == [2], "2 stacked")
        name = _close_all_as_root(obs)
        _wait(obs, lambda: not _open(obs) and any(obs.stacks.rglob("stack.fits")), "the session closed")
        _wait(obs, lambda: any(p.get("where") == "control" for p in obs.status().get("problems", [])),
              "the control problem in status.json")
        (problem,) = [p for p in obs.status()["problems"] if p["where"] == "control"]
        assert name in problem["problem"] and "cannot remove" in problem["problem"]
        assert name in obs.status()["control_handled"]
        assert (obs.state / "control" / name).exists()

        obs.publish(later, f"Lights/{later.name}")
        _wait(obs, lambda: [s["stacked"] for s in _open(obs)] == [1], "the later light stacked in a new session")
        time.sleep(3.0)  # three more polls of the control folder
        assert [(s["stacked"], s["closing"]) for s in _open(obs)] == [(1, False)]
        assert len(list(obs.stacks.rglob("stack.fits"))) == 1
        log = daemon.text()
        assert log.count("control_request_not_removed") == 1, log[-3000:]
        assert log.count("control_close_handled") == 1
        assert log.count("session_closed") == 1 and "Traceback" not in log
        assert daemon.proc.poll() is None
    finally:
        assert daemon.terminate() == 0
    (stack,) = obs.stacks.rglob("stack.fits")
    assert fits.getheader(stack)["NCOMBINE"] == 2

    restarted = NobodyDaemon(obs, exe, env)
    try:
        restarted.wait_started()
        time.sleep(3.0)
        assert restarted.proc.poll() is None, restarted.text()[-3000:]
        assert obs.status().get("pid") == restarted.proc.pid and obs.status().get("running") is True
        assert "Traceback" not in restarted.text() and "PermissionError" not in restarted.text()
    finally:
        assert restarted.terminate() == 0


def test_a_restart_does_not_act_again_on_a_request_it_could_not_remove(
        nobody_obs: tuple[Observatory, str, dict[str, str]], tmp_path: Path) -> None:
    """Root's close request is handled (nothing was open) and stays in the control folder; a light then opens a
    session. After a restart that session is still open: the old request is not acted on a second time."""
    obs, exe, env = nobody_obs
    (light,) = _lights(tmp_path / "src", n=1, seed=52)
    daemon = NobodyDaemon(obs, exe, env)
    try:
        daemon.wait_started()
        name = _close_all_as_root(obs)
        obs.publish(light, f"Lights/{light.name}")
        _wait(obs, lambda: [s["stacked"] for s in _open(obs)] == [1], "the light stacked")
    finally:
        assert daemon.terminate() == 0
    assert (obs.state / "control" / name).exists()
    restarted = NobodyDaemon(obs, exe, env)
    try:
        restarted.wait_started()
        time.sleep(3.0)  # three polls of the control folder
        assert [(s["stacked"], s["closing"]) for s in _open(obs)] == [(1, False)]
        assert not any(obs.stacks.rglob("stack.fits"))
        assert "control_close_handled" not in restarted.text()
    finally:
        assert restarted.terminate() == 0
