"""Fixtures of the library tests: the synthetic observatory (written once per session) and clean logging."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from tests.library.observatory import Observatory, make_observatory


@pytest.fixture(scope="session")
def observatory(tmp_path_factory: pytest.TempPathFactory) -> Observatory:
    """The synthetic observatory's source folders (shared by the session: tests must not modify them)."""
    return make_observatory(tmp_path_factory.mktemp("observatory"))


@pytest.fixture(scope="module", autouse=True)
def default_logging_per_module() -> Iterator[None]:
    """The same before a module's fixtures run (a test elsewhere may have called `main` last)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def default_logging() -> Iterator[None]:
    """structlog as unconfigured around each test: `astrod.cli.main` binds logging to the stderr of the moment,
    which pytest closes after the test that called it."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
