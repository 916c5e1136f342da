"""Tests of astrod.io.frame_cache: registered frames written band by band, read back by rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from astrod.core.warp import warp
from astrod.io.frame_cache import CachedFrameWriter, read_cached_rows, remove_cached_frames, rewarp_cached_frame
from astrod.model import Transform


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


@pytest.mark.parametrize("shape", [(40, 36), (3, 40, 36)])
def test_rewarp_writes_the_warp_of_a_cached_frame_into_a_new_file(tmp_path: Path, shape: tuple[int, ...]) -> None:
    """A cached frame re-warped onto another grid is, in a file of another name, what `warp` makes of it (NaN
    coverage included); the source is left as it was; the old files go with `remove_cached_frames`."""
    rng = np.random.default_rng(4)
    frame = rng.normal(100.0, 5.0, shape).astype(np.float32)
    frame[..., :3, :] = np.nan
    source = tmp_path / "frame_000000.npy"
    with CachedFrameWriter(source, shape) as writer:
        writer.write(0, frame)
    t = Transform.similarity(dx=2.3, dy=-1.4, rotation_deg=1.5)
    new_shape = (*shape[:-2], 38, 41)
    target = tmp_path / "frame_000000_ref2.npy"
    rewarp_cached_frame(source, target, t, shape=new_shape, band_rows=7)
    expected = warp(frame, t, shape=(38, 41))
    got = np.load(target)
    assert got.shape == new_shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, atol=1e-3, equal_nan=True)
    np.testing.assert_array_equal(np.load(source), frame)
    with pytest.raises(ValueError, match="another name"):
        rewarp_cached_frame(source, source, t, shape=new_shape)
    with pytest.raises(ValueError, match="cannot be re-warped"):
        rewarp_cached_frame(source, tmp_path / "x.npy", t, shape=(4, 38, 41))
    remove_cached_frames([source, tmp_path / "never_written.npy"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
