"""Running the real daemon (`python -m astrod run`) in a subprocess on a temporary observatory, for the tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from astrod.io.journal import FileRecord, Journal
from tests import synth

W, H = 160, 120  # small frames: the daemon tests are about files and threads, not pixels
# Plate solving is on by default; the synthetic skies of the tests that are not about it cannot be solved, and a
# blind solve of one would take its whole time limit of CPU.
NO_SOLVING = "[solve]\nenabled = false\n"
START = datetime(2026, 11, 21, 20, 0, tzinfo=UTC)


def lights(tmp: Path, *, n: int, seed: int, target: str, band: str = "L", dialect: str = "nina",
           sensor: synth.Sensor | None = None) -> list[Path]:
    """``n`` synthetic lights of one target and filter (a seeded star field, dithered), written as FITS."""
    session = synth.make_session(n_frames=n, width=W, height=H, seed=seed, n_stars=60, max_shift=6.0,
                                 max_rotation_deg=0.5, sensor=sensor)
    return session.write(tmp / f"{target}-{band}", dialect=dialect, object=target, filter=band,
                         start=START + timedelta(minutes=seed % 7))


@dataclass
class Observatory:
    root: Path

    @property
    def capture(self) -> Path:
        return self.root / "capture"

    @property
    def stacks(self) -> Path:
        return self.root / "stacks"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def config(self) -> Path:
        return self.root / "astrod.toml"

    def write_config(self, *, idle_minutes: float = 60.0, checkpoint_every: int = 1, checkpoint_seconds: float = 600.0,
                     preview_every_frames: int = 2, preview_every_seconds: float = 2.0, extra: str = "") -> Path:
        self.config.write_text(f"""
[paths]
watch = ["capture"]
output = "stacks"
state = "state"
library = "library"
[watch]
stable_seconds = 1.0
[session]
idle_minutes = {idle_minutes}
checkpoint_every = {checkpoint_every}
checkpoint_seconds = {checkpoint_seconds}
[stack]
preview_every_frames = {preview_every_frames}
preview_every_seconds = {preview_every_seconds}
{extra}
{NO_SOLVING if "[solve]" not in extra else ""}
""", encoding="utf-8")
        return self.config

    def publish(self, source: Path, relative: str) -> Path:
        """Put a finished frame into the capture folder the way careful capture programs do (rename)."""
        target = self.capture / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(source.read_bytes())
        os.replace(tmp, target)
        return target

    def journal_files(self) -> list[FileRecord]:
        path = self.state / "journal.sqlite"
        if not path.exists():
            return []
        journal = Journal(path)
        try:
            return journal.files()
        finally:
            journal.close()

    def wait_for(self, what: Callable[[], bool], *, timeout: float = 60.0, message: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if what():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {message or what}")

    def statuses(self) -> dict[str, str]:
        return {Path(r.path).name: r.status for r in self.journal_files()}

    def status(self) -> dict[str, Any]:
        """The daemon's status file as it is now ({} while it is being replaced or unreadable)."""
        try:
            data = json.loads((self.state / "status.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def problems(self) -> str:
        """The status's current problems as one text (empty when none)."""
        return " | ".join(str(p.get("problem")) for p in self.status().get("problems", []))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "astrod", *args, "--config", str(self.config)],
                              capture_output=True, text=True, timeout=60, check=False)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (a disk that fills up for real); skips where mounting is not
    allowed (not root, or a container without the capability)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill_disk(folder: Path, *, leave: int = 0) -> Path:
    """Fill the file system of ``folder`` with one file, then give back ``leave`` bytes; returns the file."""
    filler = folder / "filler.bin"
    block = b"\0" * 65536
    with contextlib.suppress(OSError), filler.open("wb") as handle:
        while True:
            handle.write(block)
            handle.flush()
    if leave:
        size = filler.stat().st_size
        os.truncate(filler, max(0, size - leave))
    return filler


class DaemonProcess:
    def __init__(self, obs: Observatory, *, env: dict[str, str] | None = None) -> None:
        self.obs = obs
        self.log = obs.root / "daemon.log"
        full_env = {**os.environ, **(env or {})}
        if "NOTIFY_SOCKET" not in (env or {}):
            full_env.pop("NOTIFY_SOCKET", None)  # not ours: the test runner may itself run under systemd
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "astrod", "run", "--config", str(obs.config)],
            stdout=subprocess.DEVNULL, stderr=self.log.open("ab"), env=full_env, cwd=obs.root)

    def wait_started(self, timeout: float = 60.0) -> None:
        status = self.obs.state / "status.json"

        def started() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                return f'"pid": {self.proc.pid}' in status.read_text(encoding="utf-8")
            except OSError:
                return False

        self.obs.wait_for(started, timeout=timeout, message="daemon start")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def close_all(self) -> None:
        result = subprocess.run([sys.executable, "-m", "astrod", "session", "close", "--all", "--config",
                                 str(self.obs.config)], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
