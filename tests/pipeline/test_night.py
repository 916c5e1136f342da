"""The end of the night: astronomical dawn for a site."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from astrod.pipeline.night import next_dawn, sun_altitude_deg


def test_dawn_is_the_sun_rising_through_minus_18() -> None:
    """The returned moment has the Sun at −18° and rising, in the local morning, within 24 h."""
    start = datetime(2026, 11, 21, 18, 0, tzinfo=UTC)
    dawn = next_dawn(start, latitude=52.5, longitude=13.4)
    assert dawn is not None and start < dawn < start + timedelta(hours=24)
    before, at, after = sun_altitude_deg([dawn - timedelta(minutes=5), dawn, dawn + timedelta(minutes=5)],
                                         latitude=52.5, longitude=13.4)
    assert at == pytest.approx(-18.0, abs=0.05)
    assert before < at < after
    local_hour = (dawn + timedelta(hours=13.4 / 15)).hour
    assert 3 <= local_hour <= 7


def test_no_dawn_in_polar_summer() -> None:
    """In polar summer the Sun never goes below −18°: no dawn, sessions close on idle instead."""
    assert next_dawn(datetime(2026, 6, 21, 0, 0, tzinfo=UTC), latitude=78.0, longitude=15.0) is None
