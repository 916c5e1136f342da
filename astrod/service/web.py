"""The dashboard and its JSON API: a small threaded HTTP server beside the daemon.

Read-only without the token: the only action, closing a session (``POST /api/sessions/<id>/close``), needs
``Authorization: Bearer <token>`` and is refused outright when no token is configured. Files are served from the
output folder only (``/files/<relative path>``), after resolving symlinks; never a directory listing.

Routes: ``/`` (the page), ``/static/<asset>``, ``/api/status``, ``/api/sessions``, ``/api/sessions/<id>/frames``,
``/api/library``, ``/files/<path>``. The status is the daemon's status dict (what ``astrod status --json`` prints)
plus, for every session, ``files``: its output files with their URL, size and mtime (so the page reloads a preview
only when it changed).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import structlog

from astrod.config import Config
from astrod.io.files import folder_files, open_for_reading, package_bytes
from astrod.io.journal import Journal

log = structlog.get_logger()

StatusSource = Callable[[], Mapping[str, Any] | None]
FramesSource = Callable[[str], list[dict[str, Any]] | None]
CloseAction = Callable[[str], bool]

_STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
           "style.css": "text/css; charset=utf-8"}
_FILE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".fits": "application/fits",
               ".fit": "application/fits", ".fts": "application/fits", ".csv": "text/csv; charset=utf-8",
               ".json": "application/json", ".txt": "text/plain; charset=utf-8", ".log": "text/plain; charset=utf-8",
               ".pdf": "application/pdf", ".html": "text/html; charset=utf-8", ".tif": "image/tiff",
               ".xisf": "application/octet-stream"}
# a session's report page: its pictures are embedded (data: URIs), its style inline; no script, nothing fetched
_REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"
_METRICS = ("fwhm", "stars", "background", "eccentricity", "noise", "weight", "dx", "dy", "rotation_deg",
            "residual_px")
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
             "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass(frozen=True, slots=True)
class WebLimits:
    """Bounds on what a client may send or make the server do."""

    max_url: int = 2048  # bytes of the request target
    max_body: int = 4096  # bytes of a POST body
    timeout_s: float = 10.0  # an idle or slow connection is dropped after this
    status_max_age_s: float = 1.0  # status dicts are reused this long: many open pages, one status() per second
    max_files_per_session: int = 50


Outcome = tuple[str, str | None, Mapping[str, Any]]  # status, reason, metrics


def journal_frames(journal: Journal,
                   uncheckpointed: Callable[[str], Mapping[str, Outcome]] = lambda _: {}) -> FramesSource:
    """Per-frame rows of a session from the journal (None for an unknown session), oldest first.

    ``uncheckpointed(session_id)`` gives, by path, the outcome of frames processed since the session's last
    checkpoint, which the journal still has queued: they are shown as what they became."""

    def frames(session_id: str) -> list[dict[str, Any]] | None:
        if journal.session(session_id) is None:
            return None
        fresh = uncheckpointed(session_id)
        rows = []
        for n, record in enumerate(journal.files(session=session_id), start=1):
            status, reason, metrics = fresh.get(record.path, (record.status, record.reason, record.metrics))
            row: dict[str, Any] = {"index": n, "name": Path(record.path).name, "status": status, "reason": reason,
                                   "time": datetime.fromtimestamp(record.mtime, tz=UTC).isoformat(timespec="seconds")}
            row.update({key: metrics.get(key) for key in _METRICS})
            rows.append(row)
        return rows

    return frames


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities become null (JavaScript's JSON.parse refuses them), paths strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


class _Server(ThreadingHTTPServer):
    """Tracks open connections so that :meth:`WebServer.stop` can end idle keep-alive ones at once."""

    daemon_threads = True
    block_on_close = True  # server_close() joins the request threads

    def __init__(self, address: tuple[str, int], app: WebServer) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._conn_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)


class WebServer:
    """The dashboard server. ``start()`` binds and serves in its own thread; ``stop()`` shuts down and joins.

    ``status`` returns the daemon's status dict (or None before there is one); ``frames(session_id)`` the rows
    of a session's frames (None when unknown; see :func:`journal_frames`); ``close_session(session_id)`` asks
    for a close and says whether an open session was found. ``host``/``port`` override the config (port 0: any
    free port, then read :attr:`port`).
    """

    def __init__(self, config: Config, *, status: StatusSource, frames: FramesSource | None = None,
                 close_session: CloseAction | None = None, host: str | None = None, port: int | None = None,
                 limits: WebLimits | None = None) -> None:
        self.output = Path(config.paths.output)
        self.token = config.web.token
        self.host = config.web.host if host is None else host
        self.requested_port = config.web.port if port is None else port
        self.limits = limits or WebLimits()
        self._status = status
        self._frames = frames
        self._close = close_session
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._cache_lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any] | None] = (-math.inf, None)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("web server not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        """Bind (OSError when the address is taken) and serve in a thread."""
        self._server = _Server((self.host, self.requested_port), self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="astrod-web", daemon=True)
        self._thread.start()
        log.info("web_started", url=self.url, token=bool(self.token))

    def stop(self) -> None:
        """Stop serving, drop open connections, join every thread of the server."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        thread.join()
        server.drop_connections()
        server.server_close()
        self._server = self._thread = None
        log.info("web_stopped")

    # ------------------------------------------------------------------------------------------ data
    def status(self) -> dict[str, Any] | None:
        """The status dict with output links, at most ``status_max_age_s`` old."""
        with self._cache_lock:
            at, cached = self._cached
            if time.monotonic() - at < self.limits.status_max_age_s:
                return cached
            raw = self._status()
            fresh = None if raw is None else self._enrich(_clean(raw))
            self._cached = (time.monotonic(), fresh)
            return fresh

    def _enrich(self, status: dict[str, Any]) -> dict[str, Any]:
        root = self.output.resolve()
        for group in ("sessions", "closed_sessions"):
            items = status.get(group)
            if isinstance(items, list):
                for item in items:
                    if isinstance(item, dict):
                        item["files"] = self._session_files(root, item.get("output"))
        return status

    def _session_files(self, root: Path, output: Any) -> dict[str, dict[str, Any]]:
        if not isinstance(output, str) or not output:
            return {}
        folder = Path(output).resolve()
        if not folder.is_relative_to(root) or not folder.is_dir():
            return {}
        files: dict[str, dict[str, Any]] = {}
        for entry in folder_files(folder):
            if len(files) >= self.limits.max_files_per_session:
                break
            if entry.path.name.startswith(".") or entry.path.suffix.lower() not in _FILE_TYPES:
                continue  # temporaries of atomic writes, and anything we do not serve as a known type
            if not entry.real.is_relative_to(root):
                continue
            rel = entry.real.relative_to(root).as_posix()
            files[entry.path.name] = {"url": "/files/" + quote(rel), "size": entry.size, "mtime_ns": entry.mtime_ns}
        return files

    def resolve_file(self, raw: str) -> Path | None:
        """The file under the output folder a ``/files/`` path names, or None (traversal, symlink out, absent)."""
        rel = unquote(raw, errors="strict") if "%" in raw else raw
        if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/"):
            return None
        if any(part in ("", ".", "..") or part.startswith(".") for part in rel.split("/")):
            return None
        root = self.output.resolve()
        try:
            target = (root / rel).resolve()
        except (OSError, RuntimeError):  # symlink loops
            return None
        if not target.is_relative_to(root) or not target.is_file():
            return None
        return target

    def frames(self, session_id: str) -> list[dict[str, Any]] | None:
        if self._frames is None:
            return None
        rows = self._frames(session_id)
        return None if rows is None else [_clean(r) for r in rows]

    def close_session(self, session_id: str) -> bool | None:
        """None when closing is not wired in; else whether an open session was asked to close."""
        if self._close is None:
            return None
        return self._close(session_id)

    def host_allowed(self, header: str | None) -> bool:
        """Bound to loopback, only loopback names: a page elsewhere cannot reach us through DNS rebinding."""
        if self.host not in _LOOPBACK:
            return True
        if not header:
            return False
        name = header.rsplit(":", 1)[0] if not header.endswith("]") else header
        return name.strip("[]").lower() in _LOOPBACK

    def authorised(self, header: str | None) -> bool:
        if not self.token or not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer "):].strip().encode(), self.token.encode())


def _static_bytes(name: str) -> bytes:
    return package_bytes("astrod.service", "web_static", name)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "astrod"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive threads to wait for

    def setup(self) -> None:
        self.request.settimeout(self.server.app.limits.timeout_s)  # the base class leaves it when timeout is None
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("web_request", client=self.client_address[0], line=format % args)

    # ------------------------------------------------------------------------------------ responses
    def _send(self, code: int, body: bytes, content_type: str, *, extra: Mapping[str, str] | None = None,
              head: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, code: int, data: Any, *, head: bool = False) -> None:
        body = json.dumps(data, allow_nan=False, separators=(",", ":")).encode()
        self._send(code, body, "application/json", head=head)

    def _error(self, code: HTTPStatus, text: str, *, head: bool = False) -> None:
        self._json(int(code), {"error": text, "status": int(code)}, head=head)

    def _target(self) -> str | None:
        """The request path without query or fragment; None (after answering) when it is too long or the Host
        header names another server."""
        if len(self.path) > self.server.app.limits.max_url:
            self._error(HTTPStatus.REQUEST_URI_TOO_LONG, "request target too long")
            return None
        if not self.server.app.host_allowed(self.headers.get("Host")):
            self._error(HTTPStatus.MISDIRECTED_REQUEST, "unexpected Host header")
            return None
        return self.path.split("?", 1)[0].split("#", 1)[0]

    # ------------------------------------------------------------------------------------ methods
    def do_HEAD(self) -> None:
        self._get(head=True)

    def do_GET(self) -> None:
        self._get(head=False)

    def _get(self, *, head: bool) -> None:
        path = self._target()
        if path is None:
            return
        app = self.server.app
        try:
            if path in ("/", "/index.html"):
                self._send(200, _static_bytes("index.html"), _STATIC["index.html"],
                           extra={"Content-Security-Policy": _PAGE_CSP}, head=head)
            elif path.startswith("/static/"):
                name = path[len("/static/"):]
                if name not in _STATIC:
                    self._error(HTTPStatus.NOT_FOUND, "no such asset", head=head)
                else:
                    self._send(200, _static_bytes(name), _STATIC[name], head=head)
            elif path.startswith("/files/"):
                self._file(path[len("/files/"):], head=head)
            elif path.startswith("/api/"):
                self._api(path[len("/api/"):], app, head=head)
            else:
                self._error(HTTPStatus.NOT_FOUND, "not found", head=head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a phone locking its screen)
        except Exception:  # a failing status source must cost one request, not the server thread's silence
            log.exception("web_request_failed", path=path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the daemon's log)", head=head)

    def _api(self, route: str, app: WebServer, *, head: bool) -> None:
        status = app.status()
        if route == "status":
            if status is None:
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, "no status yet", head=head)
            else:
                self._json(200, status, head=head)
            return
        if route == "sessions":
            self._json(200, {"sessions": (status or {}).get("sessions", []),
                             "closed_sessions": (status or {}).get("closed_sessions", [])}, head=head)
            return
        if route == "library":
            library = dict((status or {}).get("library") or {})
            library.setdefault("masters", {})
            if (status or {}).get("progress"):
                library["progress"] = status["progress"]  # type: ignore[index]
            self._json(200, library, head=head)
            return
        parts = route.split("/")
        if len(parts) == 3 and parts[0] == "sessions" and parts[2] == "frames" and parts[1]:
            sid = unquote(parts[1])
            rows = app.frames(sid)
            if rows is None:
                self._error(HTTPStatus.NOT_FOUND, f"no session {sid}", head=head)
            else:
                self._json(200, {"session": sid, "frames": rows}, head=head)
            return
        self._error(HTTPStatus.NOT_FOUND, "no such API route", head=head)

    def _file(self, raw: str, *, head: bool) -> None:
        try:
            target = self.server.app.resolve_file(raw)
        except UnicodeDecodeError:
            target = None
        if target is None:
            self._error(HTTPStatus.NOT_FOUND, "not found", head=head)
            return
        content_type = _FILE_TYPES.get(target.suffix.lower())
        extra = {"Cache-Control": "no-cache"}
        if content_type is None or content_type in ("application/fits", "image/tiff", "application/octet-stream"):
            content_type = content_type or "application/octet-stream"
            extra["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(target.name)}"
        try:
            handle, size = open_for_reading(target)
        except OSError:
            self._error(HTTPStatus.NOT_FOUND, "not found", head=head)
            return
        with handle:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(size))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Content-Security-Policy", _REPORT_CSP if target.suffix.lower() == ".html"
                             else "default-src 'none'; sandbox")
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                while chunk := handle.read(1 << 20):
                    self.wfile.write(chunk)

    def do_POST(self) -> None:
        path = self._target()
        if path is None:
            return
        app = self.server.app
        if self.headers.get("Transfer-Encoding"):
            self._error(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._error(HTTPStatus.BAD_REQUEST, "bad Content-Length")
            return
        if length < 0 or length > app.limits.max_body:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {app.limits.max_body} bytes")
            return
        if length:
            self.rfile.read(length)  # nothing in it is used; read so the client sees the answer, not a reset
        parts = path.split("/")
        if not (len(parts) == 5 and parts[:3] == ["", "api", "sessions"] and parts[4] == "close" and parts[3]):
            self._error(HTTPStatus.NOT_FOUND, "no such action")
            return
        if not app.token:
            self._error(HTTPStatus.FORBIDDEN, "read-only: no web token is configured")
            return
        if not app.authorised(self.headers.get("Authorization")):
            self._error(HTTPStatus.FORBIDDEN, "missing or wrong token")
            return
        sid = unquote(parts[3])
        closed = app.close_session(sid)
        if closed is None:
            self._error(HTTPStatus.NOT_IMPLEMENTED, "closing sessions is not available")
        elif not closed:
            self._error(HTTPStatus.NOT_FOUND, f"no open session {sid}")
        else:
            log.info("web_close_requested", session=sid, client=self.client_address[0])
            self._json(int(HTTPStatus.ACCEPTED), {"session": sid, "closing": True})
