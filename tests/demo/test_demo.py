"""The built-in demo (the README's main command) runs the daemon through a synthetic night."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astrod.cli import main
from astrod.demo import write_demo_night
from astrod.io.frames import read_meta
from astrod.model import FrameKind


@pytest.mark.slow
def test_demo_night_ends_with_four_stacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`astrod demo` exits 0 with four closed sessions (2 targets × 2 filters), their stacks and previews, the
    masters built from the calibration frames, and the broken frame rejected with its reason."""
    assert main(["demo", "--workdir", str(tmp_path), "--interval", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "M31_L_truncated.fits: truncated: the image needs" in out
    stacks = sorted(tmp_path.rglob("stack.fits"))
    assert len(stacks) == 4
    for stack in stacks:
        assert (stack.parent / "preview.jpg").stat().st_size > 0
        summary = json.loads((stack.parent / "session.json").read_text())
        assert summary["stacked"] == 4 and summary["rejected"] == 0
        # the exact dark already holds the bias, so the bias master is not applied on its own
        assert {m.split("_")[0] for m in summary["masters"]} == {"dark", "flat", "badpixels"}
        assert str(stack) in out
    assert "library: " in out and " masters in " in out


def test_demo_frames_carry_their_dialects(tmp_path: Path) -> None:
    """Lights of one target are N.I.N.A., of the other INDI; both normalise to the same fields."""
    night = write_demo_night(tmp_path, lights_per_target=1)
    metas = [read_meta(p) for p in night.lights]
    assert {m.kind for m in metas} == {FrameKind.LIGHT}
    assert {m.object for m in metas} == {"M 31", "NGC 7000"}
    assert {m.filter for m in metas} == {"L", "Ha"}
    assert all(m.exposure == 60.0 and m.gain == 100.0 and m.temperature == -10.0 for m in metas)


@pytest.mark.slow
def test_indi_demo_captures_and_stacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`astrod demo --indi`: the daemon runs a capture plan on the INDI simulators (biases, darks, 6 lights of
    M 31), builds the masters and closes the session at the plan's end with all 6 lights stacked."""
    from tests.service.indi_harness import require_indi

    require_indi()
    assert main(["demo", "--indi", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (stack,) = tmp_path.rglob("stack.fits")
    summary = json.loads((stack.parent / "session.json").read_text())
    assert summary["stacked"] == 6 and summary["closed_because"] == "capture plan finished"
    assert {m.split("_")[0] for m in summary["masters"]} >= {"dark"}
    assert str(stack) in out
