"""The control folder: requests to the running daemon (``astrod session close``) as small JSON files.

A request is handled once, even when its file cannot be removed afterwards (created by another user in a
folder the daemon may not write): the inbox remembers the names it handled — those it could not remove also in
a small file beside the state, so that a restart does not act on them again — and the daemon lists them in its
status, which is how the command that wrote a request learns that it was acted on.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astrod.io.atomic import atomic_write_text


@dataclass(frozen=True, slots=True)
class Request:
    name: str
    data: dict[str, Any] | None  # None: unreadable
    error: str | None = None


def write_request(folder: Path, data: dict[str, Any]) -> Path:
    """Put a request into the control folder (atomically); returns its file. Raises OSError when the folder
    cannot be written."""
    target = folder / f"{data.get('action', 'request')}-{time.time_ns()}.json"
    atomic_write_text(target, json.dumps(data) + "\n")
    return target


class ControlInbox:
    KEEP = 50

    def __init__(self, folder: Path, *, memory: Path | None = None) -> None:
        self.folder = folder
        self._memory = memory
        self._handled: deque[str] = deque(maxlen=self.KEEP)
        self._stuck: set[str] = set()  # handled, but the file could not be removed
        if memory is not None:
            try:
                names = json.loads(memory.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                names = []
            # only those still there matter: a name is never reused (it holds the time in ns)
            self._stuck = {str(n) for n in names if isinstance(n, str) and (folder / n).exists()}

    @property
    def stuck(self) -> list[str]:
        """Handled requests whose files are still there (could not be removed)."""
        return sorted(self._stuck)

    def poll(self) -> list[Request]:
        """The requests not handled yet, oldest first."""
        if not self.folder.is_dir():
            return []
        out = []
        for path in sorted(self.folder.glob("*.json")):
            if path.name in self._stuck:
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                out.append(Request(path.name, data if isinstance(data, dict) else None,
                                   None if isinstance(data, dict) else "not a JSON object"))
            except (OSError, ValueError) as err:
                out.append(Request(path.name, None, str(err)))
        return out

    def done(self, request: Request) -> str | None:
        """Mark a request handled and remove its file; returns why the file could not be removed (the request
        is still never handled twice)."""
        self._handled.append(request.name)
        try:
            (self.folder / request.name).unlink(missing_ok=True)
        except OSError as err:
            self._stuck.add(request.name)
            if self._memory is not None:
                # remembered in memory at least, if not on disk: a restart may then act on it once more
                with contextlib.suppress(OSError):
                    atomic_write_text(self._memory, json.dumps(sorted(self._stuck)) + "\n")
            return f"{self.folder / request.name}: cannot remove a handled request: {err.strerror or err}"
        return None

    @property
    def handled(self) -> list[str]:
        return list(self._handled)
