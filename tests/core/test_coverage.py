"""Tests of astrod.core.coverage: the crop to the area covered by a share of the frames."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from astrod.core.coverage import coverage_box


def test_shifted_frames_give_the_exact_rectangle() -> None:
    """Ten frames dithered along x by up to 18 px: the box is exactly the rectangle where ≥ 8 cover."""
    h, w = 120, 200
    count = np.zeros((h, w), np.uint16)
    for i in range(10):
        count[5: h - 5, 2 * i: w - 18 + 2 * i] += 1
    y0, y1, x0, x1 = coverage_box(count, frames=10, share=0.8)
    rows = np.flatnonzero((count >= 8).any(axis=1))
    cols = np.flatnonzero((count >= 8).any(axis=0))
    assert (y0, y1, x0, x1) == (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
    assert (count[y0:y1, x0:x1] >= 8).all()


def test_rotated_frames_box_is_covered_and_large() -> None:
    """Frames rotated by up to ±4° about the centre (3 planes): every pixel of the box is covered by ≥ 80 % of
    the frames in every plane, and the box keeps most of the well-covered area."""
    h, w = 300, 480
    count = np.zeros((3, h, w), np.uint16)
    for angle in np.linspace(-4, 4, 9):
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), float(angle), 1.0)
        cover = cv2.warpAffine(np.ones((h, w), np.uint8), m, (w, h), flags=cv2.INTER_NEAREST)
        count += cover.astype(np.uint16)[None]
    y0, y1, x0, x1 = coverage_box(count, frames=9, share=0.8)
    assert (count[:, y0:y1, x0:x1] >= math.ceil(0.8 * 9)).all()
    assert (y1 - y0) * (x1 - x0) >= 0.8 * np.count_nonzero(count[0] >= 8)


def test_binned_search_stays_conservative() -> None:
    """With a block search (max_side smaller than the frame) the box is still fully covered."""
    count = np.zeros((1000, 1500), np.uint16)
    count[37:981, 55:1433] = 5
    count[37:100, 55:90] = 1
    y0, y1, x0, x1 = coverage_box(count, frames=5, share=0.8, max_side=200)
    assert (count[y0:y1, x0:x1] >= 4).all()
    assert (y1 - y0) * (x1 - x0) >= 0.85 * 944 * 1378


def test_no_share_is_no_crop_and_nothing_covered_raises() -> None:
    """share 0 keeps the frame; a map nowhere covered well enough raises a precise ValueError."""
    count = np.ones((10, 20), np.uint16)
    assert coverage_box(count, frames=5, share=0.0) == (0, 10, 0, 20)
    with pytest.raises(ValueError, match="no pixel is covered by 4 of 5 frames"):
        coverage_box(count, frames=5, share=0.8)


def test_rejection_holes_and_trails_inside_do_not_shrink_the_box() -> None:
    """Samples rejected inside the covered area (cosmic-ray specks, a satellite trail from edge to edge) lower
    the count there, but the box stays the covered area: they are not missing frames."""
    h, w = 300, 400
    count = np.zeros((h, w), np.uint16)
    count[10:290, 20:380] = 10
    rng = np.random.default_rng(4)
    count[rng.integers(10, 290, 300), rng.integers(20, 380, 300)] = 6
    yy, xx = np.mgrid[0:h, 0:w]
    count[(np.abs(yy - 0.6 * xx - 20) < 3) & (count > 0)] = 7  # a 6 px wide diagonal trail, 3 rejections
    y0, y1, x0, x1 = coverage_box(count, frames=10, share=0.8)
    # a speck on the covered area's very edge, or where the trail leaves it, can cost a few rows or columns
    assert 10 <= y0 <= 14 and 286 <= y1 <= 290 and 20 <= x0 <= 24 and 376 <= x1 <= 380
