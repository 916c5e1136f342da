"""Bayer patterns: which colour each pixel of a colour sensor's mosaic sees. The one place that knows.

A pattern names the 2×2 cell starting at sensor pixel (0, 0), row by row ("RGGB": R at (x 0, y 0), G at (1, 0),
G at (0, 1), B at (1, 1)). The offset follows the FITS XBAYROFF / YBAYROFF convention: image pixel (x, y) has the
filter of pattern cell ((x + xoff) mod 2, (y + yoff) mod 2). Colours are indexed 0 R, 1 G, 2 B.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
CHANNEL = {"R": 0, "G": 1, "B": 2}


def check_pattern(pattern: str) -> str:
    """``pattern`` in upper case, or ValueError when it is not one of the four Bayer patterns."""
    p = pattern.strip().upper()
    if p not in PATTERNS:
        raise ValueError(f"unknown Bayer pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
    return p


def effective_pattern(pattern: str, offset: tuple[int, int] = (0, 0)) -> str:
    """The 2×2 pattern starting at image pixel (0, 0) once the (x, y) Bayer offset is applied."""
    p = check_pattern(pattern)
    xo, yo = int(offset[0]) % 2, int(offset[1]) % 2
    return "".join(p[((r + yo) % 2) * 2 + (c + xo) % 2] for r in range(2) for c in range(2))


def green_on_main_diagonal(pattern: str) -> bool:
    """Whether the green pixels of a 2×2 CFA cell are (0, 0) and (1, 1) rather than (0, 1) and (1, 0)."""
    return check_pattern(pattern)[0] == "G"


def is_cfa_cell(letters: str) -> bool:
    """Whether ``letters`` (a 2×2 cell read row by row, as a raw decoder gives it) is a Bayer-like cell: four
    letters from R, G, B with two greens."""
    return len(letters) == 4 and set(letters) <= set(CHANNEL) and letters.count("G") == 2


def cell_colours(pattern: str) -> npt.NDArray[np.uint8]:
    """Colour index of the 2×2 cell, shape (2, 2) indexed [y, x]. Any 2×2 pattern of R, G and B letters naming
    all three colours is accepted (per-colour flat normalisation needs no more), not only the four Bayer ones."""
    p = pattern.strip().upper()
    if len(p) != 4 or set(p) - set(CHANNEL) or not set(CHANNEL) <= set(p):
        raise ValueError(f"unsupported Bayer pattern {pattern!r}; expected a 2x2 pattern such as 'RGGB'")
    return np.array([CHANNEL[ch] for ch in p], dtype=np.uint8).reshape(2, 2)


def colour_map(shape: tuple[int, int], *, pattern: str, offset: tuple[int, int] = (0, 0),
               dtype: npt.DTypeLike = np.uint8) -> npt.NDArray[np.integer]:
    """Colour index (0 R, 1 G, 2 B) of every pixel of an (H, W) mosaic of ``pattern`` at ``offset`` (x, y)."""
    cell = cell_colours(pattern)
    x_off, y_off = int(offset[0]), int(offset[1])
    ys = (np.arange(shape[0]) + y_off) % 2
    xs = (np.arange(shape[1]) + x_off) % 2
    return np.ascontiguousarray(cell[ys[:, np.newaxis], xs[np.newaxis, :]], dtype=dtype)
