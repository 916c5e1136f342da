"""The watcher reports each finished frame file once, with the real watchdog observer on real folders."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from astrod.service.watcher import FolderWatcher, WatchSettings, is_candidate, scan_folders


class Collector:
    def __init__(self) -> None:
        self.paths: list[tuple[Path, int]] = []
        self.lock = threading.Lock()

    def __call__(self, path: Path) -> None:
        with self.lock:
            self.paths.append((path, path.stat().st_size))

    def wait_for(self, n: int, timeout: float = 10.0) -> list[tuple[Path, int]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.paths) >= n:
                    return list(self.paths)
            time.sleep(0.05)
        with self.lock:
            return list(self.paths)


def test_slow_chunked_write_is_reported_once_when_complete(tmp_path: Path) -> None:
    """A file written in chunks over ~2 s (one handle) is reported once, after its last byte."""
    got = Collector()
    settings = WatchSettings(folders=(tmp_path,), stable_seconds=30.0)
    with FolderWatcher(settings, got):
        target = tmp_path / "Lights" / "slow.fits"
        target.parent.mkdir()
        with target.open("wb") as handle:
            for _ in range(5):
                handle.write(b"\0" * 2880)
                handle.flush()
                time.sleep(0.4)
        seen = got.wait_for(1)
        time.sleep(1.0)
        seen = got.wait_for(2, timeout=0.5)
    assert seen == [(target, 5 * 2880)]


def test_chunked_write_with_reopen_is_reported_after_the_last_chunk(tmp_path: Path) -> None:
    """A writer that reopens the file for every chunk (quicker than the settle time) gives one report."""
    got = Collector()
    settings = WatchSettings(folders=(tmp_path,), stable_seconds=30.0, close_settle_seconds=0.5)
    with FolderWatcher(settings, got):
        target = tmp_path / "chunks.fits"
        for _ in range(4):
            with target.open("ab") as handle:
                handle.write(b"\0" * 2880)
            time.sleep(0.1)
        seen = got.wait_for(1)
        time.sleep(1.0)
        seen = got.wait_for(2, timeout=0.5)
    assert seen == [(target, 4 * 2880)]


def test_temporary_names_are_ignored_and_renames_count(tmp_path: Path) -> None:
    """*.tmp/*.part/dotfiles and non-frame files are ignored; a rename into a frame name is reported at once."""
    got = Collector()
    settings = WatchSettings(folders=(tmp_path,), stable_seconds=30.0)
    with FolderWatcher(settings, got):
        (tmp_path / "a.fits.part").write_bytes(b"x" * 10)
        (tmp_path / ".hidden.fits").write_bytes(b"x" * 10)
        (tmp_path / "notes.txt").write_text("hello")
        tmp = tmp_path / "b.fits.tmp"
        tmp.write_bytes(b"y" * 2880)
        os.replace(tmp, tmp_path / "b.fits")
        seen = got.wait_for(1)
        time.sleep(0.8)
        seen = got.wait_for(2, timeout=0.3)
    assert seen == [(tmp_path / "b.fits", 2880)]


def test_polling_uses_stable_size(tmp_path: Path) -> None:
    """With polling (network shares: no close events) a file is reported once its size stops changing."""
    got = Collector()
    settings = WatchSettings(folders=(tmp_path,), stable_seconds=1.0, polling=True, poll_interval=0.2)
    with FolderWatcher(settings, got):
        target = tmp_path / "p.fit"
        target.write_bytes(b"\0" * 100)
        time.sleep(0.5)
        with target.open("ab") as handle:
            handle.write(b"\0" * 100)
        start = time.monotonic()
        seen = got.wait_for(1, timeout=10)
        elapsed = time.monotonic() - start
    assert seen == [(target, 200)]
    assert elapsed >= 0.9  # not before the size was stable for stable_seconds


def test_scan_skips_outputs_and_survives_symlink_loops(tmp_path: Path) -> None:
    """The start-up scan finds frames oldest first, skips excluded folders and does not follow symlinks."""
    (tmp_path / "Lights").mkdir()
    (tmp_path / "stacks").mkdir()
    old = tmp_path / "Lights" / "old.fits"
    new = tmp_path / "Lights" / "new.fits"
    old.write_bytes(b"1")
    new.write_bytes(b"2")
    os.utime(old, (1_000_000, 1_000_000))
    (tmp_path / "stacks" / "stack.fits").write_bytes(b"3")
    (tmp_path / "Lights" / "loop").symlink_to(tmp_path, target_is_directory=True)
    settings = WatchSettings(folders=(tmp_path,), exclude=(tmp_path / "stacks",))
    assert list(scan_folders(settings)) == [old, new]
    assert not is_candidate(tmp_path / "stacks" / "x.fits", settings)
    assert is_candidate(tmp_path / "x.FITS", settings) and is_candidate(tmp_path / "x.cr2", settings)


def test_a_symlink_loop_is_reported_at_once_for_the_router_to_reject(tmp_path: Path) -> None:
    """A symlink loop appearing in a watched folder is handed on (the router records why it cannot be read)
    instead of being dropped without a word."""
    got: list[Path] = []
    settings = WatchSettings(folders=(tmp_path,), stable_seconds=30.0)
    with FolderWatcher(settings, got.append):
        loop = tmp_path / "loop.fits"
        loop.symlink_to(loop)
        deadline = time.monotonic() + 10.0
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
    assert got == [loop]
