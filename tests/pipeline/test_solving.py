"""Solving requests and answers: hints from headers, and the centre, scale and rotation a WCS describes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from astrod.demo.sky import tan_header
from astrod.io.catalogue import CatalogueObject
from astrod.io.fits import Header, read_fits_header
from astrod.model import FrameMeta, Transform
from astrod.pipeline.outputs import StackProduct, write_outputs, write_preview
from astrod.pipeline.solving import (
    SCALE_TOLERANCE,
    SolveResult,
    describe_wcs,
    field_name,
    frame_hints,
    frame_sky,
    is_wcs_key,
    nominal_scale_range,
    product_wcs_cards,
    rows_with_sky,
    session_field_name,
    solve_hints,
    solve_result,
    solved_product,
    stack_with_wcs,
    wcs_from_cards,
    wcs_transform,
    without_wcs,
)

SEESTAR_SCALE = 206_264.806 * 2.9e-3 / 250.0  # FOCALLEN 250 mm, XPIXSZ 2.9 µm: 2.3927"/px


@pytest.mark.parametrize("mirrored", [False, True])
@pytest.mark.parametrize("rotation", [0.0, 30.0, 123.4, 300.0])
def test_describe_wcs_recovers_a_known_pointing(rotation: float, mirrored: bool) -> None:
    """Centre, scale, rotation (east of north) and mirroring of a constructed TAN WCS come back exactly."""
    h = tan_header(ra=120.0, dec=-35.0, scale_arcsec=1.5, rotation_deg=rotation, mirrored=mirrored,
                    width=801, height=601)
    ra, dec, scale, rot, is_mirrored = describe_wcs(wcs_from_cards(h), width=801, height=601)
    assert ra == pytest.approx(120.0, abs=1e-9) and dec == pytest.approx(-35.0, abs=1e-9)
    assert scale == pytest.approx(1.5, rel=1e-6)
    assert (rot - rotation + 180.0) % 360.0 - 180.0 == pytest.approx(0.0, abs=1e-4)
    assert is_mirrored is mirrored


def test_solve_result_gives_the_field_and_keeps_the_wcs_cards() -> None:
    """The field is the image size times the scale; the cards rebuild the same WCS; notes are left out."""
    h = tan_header(ra=10.0, dec=41.0, scale_arcsec=2.0, rotation_deg=10.0, mirrored=False, width=1800, height=900)
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


def _sip_result(width: int = 1080, height: int = 1920) -> SolveResult:
    """A solution with SIP distortion as astrometry.net wrote it for the Seestar NGC 7023 frame."""
    h = Header()
    for key, value in (("WCSAXES", 2), ("CTYPE1", "RA---TAN-SIP"), ("CTYPE2", "DEC--TAN-SIP"), ("EQUINOX", 2000.0),
                       ("CRVAL1", 315.443144162), ("CRVAL2", 68.1263760166), ("CRPIX1", 540.5), ("CRPIX2", 960.5),
                       ("CD1_1", 0.000350500294139), ("CD1_2", 0.000558695548229), ("CD2_1", -0.000558675352134),
                       ("CD2_2", 0.000350508847663), ("IMAGEW", width), ("IMAGEH", height), ("A_ORDER", 2),
                       ("A_0_2", 1.78319044273e-07 * 50), ("A_1_1", 1.54044102053e-08 * 50),
                       ("A_2_0", -3.29326384093e-07 * 50), ("B_ORDER", 2), ("B_0_2", 1.55117050959e-07 * 50),
                       ("B_1_1", 3.02742452706e-07 * 50), ("B_2_0", 5.73091970684e-08 * 50)):
        h[key] = value
    return solve_result(h, width=width, height=height, index="index-tycho2-07.littleendian.fits", stars=179,
                        seconds=0.7)


@pytest.mark.parametrize("factor", [2, 3, 5])
def test_binned_wcs_maps_each_block_to_the_sky_of_its_pixels(factor: int) -> None:
    """A block-mean preview's WCS (SIP included, distortion exaggerated 50×) puts each preview pixel where the
    centre of its block of frame pixels is on the sky, within 0.01″."""
    result = _sip_result()
    cards = product_wcs_cards(result, frame_shape=(1920, 1080), image_shape=(1920 // factor, 1080 // factor))
    assert cards is not None and cards["IMAGEW"][0] == 1080 // factor
    small = wcs_from_cards(cards)
    big = result.wcs()
    ij = np.array([[i, j] for i in (0, 7, 1080 // factor - 1) for j in (0, 11, 1920 // factor - 1)], dtype=float)
    a = small.all_pix2world(ij, 0)
    b = big.all_pix2world(ij * factor + (factor - 1) / 2.0, 0)
    err = np.hypot((a[:, 0] - b[:, 0]) * np.cos(np.radians(b[:, 1])), a[:, 1] - b[:, 1]) * 3600
    assert err.max() < 0.01
    assert product_wcs_cards(result, frame_shape=(1920, 1080), image_shape=(1920, 1080)) is not None


def test_a_product_on_another_grid_gets_no_wcs() -> None:
    """A cropped image is not the reference's grid nor a block mean of it: no WCS is claimed for it."""
    assert product_wcs_cards(_sip_result(), frame_shape=(1920, 1080), image_shape=(1900, 1000)) is None
    assert product_wcs_cards(_sip_result(), frame_shape=(1920, 1080), image_shape=(3, 1000, 1080)) is None


def test_stack_carries_the_reference_solution(tmp_path: Path) -> None:
    """The stack product gets the reference's WCS (replacing an old one, keeping its other cards) and the file
    written from it reads back as that WCS; a colour cube (3, H, W) gets it as well."""
    result = _sip_result()
    product = StackProduct(image=np.zeros((3, 1920, 1080), dtype=np.float32),
                           header={"OBJECT": ("NGC 7023", "target"), "CRVAL1": (1.0, "stale")}, rows=[])
    solved = stack_with_wcs(product, result, frame_shape=(1920, 1080))
    assert solved.header["OBJECT"] == ("NGC 7023", "target")
    assert solved.header["CRVAL1"][0] == pytest.approx(315.443144162)
    write_outputs(solved, stack_path=tmp_path / "stack.fits")
    header = read_fits_header(tmp_path / "stack.fits")
    assert header["PLTSOLVD"] is True
    pix = np.array([[0.0, 0.0], [1079.0, 1919.0]])
    np.testing.assert_allclose(wcs_from_cards(header).all_pix2world(pix, 0), result.wcs().all_pix2world(pix, 0),
                               rtol=0, atol=1e-9)
    cropped = StackProduct(image=np.zeros((100, 100), dtype=np.float32), header={}, rows=[])
    assert stack_with_wcs(cropped, result, frame_shape=(1920, 1080)) is cropped


def test_preview_fits_carries_its_wcs(tmp_path: Path) -> None:
    """write_preview puts the preview's WCS cards into preview.fits."""
    result = _sip_result()
    cards = product_wcs_cards(result, frame_shape=(1920, 1080), image_shape=(960, 540))
    write_preview(tmp_path, linear=np.zeros((960, 540), dtype=np.float32),
                  stretched=np.zeros((960, 540), dtype=np.uint8), wcs=cards)
    header = read_fits_header(tmp_path / "preview.fits")
    assert header["IMAGETYP"] == "Preview" and header["CRPIX1"] == pytest.approx((540.5 + 0.5) / 2)


# ------------------------------------------------------------------------------------------ journal, registration, sky


def _solution(*, ra: float = 315.44, dec: float = 68.13, scale: float = 2.376, rotation: float = 57.9,
              width: int = 1080, height: int = 1920, mirrored: bool = False) -> SolveResult:
    h = tan_header(ra=ra, dec=dec, scale_arcsec=scale, rotation_deg=rotation, mirrored=mirrored, width=width,
                   height=height)
    return solve_result(h, width=width, height=height, index="index-4107.fits", stars=200, seconds=2.0)


def test_a_solution_record_reads_back_equal() -> None:
    """What the journal stores of a solution (plain JSON values) reads back as the same solution."""
    import json

    result = _solution()
    assert SolveResult.from_record(json.loads(json.dumps(result.record()))) == result
    with pytest.raises(KeyError):
        SolveResult.from_record({"ra": 1.0})


@pytest.mark.parametrize("mirrored", [False, True])
def test_two_solutions_give_the_transform_between_their_frames(mirrored: bool) -> None:
    """A frame whose pixels see the reference's sky through a known similarity (here 10 % coarser, turned 20°,
    shifted) gets that transform back from the two solutions, to 0.01 px over the frame; a mirrored pair is
    fitted as an affine map that mirrors."""
    ref = _solution(mirrored=mirrored)
    truth = Transform.similarity(dx=35.0, dy=-50.0, rotation_deg=20.0, scale=1.0 / 0.9)
    # the frame's WCS: a frame pixel goes through the truth onto the reference's pixels, then to the sky
    h, w = 1920, 1080
    frame_ra, frame_dec, frame_rot, frame_scale = frame_sky(truth, ref, frame_shape=(h, w))
    frame = _solution(ra=frame_ra, dec=frame_dec, scale=frame_scale, rotation=frame_rot, mirrored=mirrored)
    found, rms = wcs_transform(frame, ref, frame_shape=(h, w))
    assert rms < 0.05
    corners = np.array([[0.0, 0.0], [w - 1.0, 0.0], [0.0, h - 1.0], [w - 1.0, h - 1.0], [w / 2, h / 2]])
    assert np.max(np.abs(found.apply(corners) - truth.apply(corners))) < 0.05
    assert frame_scale == pytest.approx(2.376 / 0.9, rel=1e-4)


def test_frames_table_gets_each_stacked_frames_sky() -> None:
    """A stacked row gets its centre RA/Dec, rotation (° east of north) and scale from its transform and the
    reference's solution: the reference's own row its solution's figures; a rejected row nothing."""
    ref = _solution()
    rows = [{"path": "ref.fits", "status": "stacked", "dx": 0.0, "dy": 0.0, "rotation_deg": 0.0, "scale": 1.0},
            {"path": "turned.fits", "status": "stacked", "dx": 12.0, "dy": 3.0, "rotation_deg": 10.0, "scale": 1.0},
            {"path": "bad.fits", "status": "rejected", "dx": None, "dy": None, "rotation_deg": None, "scale": None}]
    out = rows_with_sky(rows, ref, frame_shape=(1920, 1080))
    assert out[0]["ra"] == pytest.approx(ref.ra, abs=1e-6) and out[0]["dec"] == pytest.approx(ref.dec, abs=1e-6)
    assert out[0]["scale_arcsec"] == pytest.approx(ref.scale_arcsec, rel=1e-4)
    assert out[0]["sky_rotation_deg"] == pytest.approx(ref.rotation_deg, abs=1e-3)
    turned = (float(out[1]["sky_rotation_deg"]) - ref.rotation_deg + 180.0) % 360.0 - 180.0  # type: ignore[arg-type]
    # turned about the corner, its centre moves 0.1° on the sky, where north points 0.26° otherwise at +68°
    assert abs(abs(turned) - 10.0) < 0.3 and out[1]["ra"] != out[0]["ra"]
    assert "ra" not in out[2] and rows[0].get("ra") is None  # the input rows are left as they were


def test_a_frame_without_pointing_is_hinted_by_the_reference() -> None:
    """Solving a frame of a solved session: its header's hints when it has them; else the reference's centre
    (within a few fields) and its scale."""
    ref = _solution()
    hinted = frame_hints(FrameMeta(ra=315.5, dec=68.2), _seestar_header(), ref)
    assert (hinted.ra, hinted.dec) == (315.5, 68.2) and hinted.radius_deg == 5.0
    bare = frame_hints(FrameMeta(), {}, ref)
    assert (bare.ra, bare.dec) == (ref.ra, ref.dec) and bare.radius_deg >= 5.0
    assert bare.scale_low == pytest.approx(ref.scale_arcsec / SCALE_TOLERANCE)


def test_a_field_is_named_after_the_object_nearest_its_centre_inside_it() -> None:
    """The object nearest the centre among those inside the image names the field; one outside the image does
    not, however near; without any, the centre's coordinates do."""
    ref = _solution(rotation=0.0)  # north up: 1080 px × 2.376″ = 0.71° wide, 1.27° high
    inside_far = CatalogueObject(name="IC 1", ra=ref.ra, dec=ref.dec + 0.5, kind="Galaxy", major_arcmin=1.0)
    inside_near = CatalogueObject(name="NGC 7023", ra=ref.ra, dec=ref.dec + 0.05, kind="RfN", major_arcmin=10.0)
    outside = CatalogueObject(name="NGC 1", ra=ref.ra + 0.4 / math.cos(math.radians(ref.dec)), dec=ref.dec,
                              kind="Galaxy", major_arcmin=1.0)
    assert field_name(ref, [inside_far, outside, inside_near]) == "NGC 7023"
    assert field_name(ref, [outside]) == "RA 21h01m Dec +68°07'"
    assert field_name(ref, []) == "RA 21h01m Dec +68°07'"


def test_a_closing_session_takes_its_reference_solution(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the daemon's close and ``astrod reprocess`` put into a session's stack: the reference's WCS, each
    stacked row's sky, OBJECT when the session is named from its field; the summary gains the name and the
    solution's figures. Only a session named after its pointing is named from the field (the objects from the
    catalogue near the solved centre)."""
    import astrod.pipeline.solving as solving

    ref = _solution(rotation=0.0)
    nebula = CatalogueObject(name="NGC 7023", ra=ref.ra, dec=ref.dec + 0.05, kind="RfN", major_arcmin=10.0)
    asked: list[tuple[float, float, float]] = []
    monkeypatch.setattr(solving, "objects_near", lambda ra, dec, radius: asked.append((ra, dec, radius)) or [nebula])
    assert session_field_name(ref, "M 42") is None and asked == []
    assert session_field_name(ref, "RA 21h01m Dec +68°08'") == "NGC 7023"
    assert asked == [(ref.ra, ref.dec, pytest.approx(0.5 * math.hypot(ref.width_deg, ref.height_deg)))]

    rows = [{"path": "ref.fits", "status": "stacked", "dx": 0.0, "dy": 0.0, "rotation_deg": 0.0, "scale": 1.0}]
    product = StackProduct(image=np.zeros((1920, 1080), dtype=np.float32), header={"EXPTIME": (60.0, "s")},
                           rows=rows)
    named, summary = solved_product(product, ref, frame_shape=(1920, 1080), name="NGC 7023")
    assert named.header["OBJECT"][0] == "NGC 7023" and named.header["PLTSOLVD"][0] is True
    assert named.header["EXPTIME"] == (60.0, "s") and named.header["CRVAL1"][0] == pytest.approx(ref.ra)
    assert named.rows[0]["ra"] == pytest.approx(ref.ra, abs=1e-6) and "ra" not in rows[0]
    assert summary == {"name": "NGC 7023", "wcs": {"ra": ref.ra, "dec": ref.dec, "scale_arcsec": ref.scale_arcsec,
                                                   "rotation_deg": ref.rotation_deg, "index": ref.index}}
    unnamed, summary = solved_product(product, ref, frame_shape=(1920, 1080), name=None)
    assert "OBJECT" not in unnamed.header and set(summary) == {"wcs"} and "CRVAL1" in unnamed.header


def test_the_annotation_layer_of_a_binned_preview() -> None:
    """On a 2×2-binned preview of the reference's grid the field's object sits where the binned WCS puts it,
    objects outside are left out, and the grid has lines of both kinds labelled at round values; a picture on
    another grid gets no layer."""
    from astrod.pipeline.annotation import annotation_layer

    ref = _solution(rotation=0.0)  # 1080 × 1920 px at 2.376″, north up
    inside = CatalogueObject(name="NGC 7023", ra=ref.ra, dec=ref.dec + 0.1, kind="RfN", major_arcmin=10.0)
    outside = CatalogueObject(name="far", ra=ref.ra + 5.0, dec=ref.dec, kind="Galaxy", major_arcmin=3.0)
    layer = annotation_layer(ref, [outside, inside], frame_shape=(1920, 1080), image_shape=(960, 540, 3))
    assert layer is not None
    markers, grid = layer
    (marker,) = markers
    centre_y = (959) / 2.0
    assert marker.label == "NGC 7023" and abs(marker.x - 269.5) < 1.0
    assert abs(abs(marker.y - centre_y) - 0.1 * 3600 / (2 * 2.376)) < 1.0  # 0.1° from the centre, 2× binned
    assert marker.radius == pytest.approx(10.0 * 30.0 / (2 * 2.376), rel=1e-3)
    labels = [g.label for g in grid]
    assert any(label.endswith("'") and "d" in label for label in labels)  # declinations
    assert any("h" in label for label in labels)  # right ascensions
    assert annotation_layer(ref, [inside], frame_shape=(1920, 1080), image_shape=(700, 500)) is None
