"""Tests of astrod.io.checkpoint: atomic, bit-exact save and load of arrays with JSON metadata."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from astrod.io import checkpoint
from astrod.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _arrays() -> dict[str, Any]:
    rng = np.random.default_rng(3)
    f = rng.standard_normal((7, 5)).astype(np.float32)
    f[2, 3] = np.nan
    f[0, 0] = -0.0
    return {"mean": f, "count": rng.integers(0, 65535, (3, 7, 5)).astype(np.uint16),
            "mask": rng.random((4, 4)) > 0.5, "scalar": np.array(2.5), "name": np.array("snr"),
            "empty": np.empty((0, 2))}


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    """Arrays come back with the same dtype, shape and bytes (NaN and -0.0 included); metadata floats exactly."""
    arrays = _arrays()
    meta = {"x": 0.1 + 0.2, "nan": math.nan, "rows": [{"a": None, "b": "ü"}], "n": 2**40}
    save_checkpoint(tmp_path / "c.npz", arrays, meta)
    got, got_meta = load_checkpoint(tmp_path / "c.npz")
    assert set(got) == set(arrays)
    for name, a in arrays.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape
        assert got[name].tobytes() == a.tobytes()
        assert got[name].flags.writeable
    assert got_meta["x"] == 0.1 + 0.2
    assert math.isnan(got_meta["nan"])
    assert got_meta["rows"] == [{"a": None, "b": "ü"}] and got_meta["n"] == 2**40


def test_failed_write_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash while writing leaves the old checkpoint intact and no temporary file behind."""
    target = tmp_path / "c.npz"
    save_checkpoint(target, {"a": np.arange(3)}, {"seq": 1})
    before = target.read_bytes()

    def broken_savez(handle: Any, *args: Any, **kwargs: Any) -> None:
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, {"a": np.arange(4)}, {"seq": 2})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]


def test_refuses_what_would_need_pickling(tmp_path: Path) -> None:
    """Object arrays, the reserved name and non-JSON metadata are refused before anything is written."""
    with pytest.raises(ValueError, match="object"):
        save_checkpoint(tmp_path / "a.npz", {"o": np.array([{"a": 1}], dtype=object)}, {})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "b.npz", {"__meta__": np.zeros(1)}, {})
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "c.npz", {}, {"when": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04truncated"])
def test_corrupt_file_raises_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    """Empty, garbage or truncated files raise CheckpointError naming the file."""
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad"):
        load_checkpoint(bad)


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    """A missing file and a plain .npz without astrod metadata raise CheckpointError."""
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.npz")
    np.savez(tmp_path / "plain.npz", a=np.arange(3))
    with pytest.raises(CheckpointError, match="not an astrod checkpoint"):
        load_checkpoint(tmp_path / "plain.npz")
