"""Turns file-system events into paths of finished frame files.

A file is finished when the writer closed it (inotify close-after-write) and nothing touched it for a short
settle time, or — for network shares and pollers, which see no close — when its size and mtime have not changed
for ``stable_seconds``. A rename into a frame name (atomic writers) is finished at once. Temporary names,
astrod's own outputs and non-frame files are ignored.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import structlog
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from astrod.io.files import ensure_folder, files_oldest_first
from astrod.io.frames import is_frame_name
from astrod.service.queue_thread import QueueThread

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class WatchSettings:
    folders: tuple[Path, ...]
    stable_seconds: float = 5.0
    close_settle_seconds: float = 0.3
    polling: bool = False
    poll_interval: float = 2.0
    ignore: tuple[str, ...] = ("*.tmp", "*.part", ".*", "*~")
    exclude: tuple[Path, ...] = ()  # astrod's own output, state and library folders


def is_candidate(path: Path, settings: WatchSettings) -> bool:
    """Whether ``path`` is a frame file astrod should look at (by name and place, not content)."""
    if any(fnmatchcase(path.name, pattern) for pattern in settings.ignore):
        return False
    if any(part.startswith(".") for part in path.parts[1:-1]):
        return False  # hidden folders: temporary upload areas, our own temp files
    for folder in settings.exclude:
        if path == folder or folder in path.parents:
            return False
    return is_frame_name(path)


def scan_folders(settings: WatchSettings) -> Iterator[Path]:
    """Every candidate frame already in the folders, oldest first (files that arrived while astrod was down).

    Symlinked folders are not followed, so a symlink loop cannot trap the scan.
    """
    yield from files_oldest_first(settings.folders, keep=lambda path: is_candidate(path, settings))


@dataclass(slots=True)
class _Pending:
    size: int
    mtime: float
    since: float
    closed: bool


class _Handler(FileSystemEventHandler):
    def __init__(self, events: QueueThread[tuple[str, Path]]) -> None:
        self._events = events  # the settle thread

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if isinstance(event, FileMovedEvent):
            self._events.put(("moved", Path(os.fsdecode(event.dest_path))))
            self._events.put(("deleted", Path(os.fsdecode(event.src_path))))
        elif isinstance(event, FileClosedEvent):
            self._events.put(("closed", Path(os.fsdecode(event.src_path))))
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent):
            self._events.put(("changed", Path(os.fsdecode(event.src_path))))
        elif isinstance(event, FileDeletedEvent):
            self._events.put(("deleted", Path(os.fsdecode(event.src_path))))


class _Settle(QueueThread[tuple[str, Path]]):
    """The settle thread: notes each event, and when none came for a moment, reports the files that settled."""

    def __init__(self, note: Callable[[str, Path], None], emit: Callable[[], None]) -> None:
        super().__init__(name="astrod-watch-settle")
        self._note = note
        self._emit = emit

    def handle(self, item: tuple[str, Path]) -> bool:
        self._note(*item)
        return False  # drain a burst first, then look at what settled

    def wait_s(self) -> float | None:
        return 0.1

    def idle(self) -> bool:
        self._emit()
        return False


class FolderWatcher:
    """Watches folders recursively and calls ``on_ready(path)`` once per finished file version.

    Owns two threads (the watchdog observer and a settle thread); ``stop()`` joins both.
    """

    def __init__(self, settings: WatchSettings, on_ready: Callable[[Path], None], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._on_ready = on_ready
        self._clock = clock
        self._pending: dict[Path, _Pending] = {}  # the settle thread's own
        self._settle = _Settle(self._note, self._emit_settled)
        self._observer: BaseObserver | None = None
        self._started = False

    def start(self) -> None:
        observer: BaseObserver = (PollingObserver(timeout=self._settings.poll_interval) if self._settings.polling
                                  else Observer())
        handler = _Handler(self._settle)
        for folder in self._settings.folders:
            ensure_folder(folder)
            observer.schedule(handler, str(folder), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._settle.start()
        self._started = True
        log.info("watch_started", folders=[str(f) for f in self._settings.folders], polling=self._settings.polling)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
        if self._started:
            self._settle.stop()
            self._settle.join(timeout=10)

    def __enter__(self) -> FolderWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _note(self, kind: str, path: Path) -> None:
        if kind == "deleted":
            self._pending.pop(path, None)
            return
        if not is_candidate(path, self._settings):
            return
        try:
            st = path.stat()
        except FileNotFoundError:
            self._pending.pop(path, None)
            return
        except OSError as err:  # there, but not usable (a symlink loop): the router records it with the reason
            self._pending.pop(path, None)
            log.warning("watch_cannot_stat", frame=str(path), reason=err.strerror or str(err))
            self._ready(path)
            return
        now = self._clock()
        if kind == "moved":
            # a rename into place is how careful writers publish a complete file
            self._pending.pop(path, None)
            self._ready(path)
            return
        prev = self._pending.get(path)
        closed = kind == "closed" or (prev is not None and prev.closed and kind != "changed")
        if prev is None or (prev.size, prev.mtime) != (st.st_size, st.st_mtime) or kind == "closed":
            self._pending[path] = _Pending(st.st_size, st.st_mtime, now, closed)

    def _emit_settled(self) -> None:
        now = self._clock()
        for path, pend in list(self._pending.items()):
            wait = self._settings.close_settle_seconds if pend.closed else self._settings.stable_seconds
            if now - pend.since < wait:
                continue
            try:
                st = path.stat()
            except OSError:
                del self._pending[path]
                continue
            if (st.st_size, st.st_mtime) != (pend.size, pend.mtime):
                self._pending[path] = _Pending(st.st_size, st.st_mtime, now, False)
                continue
            del self._pending[path]
            self._ready(path)

    def _ready(self, path: Path) -> None:
        try:
            self._on_ready(path)
        except Exception:  # the consumer's bug must not kill the watcher: log it and go on
            log.exception("ready_callback_failed", frame=str(path))


