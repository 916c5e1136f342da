"""The crop of a finished picture: the largest rectangle (found greedily) inside which every pixel was covered by
at least a given share of the frames (dithering, drift and field rotation leave ragged, noisy edges).

Greedy peeling on a block-minimum copy of the count map (at most ``max_side`` px on its longer side, so the cost
does not grow with the stack; the minimum is conservative: a block is covered only when all its pixels are):
while the rectangle holds an under-covered block, drop the edge row or column with the largest share of them
(prefix sums make each step O(1)). This is not the largest inscribed rectangle in every case, but for the shapes
stacks have (a union of shifted and slightly rotated frames) it loses at most a few blocks per side.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open)


def coverage_box(count: npt.NDArray[np.integer], *, frames: int, share: float = 0.8, max_side: int = 1024,
                 close: int = 3) -> Box:
    """The crop (y0, y1, x0, x1) of a (H, W) or (planes, H, W) per-pixel frame count inside which every pixel
    counts at least ``ceil(share · frames)`` frames (every plane), once gaps up to ``2·close`` blocks wide
    inside the covered area are closed (rejected samples, not missing frames). ``share`` 0: the whole frame.
    Raises ValueError when no pixel is covered that well."""
    h, w = count.shape[-2:]
    if share <= 0 or frames <= 0:
        return (0, h, 0, w)
    if share > 1:
        raise ValueError(f"coverage share must be in [0, 1], got {share}")
    need = max(1, math.ceil(share * frames - 1e-9))
    plane = count if count.ndim == 2 else np.min(count, axis=0)
    f = max(1, math.ceil(max(h, w) / max_side))
    bh, bw = h // f, w // f
    blocks = plane[: bh * f, : bw * f].reshape(bh, f, bw, f).min(axis=(1, 3)) if f > 1 else plane
    good = (blocks >= need).astype(np.uint8)
    if close > 0:
        # the count is of samples used: rejected ones (a satellite trail, cosmic rays, hot pixels) leave thin
        # lines and specks of lower count inside the covered area, which a closing fills; the
        # edges of the coverage (straight, from frame borders) stay where they are; outside the frame counts as
        # uncovered (a pad), so an uncovered band along the frame's edge is no gap to close
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * close + 1, 2 * close + 1))
        pad = close + 1
        padded = cv2.copyMakeBorder(good, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        good = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, kernel)[pad:-pad, pad:-pad]
    bad = (good == 0).astype(np.int64)
    if bad.all():
        raise ValueError(f"no pixel is covered by {need} of {frames} frames")
    y0, y1, x0, x1 = _peel(bad)
    # back to full pixels; the blocks of the last partial row and column were never looked at
    return (y0 * f, y1 * f, x0 * f, x1 * f) if f > 1 else (y0, y1, x0, x1)


def _peel(bad: npt.NDArray[np.int64]) -> Box:
    """Greedy peeling of the rectangle until it holds no bad cell."""
    h, w = bad.shape
    s = np.zeros((h + 1, w + 1), dtype=np.int64)
    s[1:, 1:] = bad.cumsum(axis=0).cumsum(axis=1)

    def total(a: int, b: int, c: int, d: int) -> int:  # bad cells in rows [a, b), columns [c, d)
        return int(s[b, d] - s[a, d] - s[b, c] + s[a, c])

    y0, y1, x0, x1 = 0, h, 0, w
    while y1 > y0 and x1 > x0 and total(y0, y1, x0, x1) > 0:
        width, height = x1 - x0, y1 - y0
        edges = [(total(y0, y0 + 1, x0, x1) / width, 0), (total(y1 - 1, y1, x0, x1) / width, 1),
                 (total(y0, y1, x0, x0 + 1) / height, 2), (total(y0, y1, x1 - 1, x1) / height, 3)]
        _, side = max(edges)
        if side == 0:
            y0 += 1
        elif side == 1:
            y1 -= 1
        elif side == 2:
            x0 += 1
        else:
            x1 -= 1
    return (y0, y1, x0, x1)
