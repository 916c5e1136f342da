"""Fixtures of the service tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.daemon_harness import Observatory
from tests.service.indi_harness import IndiServer, require_indi


@pytest.fixture
def server(tmp_path: Path) -> Iterator[IndiServer]:
    """A real indiserver with the CCD and telescope simulators on a free port (the test skips without INDI)."""
    require_indi()
    srv = IndiServer(tmp_path / "indi").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def obs(tmp_path: Path) -> Observatory:
    """An empty observatory folder for a daemon (its config is written by the test)."""
    o = Observatory(tmp_path / "obs")
    o.root.mkdir()
    return o


@pytest.fixture(scope="module")
def dask_offload_thread() -> None:
    """Dask's process-wide offload thread, which an in-process cluster starts and Dask never stops: started
    here, before the test's own threads are counted."""
    from distributed.utils import _offload_executor

    _offload_executor.submit(lambda: None).result()
