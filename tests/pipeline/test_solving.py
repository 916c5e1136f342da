"""Solving requests and answers: hints from headers, and the centre, scale and rotation a WCS describes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from astrod.io.fits import Header
from astrod.model import FrameMeta
from astrod.pipeline.solving import (
    SCALE_TOLERANCE,
    describe_wcs,
    is_wcs_key,
    nominal_scale_range,
    solve_hints,
    solve_result,
    wcs_from_cards,
    without_wcs,
)

SEESTAR_SCALE = 206_264.806 * 2.9e-3 / 250.0  # FOCALLEN 250 mm, XPIXSZ 2.9 µm: 2.3927"/px


def _tan_header(*, ra: float, dec: float, scale_arcsec: float, rotation_deg: float, mirrored: bool,
                width: int, height: int) -> Header:
    """A TAN WCS whose image up (+y) points ``rotation_deg`` east of north, centred on the image."""
    s = scale_arcsec / 3600.0
    t = math.radians(rotation_deg)
    up = (math.sin(t), math.cos(t))  # (east, north) components of +y
    # +x lies 90° west of up (position angle +270°) on a plain image, 90° east of it on a mirrored one.
    right = (math.cos(t), -math.sin(t)) if mirrored else (-math.cos(t), math.sin(t))
    h = Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = ra, dec
    h["CRPIX1"], h["CRPIX2"] = (width + 1) / 2.0, (height + 1) / 2.0
    h["CD1_1"], h["CD2_1"] = s * right[0], s * right[1]
    h["CD1_2"], h["CD2_2"] = s * up[0], s * up[1]
    return h


@pytest.mark.parametrize("mirrored", [False, True])
@pytest.mark.parametrize("rotation", [0.0, 30.0, 123.4, 300.0])
def test_describe_wcs_recovers_a_known_pointing(rotation: float, mirrored: bool) -> None:
    """Centre, scale, rotation (east of north) and mirroring of a constructed TAN WCS come back exactly."""
    h = _tan_header(ra=120.0, dec=-35.0, scale_arcsec=1.5, rotation_deg=rotation, mirrored=mirrored,
                    width=801, height=601)
    ra, dec, scale, rot, is_mirrored = describe_wcs(wcs_from_cards(h), width=801, height=601)
    assert ra == pytest.approx(120.0, abs=1e-9) and dec == pytest.approx(-35.0, abs=1e-9)
    assert scale == pytest.approx(1.5, rel=1e-6)
    assert (rot - rotation + 180.0) % 360.0 - 180.0 == pytest.approx(0.0, abs=1e-4)
    assert is_mirrored is mirrored


def test_solve_result_gives_the_field_and_keeps_the_wcs_cards() -> None:
    """The field is the image size times the scale; the cards rebuild the same WCS; notes are left out."""
    h = _tan_header(ra=10.0, dec=41.0, scale_arcsec=2.0, rotation_deg=10.0, mirrored=False, width=1800, height=900)
    h["HISTORY"] = "made by a solver"
    h["DATE"] = "2026-01-01"
    result = solve_result(h, width=1800, height=900, index="index-4107.fits", stars=120, seconds=1.5)
    assert result.width_deg == pytest.approx(1.0, rel=1e-6) and result.height_deg == pytest.approx(0.5, rel=1e-6)
    assert {c[0] for c in result.cards} == {"CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1",
                                            "CD1_2", "CD2_1", "CD2_2"}
    sky = result.wcs().all_pix2world(np.array([[0.0, 0.0]]), 0)
    np.testing.assert_allclose(sky, wcs_from_cards(h).all_pix2world(np.array([[0.0, 0.0]]), 0))
    assert result.as_dict()["index"] == "index-4107.fits"


def _seestar_header() -> dict[str, object]:
    return {"FOCALLEN": 250, "XPIXSZ": 2.90000009536743, "XBINNING": 1, "RA": 315.499995, "DEC": 68.215556,
            "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 315.4433, "CRVAL2": 68.1263, "PC1_1": 3.5e-4}


def test_hints_come_from_pointing_keywords_and_the_optics() -> None:
    """RA/Dec from the pointing keywords (as FrameMeta read them), the scale from FOCALLEN and XPIXSZ within
    the tolerance either way."""
    hints = solve_hints(FrameMeta(ra=315.499995, dec=68.215556), _seestar_header())
    assert (hints.ra, hints.dec) == (315.499995, 68.215556)
    assert hints.scale_low == pytest.approx(SEESTAR_SCALE / SCALE_TOLERANCE)
    assert hints.scale_high == pytest.approx(SEESTAR_SCALE * SCALE_TOLERANCE)


def test_wcs_reference_is_a_hint_only_when_allowed() -> None:
    """Without pointing keywords CRVAL1/2 of an RA/Dec WCS give the position, unless use_wcs is off; a header
    stripped of its WCS gives none either way."""
    header = _seestar_header()
    assert solve_hints(FrameMeta(), header).ra == 315.4433
    assert solve_hints(FrameMeta(), header, use_wcs=False).has_position is False
    stripped = without_wcs(header)
    assert "CRVAL1" not in stripped and "PC1_1" not in stripped and stripped["FOCALLEN"] == 250
    assert solve_hints(FrameMeta(), stripped).has_position is False


def test_binned_scale_range_spans_both_pixel_size_conventions() -> None:
    """XPIXSZ may be the binned or the sensor pixel: at 2×2 the range covers both readings."""
    low, high = nominal_scale_range(_seestar_header(), (2, 2)) or (0.0, 0.0)
    assert low == pytest.approx(SEESTAR_SCALE / SCALE_TOLERANCE)
    assert high == pytest.approx(2 * SEESTAR_SCALE * SCALE_TOLERANCE)
    assert nominal_scale_range({"FOCALLEN": 250}, (1, 1)) is None


def test_previous_scale_fills_in_for_missing_optics() -> None:
    """With no focal length, a previous solve's scale gives the range; with nothing at all the solve is blind."""
    hints = solve_hints(FrameMeta(), {}, previous_scale=1.2)
    assert hints.scale_low == pytest.approx(1.2 / SCALE_TOLERANCE)
    assert solve_hints(FrameMeta(), {}).describe() == "blind"


def test_wcs_keys_are_recognised() -> None:
    """The WCS and SIP keywords are recognised, others are not."""
    for key in ("CRVAL1", "CD2_2", "PC1_2", "CDELT1", "CROTA2", "A_ORDER", "BP_1_1", "LONPOLE", "EQUINOX"):
        assert is_wcs_key(key), key
    for key in ("OBJECT", "RA", "DEC", "FOCALLEN", "OBJCTRA", "DATE-OBS"):
        assert not is_wcs_key(key), key
