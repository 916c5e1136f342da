"""The command-line front against a fake status file: status, session list, session close (ids, labels, the
daemon's acknowledgement, an unwritable control folder), a closed pipe, and `run`'s refusal of unusable folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from astrod import cli
from astrod.cli import main
from astrod.config import EX_CONFIG

M31 = {"id": "2026-11-21_M_31_L_g100", "label": "M 31/L", "stacked": 12, "rejected": 1, "queue": 2,
       "closing": False}
M33 = {"id": "2026-11-21_M_33_Ha_g100", "label": "M 33/Ha", "stacked": 3, "rejected": 0, "queue": 0,
       "closing": True}
TWIN = {**M31, "id": "2026-11-21_M_31_L_g200"}  # same target and filter, other camera settings


@dataclass
class Observatory:
    """A config file whose state folder holds a status file the test writes."""

    root: Path
    config: Path

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def control(self) -> Path:
        return self.state / "control"

    def write_status(self, sessions: list[dict[str, Any]], *, pid: int | None = None,
                     handled: list[str] | None = None, running: bool = True) -> None:
        full = [{"target": s["label"].split("/")[0], "filter": s["label"].split("/")[1], "night": "2026-11-21",
                 "total_exposure_s": 600.0, "last_frame": {}, "rejections": {}, "output": str(self.root / "out"),
                 **s} for s in sessions]
        status = {"running": running, "pid": os.getpid() if pid is None else pid, "version": "test",
                  "started_at": "2026-11-21T20:00:00+00:00", "updated_at": "2026-11-21T21:00:00+00:00",
                  "queue": 0, "files": {"stacked": 15}, "sessions": full, "closed_sessions": [],
                  "library": {"path": str(self.root / "library"), "masters": {}}, "errors": [],
                  "status_line": "", "capture": None}
        if handled is not None:
            status["control_handled"] = handled
        self.state.mkdir(parents=True, exist_ok=True)
        tmp = self.state / "status.json.tmp"
        tmp.write_text(json.dumps(status), encoding="utf-8")
        os.replace(tmp, self.state / "status.json")  # the CLI polls it: never let it read half a file

    def requests(self) -> list[dict[str, Any]]:
        if not self.control.is_dir():
            return []
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(self.control.glob("*.json"))]


@pytest.fixture
def obs(tmp_path: Path) -> Observatory:
    root = tmp_path / "obs"
    root.mkdir()
    config = root / "astrod.toml"
    config.write_text(f'[paths]\nwatch = ["{root / "capture"}"]\noutput = "{root / "out"}"\n'
                      f'state = "{root / "state"}"\nlibrary = "{root / "library"}"\n', encoding="utf-8")
    return Observatory(root, config)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def daemon_acks(obs: Observatory) -> Iterator[list[dict[str, Any]]]:
    """A stand-in daemon: takes each close request from the control folder, records it and lists its name in the
    status file's ``control_handled``, as the real daemon does."""
    taken: list[dict[str, Any]] = []
    stop = threading.Event()
    sessions = [M31, M33]

    def serve() -> None:
        handled: list[str] = []
        while not stop.wait(0.05):
            for request in sorted(obs.control.glob("*.json")) if obs.control.is_dir() else []:
                taken.append(json.loads(request.read_text(encoding="utf-8")))
                request.unlink()
                handled.append(request.name)
                obs.write_status(sessions, handled=handled)

    obs.write_status(sessions, handled=[])
    thread = threading.Thread(target=serve, name="fake-daemon")
    thread.start()
    try:
        yield taken
    finally:
        stop.set()
        thread.join()


def _run(obs: Observatory, *argv: str) -> int:
    return main([*argv, "--config", str(obs.config)])


# ------------------------------------------------------------------------------------------------ status, list
def test_status_shows_the_ids_that_session_close_takes(obs: Observatory, capsys: pytest.CaptureFixture[str]) -> None:
    """Plain `astrod status` prints each open session's id beside its label."""
    obs.write_status([M31, M33])
    assert _run(obs, "status") == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("M 31/L" in line and M31["id"] in line for line in lines), lines
    assert any("M 33/Ha" in line and M33["id"] in line for line in lines), lines


def test_session_list_prints_one_open_session_per_line(obs: Observatory,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`session list` prints id, label, counts, queue and the closing flag, one session a line; --json gives the
    same fields."""
    obs.write_status([M31, M33])
    assert _run(obs, "session", "list") == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        "2026-11-21_M_31_L_g100  M 31/L: 12 stacked, 1 rejected, queue 2",
        "2026-11-21_M_33_Ha_g100  M 33/Ha: 3 stacked, 0 rejected, queue 0, closing",
    ]
    assert out.err == ""
    assert _run(obs, "session", "list", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["running"] is True and data["pid"] == os.getpid()
    assert data["sessions"] == [M31, M33]


def test_session_list_when_the_daemon_is_down(obs: Observatory, capsys: pytest.CaptureFixture[str]) -> None:
    """With the daemon's process gone, `session list` says so and still lists the sessions its status file last
    showed (they are open in its journal); with no status file at all it says the daemon is not running. Exit 0."""
    assert _run(obs, "session", "list") == 0
    out = capsys.readouterr()
    assert out.out == "" and "astrod is not running (no status in" in out.err

    obs.write_status([M31], pid=_dead_pid())
    assert _run(obs, "session", "list") == 0
    out = capsys.readouterr()
    assert "astrod is not running" in out.err and "open when it stopped" in out.err
    assert out.out.splitlines() == ["2026-11-21_M_31_L_g100  M 31/L: 12 stacked, 1 rejected, queue 2"]
    assert _run(obs, "session", "list", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["running"] is False and [s["id"] for s in data["sessions"]] == [M31["id"]]


# ------------------------------------------------------------------------------------------------ session close
def test_close_of_an_unknown_session_fails_and_lists_the_open_ones(obs: Observatory,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """An id that is no open session exits 1, names it, lists the open sessions and writes no request."""
    obs.write_status([M31, M33])
    assert _run(obs, "session", "close", "nonexistent-id") == 1
    out = capsys.readouterr()
    assert "close requested" not in out.out
    lines = out.err.splitlines()
    assert lines[0] == "no open session 'nonexistent-id'; open sessions:"
    assert any(M31["id"] in line and "M 31/L" in line for line in lines[1:])
    assert any(M33["id"] in line and "M 33/Ha" in line for line in lines[1:])
    assert obs.requests() == []


def test_close_by_label_asks_for_that_session_id(obs: Observatory, daemon_acks: list[dict[str, Any]],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A session's label (shown by `status`) is accepted and the request names the session's id; the command
    reports the daemon's acknowledgement and exits 0."""
    assert _run(obs, "session", "close", "M 33/Ha") == 0
    assert daemon_acks == [{"action": "close", "session": M33["id"]}]
    assert capsys.readouterr().out.strip() == (f"close requested for M 33/Ha ({M33['id']}) (acknowledged by the "
                                               "daemon)")
    assert _run(obs, "session", "close", M31["id"]) == 0
    assert daemon_acks[-1] == {"action": "close", "session": M31["id"]}


def test_an_ambiguous_label_is_refused(obs: Observatory, capsys: pytest.CaptureFixture[str]) -> None:
    """A label two open sessions share is refused (exit 1) with both ids listed; nothing is requested."""
    obs.write_status([M31, TWIN, M33])
    assert _run(obs, "session", "close", "M 31/L") == 1
    err = capsys.readouterr().err
    assert "2 open sessions are labelled 'M 31/L'" in err and M31["id"] in err and TWIN["id"] in err
    assert M33["id"] not in err
    assert obs.requests() == []


def test_close_all_waits_for_the_acknowledgement(obs: Observatory, daemon_acks: list[dict[str, Any]],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`close --all` writes one request for every session and returns once the daemon has taken it."""
    assert _run(obs, "session", "close", "--all") == 0
    assert daemon_acks == [{"action": "close", "session": None}]
    assert "acknowledged by the daemon" in capsys.readouterr().out


def test_close_that_nobody_takes_times_out(obs: Observatory, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """When the daemon's process is alive but never lists the request as handled, the command says the daemon
    did not acknowledge it, names its pid, and exits 1: it never claims a close that did not happen."""
    monkeypatch.setattr(cli, "ACK_TIMEOUT_S", 0.6)
    obs.write_status([M31], handled=["close-1.json"])
    assert _run(obs, "session", "close", M31["id"]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.strip() == (f"the daemon (pid {os.getpid()}) did not acknowledge the request within 0.6 s: is "
                               "it stuck? see `journalctl -u astrod`")
    assert obs.requests() == [{"action": "close", "session": M31["id"]}]


def test_close_when_the_daemon_stops_meanwhile(obs: Observatory, capsys: pytest.CaptureFixture[str]) -> None:
    """A daemon that stops after the request was written (its status says not running) ends the wait at once
    with exit 1, saying where the request was left."""
    obs.write_status([M31])
    dead = _dead_pid()
    stop = threading.Event()

    def stop_daemon() -> None:
        while not stop.wait(0.05):
            if obs.requests():
                obs.write_status([M31], pid=dead, running=False)
                return

    thread = threading.Thread(target=stop_daemon, name="stopping-daemon")
    thread.start()
    try:
        assert _run(obs, "session", "close", M31["id"]) == 1
    finally:
        stop.set()
        thread.join()
    err = capsys.readouterr().err
    assert f"astrod (pid {dead}) stopped before it took the request" in err and str(obs.control) in err


def test_unwritable_control_folder_is_an_error(obs: Observatory, capsys: pytest.CaptureFixture[str]) -> None:
    """When the request cannot be written (a file where the control folder should be), the command says so with
    the path and the reason and exits 1, instead of printing "close requested"."""
    obs.write_status([M31])
    obs.control.write_text("not a folder")
    assert _run(obs, "session", "close", M31["id"]) == 1
    out = capsys.readouterr()
    assert "close requested" not in out.out
    assert out.err.startswith(f"cannot write the close request: {obs.control}: ")
    assert len(out.err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------ pipes, run
def test_status_into_a_closed_pipe_ends_quietly(obs: Observatory) -> None:
    """`astrod status | head -1` with far more output than a pipe buffers: the reader leaves early and astrod
    ends without a BrokenPipeError traceback."""
    many = [{**M31, "id": f"2026-11-21_T{i}_L", "label": f"T {i}/L"} for i in range(5000)]
    obs.write_status(many)
    result = subprocess.run(f"'{sys.executable}' -m astrod status --config '{obs.config}' | head -1",
                            shell=True, capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout.startswith("astrod running")
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr


def test_run_refuses_an_output_folder_it_cannot_create(obs: Observatory, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`astrod run` with an output folder that cannot be created (a file stands in its path, as a read-only
    /etc/astrod would) exits 78 with one config error line naming the folder and the key, before the daemon
    starts."""
    import astrod.service.daemon
    import astrod.service.run

    def no_daemon(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the daemon must not start")

    monkeypatch.setattr(astrod.service.daemon, "Daemon", no_daemon)
    monkeypatch.setattr(astrod.service.run, "run_daemon", no_daemon)
    (obs.root / "etc").write_text("a file, not a folder")
    text = obs.config.read_text(encoding="utf-8").replace(f'output = "{obs.root / "out"}"', 'output = "etc/stacks"')
    obs.config.write_text(text, encoding="utf-8")
    assert _run(obs, "run") == EX_CONFIG
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"config error: output folder {obs.root / 'etc' / 'stacks'} is not writable: ")
    assert err[0].endswith("(set [paths] output to an absolute path astrod may write)")


def test_inspect_shows_the_format_and_what_the_file_did_not_say(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`astrod inspect` on a colour JPEG without EXIF: the table shows format jpeg and 3 planes and a note line
    per missing fact; --json carries source_format, planes and the notes."""
    path = tmp_path / "Lights" / "m42.jpg"
    path.parent.mkdir()
    Image.fromarray(np.full((24, 32, 3), 30, dtype=np.uint8)).save(path)
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["file", "format", "kind"] and header.split()[-1] == "planes"
    assert row.split()[:3] == ["m42.jpg", "jpeg", "light"] and row.split()[-1] == "3"
    assert "note: m42.jpg: date: none in the file; its modification time" in out
    assert "note: m42.jpg: exposure: unknown (none in the file)" in out
    assert main(["inspect", "--json", str(path)]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert (record["source_format"], record["planes"], record["exposure"]) == ("jpeg", 3, None)
    assert len(record["notes"]) == 2
