"""The real daemon (watcher, router, session workers, main loop) run in a thread with fake wall and monotonic
clocks that the test moves: idle closes follow the monotonic clock whatever the wall clock does, and the dawn
follows the wall clock, jumps included."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from astropy.io import fits
from structlog.testing import capture_logs

from astrod.config import parse_config
from astrod.service.daemon import Daemon
from tests import synth
from tests.service.fake_clocks import Clocks

W, H = 160, 120
START = datetime(2026, 11, 21, 20, 0, tzinfo=UTC)  # the lights' DATE-OBS
IDLE_MINUTES = 10.0
SITE = "[site]\nlatitude = 48.0\nlongitude = 11.0\n"  # astronomical dawn 2026-11-22 04:42 UTC


def _config(root: Path, extra: str = "") -> Any:
    (root / "capture").mkdir(parents=True, exist_ok=True)
    return parse_config(f"""
[paths]
watch = ["capture"]
output = "stacks"
state = "state"
library = "library"
[watch]
stable_seconds = 0.5
[session]
idle_minutes = {IDLE_MINUTES}
checkpoint_every = 1
[stack]
preview_every_frames = 1
preview_every_seconds = 1.0
[solve]
enabled = false
{extra}
""", base=root)


def _publish(sources: list[Path], capture: Path) -> None:
    for source in sources:
        target = capture / source.name
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(source.read_bytes())
        os.replace(tmp, target)


def _wait_for(what: Callable[[], Any], *, timeout: float = 60.0, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message or what}")


@contextmanager
def running(root: Path, clocks: Clocks, *, extra: str = "") -> Iterator[Daemon]:
    """The daemon on ``root`` with the fake clocks, its main loop in a thread; stopped and joined at the end,
    and any exception of that thread raised here."""
    daemon = Daemon(_config(root, extra), env={}, clock=clocks.wall, monotonic=clocks.mono)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            daemon.run(install_signals=False, until=stop.is_set)
        except BaseException as err:  # reported below, not lost in the thread
            errors.append(err)

    thread = threading.Thread(target=run, name="test-daemon-clock")
    thread.start()
    try:
        yield daemon
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not thread.is_alive()
    assert not errors, errors


def _two_stacked(daemon: Daemon, root: Path, tmp_path: Path, *, seed: int) -> dict[str, Any]:
    """Publish two lights of M 31 and wait until both are stacked in one open session; that session's status."""
    session = synth.make_session(n_frames=2, width=W, height=H, seed=seed, n_stars=60, max_shift=6.0,
                                 max_rotation_deg=0.5)
    _publish(session.write(tmp_path / "src", object="M 31", filter="L", start=START), root / "capture")

    def stacked() -> dict[str, Any] | None:
        sessions = daemon.status()["sessions"]
        return sessions[0] if len(sessions) == 1 and sessions[0]["stacked"] == 2 else None

    found: dict[str, Any] = _wait_for(stacked, message="2 lights stacked")
    return found


def _summary(root: Path) -> dict[str, Any] | None:
    found = list((root / "stacks").rglob("session.json"))
    if not found:
        return None
    data: dict[str, Any] = json.loads(found[0].read_text(encoding="utf-8"))
    return data


def _events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    """The captured events called ``name`` (a copy of the list: the daemon's threads append to it)."""
    return [e for e in list(logs) if e.get("event") == name]


def test_idle_close_follows_the_monotonic_clock_through_a_two_hour_wall_jump(tmp_path: Path) -> None:
    """Two lights stacked; the wall clock jumps +2 h (far past idle_minutes of wall time) while the monotonic
    clock stands: the jump is logged and nothing closes. Then the monotonic clock passes idle_minutes: the
    session closes by idle, once, with both frames in its stack."""
    root = tmp_path / "obs"
    clocks = Clocks(START + timedelta(minutes=40))
    with capture_logs() as logs, running(root, clocks) as daemon:
        opened = _two_stacked(daemon, root, tmp_path, seed=61)
        clocks.jump(timedelta(hours=2))
        _wait_for(lambda: _events(logs, "clock_jumped"), message="the jump noticed")
        time.sleep(2.5)  # two more periodic checks of the daemon's main loop
        assert [s["id"] for s in daemon.status()["sessions"]] == [opened["id"]]
        assert not _events(logs, "session_close_requested") and _summary(root) is None
        clocks.advance_mono(IDLE_MINUTES * 60.0 + 1.0)
        summary = _wait_for(lambda: _summary(root), message="the idle close")
        assert daemon.status()["sessions"] == []
    assert summary["closed_because"] == "idle" and summary["stacked"] == 2 and summary["session"] == opened["id"]
    (stack,) = (root / "stacks").rglob("stack.fits")
    assert fits.getheader(stack)["NCOMBINE"] == 2
    requested = _events(logs, "session_close_requested")
    assert [(e["session"], e["reason"]) for e in requested] == [(opened["id"], "idle")]


def test_a_wall_jump_across_the_dawn_ends_the_night(tmp_path: Path) -> None:
    """With a site, at 03:30 UTC (dawn 04:42): the wall clock jumps +2 h while the monotonic clock stands (far
    from idle): the session closes at once as the end of the night."""
    root = tmp_path / "obs"
    clocks = Clocks(datetime(2026, 11, 22, 3, 30, tzinfo=UTC))
    with capture_logs() as logs, running(root, clocks, extra=SITE) as daemon:
        _two_stacked(daemon, root, tmp_path, seed=62)
        time.sleep(1.5)  # a periodic check before the jump: not dawn yet
        assert _summary(root) is None and not _events(logs, "session_close_requested")
        clocks.jump(timedelta(hours=2))
        summary = _wait_for(lambda: _summary(root), message="the dawn close")
    assert "dawn" in summary["closed_because"] and summary["stacked"] == 2
    assert len(_events(logs, "clock_jumped")) == 1


@pytest.mark.filterwarnings("ignore:Tried to get polar motions:astropy.utils.exceptions.AstropyWarning")
def test_a_boot_at_1970_then_ntp_keeps_the_night_open(tmp_path: Path) -> None:
    """An observatory PC without an RTC battery starts at 1970-01-01 and stacks two lights (their 2026
    DATE-OBS is believed: a clock at 1970 judges only the past); NTP then sets 2026-11-21 21:00: the jump goes
    56 years past the 1970 dawn, which is a wrong clock, not a dawn: the session stays open, and the next dawn
    is worked out from the new time (2026-11-22 04:42 UTC)."""
    root = tmp_path / "obs"
    clocks = Clocks(datetime(1970, 1, 1, 0, 0, 12, tzinfo=UTC), mono=12.0)
    with capture_logs() as logs, running(root, clocks, extra=SITE) as daemon:
        opened = _two_stacked(daemon, root, tmp_path, seed=63)
        assert opened["night"] == "2026-11-21"
        clocks.set_wall(datetime(2026, 11, 21, 21, 0, tzinfo=UTC))
        _wait_for(lambda: _events(logs, "clock_jumped"), message="the jump noticed")
        time.sleep(2.5)
        assert [s["id"] for s in daemon.status()["sessions"]] == [opened["id"]]
        assert _summary(root) is None and not _events(logs, "session_close_requested")
        scheduled = [e["at"] for e in _events(logs, "dawn_scheduled")]
        assert scheduled[0].startswith("1970-01-01")
        # the dawn worked out after the jump closes the session when the wall clock gets there
        clocks.set_wall(datetime(2026, 11, 22, 4, 43, tzinfo=UTC))
        summary = _wait_for(lambda: _summary(root), message="the dawn close")
    assert "dawn" in summary["closed_because"] and summary["stacked"] == 2
