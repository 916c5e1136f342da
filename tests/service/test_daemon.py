"""The daemon end to end: real files, the real watchdog observer, real threads, a real subprocess."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from astrod.io.fits import read_fits
from tests import synth
from tests.service.daemon_harness import START, DaemonProcess, H, Observatory, W, lights


@pytest.mark.slow
def test_shuffled_night_ends_in_the_right_sessions_and_masters(obs: Observatory, tmp_path: Path) -> None:
    """Calibration frames and lights of two targets in two filters, dropped in shuffled order, end in four
    sessions and the library; previews appear while frames arrive; idle close writes the final stacks, the
    finished pictures and the reports."""
    obs.write_config(idle_minutes=0.1)  # 6 s
    sensor = synth.Sensor(width=W, height=H, seed=5, hot_pixels=10)
    cal = synth.write_calibration_set(tmp_path / "cal", sensor, seed=9, n=5, filter="L")
    frames = {f"Lights/{t}/{b}/{p.name}": p for i, (t, b) in enumerate(
        [("M 31", "L"), ("M 31", "Ha"), ("M 42", "L"), ("M 42", "Ha")])
        for p in lights(tmp_path, n=4, seed=20 + i, target=t, band=b, sensor=sensor)}
    for kind, paths in cal.items():
        for p in paths:
            frames[f"Calibration/{kind}/{p.name}"] = p
    order = list(frames.items())
    random.Random(3).shuffle(order)
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        for relative, source in order:
            obs.publish(source, relative)
            time.sleep(0.05)
        obs.wait_for(lambda: any(obs.stacks.rglob("preview.jpg")), timeout=90, message="a preview")
        # session.json is written last, after the stack, the finished picture and the report
        obs.wait_for(lambda: len(list(obs.stacks.rglob("session.json"))) == 4, timeout=240, message="4 sessions")
    finally:
        assert daemon.terminate() == 0
    statuses = obs.statuses()
    light_names = [name for name in frames if name.startswith("Lights")]
    by_status: dict[str, int] = {}
    for status in statuses.values():
        by_status[status] = by_status.get(status, 0) + 1
    assert by_status == {"stacked": len(light_names), "calibration": sum(len(v) for v in cal.values())}
    for target, band in [("M_31", "L"), ("M_31", "Ha"), ("M_42", "L"), ("M_42", "Ha")]:
        folder = obs.stacks / START.date().isoformat() / target / band
        summary = json.loads((folder / "session.json").read_text())
        assert summary["stacked"] == 4 and summary["closed_because"] == "idle"
        header = fits.getheader(folder / "stack.fits")
        assert header["NCOMBINE"] == 4
        assert {"final.fits", "final.jpg", "background.fits", "report.html"} <= set(summary["products"])
        assert fits.getheader(folder / "final.fits")["FINSTEPS"] == "crop+background"  # mono: no colour step
        rows = (folder / "frames.csv").read_text().splitlines()
        assert len(rows) == 5 and all(target.replace("_", " ") in r or r.startswith("path") for r in rows)
    masters = {p.parent.parent.name for p in (obs.root / "library" / "masters").rglob("*.fits")}
    assert {"bias", "dark", "flat"} <= masters


def _feed_and_stack(obs: Observatory, sources: list[Path], *, kill_after: set[int], seed: int) -> np.ndarray:
    """Publish frames one by one (each after the previous was journaled), SIGKILL the daemon after the given
    indices (at a random moment of that frame's processing) and restart it; close the session; the stack."""
    rng = random.Random(seed)
    daemon = DaemonProcess(obs)
    daemon.wait_started()
    try:
        for i, source in enumerate(sources):
            target = obs.publish(source, f"Lights/{source.name}")
            if i in kill_after:
                time.sleep(rng.uniform(0.0, 0.4))
                daemon.kill()
                daemon = DaemonProcess(obs)
                daemon.wait_started()
            obs.wait_for(lambda t=target: any(r.path == str(t) for r in obs.journal_files()), timeout=60,
                         message=f"{target.name} journaled")
        obs.wait_for(lambda: all(r.status in ("stacked", "rejected") for r in obs.journal_files())
                     and len(obs.journal_files()) == len(sources), timeout=120, message="all stacked")
        daemon.close_all()
        obs.wait_for(lambda: any(obs.stacks.rglob("stack.fits")), timeout=120, message="final stack")
    finally:
        assert daemon.terminate() == 0
    (stack_path,) = obs.stacks.rglob("stack.fits")
    return read_fits(stack_path)[0]


@pytest.mark.slow
def test_sigkill_at_random_points_gives_the_same_stack(tmp_path: Path) -> None:
    """Killed with SIGKILL at several random points and restarted, the daemon ends with the stack of an
    uninterrupted run (≤ 1e-5 relative) and every frame stacked exactly once: with a checkpoint after every
    frame, and with checkpoints every 4 frames (or 2 s), where the frames stacked after the last checkpoint
    are lost with the process and stacked again from their files."""
    sources = lights(tmp_path / "src", n=10, seed=77, target="M 33", band="L")
    runs = {}
    for name, kills, every in (("clean", set(), 1), ("killed", {1, 4, 5, 8}, 1), ("batched", {2, 6, 7}, 4)):
        obs = Observatory(tmp_path / name)
        obs.root.mkdir()
        obs.write_config(checkpoint_every=every, checkpoint_seconds=2.0)
        runs[name] = _feed_and_stack(obs, sources, kill_after=kills, seed=11)
        records = obs.journal_files()
        assert sorted(Path(r.path).name for r in records if r.status == "stacked") == sorted(p.name for p in sources)
        (table,) = obs.stacks.rglob("frames.csv")
        names = [line.split(",")[0] for line in table.read_text().splitlines()[1:]]
        assert sorted(Path(n).name for n in names) == sorted(p.name for p in sources)  # each exactly once
    clean = runs["clean"]
    finite = np.isfinite(clean)
    for killed in (runs["killed"], runs["batched"]):
        assert np.array_equal(finite, np.isfinite(killed))
        np.testing.assert_allclose(killed[finite], clean[finite], rtol=1e-5, atol=1e-5 * float(np.nanmax(clean)))


@pytest.mark.slow
def test_bad_input_is_rejected_with_reasons_and_left_untouched(obs: Observatory, tmp_path: Path) -> None:
    """Zero-byte, truncated, non-FITS, NaN-filled, wrong-size, EXPTIME-less frames, a symlink loop and an
    unreadable file (a FIFO): each rejected with a one-line reason, source untouched, good frames still stacked."""
    obs.write_config()
    good = lights(tmp_path, n=4, seed=3, target="M 51", band="L")
    blob = good[0].read_bytes()
    bad = obs.root / "bad"
    bad.mkdir()
    (bad / "zero.fits").write_bytes(b"")
    (bad / "truncated.fits").write_bytes(blob[: len(blob) // 2])
    (bad / "text.fits").write_text("a shopping list, not a frame\n" * 200)
    data, header = fits.getdata(good[1], header=True)
    nan = np.full((H, W), np.nan, dtype=np.float32)
    fits.PrimaryHDU(nan, header=header).writeto(bad / "nan.fits")
    small = header.copy()
    synth.write_fits(bad / "small.fits", np.full((H // 2, W // 2), 1000.0), object="M 51", filter="L",
                     date_obs=START)
    del small
    header_no_exp = header.copy()
    for key in ("EXPTIME", "EXPOSURE"):
        header_no_exp.remove(key, ignore_missing=True)
    fits.PrimaryHDU(data, header=header_no_exp).writeto(bad / "noexp.fits")
    before = {p.name: p.read_bytes() for p in bad.iterdir()}
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        for p in good[:2]:
            obs.publish(p, f"Lights/{p.name}")
        obs.wait_for(lambda: sum(s == "stacked" for s in obs.statuses().values()) == 2, message="2 stacked")
        for p in sorted(bad.iterdir()):
            obs.publish(p, f"Lights/{p.name}")
        loop = obs.capture / "Lights" / "loop.fits"
        loop.symlink_to(loop)
        # root reads any file, so "unreadable" here is a FIFO: opening it would block a naive reader forever
        os.mkfifo(obs.capture / "Lights" / "fifo.fits")
        (obs.capture / "Lights" / "folder.fits").mkdir()
        for p in good[2:]:
            obs.publish(p, f"Lights/{p.name}")
        obs.wait_for(lambda: sum(s == "stacked" for s in obs.statuses().values()) == 4, message="4 stacked")
        obs.wait_for(lambda: sum(s == "rejected" for s in obs.statuses().values()) >= 6, message="rejections")
        # the symlink loop and the folder are not announced by inotify as finished files: a restart's scan finds
        # the loop; the folder is never a file
        assert daemon.terminate() == 0
        daemon = DaemonProcess(obs)
        daemon.wait_started()
        obs.wait_for(lambda: "loop.fits" in obs.statuses() and "fifo.fits" in obs.statuses(),
                     message="loop and fifo journaled")
    finally:
        assert daemon.terminate() == 0
    records = {Path(r.path).name: r for r in obs.journal_files()}
    expected = {"zero.fits": "empty file", "truncated.fits": "truncated", "text.fits": "not a FITS file",
                "nan.fits": "NaN", "small.fits": "the session's stack is", "noexp.fits": "no exposure time",
                "loop.fits": "cannot stat", "fifo.fits": "not a regular file"}
    for name, fragment in expected.items():
        record = records[name]
        assert record.status == "rejected", (name, record)
        assert record.reason is not None and fragment in record.reason and "\n" not in record.reason, record
    assert {p.name: p.read_bytes() for p in bad.iterdir()} == before
    for name in before:
        assert (obs.capture / "Lights" / name).read_bytes() == before[name]


@pytest.mark.slow
def test_burst_of_200_frames_is_all_journaled(obs: Observatory, tmp_path: Path) -> None:
    """200 small frames arriving within a few seconds are all journaled and stacked; the queue drains."""
    obs.write_config(checkpoint_every=10)
    session = synth.make_session(n_frames=4, width=128, height=96, seed=8, n_stars=40, max_shift=2.0,
                                 max_rotation_deg=0.0)
    sources = session.write(tmp_path / "burst", object="M 13", filter="L", start=START)
    # 200 exposures: four star fields, each exposure its own DATE-OBS (copies of one file would be duplicates)
    exposures = []
    for i in range(200):
        data, header = fits.getdata(sources[i % 4], header=True)
        header["DATE-OBS"] = (START + timedelta(seconds=30 * i)).strftime("%Y-%m-%dT%H:%M:%S")
        path = tmp_path / "burst200" / f"burst_{i:03d}.fits"
        path.parent.mkdir(exist_ok=True)
        fits.PrimaryHDU(data, header=header).writeto(path)
        exposures.append(path)
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        for path in exposures:
            obs.publish(path, f"Lights/{path.name}")
        obs.wait_for(lambda: len(obs.journal_files()) == 200, timeout=120, message="200 journaled")
        obs.wait_for(lambda: all(r.status in ("stacked", "rejected") for r in obs.journal_files()),
                     timeout=240, message="queue drained")
    finally:
        assert daemon.terminate() == 0
    stacked = [r for r in obs.journal_files() if r.status == "stacked"]
    assert len(stacked) == 200


def test_sigterm_checkpoints_and_exits_within_10s_and_notifies(obs: Observatory, tmp_path: Path) -> None:
    """Under a notify socket the daemon sends READY and WATCHDOG; SIGTERM ends it within 10 s with exit 0,
    after checkpointing, and a restart goes on from the checkpoint."""
    obs.write_config()
    sources = lights(tmp_path, n=3, seed=41, target="M 81", band="L")
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(sock_path))
        server.settimeout(30)
        daemon = DaemonProcess(obs, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"})
        messages: list[bytes] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (any(m.startswith(b"READY=1") for m in messages)
                                                    and b"WATCHDOG=1" in messages):
            messages.append(server.recv(4096))
        assert any(m.startswith(b"READY=1") for m in messages) and b"WATCHDOG=1" in messages
        daemon.wait_started()
        for p in sources[:2]:
            obs.publish(p, f"Lights/{p.name}")
        obs.wait_for(lambda: sum(s == "stacked" for s in obs.statuses().values()) == 2, message="2 stacked")
        started = time.monotonic()
        assert daemon.terminate(timeout=10) == 0
        assert time.monotonic() - started < 10
    checkpoints = list((obs.state / "sessions").rglob("checkpoint-*.npz"))
    assert len(checkpoints) == 1
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        obs.publish(sources[2], f"Lights/{sources[2].name}")
        obs.wait_for(lambda: sum(s == "stacked" for s in obs.statuses().values()) == 3, message="3 stacked")
        daemon.close_all()
        obs.wait_for(lambda: any(obs.stacks.rglob("stack.fits")), message="final stack")
    finally:
        assert daemon.terminate() == 0
    (stack,) = obs.stacks.rglob("stack.fits")
    assert fits.getheader(stack)["NCOMBINE"] == 3


def test_the_first_light_of_a_session_shows_a_preview_at_once(obs: Observatory, tmp_path: Path) -> None:
    """A session's first stacked light writes preview.jpg and preview.fits at once, long before
    ``preview_every_frames`` frames or ``preview_every_seconds`` have passed."""
    obs.write_config(preview_every_frames=20, preview_every_seconds=3600.0)
    light = lights(tmp_path, n=1, seed=31, target="M 13", band="L")[0]
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        obs.publish(light, f"Lights/{light.name}")
        obs.wait_for(lambda: any(obs.stacks.rglob("preview.jpg")), timeout=60, message="the first preview")
        assert any(obs.stacks.rglob("preview.fits"))
        assert not any(obs.stacks.rglob("stack.fits"))  # the session is still open
    finally:
        assert daemon.terminate() == 0


def test_status_works_when_the_daemon_is_down(obs: Observatory) -> None:
    """`astrod status` says the daemon is not running, before it ever ran and after it stopped."""
    obs.write_config()

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "astrod", "status", "--config", str(obs.config)],
                              capture_output=True, text=True, timeout=60, check=False)

    first = status()
    assert first.returncode == 0 and "not running" in first.stdout
    daemon = DaemonProcess(obs)
    daemon.wait_started()
    running = status()
    assert f"astrod running (pid {daemon.proc.pid}" in running.stdout
    assert daemon.terminate() == 0
    after = status()
    assert "astrod not running" in after.stdout
    data = json.loads(subprocess.run([sys.executable, "-m", "astrod", "status", "--json", "--config",
                                      str(obs.config)], capture_output=True, text=True, timeout=60,
                                     check=True).stdout)
    assert data["running"] is False and data["sessions"] == []


def test_sighup_rereads_the_config(obs: Observatory) -> None:
    """SIGHUP re-reads the config file; a broken one is reported and the daemon goes on with the old one."""
    obs.write_config()
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        obs.write_config(idle_minutes=5.0)
        daemon.proc.send_signal(signal.SIGHUP)
        obs.wait_for(lambda: "config_reloaded" in daemon.log.read_text(), message="config_reloaded")
        obs.config.write_text("[session]\nidle_minutes = -3\n", encoding="utf-8")
        daemon.proc.send_signal(signal.SIGHUP)
        obs.wait_for(lambda: "config_reload_failed" in daemon.log.read_text(), message="config_reload_failed")
        assert daemon.proc.poll() is None
        assert "session.idle_minutes: -3 is out of range" in daemon.log.read_text()
    finally:
        assert daemon.terminate() == 0


def test_frames_are_checkpointed_after_checkpoint_seconds_without_more_frames(obs: Observatory,
                                                                              tmp_path: Path) -> None:
    """With a frame count that is never reached, the frames stacked so far are checkpointed (their journal
    rows committed with the stack) once checkpoint_seconds have passed, though no further frame comes."""
    obs.write_config(checkpoint_every=1000, checkpoint_seconds=2.0)
    sources = lights(tmp_path, n=2, seed=43, target="M 82", band="L")
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        for p in sources:
            obs.publish(p, f"Lights/{p.name}")
        obs.wait_for(lambda: sum(s == "stacked" for s in obs.statuses().values()) == 2, timeout=60,
                     message="2 stacked and checkpointed without a third frame")
        assert len(list((obs.state / "sessions").rglob("checkpoint-*.npz"))) == 1
    finally:
        assert daemon.terminate() == 0


def test_status_counts_frames_stacked_before_their_checkpoint(obs: Observatory, tmp_path: Path) -> None:
    """Frames stacked since the last checkpoint are queued in the journal (a crash re-stacks them) but the
    status says they are stacked; stopping the daemon checkpoints them and the journal agrees."""
    obs.write_config(checkpoint_every=1000, checkpoint_seconds=3600.0)
    sources = lights(tmp_path, n=2, seed=44, target="M 82", band="L")
    daemon = DaemonProcess(obs)
    status_file = obs.state / "status.json"

    def files() -> dict[str, int]:
        try:
            return dict(json.loads(status_file.read_text(encoding="utf-8"))["files"])
        except (OSError, ValueError, KeyError):
            return {}

    try:
        daemon.wait_started()
        for p in sources:
            obs.publish(p, f"Lights/{p.name}")
        obs.wait_for(lambda: files().get("stacked") == 2, timeout=60, message="status: 2 stacked")
        assert "queued" not in files()
        assert sorted(obs.statuses().values()) == ["queued", "queued"]
    finally:
        assert daemon.terminate() == 0
    assert sorted(obs.statuses().values()) == ["stacked", "stacked"]
