"""Session keys: which lights are stacked together, and targets of frames without OBJECT."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import pytest

from astrod.model import FrameKind, FrameMeta
from astrod.pipeline.sessions import (
    Pointing,
    angular_distance_deg,
    is_pointing_name,
    pointing_name,
    session_key,
    slug,
    target_of,
)

LIGHT = FrameMeta(kind=FrameKind.LIGHT, exposure=60.0, camera="ASI2600MM", gain=100.0, offset=50.0, filter="L",
                  object="M 31", ra=10.68, dec=41.27, date_obs=datetime(2026, 11, 22, 3, 0, tzinfo=UTC),
                  width=100, height=80)


def test_same_night_target_filter_and_settings_share_a_key() -> None:
    """Frames before and after midnight belong to the evening's night; filter and gain split sessions; the frame
    size does not (a wrong-size frame is rejected by its session instead)."""
    evening = replace(LIGHT, date_obs=datetime(2026, 11, 21, 19, 0, tzinfo=UTC))
    key = session_key(LIGHT, target="M 31", longitude=13.4)
    assert key == session_key(evening, target="M 31", longitude=13.4)
    assert key.night == date(2026, 11, 21)
    assert key != session_key(replace(LIGHT, filter="Ha"), target="M 31", longitude=13.4)
    assert key.settings_tag() != session_key(replace(LIGHT, gain=0.0), target="M 31", longitude=13.4).settings_tag()
    assert key == session_key(replace(LIGHT, width=50), target="M 31", longitude=13.4)


@pytest.mark.parametrize("name", ["", "Unknown", "unknown", None])
def test_frames_without_object_join_a_session_within_the_radius(name: str | None) -> None:
    """OBJECT missing or 'Unknown': the nearest open session pointing within the radius, else a pointing name."""
    meta = replace(LIGHT, object=name, ra=10.70, dec=41.28)
    near = [Pointing("M 31", 10.68, 41.27), Pointing("M 33", 23.46, 30.66)]
    assert target_of(meta, pointings=near, radius_arcmin=30.0) == "M 31"
    far = replace(meta, ra=12.0)
    assert target_of(far, pointings=near, radius_arcmin=30.0) == pointing_name(12.0, 41.28) == "RA 00h48m Dec +41°16'"
    assert target_of(replace(meta, ra=None), pointings=near, radius_arcmin=30.0) is None
    assert target_of(LIGHT, pointings=[], radius_arcmin=30.0) == "M 31"


def test_angular_distance_and_slug() -> None:
    """Great-circle distance is right across RA 0/360 and at the pole; names become safe folder names."""
    assert angular_distance_deg(359.9, 0.0, 0.1, 0.0) == pytest.approx(0.2)
    assert angular_distance_deg(0.0, 89.9, 180.0, 89.9) == pytest.approx(0.2)
    assert slug("NGC 7000 / North America") == "NGC_7000_North_America"
    assert slug("../..") == "unnamed"


def test_a_name_made_from_a_pointing_is_told_apart() -> None:
    """The names `pointing_name` makes (any hemisphere) are recognised as such; an object's name is not."""
    assert is_pointing_name(pointing_name(315.5, 68.2)) and is_pointing_name(pointing_name(83.8, -5.39))
    assert not is_pointing_name("NGC 7023") and not is_pointing_name("RA 21h01m Dec +68°12' (mosaic 2)")
