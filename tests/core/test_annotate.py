"""The annotation kernel draws markers and grid lines on a copy of an 8-bit picture, in their colours, where told."""

from __future__ import annotations

import numpy as np
import pytest

from astrod.core.annotate import GRID_COLOUR, OBJECT_COLOUR, GridLine, Marker, annotate


def _near(image: np.ndarray, x: int, y: int, colour: tuple[int, int, int]) -> bool:
    """Some pixel within 1 px of (x, y) is mostly ``colour`` (anti-aliased lines blend into the background)."""
    patch = image[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).astype(int)
    return bool(np.min(np.abs(patch - np.array(colour)).sum(axis=1)) <= 100)  # the background is 400 off


def test_markers_and_grid_are_drawn_on_a_copy_where_told() -> None:
    """A grey picture comes back RGB with a circle of the object colour around the marker (its centre left
    dark), a line of the grid colour along the polyline, the labels in the picture; the input is unchanged."""
    picture = np.full((200, 300), 20, dtype=np.uint8)
    out = annotate(picture, markers=[Marker(x=150.0, y=100.0, radius=30.0, label="NGC 7023")],
                   grid=[GridLine(points=np.array([[0.0, 20.0], [299.0, 20.0]]), label="+68d00'"),
                         GridLine(points=np.array([[np.nan, np.nan]]), label="nowhere")], line_px=1)
    assert out.shape == (200, 300, 3) and out.dtype == np.uint8 and np.all(picture == 20)
    assert _near(out, 120, 100, OBJECT_COLOUR)  # on the circle, 30 px left of the centre
    assert tuple(out[100, 150]) == (20, 20, 20)  # the object itself stays visible
    assert _near(out, 150, 20, GRID_COLOUR)
    assert np.all(out[150:, :100] == 20)  # nothing drawn far from both
    with pytest.raises(ValueError, match="8-bit"):
        annotate(np.zeros((4, 4), dtype=np.float32))
