"""The web server: JSON API against a real daemon, path-traversal refusals, the token guard, request bounds."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from astrod.config import Config, parse_config
from astrod.service.daemon import Daemon
from astrod.service.web import WebServer
from tests import synth

W, H = 160, 120
START = datetime(2026, 11, 21, 20, 0, tzinfo=UTC)
TOKEN = "s3cret-token"


# ------------------------------------------------------------------------------------------------ helpers
def make_config(root: Path, *, token: str = TOKEN, idle_minutes: float = 60.0) -> Config:
    text = f"""
[paths]
watch = ["capture"]
output = "stacks"
state = "state"
library = "library"
[watch]
stable_seconds = 0.5
[session]
idle_minutes = {idle_minutes}
checkpoint_every = 1
[stack]
preview_every_frames = 1
preview_every_seconds = 1.0
[web]
enabled = true
token = "{token}"
[solve]
enabled = false
"""
    (root / "capture").mkdir(parents=True, exist_ok=True)
    return parse_config(text, base=root)


def request(port: int, method: str, path: str, *, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request (http.client sends the target as given: no normalisation of '..')."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def get_json(port: int, path: str) -> Any:
    status, headers, body = request(port, "GET", path)
    assert status == 200, (path, status, body[:300])
    assert headers["content-type"] == "application/json"
    return json.loads(body, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"non-standard JSON constant {name} (browsers refuse it)")


def publish(sources: list[Path], capture: Path) -> None:
    """Drop frames the way careful capture programs do: write a .part name, then rename."""
    for source in sources:
        target = capture / source.name
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(source.read_bytes())
        os.replace(tmp, target)


def lights(folder: Path, *, n: int, seed: int, target: str = "M 31") -> list[Path]:
    session = synth.make_session(n_frames=n, width=W, height=H, seed=seed, n_stars=60, max_shift=6,
                                 max_rotation_deg=0.5)
    return session.write(folder, object=target, filter="L", start=START)


def wait_for(what: Callable[[], Any], *, timeout: float = 90.0, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message or what}")


class WebDaemon(Daemon):
    """The real daemon with its own web wiring, on a free port (port 0); ``extra_status`` lets a test add a
    status entry (a progress bar) at will."""

    web: WebServer
    extra_status: dict[str, Any] = {}  # noqa: RUF012 - replaced, never mutated

    def status(self, *, running: bool = True) -> dict[str, Any]:
        return {**super().status(running=running), **self.extra_status}

    def _start_web(self, *, port: int | None = None) -> None:
        super()._start_web(port=0)


@dataclass
class Running:
    daemon: WebDaemon
    root: Path
    stop: threading.Event
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.daemon.web.port

    @property
    def capture(self) -> Path:
        return self.root / "capture"

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = get_json(self.port, "/api/status")
        return data


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    """A real daemon (watcher, router, session workers, scheduler) with its web server, run in a thread."""
    root = tmp_path / "obs"
    daemon = WebDaemon(make_config(root), env={})
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            daemon.run(install_signals=False, until=stop.is_set)
        except BaseException as err:  # reported by the fixture, not lost in the thread
            errors.append(err)

    thread = threading.Thread(target=run, name="test-daemon")
    thread.start()
    try:
        wait_for(lambda: (daemon.web is not None and daemon.web._server is not None) or errors, timeout=60,
                 message="web server start")
        assert not errors, errors
        yield Running(daemon=daemon, root=root, stop=stop, thread=thread, errors=errors)
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not thread.is_alive()
    assert not errors, errors


# ------------------------------------------------------------------------------------------------ API
def _check_session_schema(s: dict[str, Any]) -> None:
    for key, kind in {"id": str, "label": str, "target": str, "filter": str, "night": str, "stacked": int,
                      "rejected": int, "total_exposure_s": float, "queue": int, "last_frame": dict,
                      "rejections": dict, "output": str, "closing": bool, "files": dict}.items():
        assert isinstance(s[key], kind), (key, s[key])
    for name, info in s["files"].items():
        assert info["url"].startswith("/files/") and info["url"].endswith(name)
        assert isinstance(info["size"], int) and isinstance(info["mtime_ns"], int)


@pytest.mark.slow
def test_api_serves_the_daemon_status_frames_library_and_closes_with_the_token(running: Running,
                                                                               tmp_path: Path) -> None:
    """Against a real daemon fed 3 frames: /api/status has the status dict's keys and types, one session with a
    preview link that serves a JPEG, /api/sessions/<id>/frames one row per frame with its metrics, /api/library the
    library summary; POST close without or with a wrong token is refused (403), with the token it closes the
    session, which then lists its final stack."""
    publish(lights(tmp_path / "src", n=3, seed=41), running.capture)
    status = wait_for(lambda: (s := running.status())["sessions"] and s["sessions"][0]["stacked"]
                      + s["sessions"][0]["rejected"] == 3 and "preview.jpg" in s["sessions"][0]["files"] and s,
                      message="3 frames processed")
    for key, kind in {"running": bool, "pid": int, "version": str, "started_at": str, "updated_at": str,
                      "queue": int, "files": dict, "sessions": list, "closed_sessions": list, "library": dict,
                      "errors": list, "status_line": str}.items():
        assert isinstance(status[key], kind), (key, status[key])
    assert status["progress"] is None or isinstance(status["progress"], dict)
    assert status["running"] is True and status["pid"] == os.getpid()
    assert status["files"] == {"stacked": 3}
    (session,) = status["sessions"]
    _check_session_schema(session)
    assert (session["target"], session["filter"], session["stacked"]) == ("M 31", "L", 3)
    assert session["total_exposure_s"] > 0

    code, headers, body = request(running.port, "GET", session["files"]["preview.jpg"]["url"])
    assert code == 200 and headers["content-type"] == "image/jpeg" and body[:3] == b"\xff\xd8\xff"

    listing = get_json(running.port, "/api/sessions")
    assert set(listing) == {"sessions", "closed_sessions"}
    assert [s["id"] for s in listing["sessions"]] == [session["id"]]

    frames = get_json(running.port, f"/api/sessions/{session['id']}/frames")
    assert frames["session"] == session["id"] and len(frames["frames"]) == 3
    journal_rows = running.daemon.journal.files(session=session["id"])
    for row, record in zip(frames["frames"], journal_rows, strict=True):
        assert row["name"] == Path(record.path).name and row["status"] == record.status == "stacked"
        assert isinstance(row["index"], int) and isinstance(row["time"], str)
        assert isinstance(row["fwhm"], float) and row["fwhm"] == pytest.approx(record.metrics["fwhm"])
        assert isinstance(row["stars"], int) and row["stars"] == record.metrics["stars"]
        assert isinstance(row["background"], float)
    code, _, _ = request(running.port, "GET", "/api/sessions/no-such-session/frames")
    assert code == 404

    library = get_json(running.port, "/api/library")
    assert isinstance(library["path"], str) and isinstance(library["masters"], dict)

    close = f"/api/sessions/{session['id']}/close"
    assert request(running.port, "POST", close)[0] == 403
    assert request(running.port, "POST", close, headers={"Authorization": "Bearer wrong"})[0] == 403
    assert request(running.port, "POST", close, headers={"Authorization": TOKEN})[0] == 403
    assert not running.daemon.workers[session["id"]].closing
    code, _, body = request(running.port, "POST", close, headers={"Authorization": f"Bearer {TOKEN}"})
    assert code == 202 and json.loads(body) == {"session": session["id"], "closing": True}
    closed = wait_for(lambda: [c for c in running.status()["closed_sessions"] if c["id"] == session["id"]
                               and "stack.fits" in c.get("files", {})], message="closed session with stack")
    stack_url = closed[0]["files"]["stack.fits"]["url"]
    code, headers, body = request(running.port, "GET", stack_url)
    assert code == 200 and headers["content-type"] == "application/fits" and body.startswith(b"SIMPLE  =")
    assert request(running.port, "POST", close, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 404


# ------------------------------------------------------------------------------------------------ security
@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[WebServer, Path]]:
    """A web server over a fake status, with an output folder holding a file, and secrets beside it."""
    root = tmp_path / "obs"
    config = make_config(root)
    out = Path(config.paths.output)
    (out / "2026-11-21" / "M_31" / "L").mkdir(parents=True)
    (out / "2026-11-21" / "M_31" / "L" / "frames.csv").write_text("path,status\n", encoding="utf-8")
    (root / "secret.txt").write_text("TOP-SECRET", encoding="utf-8")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("TOP-SECRET", encoding="utf-8")
    (out / "link-out.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    (out / "dir-out").symlink_to(tmp_path / "outside")
    closes: list[str] = []
    status = {"running": True, "sessions": [], "closed_sessions": [], "library": {"path": "x"},
              "weird": float("nan")}
    server = WebServer(config, status=lambda: status, frames=lambda sid: None,
                       close_session=lambda sid: _record(closes, sid), port=0)
    server.start()
    try:
        yield server, out
    finally:
        server.stop()


def _record(calls: list[str], sid: str) -> bool:
    calls.append(sid)
    return True


TRAVERSALS = [
    "/files/../secret.txt", "/files/../../outside/secret.txt", "/files/%2e%2e/secret.txt",
    "/files/%2E%2E/%2E%2E/outside/secret.txt", "/files/..%2fsecret.txt", "/files/%2e%2e%2fsecret.txt",
    "/files/2026-11-21/../../secret.txt", "/files//etc/passwd", "/files/%2fetc%2fpasswd",
    "/files/%252e%252e/secret.txt",
    "/files/..%5csecret.txt", "/files/link-out.txt", "/files/dir-out/secret.txt", "/files/./secret.txt",
    "/files/%00/secret.txt", "/files/%ff%fe", "/files/", "/files/2026-11-21", "/files/2026-11-21/",
    "/files/2026-11-21/M_31/L", "/static/../web.py", "/static/%2e%2e/web.py", "/../secret.txt",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_paths_outside_the_output_folder_and_directories_are_refused(served: tuple[WebServer, Path],
                                                                     target: str) -> None:
    """Traversal (plain, percent-encoded, double-encoded, backslash), absolute paths, symlinks pointing out
    and directories get 403/404, and the answer never carries the secret's content."""
    server, _ = served
    code, _, body = request(server.port, "GET", target)
    assert code in (403, 404), (target, code)
    assert b"TOP-SECRET" not in body and b"root:" not in body


def test_a_file_inside_the_output_folder_is_served(served: tuple[WebServer, Path]) -> None:
    """A file under the output folder comes back whole, with its type and nosniff."""
    server, _ = served
    code, headers, body = request(server.port, "GET", "/files/2026-11-21/M_31/L/frames.csv")
    assert (code, body) == (200, b"path,status\n")
    assert headers["content-type"].startswith("text/csv") and headers["x-content-type-options"] == "nosniff"


def test_a_report_page_is_served_without_scripts(served: tuple[WebServer, Path]) -> None:
    """report.html is served as HTML under a policy that lets its embedded (data:) images and inline style
    through and nothing else (no script, sandboxed); a 16-bit TIFF comes as a download."""
    server, out = served
    folder = out / "2026-11-21" / "M_31" / "L"
    (folder / "report.html").write_text("<!DOCTYPE html><p>report</p>", encoding="utf-8")
    (folder / "final.tif").write_bytes(b"II*\x00")
    code, headers, _ = request(server.port, "GET", "/files/2026-11-21/M_31/L/report.html")
    assert code == 200 and headers["content-type"].startswith("text/html")
    policy = headers["content-security-policy"]
    assert "img-src data:" in policy and "sandbox" in policy and "default-src 'none'" in policy
    assert "script-src" not in policy
    code, headers, _ = request(server.port, "GET", "/files/2026-11-21/M_31/L/final.tif")
    assert code == 200 and headers["content-disposition"].startswith("attachment")


def test_post_needs_the_configured_token(served: tuple[WebServer, Path]) -> None:
    """POST close: no header, a wrong token, or a non-Bearer header get 403; the token gets 202; unknown
    actions 404."""
    server, _ = served
    path = "/api/sessions/s1/close"
    assert request(server.port, "POST", path)[0] == 403
    assert request(server.port, "POST", path, headers={"Authorization": "Bearer nope"})[0] == 403
    assert request(server.port, "POST", path, headers={"Authorization": f"Basic {TOKEN}"})[0] == 403
    assert request(server.port, "POST", path, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 202
    assert request(server.port, "POST", "/api/status", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 404


def test_post_is_always_refused_when_no_token_is_configured(tmp_path: Path) -> None:
    """With an empty token the server is read-only: even 'Bearer ' with an empty token is 403, and the close
    action is never called."""
    calls: list[str] = []
    server = WebServer(make_config(tmp_path, token=""), status=lambda: {"sessions": []},
                       close_session=lambda sid: _record(calls, sid), port=0)
    server.start()
    try:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"}):
            assert request(server.port, "POST", "/api/sessions/s1/close", headers=headers)[0] == 403
    finally:
        server.stop()
    assert calls == []


def test_request_sizes_are_bounded(served: tuple[WebServer, Path]) -> None:
    """A body over the limit gets 413 before it is read, a chunked body 411, an overlong URL 414."""
    server, _ = served
    big = b"x" * (server.limits.max_body + 1)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert request(server.port, "POST", "/api/sessions/s1/close", headers=headers, body=big)[0] == 413
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("POST", "/api/sessions/s1/close")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        conn.send(b"0\r\n\r\n")
        assert conn.getresponse().status == 411
    finally:
        conn.close()
    assert request(server.port, "GET", "/api/status?" + "a" * (server.limits.max_url + 10))[0] == 414


def test_pages_assets_and_strict_json(served: tuple[WebServer, Path]) -> None:
    """/ serves the page with a script-only-from-self CSP, the assets load, HEAD has no body, NaN in the status
    becomes null (JSON.parse refuses NaN), unknown routes get 404 and directories never list."""
    server, _ = served
    code, headers, body = request(server.port, "GET", "/")
    assert code == 200 and headers["content-type"].startswith("text/html") and b"/static/app.js" in body
    assert "script-src 'self'" in headers["content-security-policy"]
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        code, headers, body = request(server.port, "GET", f"/static/{name}")
        assert code == 200 and headers["content-type"].startswith(kind) and len(body) > 1000
    code, headers, body = request(server.port, "HEAD", "/api/status")
    assert code == 200 and body == b"" and int(headers["content-length"]) > 0
    assert get_json(server.port, "/api/status")["weird"] is None
    for target in ("/nothing", "/api/nothing", "/api/sessions/x/other", "/static/"):
        assert request(server.port, "GET", target)[0] == 404


def test_binds_to_localhost_by_default_and_stops_with_an_idle_connection_open(tmp_path: Path) -> None:
    """The default host is 127.0.0.1; stop() returns and joins its threads even while a client holds an idle
    connection (the leaked-thread guard checks the join)."""
    config = make_config(tmp_path)
    assert config.web.host == "127.0.0.1"
    server = WebServer(config, status=lambda: None, port=0)
    server.start()
    idle = socket.create_connection(("127.0.0.1", server.port))
    try:
        assert server._server is not None and server._server.server_address[0] == "127.0.0.1"
        assert request(server.port, "GET", "/api/status")[0] == 503  # no status yet
        assert get_json(server.port, "/api/sessions") == {"sessions": [], "closed_sessions": []}
        server.stop()
    finally:
        idle.close()


def test_loopback_server_refuses_foreign_host_headers(served: tuple[WebServer, Path]) -> None:
    """Bound to 127.0.0.1, the server answers only requests naming a loopback host (a page on another site
    cannot read the API by rebinding its DNS name to 127.0.0.1)."""
    server, _ = served
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "localhost", f"[::1]:{server.port}"):
        assert request(server.port, "GET", "/api/sessions", headers={"Host": host})[0] == 200, host
    for host in (f"evil.example:{server.port}", "evil.example", f"127.0.0.1.evil.example:{server.port}"):
        assert request(server.port, "GET", "/api/status", headers={"Host": host})[0] == 421, host


def test_frames_stacked_since_the_last_checkpoint_show_what_they_became(tmp_path: Path) -> None:
    """The per-frame rows come from the journal, except frames processed since the session's last checkpoint
    (queued in the journal until it): those show their outcome and figures."""
    from astrod.io.journal import Journal
    from astrod.service.web import journal_frames

    journal = Journal(tmp_path / "journal.sqlite")
    try:
        journal.open_session("s1", {"object": "M 31"}, {})
        done, fresh = tmp_path / "a.fits", tmp_path / "b.fits"
        for i, path in enumerate((done, fresh)):
            journal.record_seen(path, size=10, mtime=1.0 + i, hash=f"h{i}")
            journal.set_file(path, status="queued", kind="light", session="s1")
        journal.commit_checkpoint("s1", checkpoint=tmp_path / "c1.npz", seq=1,
                                  frames=[(done, "stacked", None, {"fwhm": 2.5})])
        frames = journal_frames(journal, lambda sid: {str(fresh): ("rejected", "clouds", {"fwhm": 4.0})}
                                if sid == "s1" else {})
        rows = frames("s1")
        assert rows is not None
        assert [(r["name"], r["status"], r["reason"], r["fwhm"]) for r in rows] == [
            ("a.fits", "stacked", None, 2.5), ("b.fits", "rejected", "clouds", 4.0)]
        assert frames("nope") is None
    finally:
        journal.close()
