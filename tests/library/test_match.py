"""Matching picks what the rules say, explains why, and names what is missing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from astrod.library.keys import CalibrationKey, MasterKind
from astrod.library.match import MatchRules, match_frame
from astrod.library.records import MasterRecord
from astrod.model import FrameKind, FrameMeta

CAM = "ZWO ASI2600MM Pro"
RULES = MatchRules(longitude=0.0)
LIGHT = FrameMeta(kind=FrameKind.LIGHT, exposure=300.0, camera=CAM, gain=100.0, offset=50.0, temperature=-10.1,
                  set_temperature=-10.0, width=160, height=120, filter="L",
                  date_obs=datetime(2024, 10, 5, 23, 0, tzinfo=UTC))


def rec(kind: MasterKind, *, n: int = 10, created: int = 1, **key: Any) -> MasterRecord:
    """An index record (no file behind it) of a master compatible with LIGHT unless ``key`` says otherwise."""
    fields: dict[str, Any] = {"camera": CAM, "serial": None, "gain": 100.0, "offset": 50.0, "binning": (1, 1),
                              "width": 160, "height": 120, "temperature": -10.0}
    if kind is MasterKind.BADPIXELS:
        fields.update(offset=None, temperature=None)
    fields.update(key)
    k = CalibrationKey(kind=kind, **fields)
    return MasterRecord(key=k, path=Path(f"/lib/{k.file_stem()}.fits"), n_frames=n, low_n=n < 5, source_hash="s",
                        build_hash="b", content_hash=k.key_id, created=datetime(2024, 1, created, tzinfo=UTC))


BIAS = rec(MasterKind.BIAS)
DARK_300 = rec(MasterKind.DARK, exposure=300.0)
DARK_60 = rec(MasterKind.DARK, exposure=60.0)
FLAT_L = rec(MasterKind.FLAT, filter="L", night=date(2024, 10, 5))


def test_exact_masters_are_chosen_with_their_reasons() -> None:
    """Same exposure and temperature: bias, dark and flat are chosen exactly, nothing is missing."""
    bpm = rec(MasterKind.BADPIXELS)
    result = match_frame(LIGHT, [BIAS, DARK_60, DARK_300, FLAT_L, bpm], RULES)
    assert result.ok and result.missing == () and result.warnings == ()
    assert result.dark is not None and result.dark.record is DARK_300
    assert result.dark_mode == "exact" and result.dark.reason.startswith("exact")
    assert result.bias is not None and result.bias.record is BIAS
    assert result.flat is not None and result.flat.record is FLAT_L and "same night 2024-10-05" in result.flat.reason
    assert result.badpixels is not None and result.badpixels.record is bpm


def test_nearest_exposure_is_scaled_with_a_bias() -> None:
    """Without a dark of the frame's exposure, the nearest exposure (log scale) is scaled t_light/t_dark."""
    dark_30 = rec(MasterKind.DARK, exposure=30.0)
    dark_600 = rec(MasterKind.DARK, exposure=600.0)
    frame = replace(LIGHT, exposure=60.0)
    result = match_frame(frame, [BIAS, dark_30, dark_600, FLAT_L], RULES)
    assert result.dark is not None and result.dark.record is dark_30
    assert result.dark_mode == "scaled" and result.dark_scale == pytest.approx(2.0)
    assert "dark scaled 30 s → 60 s" in result.dark.reason
    tie = match_frame(frame, [BIAS, dark_30, rec(MasterKind.DARK, exposure=120.0), FLAT_L], RULES)
    assert tie.dark is not None and tie.dark.record.key.exposure == 120.0, "on a tie the longer dark"
    assert tie.dark_scale == pytest.approx(0.5)


def test_scaling_needs_a_bias() -> None:
    """A dark of another exposure cannot be scaled without a master bias: darkless, and the message says so."""
    result = match_frame(LIGHT, [DARK_60, FLAT_L], RULES)
    assert result.dark is None and not result.ok
    assert result.missing == ("darkless: no dark for ZWO ASI2600MM Pro gain 100 offset 50 -10 °C 300 s of that "
                              "exposure (have 60 s; scaling needs a master bias)",)


def test_a_frame_without_exposure_gets_no_dark() -> None:
    """Without an exposure time no dark can be chosen (not even scaled), and the message says why."""
    result = match_frame(replace(LIGHT, exposure=None), [BIAS, DARK_300, FLAT_L], RULES)
    assert result.dark is None
    assert result.missing == ("darkless: no dark for ZWO ASI2600MM Pro gain 100 offset 50 -10 °C (the frame has no "
                              "exposure time)",)


def test_temperature_widens_step_by_step_with_a_warning() -> None:
    """A dark 3 °C away is used once the tolerance has widened to ±3 °C, with a warning; 10 °C away is beyond
    the ±5 °C maximum and the frame is darkless, the message naming the nearest."""
    warm = rec(MasterKind.DARK, exposure=300.0, temperature=-7.0)
    result = match_frame(LIGHT, [BIAS, warm, FLAT_L], RULES)
    assert result.dark is not None and result.dark.record is warm
    assert "temperature widened to ±3 °C" in result.dark.reason
    assert any("temperature widened to ±3 °C" in w for w in result.warnings)
    far = rec(MasterKind.DARK, exposure=300.0, temperature=0.0)
    result = match_frame(LIGHT, [far, FLAT_L], RULES)
    assert result.missing == ("darkless: no dark for ZWO ASI2600MM Pro gain 100 offset 50 -10 °C 300 s within "
                              "±5 °C (the nearest is at 0 °C, 10 °C away)",)


def test_temperature_comes_before_exposure() -> None:
    """A dark of another exposure at the frame's temperature (scaled) beats one of the same exposure 3 °C away."""
    warm_same = rec(MasterKind.DARK, exposure=300.0, temperature=-7.0)
    result = match_frame(LIGHT, [BIAS, warm_same, DARK_60, FLAT_L], RULES)
    assert result.dark is not None and result.dark.record is DARK_60 and result.dark_mode == "scaled"


def test_dark_optimisation_when_enabled() -> None:
    """With dark optimisation on (and a bias), the dark is applied in optimised mode, same exposure or not."""
    rules = replace(RULES, dark_optimisation=True)
    result = match_frame(LIGHT, [BIAS, DARK_300, FLAT_L], rules)
    assert result.dark_mode == "optimised" and result.dark_scale is None
    assert result.dark is not None and "optimised" in result.dark.reason
    result = match_frame(replace(LIGHT, exposure=120.0), [BIAS, DARK_300, FLAT_L], rules)
    assert result.dark_mode == "optimised" and result.dark is not None and result.dark.record is DARK_300


def test_sensor_mode_must_match_exactly() -> None:
    """Masters of another camera, gain, offset, binning, size, ROI or readout mode are never chosen; a serial
    counts only when both sides know it."""
    others = [rec(MasterKind.DARK, exposure=300.0, camera="Other"), rec(MasterKind.DARK, exposure=300.0, gain=0.0),
              rec(MasterKind.DARK, exposure=300.0, offset=10.0), rec(MasterKind.DARK, exposure=300.0, binning=(2, 2)),
              rec(MasterKind.DARK, exposure=300.0, width=80), rec(MasterKind.DARK, exposure=300.0, roi_x=8),
              rec(MasterKind.DARK, exposure=300.0, readout_mode="HDR")]
    assert match_frame(LIGHT, others, RULES).dark is None
    with_serial = rec(MasterKind.DARK, exposure=300.0, serial="A1")
    assert match_frame(LIGHT, [with_serial], RULES).dark is not None
    assert match_frame(replace(LIGHT, serial="B2"), [with_serial], RULES).dark is None


def test_flat_same_filter_nearest_night_within_age() -> None:
    """Flats: the same filter only; the nearest night (earlier on a tie); none older than the age limit."""
    before = rec(MasterKind.FLAT, filter="L", night=date(2024, 10, 3))
    after = rec(MasterKind.FLAT, filter="L", night=date(2024, 10, 7))
    other_filter = rec(MasterKind.FLAT, filter="Ha", night=date(2024, 10, 5))
    result = match_frame(LIGHT, [BIAS, DARK_300, before, after, other_filter], RULES)
    assert result.flat is not None and result.flat.record is before
    assert "2 nights before" in result.flat.reason
    old = rec(MasterKind.FLAT, filter="L", night=date(2024, 8, 1))
    result = match_frame(LIGHT, [BIAS, DARK_300, old, other_filter], RULES)
    assert result.flat is None
    assert result.missing == ("flatless: no flat for ZWO ASI2600MM Pro bin 1x1 160x120 filter L within 30 nights "
                              "(the nearest is from 2024-08-01)",)


def test_flat_of_another_gain_is_used_when_it_is_the_only_one() -> None:
    """The flat field does not depend on gain: a flat taken at another gain is used (and said so), but a flat at
    the frame's gain is preferred."""
    gain0 = rec(MasterKind.FLAT, filter="L", night=date(2024, 10, 5), gain=0.0)
    result = match_frame(LIGHT, [BIAS, DARK_300, gain0], RULES)
    assert result.flat is not None and result.flat.record is gain0 and "taken at gain 0" in result.flat.reason
    same_gain_older = rec(MasterKind.FLAT, filter="L", night=date(2024, 10, 1))
    result = match_frame(LIGHT, [BIAS, DARK_300, gain0, same_gain_older], RULES)
    assert result.flat is not None and result.flat.record is same_gain_older


def test_night_uses_local_noon() -> None:
    """A frame taken after midnight belongs to the previous evening's night, so it gets that night's flat."""
    late = replace(LIGHT, date_obs=datetime(2024, 10, 6, 3, 0, tzinfo=UTC))
    next_night = rec(MasterKind.FLAT, filter="L", night=date(2024, 10, 6))
    result = match_frame(late, [BIAS, DARK_300, FLAT_L, next_night], RULES)
    assert result.flat is not None and result.flat.record is FLAT_L


def test_flat_frames_need_a_darkflat_or_a_bias() -> None:
    """A flat frame takes a dark-flat of its exposure over a dark of the same exposure; with neither a dark-flat
    nor a bias it lacks one; bias and dark-flat frames need nothing."""
    flat = replace(LIGHT, kind=FrameKind.FLAT, exposure=2.0)
    darkflat = rec(MasterKind.DARKFLAT, exposure=2.0)
    dark2 = rec(MasterKind.DARK, exposure=2.0)
    result = match_frame(flat, [dark2, darkflat], RULES)
    assert result.ok and result.dark is not None and result.dark.record is darkflat
    missing = match_frame(flat, [DARK_300], RULES)
    assert missing.missing == ("no dark-flat or bias for ZWO ASI2600MM Pro gain 100 offset 50 -10 °C 2 s of that "
                               "exposure (have 300 s; scaling needs a master bias)",)
    assert match_frame(replace(LIGHT, kind=FrameKind.BIAS), [], RULES).ok
    assert match_frame(replace(LIGHT, kind=FrameKind.DARKFLAT), [], RULES).ok


def test_unknown_kind_is_matched_as_a_light_and_noted() -> None:
    """A frame of unknown kind is matched as a light, with a note saying so."""
    frame = replace(LIGHT, kind=FrameKind.UNKNOWN, kind_reason="no IMAGETYP")
    result = match_frame(frame, [BIAS, DARK_300, FLAT_L], RULES)
    assert result.ok and any("matched as a light" in n for n in result.notes)


def test_ties_prefer_more_frames_then_newer() -> None:
    """Between otherwise equal masters the one with more frames wins, then the newer one."""
    few = rec(MasterKind.BIAS, n=5, temperature=-10.0)
    many = rec(MasterKind.BIAS, n=20, temperature=-10.0, readout_mode=None, created=2)
    result = match_frame(replace(LIGHT, kind=FrameKind.DARK), [few, many], RULES)
    assert result.bias is not None and result.bias.record is many


def test_tolerance_ladder() -> None:
    """Tolerances widen by whole degrees from the first to the maximum."""
    assert MatchRules(temperature_tolerance=1.0, temperature_max=5.0).tolerances() == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert MatchRules(temperature_tolerance=0.5, temperature_max=2.5).tolerances() == (0.5, 1.0, 2.0, 2.5)
    assert MatchRules(temperature_tolerance=2.0, temperature_max=2.0).tolerances() == (2.0,)


def test_result_as_json() -> None:
    """as_dict gives plain JSON types with the reasons and what is missing."""
    import json

    result = match_frame(replace(LIGHT, exposure=120.0), [BIAS, DARK_60], RULES)
    data = json.loads(json.dumps(result.as_dict()))
    assert data["dark"]["reason"].startswith("dark scaled 60 s → 120 s")
    assert data["dark_mode"] == "scaled" and data["ok"] is False
    assert data["missing"][0].startswith("flatless: no flat for")


def test_a_colour_frame_gets_no_master_and_says_why() -> None:
    """A debayered colour picture (3 planes) of a camera whose single-plane masters are all there gets none of
    them: nothing is missing, and a note says it is stacked uncalibrated because no colour master exists."""
    frame = replace(LIGHT, planes=3, source_format="jpeg")
    result = match_frame(frame, [BIAS, DARK_300, FLAT_L, rec(MasterKind.BADPIXELS)], RULES)
    assert result.ok and result.choices() == ()
    assert any("colour (RGB) frame" in note and "uncalibrated" in note for note in result.notes)
