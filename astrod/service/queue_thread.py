"""One way to run a thread that consumes its own queue (the router, each session worker, the watcher's settle
thread): items in, one at a time, until `stop()`; a failure in one item is reported and the thread goes on.

Like watchdog's ``BaseThread``, but with the queue built in: the stop request is a private sentinel that queues
behind the items already there, so a stopped thread has handled everything it was given first.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger()

T = TypeVar("T")
_STOP = object()


class QueueThread(Generic[T]):
    """Subclasses implement `handle`; they may also implement `wait_s` and `idle` (work due when no item came
    for a while), `stopping` (the last work before the thread ends) and `failed`."""

    def __init__(self, name: str) -> None:
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    # ------------------------------------------------------------------------------------ other threads
    def start(self) -> None:
        self._thread.start()

    def put(self, item: T) -> None:
        self._queue.put(item)

    def stop(self) -> None:
        """End the thread once the items queued before are handled."""
        self._queue.put(_STOP)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def backlog(self) -> int:
        """Items waiting (not counting the one being handled)."""
        return self._queue.qsize()

    @property
    def unfinished(self) -> int:
        """Items put and not yet handled to the end (the one being handled included)."""
        return self._queue.unfinished_tasks

    def _take_all(self) -> list[object]:
        """Everything queued now, removed from the queue in order (a stop request among them included: give
        the list back to `_put_back`, after what is to come first)."""
        items: list[object] = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items
            self._queue.task_done()

    def _put_back(self, items: list[object]) -> None:
        for item in items:
            self._queue.put(item)

    # ------------------------------------------------------------------------------------ the thread
    def handle(self, item: T) -> bool:
        """Handle one item; True ends the thread."""
        raise NotImplementedError

    def wait_s(self) -> float | None:
        """How long to wait for an item before `idle` (None: wait for ever)."""
        return None

    def idle(self) -> bool:
        """Work that is due (no item came within `wait_s`); True ends the thread."""
        return False

    def stopping(self) -> None:
        """The last work before the thread ends on `stop()`."""

    def failed(self, err: Exception) -> None:
        """An item or `idle` raised: report it (the thread goes on)."""
        log.error("thread_item_failed", thread=self._thread.name, error=str(err), exc_info=err)

    def _loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.wait_s())
            except queue.Empty:
                if self._guarded(self.idle):
                    return
                continue
            try:
                if item is _STOP:
                    self._guarded(self.stopping)
                    return
                if self._guarded(functools.partial(self.handle, item)):  # type: ignore[arg-type]
                    return
            finally:
                self._queue.task_done()

    def _guarded(self, work: Callable[[], object]) -> bool:
        try:
            return bool(work())
        except Exception as err:  # one bad item must not end the thread
            self.failed(err)
            time.sleep(0.05)  # a failure that repeats at once must not spin the CPU
            return False
