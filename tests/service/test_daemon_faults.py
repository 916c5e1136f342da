"""Faults injected into a running daemon (real files, real disks that fill up, a real subprocess): every exposure
ends stacked exactly once — NCOMBINE, frames.csv and the journal agree — the sources are untouched, the daemon
stays up, and the problem is in its status while it lasts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from astropy.io import fits

from astrod.io.sqlite import StateCorrupt
from tests.service.daemon_harness import DaemonProcess, Observatory, fill_disk, lights, small_tmpfs


def _digests(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _stacked(obs: Observatory) -> int:
    return sum(r.status == "stacked" for r in obs.journal_files())


def _check_once(folder: Path, names: set[str]) -> None:
    """The session folder's stack, frames table and summary all hold exactly ``names`` (file names), once."""
    header = fits.getheader(folder / "stack.fits")
    rows = [line.split(",") for line in (folder / "frames.csv").read_text().splitlines()[1:]]
    summary = json.loads((folder / "session.json").read_text())
    assert header["NCOMBINE"] == len(names) and header["NFRAMES"] == len(names), dict(header)
    assert sorted(Path(r[0]).name for r in rows) == sorted(names)
    assert all(r[1] == "stacked" for r in rows)
    assert summary["stacked"] == len(names) and summary["rejected"] == 0


@pytest.mark.slow
def test_a_full_state_disk_stops_checkpoints_not_the_session(obs: Observatory, tmp_path: Path) -> None:
    """With the state disk full, checkpoints fail: the session goes on stacking, the status says what fails,
    and once space returns the checkpoint is written (retried with back-off), the close works, and every frame
    is in the stack once."""
    obs.write_config(checkpoint_every=1)
    sources = lights(tmp_path / "src", n=5, seed=3, target="M 51")
    before = _digests(sources)
    with small_tmpfs(obs.state, "8m"):
        daemon = DaemonProcess(obs)
        try:
            daemon.wait_started()
            for p in sources[:2]:
                obs.publish(p, f"Lights/{p.name}")
            obs.wait_for(lambda: _stacked(obs) == 2, message="2 stacked")
            checkpoint = max((obs.state / "sessions").rglob("checkpoint-*.npz"), key=lambda p: p.stat().st_mtime)
            # room for the journal's few pages, not for another checkpoint
            filler = fill_disk(obs.state, leave=checkpoint.stat().st_size // 3)
            for p in sources[2:]:
                obs.publish(p, f"Lights/{p.name}")
            obs.wait_for(lambda: "checkpoint failed" in obs.problems(), timeout=90,
                         message="the checkpoint failure in the status")
            assert daemon.proc.poll() is None
            filler.unlink()
            obs.wait_for(lambda: _stacked(obs) == 5, timeout=120, message="5 stacked once space returned")
            obs.wait_for(lambda: "checkpoint failed" not in obs.problems(), message="the problem cleared")
            daemon.close_all()
            obs.wait_for(lambda: any(obs.stacks.rglob("stack.fits")), timeout=60, message="final stack")
        finally:
            assert daemon.terminate() == 0
        log = daemon.log.read_text()
    assert "checkpoint_failed" in log and "checkpoint_recovered" in log and "Traceback" not in log
    (folder,) = {p.parent for p in obs.stacks.rglob("stack.fits")}
    _check_once(folder, {p.name for p in sources})
    assert _digests(sources) == before


@pytest.mark.slow
def test_an_unwritable_output_is_retried_and_no_frame_is_recorded_twice(obs: Observatory, tmp_path: Path) -> None:
    """The output folder replaced by a file: previews and then the close fail and are reported; frames are
    recorded once (not again as 'internal error'); when the folder is back the close is retried on its own."""
    obs.write_config(checkpoint_every=1, preview_every_frames=1, preview_every_seconds=1.0)
    sources = lights(tmp_path / "src", n=4, seed=5, target="M 63")
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        for p in sources[:2]:
            obs.publish(p, f"Lights/{p.name}")
        obs.wait_for(lambda: _stacked(obs) == 2 and any(obs.stacks.rglob("preview.jpg")), message="2 stacked")
        shutil.move(obs.stacks, obs.root / "stacks.moved")
        obs.stacks.write_text("a file where the output folder was\n")
        for p in sources[2:]:
            obs.publish(p, f"Lights/{p.name}")
        obs.wait_for(lambda: _stacked(obs) == 4, message="4 stacked")
        obs.wait_for(lambda: "preview failed" in obs.problems(), message="the preview failure in the status")
        daemon.close_all()
        obs.wait_for(lambda: "close failed" in obs.problems(), message="the close failure in the status")
        assert daemon.proc.poll() is None
        obs.stacks.unlink()  # the output disk is usable again: nobody asks for the close a second time
        obs.wait_for(lambda: any(obs.stacks.rglob("stack.fits")), timeout=90, message="the retried close")
        obs.wait_for(lambda: not obs.problems(), message="problems cleared")
    finally:
        assert daemon.terminate() == 0
    (folder,) = {p.parent for p in obs.stacks.rglob("stack.fits")}
    _check_once(folder, {p.name for p in sources})
    assert sorted(obs.statuses().values()) == ["stacked"] * 4
    assert "internal error" not in daemon.log.read_text()


@pytest.mark.slow
def test_lost_or_damaged_checkpoints_restack_their_sessions_from_the_sources(obs: Observatory,
                                                                             tmp_path: Path) -> None:
    """A deleted, truncated, garbled or empty checkpoint: the daemon starts (no crash loop), says so, stacks
    that session again from its files, and each final stack has every frame once."""
    obs.write_config(checkpoint_every=1)
    targets = {"M 1": "deleted", "M 2": "truncated", "M 3": "garbled", "M 4": "empty"}
    sources = {t: lights(tmp_path / "src", n=4, seed=10 + i, target=t) for i, t in enumerate(targets)}
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        for t in targets:
            for p in sources[t][:3]:
                obs.publish(p, f"Lights/{t}/{p.name}")
        obs.wait_for(lambda: _stacked(obs) == 12, timeout=90, message="12 stacked")
    finally:
        assert daemon.terminate() == 0
    for t, damage in targets.items():
        (checkpoint,) = (obs.state / "sessions").glob(f"*_{t.replace(' ', '_')}_*/checkpoint-*.npz")
        data = checkpoint.read_bytes()
        if damage == "deleted":
            checkpoint.unlink()
        elif damage == "truncated":
            checkpoint.write_bytes(data[: len(data) // 2])
        elif damage == "garbled":
            checkpoint.write_bytes(data[:200] + bytes(range(256)) * 40 + data[200 + 256 * 40:])
        else:
            checkpoint.write_bytes(b"")
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        for t in targets:
            obs.publish(sources[t][3], f"Lights/{t}/{sources[t][3].name}")
        obs.wait_for(lambda: _stacked(obs) == 16, timeout=120, message="16 stacked")
        errors = " ".join(e["error"] for e in obs.status().get("errors", []))
        assert errors.count("checkpoint unusable") == 4, errors
        daemon.close_all()
        obs.wait_for(lambda: len(list(obs.stacks.rglob("stack.fits"))) == 4, timeout=120, message="4 stacks")
    finally:
        assert daemon.terminate() == 0
    for t in targets:
        (folder,) = {p.parent for p in obs.stacks.rglob("stack.fits") if t.replace(" ", "_") in str(p)}
        _check_once(folder, {p.name for p in sources[t]})


@pytest.mark.slow
def test_renamed_moved_copied_and_overwritten_frames_are_stacked_once(obs: Observatory, tmp_path: Path) -> None:
    """Users sort frames while the daemon runs: a renamed, a moved (into a subfolder) and a copied frame are
    recorded as duplicates of their first path; a frame overwritten with another exposure replaces the old one
    in the stack (the session is stacked again from its files, the renamed and moved ones read from their new
    names)."""
    obs.write_config(checkpoint_every=1)
    a, b, c, d, e = lights(tmp_path / "src", n=5, seed=21, target="M 101")
    daemon = DaemonProcess(obs)
    folder_of_lights = obs.capture / "Lights"
    try:
        daemon.wait_started()
        for p in (a, b, c, d):
            obs.publish(p, f"Lights/{p.name}")
        obs.wait_for(lambda: _stacked(obs) == 4, message="4 stacked")
        os.rename(folder_of_lights / a.name, folder_of_lights / "renamed.fits")
        (folder_of_lights / "sorted").mkdir()
        os.rename(folder_of_lights / b.name, folder_of_lights / "sorted" / b.name)
        shutil.copyfile(folder_of_lights / c.name, folder_of_lights / "copy.fits")
        obs.wait_for(lambda: sum(r.status == "duplicate" for r in obs.journal_files()) == 3, message="3 duplicates")
        shutil.copyfile(e, folder_of_lights / d.name)  # d overwritten in place with the next exposure
        obs.wait_for(lambda: "was overwritten" in " ".join(x["error"] for x in obs.status().get("errors", [])),
                     message="the overwrite noticed")
        obs.wait_for(lambda: _stacked(obs) == 4 and obs.status().get("files", {}).get("queued") is None
                     and not daemon_busy(obs), timeout=90, message="the session stacked again")
        daemon.close_all()
        obs.wait_for(lambda: any(obs.stacks.rglob("stack.fits")), timeout=60, message="final stack")
    finally:
        assert daemon.terminate() == 0
    records = {Path(r.path).relative_to(folder_of_lights).as_posix(): r for r in obs.journal_files()}
    for name, first in (("renamed.fits", a), (f"sorted/{b.name}", b), ("copy.fits", c)):
        assert records[name].status == "duplicate" and str(first.name) in str(records[name].reason), records[name]
    assert sorted(n for n, r in records.items() if r.status == "stacked") == sorted(p.name for p in (a, b, c, d))
    (folder,) = {p.parent for p in obs.stacks.rglob("stack.fits")}
    _check_once(folder, {a.name, b.name, c.name, d.name})
    header = fits.getheader(folder / "stack.fits")
    assert header["DATE-END"][:19] == fits.getheader(e)["DATE-OBS"][:19]  # the new content of d is in the stack


def daemon_busy(obs: Observatory) -> bool:
    """Whether a session still has frames in its queue, by the status file."""
    return any(s.get("queue") for s in obs.status().get("sessions", []))


@pytest.mark.slow
def test_a_damaged_journal_is_rebuilt_from_checkpoints_and_products(obs: Observatory, tmp_path: Path) -> None:
    """A truncated journal: the daemon moves it aside and rebuilds it from the open session's checkpoint and the
    closed session's products; nothing is stacked again or lost, and the open session goes on."""
    obs.write_config(checkpoint_every=1)
    done = lights(tmp_path / "src", n=3, seed=31, target="M 13")
    going = lights(tmp_path / "src", n=4, seed=32, target="M 92")
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        for p in done:
            obs.publish(p, f"Lights/M13/{p.name}")
        obs.wait_for(lambda: _stacked(obs) == 3, message="3 stacked")
        assert obs.cli("session", "close", "--all").returncode == 0
        obs.wait_for(lambda: any(obs.stacks.rglob("stack.fits")), message="M 13 closed")
        for p in going[:3]:
            obs.publish(p, f"Lights/M92/{p.name}")
        obs.wait_for(lambda: _stacked(obs) == 6, message="6 stacked")
    finally:
        assert daemon.terminate() == 0
    (m13,) = {p.parent for p in obs.stacks.rglob("stack.fits")}
    m13_stack = (m13 / "stack.fits").read_bytes()
    journal = obs.state / "journal.sqlite"
    journal.write_bytes(journal.read_bytes()[: 4096 * 2 + 123])
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        obs.publish(going[3], f"Lights/M92/{going[3].name}")
        obs.wait_for(lambda: _stacked(obs) == 7, timeout=90, message="7 stacked")
        errors = " ".join(e["error"] for e in obs.status().get("errors", []))
        assert "was damaged" in errors and "1 open and 1 closed sessions" in errors, errors
        daemon.close_all()
        obs.wait_for(lambda: len(list(obs.stacks.rglob("stack.fits"))) == 2, timeout=90, message="M 92 closed")
        time.sleep(2.0)  # a stray third session would appear now
    finally:
        assert daemon.terminate() == 0
    assert list(obs.state.glob("journal.sqlite.corrupt-*"))
    assert (m13 / "stack.fits").read_bytes() == m13_stack
    assert len(list(obs.stacks.rglob("stack.fits"))) == 2
    (m92,) = {p.parent for p in obs.stacks.rglob("stack.fits")} - {m13}
    _check_once(m92, {p.name for p in going})
    assert sorted(obs.statuses().values()) == ["stacked"] * 7


def test_a_session_whose_every_frame_was_rejected_leaves_its_frames_table(obs: Observatory,
                                                                         tmp_path: Path) -> None:
    """A session of lights that are all rejected (NaN-filled) still leaves frames.csv and session.json naming
    each file and why; the rejection is in the log and in the status's recent rejections."""
    obs.write_config()
    (good,) = lights(tmp_path / "src", n=1, seed=41, target="M 3")
    data, header = fits.getdata(good, header=True)
    bad = tmp_path / "nan.fits"
    fits.PrimaryHDU(data * float("nan"), header=header).writeto(bad)
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        obs.publish(bad, "Lights/nan.fits")
        obs.wait_for(lambda: any(s.get("rejected") == 1 for s in obs.status().get("sessions", [])),
                     message="the rejection in the status")
        daemon.close_all()
        obs.wait_for(lambda: any(obs.stacks.rglob("session.json")), message="the empty session's summary")
    finally:
        assert daemon.terminate() == 0
    (summary_path,) = obs.stacks.rglob("session.json")
    summary = json.loads(summary_path.read_text())
    assert summary["stacked"] == 0 and summary["rejected"] == 1
    assert summary["rejected_frames"][0]["path"].endswith("nan.fits") and "NaN" in summary["rejected_frames"][0][
        "reason"]
    rows = (summary_path.parent / "frames.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(str(obs.capture / "Lights" / "nan.fits")) and "NaN" in rows[1]
    assert not (summary_path.parent / "stack.fits").exists()
    (rejection,) = obs.status()["recent_rejections"]
    assert rejection["path"].endswith("nan.fits") and "NaN" in rejection["reason"]
    assert "frame_rejected" in daemon.log.read_text() and "nan.fits" in daemon.log.read_text()


@pytest.mark.slow
def test_a_full_state_disk_at_start_is_waited_out(obs: Observatory, tmp_path: Path) -> None:
    """Started on a full state disk the daemon does not exit (no crash loop under systemd): it says what is
    wrong in its status and `astrod status`, and goes on by itself once there is space again."""
    obs.write_config()
    (light,) = lights(tmp_path / "src", n=1, seed=51, target="M 57")
    with small_tmpfs(obs.state, "4m"):
        daemon = DaemonProcess(obs)
        daemon.wait_started()
        assert daemon.terminate() == 0
        (obs.state / "journal.sqlite").unlink()  # a fresh journal must be created: that needs space
        filler = fill_disk(obs.state)
        daemon = DaemonProcess(obs)
        try:
            obs.wait_for(lambda: "waiting for it to work again" in obs.problems(), timeout=60,
                         message="the state problem in the status")
            shown = obs.cli("status")
            assert shown.returncode == 0 and "PROBLEM" in shown.stdout and "disk is full" in shown.stdout, shown
            time.sleep(6.0)  # a retry or two: still up
            assert daemon.proc.poll() is None
            filler.unlink()
            daemon.wait_started()
            obs.publish(light, f"Lights/{light.name}")
            obs.wait_for(lambda: _stacked(obs) == 1, message="the light stacked once there is space")
            assert not obs.problems()
        finally:
            assert daemon.terminate() == 0


@pytest.mark.slow
def test_a_close_under_way_survives_sigkill(obs: Observatory, tmp_path: Path) -> None:
    """A close that cannot finish yet (the output is a file) is remembered: killed with SIGKILL and started again
    the daemon closes the session by itself once the output can be written, without a second request."""
    obs.write_config()
    sources = lights(tmp_path / "src", n=2, seed=61, target="M 97")
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        for p in sources:
            obs.publish(p, f"Lights/{p.name}")
        obs.wait_for(lambda: _stacked(obs) == 2, message="2 stacked")
        shutil.rmtree(obs.stacks)
        obs.stacks.write_text("not a folder\n")
        daemon.close_all()
        obs.wait_for(lambda: "close failed" in obs.problems(), message="the failing close")
        daemon.kill()
        obs.stacks.unlink()
        daemon = DaemonProcess(obs)
        daemon.wait_started()
        obs.wait_for(lambda: any(obs.stacks.rglob("stack.fits")), timeout=60, message="the close done after restart")
    finally:
        assert daemon.terminate() == 0
    (folder,) = {p.parent for p in obs.stacks.rglob("stack.fits")}
    _check_once(folder, {p.name for p in sources})
    assert json.loads((folder / "session.json").read_text())["closed_because"] == "closed by request"


@pytest.mark.slow
def _stacked_in_journal(obs: Observatory) -> int:
    """Frames the journal says are stacked; -1 while it is the damaged one or the daemon is making it anew."""
    try:
        return sum(r.status == "stacked" for r in obs.journal_files())
    except (StateCorrupt, sqlite3.Error):
        return -1


def test_a_journal_damaged_while_running_is_rebuilt_without_a_restart_by_hand(obs: Observatory,
                                                                             tmp_path: Path) -> None:
    """Pages of the journal garbled under the running daemon: it notices, starts again in the same process with
    the journal rebuilt, and the frames that come next are stacked; the stack has every frame once."""
    obs.write_config(checkpoint_every=1)
    sources = lights(tmp_path / "src", n=4, seed=71, target="M 27")
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        for p in sources[:2]:
            obs.publish(p, f"Lights/{p.name}")
        obs.wait_for(lambda: _stacked(obs) == 2, message="2 stacked")
        journal = obs.state / "journal.sqlite"
        with contextlib.closing(sqlite3.connect(journal)) as other:  # every page in the main file, none in the WAL
            other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = bytearray(journal.read_bytes())
        for page in range(1, len(data) // 4096):  # every page but the first (the header stays readable)
            data[page * 4096 + 8: page * 4096 + 4096] = bytes([0xA5]) * (4096 - 8)
        with journal.open("r+b") as handle:  # in place, as a failing disk would
            handle.write(bytes(data))
        with contextlib.closing(sqlite3.connect(journal)) as other:  # another writer: the daemon's cache is stale
            other.execute("PRAGMA user_version = 7")
        for p in sources[2:]:
            obs.publish(p, f"Lights/{p.name}")
        obs.wait_for(lambda: "daemon_restarting" in daemon.log.read_text(), timeout=60, message="the restart")
        obs.wait_for(lambda: _stacked_in_journal(obs) == 4, timeout=90, message="4 stacked after the rebuild")
        assert daemon.proc.poll() is None
        daemon.close_all()
        obs.wait_for(lambda: any(obs.stacks.rglob("stack.fits")), timeout=60, message="final stack")
    finally:
        assert daemon.terminate() == 0
    (folder,) = {p.parent for p in obs.stacks.rglob("stack.fits")}
    _check_once(folder, {p.name for p in sources})
