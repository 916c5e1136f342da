"""Fixtures shared by every test: the real-data folder, and a guard against leaked threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real-data folder beside the project; tests that need it skip cleanly where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def reset_logging() -> Iterator[None]:
    """Each test starts with structlog's defaults: a CLI call configures it to write to a stream (pytest's
    captured stderr) that is closed once the test ends."""
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running: every thread a test starts, it must stop and join."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"
