"""A master record survives its index row: same key, path (relative in the index), hashes and details."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from astrod.library.keys import CalibrationKey, MasterKind
from astrod.library.records import MasterRecord


def test_record_round_trips_through_its_index_row(tmp_path: Path) -> None:
    """to_row stores the path relative to the library; from_row gives back an equal record."""
    key = CalibrationKey(kind=MasterKind.FLAT, camera="Cam", serial="42", gain=100.0, offset=50.0, binning=(2, 2),
                         width=80, height=60, temperature=-10.0, filter="Ha", night=date(2024, 10, 5))
    record = MasterRecord(key=key, path=tmp_path / "masters" / "flat" / "Cam" / "f.fits", n_frames=3, low_n=True,
                          source_hash="s", build_hash="b", content_hash="c",
                          created=datetime(2024, 10, 6, 8, 0, tzinfo=UTC),
                          info={"bayer": "RGGB", "bayer_offset": [1, 0], "temperature_mean": -9.9})
    row = record.to_row(tmp_path)
    assert row.path == "masters/flat/Cam/f.fits" and row.kind == "flat" and row.camera == "Cam"
    again = MasterRecord.from_row(row, tmp_path)
    assert again == record and again.info == record.info
    assert (again.bayer, again.bayer_offset, again.temperature_mean) == ("RGGB", (1, 0), -9.9)
    assert again.as_dict()["key"]["night"] == "2024-10-05"
