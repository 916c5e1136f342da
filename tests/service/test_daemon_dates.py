"""Lights whose DATE-OBS cannot be a real night (a camera or PC clock that was never set, or garbage): the real
daemon stacks them with the good frames of the night their file was written in, says so, and restarts
cleanly."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from astropy.io import fits

from tests import synth
from tests.service.daemon_harness import DaemonProcess, Observatory

W, H = 160, 120
START = datetime(2026, 11, 21, 20, 0, tzinfo=UTC)
BAD_DATES = ("0001-01-01T00:00:00", "1899-06-01T00:00:00", "9999-01-01T00:00:00")
# the other date cards of the synthetic header: a camera with a wrong clock writes only the wrong DATE-OBS here
DATE_CARDS = ("DATE-LOC", "DATE-AVG", "MJD-OBS", "MJD-AVG")


def _publish_at(obs: Observatory, source: Path, relative: str, *, mtime: datetime) -> Path:
    """Publish like a capture program (write a .part name, rename), the file's time set to ``mtime``."""
    target = obs.capture / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    shutil.copyfile(source, tmp)
    os.utime(tmp, (mtime.timestamp(), mtime.timestamp()))
    tmp.replace(target)  # a rename keeps the time
    return target


def _night(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """Six exposures of one night (2026-11-21, from 20:00 UTC): three as written, three with a bad DATE-OBS."""
    session = synth.make_session(n_frames=6, width=W, height=H, seed=91, n_stars=60, max_shift=6.0,
                                 max_rotation_deg=0.5)
    frames = session.write(tmp_path / "src", object="M 45", filter="L", start=START)
    bad = []
    for source, date in zip(frames[3:], BAD_DATES, strict=True):
        data, header = fits.getdata(source, header=True)
        header["DATE-OBS"] = date
        for key in DATE_CARDS:
            header.remove(key, ignore_missing=True)
        path = tmp_path / "bad" / f"year{date[:4]}.fits"
        path.parent.mkdir(exist_ok=True)
        fits.PrimaryHDU(data, header=header).writeto(path)
        bad.append(path)
    return frames[:3], bad


@dataclass(frozen=True)
class NightRun:
    """What the daemon did with the night: what it said while running, and after a restart."""

    obs: Observatory
    good: list[Path]
    bad: list[Path]
    errors: list[dict[str, Any]]  # status.json "errors" once all six were stacked
    log: str  # the first daemon's log
    restarted_log: str  # the second daemon's log
    sessions_after_restart: list[dict[str, Any]]
    statuses_after_restart: dict[str, str]


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> NightRun:
    """Three good lights (files written at 20:00-20:02 UTC) and three with DATE-OBS 0001-01-01, 1899-06-01 and
    9999-01-01 (files written at 20:20-20:22 UTC) published into a running daemon; once all are stacked the
    daemon is stopped and started again, then the session is closed."""
    tmp_path = tmp_path_factory.mktemp("dates")
    obs = Observatory(tmp_path / "obs")
    obs.root.mkdir()
    obs.write_config(checkpoint_every=1)
    good, bad = _night(tmp_path)
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        for i, path in enumerate(good):
            _publish_at(obs, path, f"Lights/{path.name}", mtime=START + timedelta(minutes=i))
        for i, path in enumerate(bad):
            _publish_at(obs, path, f"Lights/{path.name}", mtime=START + timedelta(minutes=20 + i))
        obs.wait_for(lambda: sorted(obs.statuses().values()) == ["stacked"] * 6, timeout=90,
                     message="6 stacked")
        errors = list(obs.status().get("errors", []))
        assert daemon.terminate() == 0
        log = daemon.log.read_text(encoding="utf-8")
        daemon = DaemonProcess(obs)
        daemon.wait_started()
        sessions = list(obs.status()["sessions"])
        statuses = obs.statuses()
        daemon.close_all()
        obs.wait_for(lambda: any(obs.stacks.rglob("stack.fits")), timeout=90, message="the final stack")
        assert daemon.proc.poll() is None
    finally:
        assert daemon.terminate() == 0
    return NightRun(obs=obs, good=good, bad=bad, errors=errors, log=log,
                    restarted_log=daemon.log.read_text(encoding="utf-8")[len(log):],
                    sessions_after_restart=sessions, statuses_after_restart=statuses)


def test_implausible_dates_are_stacked_in_the_night_of_their_file_time(night: NightRun) -> None:
    """DATE-OBS 0001-01-01, 1899-06-01 and 9999-01-01: each light is routed by its file's time into the session
    of that night's good frames, the log has `frame_date_implausible` for each, and status.json "errors" names
    each file. The restart afterwards starts cleanly (no OverflowError) and routes nothing again; the final
    stack holds all six frames, and no session of another night (year 1, 1899, 9999) is ever opened."""
    obs = night.obs
    for path in night.bad:
        published = str(obs.capture / "Lights" / path.name)
        assert any(published in e["error"] and "cannot be right" in e["error"] for e in night.errors), \
            (path, night.errors)
        assert any("frame_date_implausible" in line and path.name in line for line in night.log.splitlines()), path
    for log in (night.log, night.restarted_log):
        assert "Traceback" not in log and "OverflowError" not in log
    assert [(s["night"], s["stacked"]) for s in night.sessions_after_restart] == [("2026-11-21", 6)]
    assert sorted(night.statuses_after_restart.values()) == ["stacked"] * 6
    records = obs.journal_files()
    assert len({r.session for r in records}) == 1 and all(r.status == "stacked" for r in records)
    (stack,) = obs.stacks.rglob("stack.fits")
    assert stack.parent == obs.stacks / "2026-11-21" / "M_45" / "L"
    assert fits.getheader(stack)["NCOMBINE"] == 6
    summary = json.loads((stack.parent / "session.json").read_text(encoding="utf-8"))
    assert summary["stacked"] == 6 and summary["rejected"] == 0
    rows = (stack.parent / "frames.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert sorted(Path(r.split(",")[0]).name for r in rows) == sorted(p.name for p in night.good + night.bad)


def test_the_stack_dates_are_those_of_the_night(night: NightRun) -> None:
    """The final stack's DATE-OBS and DATE-END (first and last frame) lie in the night the frames were taken:
    a frame whose DATE-OBS was replaced by its file's time counts with that time, not with year 1 or 9999."""
    (stack,) = night.obs.stacks.rglob("stack.fits")
    header = fits.getheader(stack)
    night_start, night_end = (t.strftime("%Y-%m-%dT%H:%M:%S") for t in (START, START + timedelta(hours=1)))
    # ISO 8601 strings of one width compare as their times do
    assert night_start <= header["DATE-OBS"] <= header["DATE-END"] <= night_end, (header["DATE-OBS"],
                                                                                  header["DATE-END"])
