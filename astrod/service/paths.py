"""Where the daemon keeps its state, and how other processes (the CLI) find and talk to a running daemon."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astrod.config import Config
from astrod.io.control import write_request
from astrod.io.status_file import read_status_file

STATUS_FILE = "status.json"
CONTROL_DIR = "control"


@dataclass(frozen=True, slots=True)
class DaemonPaths:
    state: Path
    library: Path
    output: Path

    @property
    def journal(self) -> Path:
        return self.state / "journal.sqlite"

    @property
    def status(self) -> Path:
        return self.state / STATUS_FILE

    @property
    def control(self) -> Path:
        return self.state / CONTROL_DIR

    @property
    def sessions(self) -> Path:
        return self.state / "sessions"

    def session_state(self, session_id: str) -> Path:
        return self.sessions / session_id


def daemon_paths(config: Config) -> DaemonPaths:
    return DaemonPaths(state=config.state_dir(), library=config.library_dir(), output=config.paths.output)


def request_close(config: Config, session: str | None) -> Path:
    """Ask the running daemon to close one session (or all, with None); returns the request file (its name
    appears in the status's ``control_handled`` once the daemon acted on it). Raises OSError when the control
    folder cannot be written."""
    return write_request(daemon_paths(config).control, {"action": "close", "session": session})


def read_status(config: Config) -> dict[str, Any] | None:
    """The status the daemon last wrote, with ``running`` corrected when its process is gone."""
    status = read_status_file(daemon_paths(config).status)
    if status is None:
        return None
    pid = int(status.get("pid", 0))
    alive = False
    if pid > 0:
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
    status["running"] = bool(status.get("running")) and alive
    return status
