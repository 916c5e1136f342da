"""What is wrong now, and what went wrong lately: the daemon's problems as `astrod status` and the dashboard
show them.

A *problem* lasts: it is set when something starts failing (a checkpoint that cannot be written, a full state
disk, a config change that needs a restart) and cleared when it works again. An *error* is an event: every
problem set, and every one-off failure, is kept in a short history.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Problem:
    key: str
    text: str
    since: str


class Problems:
    """Thread-safe; ``on_change`` is called after every change (the daemon marks its status dirty)."""

    HISTORY = 50

    def __init__(self, clock: Callable[[], datetime], on_change: Callable[[], None] = lambda: None) -> None:
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._current: dict[str, Problem] = {}
        self._history: list[dict[str, str]] = []

    def set(self, key: str, text: str | None) -> None:
        """Set (text) or clear (None) the problem under ``key``; a new or changed problem is also an error."""
        with self._lock:
            if text is None:
                if self._current.pop(key, None) is None:
                    return
            else:
                old = self._current.get(key)
                if old is not None and old.text == text:
                    return
                now = self._clock().isoformat()
                self._current[key] = Problem(key, text, old.since if old is not None else now)
                self._add(key, text, now)
        self._on_change()

    def error(self, where: str, text: str) -> None:
        """A one-off failure, for the history only."""
        with self._lock:
            self._add(where, text, self._clock().isoformat())
        self._on_change()

    def _add(self, where: str, text: str, at: str) -> None:
        self._history.append({"at": at, "where": where, "error": text})
        del self._history[:-self.HISTORY]

    def current(self) -> list[Problem]:
        with self._lock:
            return list(self._current.values())

    def history(self, n: int = 20) -> list[dict[str, str]]:
        with self._lock:
            return list(self._history[-n:])
