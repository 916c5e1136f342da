"""Tests of astrod.io.frame_cache: registered frames written band by band, read back by rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from astrod.io.frame_cache import CachedFrameWriter, read_cached_rows


@pytest.mark.parametrize("shape", [(30, 17), (3, 30, 17)])
def test_bands_written_in_any_order_make_the_frame(tmp_path: Path, shape: tuple[int, ...]) -> None:
    """Bands land at their rows (per plane for colour); the file is a plain .npy of the whole frame, and
    rows read back without the rest of it."""
    rng = np.random.default_rng(3)
    frame = rng.normal(size=shape).astype(np.float32)
    frame[..., 4, 2] = np.nan
    target = tmp_path / "frame_000000.npy"
    with CachedFrameWriter(target, shape) as writer:
        for row0, row1 in ((11, 30), (0, 7), (7, 11)):
            writer.write(row0, frame[..., row0:row1, :])
            assert not target.exists()
    np.testing.assert_array_equal(np.load(target), frame)
    np.testing.assert_array_equal(read_cached_rows(target, 5, 9), frame[..., 5:9, :])
    assert list(tmp_path.iterdir()) == [target]


def test_an_interrupted_or_incomplete_frame_leaves_no_file(tmp_path: Path) -> None:
    """An error inside the block, or rows never written, leave neither the frame nor its temporary."""
    frame = np.ones((20, 8), dtype=np.float32)
    target = tmp_path / "frame.npy"
    with pytest.raises(RuntimeError), CachedFrameWriter(target, frame.shape) as writer:
        writer.write(0, frame[:10])
        raise RuntimeError("warp failed")
    with CachedFrameWriter(target, frame.shape) as writer:
        writer.write(0, frame[:10])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="does not fit"), CachedFrameWriter(target, frame.shape) as writer:
        writer.write(15, frame[:10])
    assert list(tmp_path.iterdir()) == []
