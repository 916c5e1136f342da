"""Grouping keys, temperature buckets and nights (local noon to noon)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime

import pytest

from astrod.library.keys import (
    CalibrationKey,
    MasterKind,
    ascii_text,
    bucket_temperature,
    key_of,
    night_of,
    normalise_exposure,
    safe_name,
    same_sensor_mode,
)
from astrod.model import FrameKind, FrameMeta

META = FrameMeta(kind=FrameKind.DARK, exposure=300.0, camera="ZWO ASI2600MM Pro", gain=100.0, offset=50.0,
                 temperature=-9.7, set_temperature=-10.0, width=6248, height=4176, filter="Ha",
                 date_obs=datetime(2024, 10, 6, 1, 30, tzinfo=UTC))


@pytest.fixture
def new_york() -> Iterator[None]:
    """The machine's local time zone set to America/New_York for one test."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_night_with_a_site_longitude() -> None:
    """With a longitude, local mean solar time decides: noon to noon belongs to the evening's date."""
    assert night_of(datetime(2024, 10, 5, 23, 0, tzinfo=UTC), longitude=0.0) == date(2024, 10, 5)
    assert night_of(datetime(2024, 10, 6, 11, 59, tzinfo=UTC), longitude=0.0) == date(2024, 10, 5)
    assert night_of(datetime(2024, 10, 6, 12, 1, tzinfo=UTC), longitude=0.0) == date(2024, 10, 6)
    # 150° east is UTC+10 h: 01:00 UTC is 11:00 local (still the night before), 03:00 UTC is 13:00
    assert night_of(datetime(2024, 10, 6, 1, 0, tzinfo=UTC), longitude=150.0) == date(2024, 10, 5)
    assert night_of(datetime(2024, 10, 6, 3, 0, tzinfo=UTC), longitude=150.0) == date(2024, 10, 6)
    # 75° west is UTC-5 h: 16:00 UTC is 11:00 local
    assert night_of(datetime(2024, 10, 6, 16, 0, tzinfo=UTC), longitude=-75.0) == date(2024, 10, 5)


def test_night_without_longitude_uses_the_local_time_zone(new_york: None) -> None:
    """Without a longitude the machine's time zone decides (New York is UTC-4 in October); naive is UTC."""
    assert night_of(datetime(2024, 10, 6, 15, 59, tzinfo=UTC)) == date(2024, 10, 5)  # 11:59 EDT
    assert night_of(datetime(2024, 10, 6, 16, 1, tzinfo=UTC)) == date(2024, 10, 6)  # 12:01 EDT
    assert night_of(datetime(2024, 10, 6, 15, 59)) == date(2024, 10, 5)


def test_temperature_buckets() -> None:
    """Temperatures round to the nearest bucket, halves away from zero, without -0 or float dust."""
    assert bucket_temperature(-10.4, bucket=1.0) == -10.0
    assert bucket_temperature(-9.6, bucket=1.0) == -10.0
    assert bucket_temperature(-10.5, bucket=1.0) == -11.0
    assert bucket_temperature(-0.2, bucket=1.0) == 0.0 and str(bucket_temperature(-0.2, bucket=1.0)) == "0.0"
    assert bucket_temperature(-9.0, bucket=2.0) == -10.0
    assert bucket_temperature(-0.7, bucket=0.1) == -0.7
    assert bucket_temperature(None, bucket=1.0) is None


def test_exposures_compare_to_four_digits() -> None:
    """59.9999 s and 60.0001 s are the same exposure; 0.001111 s keeps its digits."""
    assert normalise_exposure(59.9999) == normalise_exposure(60.0001) == 60.0
    assert normalise_exposure(0.0011111) == 0.001111
    assert normalise_exposure(None) is None


def test_keys_group_as_the_issue_says() -> None:
    """Bias keys ignore exposure and filter; darks add exposure; flats add filter and night; bad-pixel maps keep
    only camera, gain, binning, size, ROI and readout mode. The set temperature is used, bucketed."""
    bias = key_of(META, MasterKind.BIAS)
    assert bias.exposure is None and bias.filter is None and bias.night is None and bias.temperature == -10.0
    assert key_of(replace(META, exposure=5.0, filter="L"), MasterKind.BIAS) == bias
    dark = key_of(META, MasterKind.DARK)
    assert dark.exposure == 300.0 and dark != key_of(replace(META, exposure=60.0), MasterKind.DARK)
    assert key_of(replace(META, set_temperature=-10.3), MasterKind.DARK) == dark
    flat = key_of(META, MasterKind.FLAT, longitude=0.0)
    assert flat.filter == "Ha" and flat.night == date(2024, 10, 5) and flat.exposure is None
    bpm = key_of(META, MasterKind.BADPIXELS)
    assert bpm.offset is None and bpm.temperature is None and bpm.gain == 100.0
    assert key_of(replace(META, offset=10.0, set_temperature=-20.0), MasterKind.BADPIXELS) == bpm
    uncooled = key_of(replace(META, set_temperature=None, temperature=21.4), MasterKind.DARK)
    assert uncooled.temperature == 21.0


def test_key_json_round_trip_and_stable_id() -> None:
    """A key survives its JSON form; its id depends on its fields only."""
    key = key_of(META, MasterKind.FLAT, longitude=0.0)
    again = CalibrationKey.from_dict(key.as_dict())
    assert again == key and again.key_id == key.key_id and len(key.key_id) == 16
    assert key_of(replace(META, filter="L"), MasterKind.FLAT, longitude=0.0).key_id != key.key_id


def test_names_are_descriptive_and_safe() -> None:
    """File stems name the key in words, end with part of its id, and hold no unsafe characters."""
    stem = key_of(META, MasterKind.DARK).file_stem()
    assert stem.startswith("dark_g100_o50_bin1x1_6248x4176_m10C_300s_")
    assert safe_name("ZWO ASI/2600 MM: Pro") == "ZWO_ASI_2600_MM_Pro"
    assert safe_name("...") == "unnamed"
    assert ascii_text("dark scaled 30 s → 60 s (×2), ±3 °C") == "dark scaled 30 s -> 60 s (x2), +/-3 degC"


def test_sensor_mode_differences_are_named() -> None:
    """same_sensor_mode says which field differs first, or None when compatible."""
    key = key_of(META, MasterKind.DARK)
    assert same_sensor_mode(META, key) is None
    assert same_sensor_mode(replace(META, binning=(2, 2)), key) == "binning 1x1 is not 2x2"
    assert same_sensor_mode(replace(META, gain=0.0), key) == "gain 100 is not 0"
    assert same_sensor_mode(replace(META, gain=0.0), key, with_gain=False) is None
