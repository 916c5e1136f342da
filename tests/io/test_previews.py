"""Tests of astrod.io.previews: PNG/JPEG previews through OpenCV and the CSV frames table."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from astrod.io.previews import encode_image, frames_table_text, write_frames_table, write_preview


def _rgb() -> np.ndarray:
    """Left half pure red, right half pure blue, a green stripe in the middle rows."""
    img = np.zeros((40, 60, 3), dtype=np.uint8)
    img[:, :30, 0] = 255
    img[:, 30:, 2] = 255
    img[18:22, :, 1] = 200
    return img


def test_png_round_trip_is_exact_and_keeps_rgb_order(tmp_path: Path) -> None:
    """A PNG decodes to the same pixels; red stays red (OpenCV's BGR order is handled)."""
    rgb = _rgb()
    write_preview(tmp_path / "p.png", rgb)
    back = cv2.imread(str(tmp_path / "p.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(back[:, :, ::-1], rgb)
    grey = np.arange(200, dtype=np.uint8).reshape(10, 20)
    assert np.array_equal(cv2.imdecode(np.frombuffer(encode_image(grey), np.uint8), cv2.IMREAD_UNCHANGED), grey)


def test_jpeg_is_close_and_keeps_rgb_order(tmp_path: Path) -> None:
    """A JPEG (.jpg or .jpeg) decodes close to the image with the channels in place."""
    rgb = _rgb()
    for name in ("p.jpg", "p.jpeg"):
        write_preview(tmp_path / name, rgb, jpeg_quality=95)
        back = cv2.imread(str(tmp_path / name), cv2.IMREAD_COLOR)[:, :, ::-1]
        assert np.mean(np.abs(back.astype(int) - rgb.astype(int))) < 6
        assert back[5, 5, 0] > 200 and back[5, 5, 2] < 50 and back[5, 50, 2] > 200


def test_bad_input_writes_nothing(tmp_path: Path) -> None:
    """Unknown suffixes and non-uint8 or odd-shaped images are refused before a file appears."""
    with pytest.raises(ValueError, match="format"):
        write_preview(tmp_path / "p.tif", _rgb())
    with pytest.raises(ValueError, match="uint8"):
        write_preview(tmp_path / "p.png", np.zeros((4, 4), dtype=np.float32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8"):
        write_preview(tmp_path / "p.png", np.zeros((4, 4, 2), dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_frames_table_round_trips_through_csv(tmp_path: Path) -> None:
    """The CSV has the columns in order; None and NaN are empty cells; floats read back exactly; reasons with
    commas and quotes survive."""
    rows = [{"path": "a.fits", "status": "stacked", "reason": None, "dx": 0.1 + 0.2, "stars": 120},
            {"path": "b, c.fits", "status": "rejected", "reason": 'FWHM 5.1 px is 2.1× the "best"',
             "dx": math.nan, "stars": np.int64(7)}]
    columns = ("path", "status", "reason", "dx", "stars")
    write_frames_table(tmp_path / "t.csv", rows, columns)
    with (tmp_path / "t.csv").open(encoding="utf-8", newline="") as handle:
        back = list(csv.DictReader(handle))
    assert tuple(back[0]) == columns
    assert back[0]["reason"] == "" and float(back[0]["dx"]) == 0.1 + 0.2 and back[0]["stars"] == "120"
    assert back[1]["path"] == "b, c.fits" and back[1]["reason"] == 'FWHM 5.1 px is 2.1× the "best"'
    assert back[1]["dx"] == "" and back[1]["stars"] == "7"
    assert list(csv.reader(io.StringIO(frames_table_text([], columns)))) == [list(columns)]
