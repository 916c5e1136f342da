"""Frozen value types shared by every layer: frame metadata, frames, transforms."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


# FrameMeta fields that a path rule (built-in dialect or the user's [headers] folders) may fill.
SETTABLE_RULE_FIELDS = frozenset({
    "kind", "exposure", "gain", "offset", "temperature", "set_temperature", "binning", "filter", "camera",
    "serial", "object", "readout_mode", "bayer",
})


class FrameKind(enum.Enum):
    """What a frame is for. ``UNKNOWN`` carries its reason in ``FrameMeta.kind_reason``."""

    LIGHT = "light"
    DARK = "dark"
    FLAT = "flat"
    BIAS = "bias"
    DARKFLAT = "darkflat"
    UNKNOWN = "unknown"

    @property
    def is_calibration(self) -> bool:
        return self in (FrameKind.DARK, FrameKind.FLAT, FrameKind.BIAS, FrameKind.DARKFLAT)


@dataclass(frozen=True, slots=True)
class FrameMeta:
    """Normalised metadata of one frame, whatever program or camera wrote it.

    Numbers the file does not carry are ``None``; nothing is guessed silently.
    ``kind_reason`` says how ``kind`` was decided (keyword, folder name, or why it is unknown).
    ``source_format`` is the file's format (fits, raw, tiff, png, jpeg, xisf); ``notes`` say, one line each, what
    was not read from the file itself (e.g. the date taken from the file's modification time).
    """

    kind: FrameKind = FrameKind.UNKNOWN
    kind_reason: str = ""
    exposure: float | None = None
    camera: str | None = None
    serial: str | None = None
    gain: float | None = None
    iso: int | None = None
    offset: float | None = None
    egain: float | None = None
    temperature: float | None = None
    set_temperature: float | None = None
    binning: tuple[int, int] = (1, 1)
    width: int = 0
    height: int = 0
    planes: int = 1
    roi_x: int = 0
    roi_y: int = 0
    readout_mode: str | None = None
    filter: str | None = None
    bayer: str | None = None
    bayer_offset: tuple[int, int] = (0, 0)
    object: str | None = None
    ra: float | None = None
    dec: float | None = None
    date_obs: datetime | None = None
    pier_side: str | None = None
    stack_count: int = 1
    biassec: str | None = None
    trimsec: str | None = None
    black_level: float | None = None
    white_level: float | None = None
    software: str | None = None
    source_format: str = "fits"
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (enum as its value, datetime as ISO 8601 UTC)."""
        out: dict[str, Any] = {}
        for name in self.__slots__:  # type: ignore[attr-defined]
            value = getattr(self, name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out


@dataclass(frozen=True, slots=True)
class Frame:
    """Pixels (float32, ADU, shape (height, width) or (planes, height, width)) with their metadata."""

    meta: FrameMeta
    data: FloatArray = field(repr=False)
    path: Path | None = None


@dataclass(frozen=True, slots=True)
class Transform:
    """A 3×3 projective matrix mapping frame pixel coordinates (x, y, 1) onto the reference.

    Similarity and affine transforms have ``(0, 0, 1)`` as their last row.
    """

    matrix: tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]

    @classmethod
    def identity(cls) -> Transform:
        return cls(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))

    @classmethod
    def from_array(cls, m: npt.ArrayLike) -> Transform:
        a = np.asarray(m, dtype=np.float64)
        if a.shape == (2, 3):
            a = np.vstack([a, [0.0, 0.0, 1.0]])
        if a.shape != (3, 3):
            raise ValueError(f"transform matrix must be 2x3 or 3x3, got {a.shape}")
        rows = tuple(tuple(float(v) for v in row) for row in a)
        return cls(rows)  # type: ignore[arg-type]

    @classmethod
    def similarity(cls, *, dx: float, dy: float, rotation_deg: float = 0.0, scale: float = 1.0) -> Transform:
        t = math.radians(rotation_deg)
        c, s = scale * math.cos(t), scale * math.sin(t)
        return cls(((c, -s, dx), (s, c, dy), (0.0, 0.0, 1.0)))

    def as_array(self) -> npt.NDArray[np.float64]:
        return np.array(self.matrix, dtype=np.float64)

    def inverse(self) -> Transform:
        return Transform.from_array(np.linalg.inv(self.as_array()))

    def compose(self, then: Transform) -> Transform:
        """This transform followed by ``then``."""
        return Transform.from_array(then.as_array() @ self.as_array())

    def apply(self, xy: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map an (N, 2) array of (x, y) points."""
        p = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        h = np.hstack([p, np.ones((p.shape[0], 1))]) @ self.as_array().T
        return h[:, :2] / h[:, 2:3]

    @property
    def dx(self) -> float:
        return self.matrix[0][2]

    @property
    def dy(self) -> float:
        return self.matrix[1][2]

    @property
    def rotation_deg(self) -> float:
        return math.degrees(math.atan2(self.matrix[1][0], self.matrix[0][0]))

    @property
    def scale(self) -> float:
        a, b = self.matrix[0][0], self.matrix[1][0]
        return math.hypot(a, b)
