"""The built-in demo (the README's main command) runs and classifies its synthetic night correctly."""

from __future__ import annotations

from pathlib import Path

import pytest

from astrod.cli import main
from astrod.demo import write_demo_night
from astrod.io.frames import read_meta
from astrod.model import FrameKind


def test_demo_night_classifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`astrod demo` exits 0, reports the broken frame with its reason, and counts every kind."""
    assert main(["demo", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "M31_L_truncated.fits: truncated: the image needs" in out
    assert "frames by kind: bias 5, dark 5, flat 10, light 16, unreadable 1" in out


def test_demo_frames_carry_their_dialects(tmp_path: Path) -> None:
    """Lights of one target are N.I.N.A., of the other INDI; both normalise to the same fields."""
    night = write_demo_night(tmp_path, lights_per_target=1)
    metas = [read_meta(p) for p in night.lights]
    assert {m.kind for m in metas} == {FrameKind.LIGHT}
    assert {m.object for m in metas} == {"M 31", "NGC 7000"}
    assert {m.filter for m in metas} == {"L", "Ha"}
    assert all(m.exposure == 60.0 and m.gain == 100.0 and m.temperature == -10.0 for m in metas)
