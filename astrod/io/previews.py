"""Preview images (PNG/JPEG through ``cv2.imencode``) and the per-frame CSV table, each written atomically."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from astrod.io.atomic import atomic_write_bytes, atomic_write_text

_FORMATS = {".png": ".png", ".jpg": ".jpg", ".jpeg": ".jpg"}


def encode_image(image: npt.NDArray[np.uint8], *, suffix: str = ".png", jpeg_quality: int = 90,
                 png_compression: int = 3) -> bytes:
    """Encode a uint8 (H, W) grey or (H, W, 3) RGB image as PNG or JPEG (``suffix`` ``.png``/``.jpg``)."""
    fmt = _FORMATS.get(suffix.lower())
    if fmt is None:
        raise ValueError(f"unsupported preview format {suffix!r}; expected .png, .jpg or .jpeg")
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"preview must be uint8 (H, W) or (H, W, 3), got {image.dtype}{image.shape}")
    # OpenCV stores colour in B, G, R order.
    pixels = image if image.ndim == 2 else np.ascontiguousarray(image[:, :, ::-1])
    params = ([cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == ".jpg"
              else [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression)])
    ok, buf = cv2.imencode(fmt, pixels, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    return bytes(buf.tobytes())


def write_preview(path: str | os.PathLike[str], image: npt.NDArray[np.uint8], *, jpeg_quality: int = 90) -> Path:
    """Write a uint8 grey or RGB preview atomically, as PNG or JPEG by the file's suffix; returns the path."""
    target = Path(path)
    atomic_write_bytes(target, encode_image(image, suffix=target.suffix, jpeg_quality=jpeg_quality))
    return target


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    if isinstance(value, np.generic):
        return _cell(value.item())
    return str(value)


def frames_table_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV text with a header line of ``columns`` and one line per row (missing values and NaN empty)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return out.getvalue()


def write_frames_table(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]],
                       columns: Sequence[str]) -> Path:
    """Write the per-frame table as CSV atomically; returns the path."""
    target = Path(path)
    atomic_write_text(target, frames_table_text(rows, columns))
    return target


def read_frames_table(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a frames table written by `write_frames_table` (cells as text; empty cells are '')."""
    with Path(path).open(encoding="utf-8", newline="") as handle:
        return [dict(row) for row in csv.DictReader(handle)]
