"""Tests of astrod.core.warp: frame → reference resampling with NaN coverage."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from astrod.core.warp import resample, warp, warp_bands, warp_rows
from astrod.model import Transform
from tests import synth

F32 = npt.NDArray[np.float32]
SIZE = 256


def star_scene(transform: Transform | None = None, *, fwhm: float = 4.0) -> tuple[F32, synth.StarField]:
    """Isolated bright stars (no sky), seen through ``transform`` (frame → reference)."""
    catalogue = synth.make_catalogue(width=SIZE, height=SIZE, n_stars=15, seed=21, margin=40, flux_min=1e5,
                                     flux_max=1e6, min_separation=30)
    return synth.render_stars(width=SIZE, height=SIZE, catalogue=catalogue, transform=transform, fwhm=fwhm,
                              sky=0.0, stars_only=True)


def centroids(image: F32, xy: npt.NDArray[np.float64], *, radius: int = 8) -> npt.NDArray[np.float64]:
    """First-moment centroids in boxes around the given (x, y) guesses."""
    out = []
    for x, y in xy:
        x0, y0 = round(x), round(y)
        box = image[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1].astype(np.float64)
        yy, xx = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
        out.append(((box * xx).sum() / box.sum(), (box * yy).sum() / box.sum()))
    return np.array(out)


def inner(xy: npt.NDArray[np.float64], margin: float = 20.0) -> npt.NDArray[np.bool_]:
    return np.all((xy > margin) & (xy < SIZE - 1 - margin), axis=1)


@pytest.mark.parametrize(
    "transform",
    [
        Transform.similarity(dx=3.4, dy=-7.8),
        Transform.similarity(dx=40.0, dy=-25.0, rotation_deg=17.0),
        Transform.similarity(dx=SIZE - 1 + 0.3, dy=SIZE - 1 - 0.6, rotation_deg=180.0),
        Transform.similarity(dx=5.0, dy=2.0, rotation_deg=-1.5, scale=1.004),
    ],
    ids=["shift", "rotation", "meridian-flip", "similarity"],
)
def test_stars_land_where_the_transform_sends_them(transform: Transform) -> None:
    """A star at frame position p lands at transform.apply(p) on the reference grid (dst(x) = src(M⁻¹x))."""
    frame, truth = star_scene(transform)
    warped = warp(frame, transform, shape=(SIZE, SIZE))
    expected = transform.apply(truth.xy)
    keep = inner(expected) & inner(truth.xy)
    assert keep.sum() >= 5
    measured = centroids(warped, expected[keep])
    np.testing.assert_allclose(measured, expected[keep], atol=0.05)
    # and the reference-frame truth agrees
    np.testing.assert_allclose(expected, truth.ref_xy, atol=1e-9)


@pytest.mark.parametrize(("interpolation", "tolerance"), [("linear", 0.04), ("cubic", 0.02), ("lanczos", 0.01)])
def test_round_trip_restores_the_image(interpolation: str, tolerance: float) -> None:
    """Warping by a rotation and back by its inverse restores the covered interior, up to the smoothing of
    two interpolations of a FWHM 6 px star (a few % of the peak for linear, 1 % for Lanczos)."""
    frame, _ = star_scene(fwhm=6.0)
    t = Transform.similarity(dx=30.0, dy=-20.0, rotation_deg=12.0)
    there = warp(frame, t, shape=(SIZE, SIZE), interpolation=interpolation)  # type: ignore[arg-type]
    back = warp(there, t.inverse(), shape=(SIZE, SIZE), interpolation=interpolation)  # type: ignore[arg-type]
    covered = np.isfinite(back)
    assert covered.sum() > 0.6 * SIZE * SIZE
    assert np.nanmax(np.abs(back - frame)) < tolerance * frame.max()


def test_integer_shift_is_an_exact_copy_with_nan_outside() -> None:
    """A whole-pixel shift copies pixels exactly; uncovered pixels are NaN, covered ones all finite."""
    rng = np.random.default_rng(22)
    frame = rng.normal(100.0, 10.0, (60, 80)).astype(np.float32)
    out = warp(frame, Transform.similarity(dx=7.0, dy=-4.0), shape=(60, 80))
    np.testing.assert_array_equal(out[:56, 7:], frame[4:, :73])
    assert np.all(np.isnan(out[:, :7])) and np.all(np.isnan(out[56:, :]))
    identity = warp(frame, Transform.identity(), shape=(60, 80))
    np.testing.assert_array_equal(identity, frame)


def test_coverage_of_a_subpixel_shift() -> None:
    """After a sub-pixel shift, pixels mapping inside the frame are finite and pixels mapping outside NaN."""
    frame = np.full((50, 70), 5.0, dtype=np.float32)
    t = Transform.similarity(dx=10.5, dy=-3.25)
    out = warp(frame, t, shape=(50, 70))
    yy, xx = np.mgrid[0:50, 0:70]
    src = t.inverse().apply(np.column_stack([xx.ravel(), yy.ravel()])).reshape(50, 70, 2)
    inside = (src[..., 0] >= 0) & (src[..., 0] <= 69 - 1) & (src[..., 1] >= 0) & (src[..., 1] <= 49 - 1)
    outside = (src[..., 0] < 0) | (src[..., 0] > 69) | (src[..., 1] < 0) | (src[..., 1] > 49)
    assert np.all(np.isfinite(out[inside])) and np.all(np.isnan(out[outside]))
    # no darkening next to the border: covered pixels keep the flat value
    np.testing.assert_allclose(out[np.isfinite(out)], 5.0)


def test_perspective_matches_an_independent_remap() -> None:
    """A projective transform gives what cv2.remap gives with the inverse map computed by Transform.apply."""
    frame, _ = star_scene(fwhm=5.0)
    m = np.array([[1.01, 0.02, 4.0], [-0.015, 0.99, -3.0], [2e-5, -1e-5, 1.0]])
    t = Transform.from_array(m)
    out = warp(frame, t, shape=(SIZE, SIZE))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    src = t.inverse().apply(np.column_stack([xx.ravel(), yy.ravel()])).astype(np.float32)
    ref = cv2.remap(frame, src[:, 0].reshape(SIZE, SIZE), src[:, 1].reshape(SIZE, SIZE), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=float("nan"))
    both = np.isfinite(out) & np.isfinite(ref)
    assert both.sum() > 0.9 * np.isfinite(out).sum()
    assert np.max(np.abs(out[both] - ref[both])) < 2e-3 * frame.max()


def test_colour_planes_warp_like_mono_and_input_is_untouched() -> None:
    """A (3, H, W) warp equals warping each plane; the input is not modified; ``out`` is filled in place."""
    rng = np.random.default_rng(23)
    rgb = rng.normal(100.0, 10.0, (3, 40, 50)).astype(np.float32)
    before = rgb.copy()
    t = Transform.similarity(dx=2.3, dy=1.1, rotation_deg=3.0)
    buffer = np.empty((3, 45, 55), dtype=np.float32)
    out = warp(rgb, t, shape=(45, 55), out=buffer)
    assert out is buffer
    for p in range(3):
        np.testing.assert_array_equal(out[p], warp(rgb[p], t, shape=(45, 55)))
    np.testing.assert_array_equal(rgb, before)
    with pytest.raises(ValueError, match="interpolation"):
        warp(rgb, t, shape=(45, 55), interpolation="nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out"):
        warp(rgb, t, shape=(45, 55), out=np.empty((45, 55), dtype=np.float32))


@pytest.mark.parametrize(
    "transform",
    [
        Transform.similarity(dx=3.4, dy=-7.8, rotation_deg=0.7),
        Transform.similarity(dx=SIZE - 1 + 0.3, dy=SIZE - 1 - 0.6, rotation_deg=180.0),
        Transform.similarity(dx=-6.0, dy=11.0),
        Transform.from_array(np.array([[1.01, 0.02, 4.0], [-0.015, 0.99, -3.0], [2e-5, -1e-5, 1.0]])),
    ],
    ids=["rotation", "meridian-flip", "integer-shift", "perspective"],
)
@pytest.mark.parametrize("band_rows", [1, 37, 64, 1000])
def test_bands_are_the_rows_of_the_whole_warp(transform: Transform, band_rows: int) -> None:
    """warp_bands yields consecutive bands, in one reused buffer, that put together are the whole warp
    (same values up to OpenCV's rounding of the shifted map, same NaN coverage)."""
    frame, _ = star_scene(fwhm=4.0)
    frame += np.float32(50.0)
    whole = warp(frame, transform, shape=(SIZE - 6, SIZE + 10))
    buffer = np.empty(band_rows * (SIZE + 10) + 5, dtype=np.float32)
    pieces = []
    next_row = 0
    for row0, band in warp_bands(frame, transform, shape=(SIZE - 6, SIZE + 10), band_rows=band_rows,
                                 buffer=buffer):
        assert row0 == next_row and band.shape[1] == SIZE + 10
        assert np.shares_memory(band, buffer)
        next_row = row0 + band.shape[0]
        pieces.append(band.copy())
    assert next_row == SIZE - 6
    joined = np.concatenate(pieces)
    np.testing.assert_array_equal(np.isnan(joined), np.isnan(whole))
    np.testing.assert_allclose(joined, whole, rtol=0, atol=1e-4 * float(frame.max()), equal_nan=True)


def test_colour_bands_and_argument_checks() -> None:
    """Colour bands are (planes, rows, W) and equal the whole warp; bad arguments fail before any band."""
    rng = np.random.default_rng(24)
    rgb = rng.normal(100.0, 10.0, (3, 40, 50)).astype(np.float32)
    t = Transform.similarity(dx=2.3, dy=1.1, rotation_deg=3.0)
    whole = warp(rgb, t, shape=(45, 55))
    bands = list((row0, band.copy()) for row0, band in warp_bands(rgb, t, shape=(45, 55), band_rows=16))
    assert [row0 for row0, _ in bands] == [0, 16, 32]
    assert all(band.shape[0] == 3 for _, band in bands)
    np.testing.assert_allclose(np.concatenate([b for _, b in bands], axis=1), whole, atol=1e-3, equal_nan=True)
    singular = Transform.from_array(np.array([[1.0, 2.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="not invertible"):
        warp_bands(rgb, singular, shape=(45, 55))
    with pytest.raises(ValueError, match="buffer"):
        warp_bands(rgb, t, shape=(45, 55), band_rows=16, buffer=np.empty(10, dtype=np.float32))


# ------------------------------------------------------------------------------------------ resample


def test_resample_linear_is_the_warp_of_a_plane() -> None:
    """A float32 plane resampled bilinearly is what `warp` gives, bit for bit, NaN where it does not cover."""
    frame, _ = star_scene(fwhm=4.0)
    for t in (Transform.similarity(dx=3.4, dy=-7.8, rotation_deg=0.7), Transform.similarity(dx=-6.0, dy=11.0),
              Transform.from_array(np.array([[1.01, 0.02, 4.0], [-0.015, 0.99, -3.0], [2e-5, -1e-5, 1.0]]))):
        out = resample(frame, t, shape=(SIZE - 6, SIZE + 10), interpolation="linear")
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, warp(frame, t, shape=(SIZE - 6, SIZE + 10)))


def test_resample_nearest_keeps_counts_and_fills_outside() -> None:
    """A uint16 count map resampled by nearest neighbour keeps its dtype and values: a whole-pixel shift moves
    them exactly and a quarter turn about the centre is np.rot90; uncovered pixels get ``fill``."""
    rng = np.random.default_rng(25)
    counts = rng.integers(0, 40, (31, 31)).astype(np.uint16)
    shifted = resample(counts, Transform.similarity(dx=5.0, dy=-3.0), shape=(31, 31), interpolation="nearest",
                       fill=0)
    assert shifted.dtype == np.uint16
    np.testing.assert_array_equal(shifted[:28, 5:], counts[3:, :26])
    assert not shifted[28:].any() and not shifted[:, :5].any()
    turn = Transform.similarity(dx=30.0, dy=0.0, rotation_deg=90.0)  # (x, y) -> (30 - y, x)
    out = resample(counts, turn, shape=(31, 31), interpolation="nearest", fill=7)
    np.testing.assert_array_equal(out, np.rot90(counts, k=-1))
    far = resample(counts, Transform.similarity(dx=100.0, dy=0.0), shape=(31, 31), interpolation="nearest", fill=7)
    assert np.all(far == 7)


def test_resample_refuses_what_it_cannot_do() -> None:
    """Stacks of planes, other dtypes, a NaN fill for counts, unknown interpolations and singular transforms
    are refused."""
    plane = np.zeros((8, 8), dtype=np.float32)
    t = Transform.similarity(dx=1.5, dy=0.0)
    with pytest.raises(ValueError, match="plane"):
        resample(np.zeros((3, 8, 8), dtype=np.float32), t, shape=(8, 8), interpolation="linear")
    with pytest.raises(ValueError, match="plane"):
        resample(np.zeros((8, 8), dtype=np.float64), t, shape=(8, 8), interpolation="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint16"):
        resample(np.zeros((8, 8), dtype=np.uint16), t, shape=(8, 8), interpolation="nearest")
    with pytest.raises(ValueError, match="interpolation"):
        resample(plane, t, shape=(8, 8), interpolation="cubic")  # type: ignore[arg-type]
    singular = Transform.from_array(np.array([[1.0, 2.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="not invertible"):
        resample(plane, singular, shape=(8, 8), interpolation="linear")


def test_warp_rows_are_the_bands_bit_for_bit_and_fill_slices_of_a_bigger_band() -> None:
    """warp_rows at a band's first row gives that band of warp_bands exactly, written into rows of a larger
    (planes, rows, W) buffer; a slice that does not fit the output grid is refused."""
    rng = np.random.default_rng(25)
    rgb = rng.normal(100.0, 10.0, (3, 60, 50)).astype(np.float32)
    t = Transform.similarity(dx=2.3, dy=-1.6, rotation_deg=-2.0)
    bands = {row0: band.copy() for row0, band in warp_bands(rgb, t, shape=(64, 52), band_rows=16)}
    big = np.full((3, 40, 52), -1.0, dtype=np.float32)
    warp_rows(rgb, t, shape=(64, 52), row0=16, out=big[:, 4:20, :])
    warp_rows(rgb, t, shape=(64, 52), row0=32, out=big[:, 20:36, :])
    np.testing.assert_array_equal(big[:, 4:20], bands[16])
    np.testing.assert_array_equal(big[:, 20:36], bands[32])
    assert np.all(big[:, :4] == -1.0) and np.all(big[:, 36:] == -1.0)
    with pytest.raises(ValueError, match="does not fit"):
        warp_rows(rgb, t, shape=(64, 52), row0=60, out=big[:, 0:16, :])
    with pytest.raises(ValueError, match="does not fit"):
        warp_rows(rgb, t, shape=(64, 52), row0=0, out=big[0, 0:16, :])
