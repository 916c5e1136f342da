"""Logging: JSON lines under systemd or into pipes, key=value on a terminal, events with bound keys."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog
from PIL import Image

from astrod.io.frames import read_meta
from astrod.service.logging import configure_logging, wants_json


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_json_when_not_a_terminal_or_under_systemd() -> None:
    """JOURNAL_STREAM (systemd) or a pipe gives JSON; a terminal gives console output; explicit wins."""
    assert wants_json(io.StringIO(), {}) is True
    assert wants_json(FakeTTY(), {}) is False
    assert wants_json(FakeTTY(), {"JOURNAL_STREAM": "8:1234"}) is True
    assert wants_json(io.StringIO(), {}, "console") is False


def test_json_lines_carry_bound_keys() -> None:
    """Each event is one JSON line with the event name, level, timestamp and bound keys."""
    out = io.StringIO()
    configure_logging(stream=out, env={})
    log = structlog.get_logger().bind(session="M31-L", frame="a.fits")
    log.info("frame_stacked", fwhm=2.1)
    log.debug("hidden")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "frame_stacked" and event["session"] == "M31-L" and event["frame"] == "a.fits"
    assert event["level"] == "info" and event["fwhm"] == 2.1 and event["timestamp"].endswith("Z")


def test_console_on_a_terminal() -> None:
    """On a terminal the output is key=value text, not JSON."""
    out = FakeTTY()
    configure_logging(stream=out, env={}, level="debug")
    structlog.get_logger().info("library_built", masters=3)
    text = out.getvalue()
    assert "library_built" in text and "masters" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_pictures_without_exif_log_no_exifread_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Once logging is configured, reading a PNG without EXIF gives no exifread warning (which the standard
    library would print raw on stderr); the frame's notes say what it lacks."""
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "plain.png")
    configure_logging(stream=io.StringIO(), env={})
    meta = read_meta(tmp_path / "plain.png")
    assert "exposure: unknown (none in the file)" in meta.notes
    assert [r.getMessage() for r in caplog.records if r.name.startswith("exifread")] == []
