"""Times and geometry of a photometric point: mid-exposure JD (UTC), BJD_TDB and airmass (astropy, ERFA).

BJD_TDB = the mid-exposure time in TDB (astropy) plus the light travel time from the site to the solar system's
barycentre towards the target: what astropy's `Time.light_travel_time` (the "builtin" ERFA ephemeris) gives,
to well under a millisecond, computed here with ERFA directly (astropy's took 50 ms a frame, its ITRS->GCRS
transform of the site's position mostly; this takes under one). Airmass is sec z of the target's apparent
(unrefracted) altitude from ERFA's ICRS->observed (`atco13`) with the Earth-orientation corrections left out:
astropy's AltAz took 20 ms and wants IERS tables a daemon at night cannot download; the altitude differs by
under 0.001 degrees. Neither needs the network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import erfa
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from astropy.coordinates import EarthLocation

# astropy.coordinates and astropy.time are imported where they are used: they cost every astrod command
# 0.14 s of start-up, and only frames measured for light curves need them

_AU_M = 149_597_870_700.0
_AU_LIGHT_S = _AU_M / 299_792_458.0


@dataclass(frozen=True, slots=True)
class Site:
    """An observatory: latitude and longitude (degrees, east positive) and elevation (m)."""

    latitude: float
    longitude: float
    elevation: float = 0.0

    def location(self) -> EarthLocation:
        from astropy import units as u
        from astropy.coordinates import EarthLocation

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


def point_times(date_obs: datetime | None, exposure: float | None, *,
                coords: Sequence[tuple[float, float] | None], site: Site | None) -> list[PointTimes]:
    """The times of a frame that started at ``date_obs`` (aware, any zone) and lasted ``exposure`` s, for each
    target at ``coords`` (RA, Dec in degrees, ICRS; None: unknown) seen from ``site``."""
    if date_obs is None:
        return [PointTimes(math.nan, math.nan, math.nan) for _ in coords]
    from astropy.time import Time

    t = Time(mid_exposure(date_obs, exposure), scale="utc")
    jd = float(t.jd1) + float(t.jd2)
    if site is None:
        return [PointTimes(jd, math.nan, math.nan) for _ in coords]
    t = Time(t, location=site.location())
    tdb, tt = t.tdb, t.tt
    observer = _observer_barycentric_au(site, tt_jd=(float(tt.jd1), float(tt.jd2)),
                                        tdb_jd=(float(tdb.jd1), float(tdb.jd2)), utc_jd=(float(t.jd1), float(t.jd2)))
    out = []
    for c in coords:
        if c is None:
            out.append(PointTimes(jd, math.nan, math.nan))
            continue
        ra, dec = math.radians(c[0]), math.radians(c[1])
        towards = np.array([math.cos(dec) * math.cos(ra), math.cos(dec) * math.sin(ra), math.sin(dec)])
        delay = float(observer @ towards) * _AU_LIGHT_S  # light reaches the barycentre this much later
        bjd = float(tdb.jd1) + (float(tdb.jd2) + delay / 86400.0)
        # apparent (unrefracted) zenith distance, ERFA's ICRS -> observed; Earth orientation taken as zero
        # (UT1 = UTC, no polar motion): under 0.001 degrees
        _a, zenith, *_ = erfa.atco13(ra, dec, 0.0, 0.0, 0.0, 0.0, float(t.jd1), float(t.jd2), 0.0,
                                     math.radians(site.longitude), math.radians(site.latitude), site.elevation,
                                     0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        altitude = 90.0 - math.degrees(float(zenith))
        out.append(PointTimes(jd, bjd, 1.0 / math.sin(math.radians(altitude)) if altitude > 0 else math.nan))
    return out


def _observer_barycentric_au(site: Site, *, tt_jd: tuple[float, float], tdb_jd: tuple[float, float],
                             utc_jd: tuple[float, float]) -> npt.NDArray[np.float64]:
    """The site's position relative to the solar system's barycentre (AU, ICRS axes): the Earth's from ERFA's
    ephemeris (epv00, astropy's "builtin"), plus the site's geocentric position turned by the Earth's rotation
    angle and precession-nutation (polar motion and UT1 - UTC left out: at most a few metres, ~1e-8 s)."""
    _helio, bary = erfa.epv00(*tdb_jd)
    itrs = erfa.gd2gc(1, math.radians(site.longitude), math.radians(site.latitude), site.elevation)
    era = erfa.era00(*utc_jd)
    spin = np.array([[math.cos(era), -math.sin(era), 0.0], [math.sin(era), math.cos(era), 0.0], [0.0, 0.0, 1.0]])
    to_date = erfa.pnm06a(*tt_jd)  # GCRS -> true equator and equinox of date
    gcrs = to_date.T @ (spin @ np.asarray(itrs, dtype=np.float64))
    out: npt.NDArray[np.float64] = np.asarray(bary["p"], dtype=np.float64) + gcrs / _AU_M
    return out
