"""The ``astrod reprocess`` command line: arguments checked before anything runs, and a dry run that plans
without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from astrod.demo import synth
from tests.pipeline.conftest import run_cli


def test_dry_run_prints_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two lights of one target: one session to do, printed with its folder; nothing written."""
    for minute in (0, 1):
        synth.write_fits(tmp_path / "arch" / f"l{minute}.fits", np.full((32, 32), 900.0, dtype=np.float32),
                         object="M 42", date_obs=datetime(2024, 1, 5, 22, minute, tzinfo=UTC))
    assert run_cli("reprocess", tmp_path / "arch", "-o", tmp_path / "out", "--library", tmp_path / "lib",
                   "--dry-run") == 0
    out = capsys.readouterr().out
    assert "1 sessions, 2 lights, 0 calibration frames" in out
    assert str(tmp_path / "out" / "2024-01-05" / "M_42" / "L") in out
    assert not (tmp_path / "out").exists() and not (tmp_path / "lib").exists()


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A date that is not one, a missing folder, or no worker: exit 2 with the reason."""
    (tmp_path / "arch").mkdir()
    assert run_cli("reprocess", tmp_path / "arch", "--since", "yesterday", "--dry-run") == 2
    assert "--since" in capsys.readouterr().err
    assert run_cli("reprocess", tmp_path / "nope", "--dry-run") == 2
    assert "not a folder" in capsys.readouterr().err
    assert run_cli("reprocess", tmp_path / "arch", "--workers", "0", "--dry-run") == 2
    assert "--workers" in capsys.readouterr().err
