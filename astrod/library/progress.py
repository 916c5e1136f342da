"""Progress of long jobs: a one-line bar on a terminal, ``progress`` log events otherwise (journald, pipes)."""

from __future__ import annotations

import shutil
import sys
import time
from typing import Protocol, TextIO

import structlog


class Progress(Protocol):
    """What a long job reports: a stage with a total, steps done, and the end of the stage."""

    def start(self, stage: str, total: int) -> None: ...

    def advance(self, item: str = "", n: int = 1) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    """Reports nothing."""

    def start(self, stage: str, total: int) -> None:
        del stage, total

    def advance(self, item: str = "", n: int = 1) -> None:
        del item, n

    def finish(self) -> None:
        pass


class EventProgress:
    """Logs ``progress_advanced`` events (stage, done, total, item) at most every ``every_seconds`` and at the
    end of each stage, so a log under systemd shows how far a build is without a line per frame."""

    def __init__(self, *, every_seconds: float = 5.0) -> None:
        self._log = structlog.get_logger()
        self._every = every_seconds
        self._stage = ""
        self._total = 0
        self._done = 0
        self._last = 0.0

    def start(self, stage: str, total: int) -> None:
        self._stage, self._total, self._done = stage, total, 0
        self._last = time.monotonic()
        self._log.info("progress_started", stage=stage, total=total)

    def advance(self, item: str = "", n: int = 1) -> None:
        self._done += n
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._log.info("progress_advanced", stage=self._stage, done=self._done, total=self._total, item=item)

    def finish(self) -> None:
        self._log.info("progress_finished", stage=self._stage, done=self._done, total=self._total)


class BarProgress:
    """A one-line bar redrawn in place on a terminal: ``build  [########------]  12/40  dark ...``."""

    def __init__(self, stream: TextIO | None = None, *, width: int = 30) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._width = width
        self._stage = ""
        self._total = 0
        self._done = 0

    def start(self, stage: str, total: int) -> None:
        self._stage, self._total, self._done = stage, total, 0
        self._draw("")

    def advance(self, item: str = "", n: int = 1) -> None:
        self._done += n
        self._draw(item)

    def finish(self) -> None:
        self._draw("")
        self._stream.write("\n")  # keep the finished bar
        self._stream.flush()

    def _draw(self, item: str) -> None:
        total = max(self._total, 1)
        filled = min(self._width, self._width * self._done // total)
        bar = "#" * filled + "-" * (self._width - filled)
        columns = shutil.get_terminal_size((100, 24)).columns
        text = f"{self._stage:<6} [{bar}] {self._done}/{self._total}  {item}"[: max(columns - 1, 20)]
        # erase the rest of the line, and leave the cursor at its start: a log line printed meanwhile
        # overwrites the bar instead of being glued to its end
        self._stream.write(f"\r{text}\x1b[K\r")
        self._stream.flush()


def progress_for(stream: TextIO | None = None) -> Progress:
    """A bar when ``stream`` (default stderr) is a terminal, log events otherwise."""
    out = stream if stream is not None else sys.stderr
    return BarProgress(out) if out.isatty() else EventProgress()
