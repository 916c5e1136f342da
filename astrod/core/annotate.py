"""An annotation layer drawn on an 8-bit picture: catalogued objects (a circle and a name) and a coordinate grid
(polylines with their labels). Pure: the picture and the positions in pixels in, a new RGB picture out; where
things are on the sky is the caller's business (`astrod.pipeline.annotation`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]

OBJECT_COLOUR = (255, 210, 80)  # RGB: warm yellow for objects
GRID_COLOUR = (90, 160, 255)  # RGB: soft blue for the grid


@dataclass(frozen=True, slots=True)
class Marker:
    """An object to mark: its centre and radius (px) and its name."""

    x: float
    y: float
    radius: float
    label: str


@dataclass(frozen=True, slots=True)
class GridLine:
    """One line of the coordinate grid (an (N, 2) polyline in px) and its label, written at its first point
    inside the picture."""

    points: F64
    label: str


def annotate(picture: U8, *, markers: Sequence[Marker] = (), grid: Sequence[GridLine] = (),
             line_px: int | None = None) -> U8:
    """A copy of ``picture`` ((H, W) grey or (H, W, 3) RGB, uint8) as RGB with the grid then the markers drawn
    on it; lines ``line_px`` wide (default: 1 px per 800 px of the longer side, at least 1)."""
    image = np.asarray(picture)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"annotate needs an 8-bit grey or RGB picture, got {image.dtype} {image.shape}")
    out = np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image.copy())
    h, w = out.shape[:2]
    width = line_px if line_px is not None else max(1, round(max(h, w) / 800))
    scale = max(0.35, max(h, w) / 2400)
    for line in grid:
        pts = np.asarray(line.points, dtype=np.float64).reshape(-1, 2)
        finite = pts[np.all(np.isfinite(pts), axis=1)]
        if finite.shape[0] < 2:
            continue
        cv2.polylines(out, [np.round(finite).astype(np.int32).reshape(-1, 1, 2)], False, GRID_COLOUR, width,
                      cv2.LINE_AA)
        inside = finite[(finite[:, 0] >= 0) & (finite[:, 0] < w - 1) & (finite[:, 1] >= 0) & (finite[:, 1] < h - 1)]
        if inside.shape[0]:
            x, y = inside[0]
            _text(out, line.label, (int(x) + 3, int(y) - 3), GRID_COLOUR, scale, width)
    for m in markers:
        centre = (round(m.x), round(m.y))
        cv2.circle(out, centre, max(3, round(m.radius)), OBJECT_COLOUR, width, cv2.LINE_AA)
        _text(out, m.label, (centre[0] + max(3, int(m.radius)) + 2, centre[1]), OBJECT_COLOUR, scale, width)
    return out


def _text(image: U8, text: str, origin: tuple[int, int], colour: tuple[int, int, int], scale: float,
          width: int) -> None:
    """Text with a dark outline, so that it reads on bright nebulosity too; moved inside the picture where it
    would run off it."""
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, width)
    h, w = image.shape[:2]
    origin = (max(2, min(origin[0], w - tw - 2)), max(th + 2, min(origin[1], h - 3)))
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), width + 2, cv2.LINE_AA)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, width, cv2.LINE_AA)
