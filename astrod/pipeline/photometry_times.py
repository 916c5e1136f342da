"""Times and geometry of a photometric point: mid-exposure JD (UTC), BJD_TDB and airmass (astropy).

BJD_TDB = the mid-exposure time in TDB plus the light travel time from the site to the solar system's
barycentre towards the target (astropy's `Time.light_travel_time`, the built-in ERFA ephemeris: no download).
Airmass is sec z of the target's apparent (unrefracted) altitude; astropy needs Earth-orientation data for
it, which it is never allowed to download here (a daemon at night has no network): past the bundled tables
it extrapolates, which moves the altitude by far less than an arcsecond.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta

from astropy import units as u
from astropy.coordinates import AltAz, EarthLocation, SkyCoord
from astropy.time import Time
from astropy.utils import iers


@dataclass(frozen=True, slots=True)
class Site:
    """An observatory: latitude and longitude (degrees, east positive) and elevation (m)."""

    latitude: float
    longitude: float
    elevation: float = 0.0

    def location(self) -> EarthLocation:
        return EarthLocation.from_geodetic(lon=self.longitude * u.deg, lat=self.latitude * u.deg,
                                           height=self.elevation * u.m)

    @classmethod
    def parse(cls, text: str) -> Site:
        """``LAT,LON[,ELEV]`` (degrees, degrees east, metres)."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) not in (2, 3):
            raise ValueError(f"site {text!r}: expected LAT,LON[,ELEV]")
        try:
            values = [float(p) for p in parts]
        except ValueError as err:
            raise ValueError(f"site {text!r}: not numbers") from err
        if not -90 <= values[0] <= 90 or not -180 <= values[1] <= 360:
            raise ValueError(f"site {text!r}: latitude or longitude out of range")
        return cls(values[0], values[1], values[2] if len(values) == 3 else 0.0)


@dataclass(frozen=True, slots=True)
class PointTimes:
    """``jd_utc_mid``; ``bjd_tdb`` and ``airmass`` NaN when the target's coordinates or the site are unknown."""

    jd_utc_mid: float
    bjd_tdb: float
    airmass: float


def mid_exposure(date_obs: datetime, exposure: float | None) -> datetime:
    """The middle of an exposure that started at ``date_obs`` (the FITS DATE-OBS convention)."""
    return date_obs + timedelta(seconds=0.5 * float(exposure or 0.0))


def point_times(date_obs: datetime | None, exposure: float | None, *, ra: float | None, dec: float | None,
                site: Site | None) -> PointTimes:
    """The times of a frame that started at ``date_obs`` (aware, any zone) and lasted ``exposure`` s, for a
    target at ``ra``/``dec`` (degrees, ICRS) seen from ``site``."""
    if date_obs is None:
        return PointTimes(math.nan, math.nan, math.nan)
    t = Time(mid_exposure(date_obs, exposure), scale="utc")
    jd = float(t.jd1) + float(t.jd2)
    if ra is None or dec is None or site is None:
        return PointTimes(jd, math.nan, math.nan)
    target = SkyCoord(ra=ra * u.deg, dec=dec * u.deg, frame="icrs")
    t = Time(t, location=site.location())
    tdb = t.tdb + t.light_travel_time(target, kind="barycentric", ephemeris="builtin")
    bjd = float(tdb.jd1) + float(tdb.jd2)
    with iers.conf.set_temp("auto_download", False), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "times after IERS data is valid": extrapolated, see the docstring
        alt = target.transform_to(AltAz(obstime=t, location=site.location())).alt.to_value(u.deg)
    airmass = 1.0 / math.sin(math.radians(alt)) if alt > 0 else math.nan
    return PointTimes(jd, bjd, airmass)
