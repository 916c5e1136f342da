"""Times of a photometric point (`astrod.pipeline.photometry_times`) against astropy's own computation."""

from __future__ import annotations

import math
import warnings
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import AltAz, SkyCoord
from astropy.time import Time

from astrod.pipeline.photometry_times import Site, point_times


def test_bjd_tdb_and_airmass_agree_with_astropy() -> None:
    """For 12 random targets and dates over 11 years, BJD_TDB (mid-exposure) is astropy's
    `Time.tdb + light_travel_time` to 10 ms (1 s is what is asked) and the airmass astropy's sec z of AltAz
    to 1e-3 above 10 degrees of altitude; JD is mid-exposure UTC."""
    site = Site(38.99, -76.96, 50.0)
    loc = site.location()
    rng = np.random.default_rng(0)
    for _ in range(12):
        ra, dec = float(rng.uniform(0, 360)), float(rng.uniform(-30, 89))
        start = datetime(2012, 6, 17, 2, 0, tzinfo=UTC) + timedelta(days=float(rng.uniform(0, 4000)))
        (p,) = point_times(start, 60.0, coords=[(ra, dec)], site=site)
        t = Time(start + timedelta(seconds=30), scale="utc", location=loc)
        star = SkyCoord(ra * u.deg, dec * u.deg)
        assert abs(p.jd_utc_mid - t.jd) * 86400 < 1e-3
        assert abs(p.bjd_tdb - (t.tdb + t.light_travel_time(star)).jd) * 86400 < 0.01
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alt = float(star.transform_to(AltAz(obstime=t, location=loc)).alt.deg)
        if alt > 10:
            assert p.airmass == pytest.approx(1 / math.sin(math.radians(alt)), abs=1e-3)
        elif alt < 0:
            assert math.isnan(p.airmass)


def test_unknown_coordinates_or_site_leave_bjd_and_airmass_empty() -> None:
    """Without a site, or for a target without coordinates, only the JD is known; without a date nothing."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    a, b = point_times(start, 10.0, coords=[None, (10.0, 20.0)], site=Site(50.0, 10.0))
    assert math.isnan(a.bjd_tdb) and math.isfinite(b.bjd_tdb) and a.jd_utc_mid == b.jd_utc_mid
    (c,) = point_times(start, 10.0, coords=[(10.0, 20.0)], site=None)
    assert math.isnan(c.bjd_tdb) and math.isnan(c.airmass)
    assert math.isnan(point_times(None, 10.0, coords=[None], site=None)[0].jd_utc_mid)
    assert Site.parse("38.99,-76.96,50") == Site(38.99, -76.96, 50.0)
    with pytest.raises(ValueError):
        Site.parse("north")
