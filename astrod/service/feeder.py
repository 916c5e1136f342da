"""Feeding files into a watched folder on a schedule (the demo's synthetic night; capture simulations).

The feeder thread belongs to the service layer like every other thread. Each file is published by a rename,
the way careful capture programs publish a finished frame.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from astrod.io.files import move_file


@dataclass(frozen=True, slots=True)
class FeedStep:
    delay: float  # seconds to wait before this file
    source: Path
    target: Path


class Feeder:
    def __init__(self, steps: Sequence[FeedStep], *, on_fed: Callable[[FeedStep], None] | None = None) -> None:
        self._steps = list(steps)
        self._on_fed = on_fed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="astrod-feeder", daemon=True)
        self.done = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            for step in self._steps:
                if self._stop.wait(step.delay):
                    return
                move_file(step.source, step.target)
                if self._on_fed is not None:
                    self._on_fed(step)
        finally:
            self.done.set()
