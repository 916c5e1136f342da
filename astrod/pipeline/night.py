"""When the night ends: astronomical dawn (the Sun rising through −18°) for the observatory's site."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np


def sun_altitude_deg(times: list[datetime], *, latitude: float, longitude: float, elevation: float = 0.0
                     ) -> np.ndarray:
    """The Sun's altitude in degrees at each (aware) time, seen from the site."""
    import astropy.units as u
    from astropy.coordinates import AltAz, EarthLocation, get_sun
    from astropy.time import Time
    from astropy.utils import iers

    with iers.conf.set_temp("auto_download", False), iers.conf.set_temp("auto_max_age", None):
        t = Time(times)
        site = EarthLocation(lat=latitude * u.deg, lon=longitude * u.deg, height=elevation * u.m)
        altaz = get_sun(t).transform_to(AltAz(obstime=t, location=site))
        return np.asarray(altaz.alt.deg, dtype=np.float64)


def next_dawn(after: datetime, *, latitude: float, longitude: float, elevation: float = 0.0,
              depression_deg: float = 18.0, step_minutes: float = 5.0) -> datetime | None:
    """The first time after ``after`` when the Sun rises through −``depression_deg``; None if it does not within
    36 hours (polar summer or winter). Accurate to a few seconds (linear interpolation between steps)."""
    n = int(36 * 60 / step_minutes) + 1
    times = [after + timedelta(minutes=step_minutes * i) for i in range(n)]
    alt = sun_altitude_deg(times, latitude=latitude, longitude=longitude, elevation=elevation) + depression_deg
    rising = np.nonzero((alt[:-1] < 0) & (alt[1:] >= 0))[0]
    if rising.size == 0:
        return None
    i = int(rising[0])
    frac = float(-alt[i] / (alt[i + 1] - alt[i]))
    return times[i] + timedelta(minutes=step_minutes * frac)
