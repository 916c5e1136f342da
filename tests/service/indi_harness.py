"""The INDI tests' view of astrod.service.indiserver: skip cleanly where INDI is not installed."""

from __future__ import annotations

import pytest

from astrod.service.indiserver import CAMERA, FAKE_GSC, HEIGHT, MOUNT, WIDTH, IndiServer, free_port, missing_indi

__all__ = ["CAMERA", "FAKE_GSC", "HEIGHT", "MOUNT", "WIDTH", "IndiServer", "free_port", "require_indi"]


def require_indi() -> None:
    """Skip the test when indiserver, the simulators or pyindi-client are not installed."""
    reason = missing_indi()
    if reason is not None:
        pytest.skip(reason)
