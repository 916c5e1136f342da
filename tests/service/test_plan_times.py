"""When capture steps may start: now, an ISO time, or astronomical dusk."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from astrod.errors import ConfigError
from astrod.pipeline.night import sun_altitude_deg
from astrod.service.plan_times import next_dusk, step_start

SITE = {"latitude": 48.0, "longitude": 11.0}


def test_dusk_is_where_the_sun_sets_through_minus_18() -> None:
    """At the dusk found, the Sun is at −18° (within 0.1°), higher 10 minutes before and lower 10 after."""
    noon = datetime(2026, 3, 20, 11, 0, tzinfo=UTC)
    dusk = next_dusk(noon, **SITE)
    assert dusk is not None and noon < dusk < noon + timedelta(hours=12)
    before, at, after = sun_altitude_deg([dusk - timedelta(minutes=10), dusk, dusk + timedelta(minutes=10)], **SITE)
    assert at == pytest.approx(-18.0, abs=0.1) and before > at > after


def test_during_the_night_dusk_is_now() -> None:
    """When the Sun is already below −18°, a step waiting for dusk starts at once."""
    midnight = datetime(2026, 3, 20, 23, 0, tzinfo=UTC)
    assert sun_altitude_deg([midnight], **SITE)[0] < -18
    assert next_dusk(midnight, **SITE) == midnight


def test_polar_summer_has_no_dusk() -> None:
    """Where the Sun never sinks 18° below the horizon, there is no dusk (None)."""
    assert next_dusk(datetime(2026, 6, 21, 12, 0, tzinfo=UTC), latitude=78.0, longitude=15.0) is None


def test_step_start_forms() -> None:
    """'' is now, a past ISO time is now, a future one is itself; dusk without a site and nonsense are
    configuration errors."""
    now = datetime(2026, 3, 20, 11, 0, tzinfo=UTC)
    assert step_start("", now=now, latitude=None, longitude=None) == now
    assert step_start("2026-03-20T10:00:00+00:00", now=now, latitude=None, longitude=None) == now
    later = step_start("2026-03-20T21:30:00+00:00", now=now, latitude=None, longitude=None)
    assert later == datetime(2026, 3, 20, 21, 30, tzinfo=UTC)
    with pytest.raises(ConfigError, match=r"site\.latitude"):
        step_start("dusk", now=now, latitude=None, longitude=None)
    with pytest.raises(ConfigError, match="not empty, 'dusk' or an ISO 8601 time"):
        step_start("after dinner", now=now, latitude=None, longitude=None)
