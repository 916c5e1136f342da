"""When a capture step may start: now, at an ISO 8601 time, or at dusk (the Sun setting through −18°)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from astrod.errors import ConfigError
from astrod.pipeline.night import sun_altitude_deg


def next_dusk(after: datetime, *, latitude: float, longitude: float, elevation: float = 0.0,
              depression_deg: float = 18.0, step_minutes: float = 5.0) -> datetime | None:
    """The first time at or after ``after`` when the Sun is below −``depression_deg``: ``after`` itself when it
    is already night, else when the Sun sets through that altitude; None if it does not within 36 hours."""
    n = int(36 * 60 / step_minutes) + 1
    times = [after + timedelta(minutes=step_minutes * i) for i in range(n)]
    alt = sun_altitude_deg(times, latitude=latitude, longitude=longitude, elevation=elevation) + depression_deg
    if alt[0] < 0:
        return after
    setting = np.nonzero((alt[:-1] >= 0) & (alt[1:] < 0))[0]
    if setting.size == 0:
        return None
    i = int(setting[0])
    frac = float(alt[i] / (alt[i] - alt[i + 1]))
    return times[i] + timedelta(minutes=step_minutes * frac)


def step_start(start: str, *, now: datetime, latitude: float | None, longitude: float | None,
               elevation: float = 0.0) -> datetime:
    """When a step whose ``start`` is '' (now), 'dusk' or an ISO 8601 time may begin (never before ``now``).

    A time without a zone is local time. Raises ConfigError when 'dusk' is asked without a site, or the
    text is neither.
    """
    text = start.strip()
    if not text:
        return now
    if text.lower() == "dusk":
        if latitude is None or longitude is None:
            raise ConfigError(["capture.steps.start: 'dusk' needs site.latitude and site.longitude"])
        dusk = next_dusk(now, latitude=latitude, longitude=longitude, elevation=elevation)
        if dusk is None:
            raise ConfigError([f"capture.steps.start: no astronomical dusk within 36 h of {now.isoformat()} "
                               "at this site"])
        return dusk
    try:
        when = datetime.fromisoformat(text)
    except ValueError as err:
        raise ConfigError([f"capture.steps.start: {text!r} is not empty, 'dusk' or an ISO 8601 time"]) from err
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as a person writes it
    return max(when.astimezone(UTC), now)
