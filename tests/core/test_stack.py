"""Tests of astrod.core.stack: the live stacker and the full-rejection re-integration."""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from astropy.stats import sigma_clip

from astrod.core.stack import (
    Stacker,
    fwhm_weight,
    integrate_bands,
    normalisation,
    snr_weight,
)
from astrod.core.warp import warp
from astrod.model import Transform
from tests import synth

F32 = npt.NDArray[np.float32]
SIGMA = 10.0
SKY = 1000.0


def noise_frames(n: int, *, shape: tuple[int, ...] = (256, 256), seed: int = 1) -> list[F32]:
    """``n`` frames of constant sky plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    return [(SKY + SIGMA * rng.standard_normal(shape)).astype(np.float32) for _ in range(n)]


def stack_online(frames: list[F32], **kwargs: object) -> Stacker:
    st = Stacker(frames[0].shape, **kwargs)  # type: ignore[arg-type]
    for f in frames:
        st.add(f)
    return st


def band_reader(cube: F32) -> Callable[[int, int], F32]:
    """A band reader over an in-memory (n, H, W) or (n, planes, H, W) cube."""
    def read(row0: int, row1: int) -> F32:
        return cube[..., row0:row1, :]
    return read


def with_defects(frames: list[F32], *, trail_frame: int, cosmic_frame: int) -> tuple[list[F32], np.ndarray]:
    """Copies of ``frames`` with a bright satellite trail and cosmic rays; returns the defect mask."""
    out = list(frames)
    out[trail_frame], trail = synth.add_satellite_trail(frames[trail_frame], x0=-10, y0=30, x1=270, y1=200,
                                                        width=3.0, amplitude=2000.0)
    out[cosmic_frame], rays = synth.add_cosmic_rays(frames[cosmic_frame], n=60, seed=5, amplitude=3000.0)
    return out, trail | rays


# -------------------------------------------------------------------------------------------------------
# noise and rejection


def test_online_stack_noise_is_near_sqrt_n() -> None:
    """The online stack of N pure-noise frames has a noise within 10 % of σ/√N, and rejects ~0.3 %."""
    n = 30
    frames = noise_frames(n)
    result = stack_online(frames).finalize()
    ideal = SIGMA / math.sqrt(n)
    assert abs(float(result.image.std()) / ideal - 1.0) < 0.10
    assert abs(float(result.image.mean()) - SKY) < 5 * ideal / math.sqrt(result.image.size)
    # samples tested (frames after the first 5) are rejected at about the Gaussian rate 2·Φ(-3) = 0.27 %
    tested = (n - 5) * result.image.size
    assert 0.0015 < result.rejected.sum() / tested < 0.0045
    assert np.all(result.count + result.rejected == n)


def test_float32_running_mean_tracks_float64() -> None:
    """The float32 running mean of 2000 frames stays within the documented √N·ulp/6 rounding of float64."""
    rng = np.random.default_rng(24)
    stacker = Stacker((32, 32), kappa=math.inf)
    total = np.zeros((32, 32))
    n = 2000
    for _ in range(n):
        frame = (60000.0 + 245.0 * rng.standard_normal((32, 32))).astype(np.float32)
        stacker.add(frame)
        total += frame
    error = stacker.finalize().image - total / n
    ulp = float(np.spacing(np.float32(60000.0)))
    assert float(np.sqrt(np.mean(error**2))) < 1.5 * math.sqrt(n) * ulp / 6
    assert abs(float(error.mean())) < 0.01 * 245.0 / math.sqrt(n)


@pytest.mark.parametrize("method", ["none", "sigma", "winsorized", "linear_fit"])
def test_integrated_stack_noise_is_near_sqrt_n(method: str) -> None:
    """Every re-integration method keeps the noise of N pure-noise frames within 10 % of σ/√N."""
    n = 20
    cube = np.stack(noise_frames(n, shape=(128, 128), seed=2))
    result = integrate_bands(band_reader(cube), n, (128, 128), method=method)  # type: ignore[arg-type]
    ideal = SIGMA / math.sqrt(n)
    assert abs(float(result.image.std()) / ideal - 1.0) < 0.10


def test_online_rejection_removes_defects_added_after_rejection_starts() -> None:
    """A trail and cosmic rays in frames added after min_frames_for_rejection leave no trace in the stack."""
    n = 12
    clean = noise_frames(n, seed=3)
    dirty, defect = with_defects(clean, trail_frame=7, cosmic_frame=9)
    stacked = stack_online(dirty).finalize()
    reference = stack_online(clean).finalize()
    sigma_stack = SIGMA / math.sqrt(n)
    residual = np.abs(stacked.image - reference.image)[defect]
    assert residual.max() < 3 * sigma_stack
    # the bright parts were rejected, not diluted
    assert np.all(stacked.rejected[dirty[7] - clean[7] > 200] >= 1)


def test_early_defects_survive_online_but_not_integrate_bands() -> None:
    """Defects in frames 1 and 2 stay in the online stack; every rejecting re-integration removes them."""
    n = 12
    clean = noise_frames(n, seed=4)
    dirty, defect = with_defects(clean, trail_frame=0, cosmic_frame=1)
    sigma_stack = SIGMA / math.sqrt(n)
    online = stack_online(dirty).finalize()
    assert np.abs(online.image - stack_online(clean).finalize().image)[defect].max() > 50 * sigma_stack

    cube = np.stack(dirty)
    clean_mean = np.stack(clean).mean(axis=0)
    for method in ("sigma", "winsorized", "linear_fit"):
        result = integrate_bands(band_reader(cube), n, cube.shape[1:], method=method)  # type: ignore[arg-type]
        residual = np.abs(result.image - clean_mean)[defect]
        assert residual.max() < 4 * sigma_stack, method


def test_sigma_clipping_matches_astropy() -> None:
    """integrate_bands(method="sigma") gives the mean of astropy's iterated median/std sigma clip."""
    n = 15
    frames = noise_frames(n, shape=(64, 64), seed=6)
    frames[3], _ = synth.add_cosmic_rays(frames[3], n=40, seed=7)
    cube = np.stack(frames)
    result = integrate_bands(band_reader(cube), n, (64, 64), method="sigma", kappa_low=2.5, kappa_high=2.5)
    clipped = sigma_clip(cube.astype(np.float64), sigma=2.5, maxiters=None, cenfunc="median",
                         stdfunc=lambda d, axis: np.nanstd(d, axis=axis, ddof=1), axis=0)
    expected = clipped.mean(axis=0).filled(np.nan)
    np.testing.assert_allclose(result.image, expected, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(result.count, (~clipped.mask).sum(axis=0))


def test_integrate_bands_is_independent_of_band_size_and_skips_nan() -> None:
    """A tiny memory cap (many bands) gives the same result as one band; NaN samples are not counted."""
    n = 9
    cube = np.stack(noise_frames(n, shape=(40, 50), seed=8))
    cube[2, :10, :] = np.nan
    cube[5, :, :7] = np.nan
    one = integrate_bands(band_reader(cube), n, (40, 50), method="winsorized")
    many = integrate_bands(band_reader(cube), n, (40, 50), method="winsorized",
                           memory_cap_bytes=n * 50 * 4 * 3)
    np.testing.assert_array_equal(one.image, many.image)
    np.testing.assert_array_equal(one.count + one.rejected, np.isfinite(cube).sum(axis=0))
    with pytest.raises(ValueError, match="cannot hold one row"):
        integrate_bands(band_reader(cube), n, (40, 50), memory_cap_bytes=100)


def test_integrate_bands_colour_equals_planes() -> None:
    """A (planes, H, W) re-integration equals re-integrating each plane on its own."""
    n = 7
    cube = np.stack(noise_frames(n, shape=(3, 32, 48), seed=9))
    colour = integrate_bands(band_reader(cube), n, (3, 32, 48), method="linear_fit")
    for p in range(3):
        plane = integrate_bands(band_reader(np.ascontiguousarray(cube[:, p])), n, (32, 48), method="linear_fit")
        np.testing.assert_array_equal(colour.image[p], plane.image)


def test_integrate_bands_weights_and_norms() -> None:
    """Without rejection, weights and norms give np.average of x·scale + offset."""
    n = 6
    cube = np.stack(noise_frames(n, shape=(20, 30), seed=10))
    weights = [1.0, 2.0, 0.5, 1.5, 3.0, 1.0]
    norms = [(10.0 * i, 1.0 + 0.1 * i) for i in range(n)]
    result = integrate_bands(band_reader(cube), n, (20, 30), method="none", weights=weights, norms=norms)
    normed = np.stack([cube[i].astype(np.float64) * norms[i][1] + norms[i][0] for i in range(n)])
    np.testing.assert_allclose(result.image, np.average(normed, axis=0, weights=weights), rtol=1e-6)


# -------------------------------------------------------------------------------------------------------
# flux, normalisation, coverage, weights


def test_star_fluxes_are_preserved_through_warp_and_stack() -> None:
    """Aperture sums of stars in a stack of sub-pixel-shifted, warped, noisy frames are within 0.5 %."""
    size = 256
    catalogue = synth.make_catalogue(width=size, height=size, n_stars=12, seed=11, margin=10,
                                     flux_min=1e5, flux_max=1e6, min_separation=40)
    reference, truth = synth.render_stars(width=size, height=size, catalogue=catalogue, fwhm=3.0, sky=100.0)
    rng = np.random.default_rng(12)
    stacker = Stacker((size, size))
    for _ in range(16):
        t = Transform.similarity(dx=rng.uniform(-3, 3), dy=rng.uniform(-3, 3), rotation_deg=rng.uniform(-1, 1))
        scene, _ = synth.render_stars(width=size, height=size, catalogue=catalogue, transform=t, fwhm=3.0,
                                      sky=100.0)
        frame = rng.poisson(scene).astype(np.float32) + rng.normal(0, 5, scene.shape).astype(np.float32)
        stacker.add(warp(frame, t, shape=(size, size)))
    image = stacker.finalize().image
    yy, xx = np.mgrid[0:size, 0:size]
    checked = 0
    for x, y in zip(truth.ref_x, truth.ref_y, strict=True):
        if not (20 < x < size - 20 and 20 < y < size - 20):
            continue
        aperture = (xx - x) ** 2 + (yy - y) ** 2 <= 12.0**2
        measured = float(np.sum(image[aperture] - 100.0))
        expected = float(np.sum(reference[aperture] - 100.0))
        assert measured == pytest.approx(expected, rel=0.005)
        checked += 1
    assert checked >= 5


def test_normalisation_makes_changing_sky_unbiased() -> None:
    """Frames with different sky offsets and transparency stack, once normalised, onto the reference."""
    size = 192
    catalogue = synth.make_catalogue(width=size, height=size, n_stars=40, seed=13)
    scene, _ = synth.render_stars(width=size, height=size, catalogue=catalogue, fwhm=3.0, sky=300.0,
                                  gradient=(0.3, -0.2))
    rng = np.random.default_rng(14)
    scales = [1.0, 0.7, 1.3, 0.85, 1.15, 0.6, 1.0, 1.25]
    offsets = [0.0, 400.0, -150.0, 900.0, 50.0, 1200.0, -80.0, 300.0]
    frames = [((scene + 8.0 * rng.standard_normal(scene.shape)) * s + o).astype(np.float32)
              for s, o in zip(scales, offsets, strict=True)]

    # each frame's true sky level and noise, as a background/noise estimator would report them
    ref_bg, ref_noise = 300.0, 8.0
    normed = Stacker((size, size))
    plain = Stacker((size, size))
    for f, s, o in zip(frames, scales, offsets, strict=True):
        normed.add(f, norm=normalisation(300.0 * s + o, 8.0 * s, ref_bg, ref_noise))
        plain.add(f)
    ideal = 8.0 / math.sqrt(len(frames))
    error = normed.finalize().image - scene
    assert abs(float(error.mean())) < 0.5 * ideal
    # the star signal keeps the reference scale (slope 1 against the truth)
    slope = np.polyfit((scene - scene.mean()).ravel(), error.ravel(), 1)[0]
    assert abs(slope) < 0.002
    assert abs(float((plain.finalize().image - scene).mean())) > 100 * ideal


def test_coverage_outside_warped_frames_does_not_count() -> None:
    """Pixels a warped frame does not cover are not counted: smaller counts at the edges, no dark border."""
    size = 160
    frames = noise_frames(6, shape=(size, size), seed=15)
    shifts = [(0.0, 0.0), (12.3, 0.0), (-9.7, 4.2), (0.0, -15.5), (20.0, 20.0), (-5.5, -5.5)]
    stacker = Stacker((size, size), min_frames_for_rejection=3)
    for f, (dx, dy) in zip(frames, shifts, strict=True):
        stacker.add(warp(f, Transform.similarity(dx=dx, dy=dy), shape=(size, size)))
    result = stacker.finalize()
    assert result.count[size // 2, size // 2] == 6
    assert result.count[2, size // 2] < 6 and result.count[size - 2, size - 2] < 6
    assert result.count.min() >= 1 and np.all(np.isfinite(result.image))
    edge = np.ones((size, size), dtype=bool)
    edge[25:-25, 25:-25] = False
    # a border diluted by uncovered samples would sit far below the sky
    assert abs(float(result.image[edge].mean()) - SKY) < 1.0
    assert float(result.image[edge].min()) > SKY - 6 * SIGMA


def test_mask_excludes_pixels_and_colour_planes_stack_independently() -> None:
    """A (H, W) mask applies to every plane; each colour plane equals the mono stack of that plane."""
    frames = noise_frames(7, shape=(3, 48, 64), seed=16)
    mask = np.ones((48, 64), dtype=bool)
    mask[:, :10] = False
    colour = Stacker((3, 48, 64))
    for i, f in enumerate(frames):
        colour.add(f, mask=mask if i == 2 else None)
    result = colour.finalize()
    assert np.all(result.count[:, :, :10] + result.rejected[:, :, :10] == 6)
    for p in range(3):
        mono = Stacker((48, 64))
        for i, f in enumerate(frames):
            mono.add(np.ascontiguousarray(f[p]), mask=mask if i == 2 else None)
        np.testing.assert_array_equal(mono.finalize().image, result.image[p])


def test_weighted_mean_without_rejection_matches_numpy() -> None:
    """With rejection disabled, the stack is np.average of the normalised frames with their weights."""
    frames = noise_frames(5, shape=(32, 32), seed=17)
    weights = [1.0, 0.25, 2.0, 1.0, 0.5]
    norms = [(5.0, 1.0), (-20.0, 1.1), (0.0, 0.9), (3.0, 1.0), (1.0, 1.05)]
    stacker = Stacker((32, 32), kappa=math.inf, weighting="snr")
    for f, w, nm in zip(frames, weights, norms, strict=True):
        stacker.add(f, w, norm=nm)
    expected = np.average([f.astype(np.float64) * s + o for f, (o, s) in zip(frames, norms, strict=True)],
                          axis=0, weights=weights)
    np.testing.assert_allclose(stacker.finalize().image, expected, rtol=2e-6)
    normed = np.stack([f.astype(np.float64) * s + o for f, (o, s) in zip(frames, norms, strict=True)])
    ref_var = np.average((normed - expected) ** 2, axis=0, weights=weights) * 5 / 4
    np.testing.assert_allclose(stacker.sigma(), np.sqrt(ref_var), rtol=1e-4)


def test_weight_and_normalisation_helpers() -> None:
    """The helpers follow their formulas and refuse nonsense."""
    offset, scale = normalisation(1200.0, 20.0, 1000.0, 10.0)
    assert (1200.0 * scale + offset, 20.0 * scale) == pytest.approx((1000.0, 10.0))
    assert snr_weight(signal=200.0, noise=10.0, ref_signal=100.0, ref_noise=10.0) == pytest.approx(4.0)
    assert fwhm_weight(fwhm=4.0, ref_fwhm=2.0) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        normalisation(1.0, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        fwhm_weight(fwhm=-1.0, ref_fwhm=2.0)


def test_add_validates_and_leaves_input_alone() -> None:
    """add() refuses wrong shapes or weights and does not modify the frame."""
    frame = noise_frames(1, shape=(16, 16))[0]
    before = frame.copy()
    stacker = Stacker((16, 16))
    result = stacker.add(frame)
    assert result.accepted == 256 and result.rejected == 0 and result.frames == 1
    np.testing.assert_array_equal(frame, before)
    with pytest.raises(ValueError, match="shape"):
        stacker.add(frame[:8])
    with pytest.raises(ValueError, match="weighting"):
        stacker.add(frame, 2.0)
    with pytest.raises(ValueError, match="norm"):
        stacker.add(frame, norm=(0.0, 0.0))


# -------------------------------------------------------------------------------------------------------
# state


@pytest.mark.parametrize(("shape", "weighting"), [((64, 80), "none"), ((3, 40, 56), "snr")])
def test_state_round_trip_is_bit_identical(shape: tuple[int, ...], weighting: str) -> None:
    """Saving the state mid-way (np.savez), restoring it and adding the rest gives the identical stack."""
    frames = noise_frames(10, shape=shape, seed=18)
    frames[7], _ = synth.add_cosmic_rays(frames[7], n=30, seed=19)
    weights = [1.0] * 10 if weighting == "none" else [1.0 + 0.1 * i for i in range(10)]
    norms = [(float(i), 1.0 + 0.01 * i) for i in range(10)]
    mask = np.ones(shape[-2:], dtype=bool)
    mask[5:9, :] = False

    def feed(stacker: Stacker, indices: range) -> None:
        for i in indices:
            stacker.add(frames[i], weights[i], norm=norms[i], mask=mask if i % 3 == 0 else None)

    straight = Stacker(shape, weighting=weighting)  # type: ignore[arg-type]
    feed(straight, range(10))

    first = Stacker(shape, weighting=weighting)  # type: ignore[arg-type]
    feed(first, range(6))
    buffer = io.BytesIO()
    np.savez(buffer, **first.state())
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as saved:
        restored = Stacker.from_state(dict(saved), copy=False)
    feed(restored, range(6, 10))
    feed(first, range(6, 10))

    a, b, c = straight.finalize(), restored.finalize(), first.finalize()
    for x in (b, c):
        np.testing.assert_array_equal(a.image, x.image)
        assert np.array_equal(a.count, x.count) and np.array_equal(a.rejected, x.rejected)
    for key, value in straight.state().items():
        assert np.array_equal(value, restored.state()[key]), key
    assert restored.frames == 10


def test_from_state_rejects_inconsistent_state() -> None:
    """A state with a missing key or a wrong dtype is refused with a precise error."""
    state = dict(Stacker((8, 8)).state())
    del state["m2"]
    with pytest.raises(ValueError, match="m2"):
        Stacker.from_state(state)
    state = dict(Stacker((8, 8)).state())
    state["mean"] = np.zeros((8, 8), dtype=np.float64)
    with pytest.raises(ValueError, match="mean"):
        Stacker.from_state(state)


@pytest.mark.parametrize("shape", [(64, 80), (3, 40, 56)])
def test_adding_bands_equals_adding_whole_frames(shape: tuple[int, ...]) -> None:
    """A frame given as bands of rows (of any sizes) updates the state bit for bit as the whole frame does,
    rejection, weights and normalisation included; rows no band covers do not count."""
    frames = noise_frames(9, shape=shape, seed=31)
    frames[7], _ = synth.add_cosmic_rays(frames[7], n=30, seed=32)
    whole = Stacker(shape, weighting="snr")
    banded = Stacker(shape, weighting="snr")
    for i, frame in enumerate(frames):
        weight, norm = 1.0 + 0.1 * i, (float(i), 1.0 + 0.01 * i)
        a = whole.add(frame, weight, norm=norm)
        cuts = [0, 5, 6, 23, shape[-2]]
        b = banded.add_bands(((r0, frame[..., r0:r1, :]) for r0, r1 in itertools.pairwise(cuts)),
                             weight, norm=norm)
        assert (a.accepted, a.rejected, a.frames) == (b.accepted, b.rejected, b.frames)
    assert whole.finalize().rejected.sum() > 0
    for key, value in whole.state().items():
        np.testing.assert_array_equal(value, banded.state()[key], err_msg=key)

    partial = Stacker(shape)
    result = partial.add_bands([(10, frames[0][..., 10:20, :])])
    count = partial.finalize().count
    assert count[..., 10:20, :].min() == 1 and count.sum() == result.accepted == count[..., 10:20, :].size


def test_add_bands_refuses_overlapping_or_misshapen_bands() -> None:
    """Bands must go down the frame without overlap and fit its width and planes."""
    frame = noise_frames(1, shape=(32, 40))[0]
    stacker = Stacker((32, 40))
    with pytest.raises(ValueError, match="does not fit"):
        stacker.add_bands([(0, frame[:10]), (5, frame[5:15])])
    with pytest.raises(ValueError, match="does not fit"):
        stacker.add_bands([(0, frame[:, :20])])
    with pytest.raises(ValueError, match="does not fit"):
        stacker.add_bands([(30, frame[:10])])
    with pytest.raises(ValueError, match="weight"):
        stacker.add_bands([(0, frame)], 0.0)


# -------------------------------------------------------------------------------------------------------
# regrid: moving a stack onto another reference grid


def test_regrid_by_whole_pixels_moves_every_state_array_exactly() -> None:
    """A whole-pixel regrid is a copy: every state array (mean, M2, weight sum, counts, rejections) lands
    shifted, pixels from outside the old grid are uncovered (all zero), and the stack is unchanged in value."""
    frames = noise_frames(6, shape=(40, 50), seed=41)
    stacker = Stacker((40, 50), weighting="snr", min_frames_for_rejection=3)
    for i, f in enumerate(frames):
        stacker.add(warp(f, Transform.similarity(dx=1.5 * i, dy=-0.7 * i), shape=(40, 50)), 1.0 + 0.2 * i)
    before = {k: np.array(v) for k, v in stacker.state().items()}
    stacker.regrid(Transform.similarity(dx=4.0, dy=-3.0), shape=(40, 50))
    after = stacker.state()
    for key in ("mean", "m2", "wsum", "count", "rejected"):
        expected = np.zeros_like(before[key])
        expected[:37, 4:] = before[key][3:, :46]
        np.testing.assert_array_equal(after[key], expected, err_msg=key)
    assert stacker.shape == (40, 50) and stacker.frames == 6


def _star_frames(n: int, *, size: int, seed: int) -> tuple[list[F32], list[Transform], synth.Catalogue]:
    """``n`` noisy star frames seen through small similarities (frame -> grid A), sky 300 with offsets."""
    catalogue = synth.make_catalogue(width=size, height=size, n_stars=14, seed=seed, margin=30, flux_min=1e5,
                                     flux_max=1e6, min_separation=30)
    rng = np.random.default_rng(seed + 1)
    frames, transforms = [], []
    for i in range(n):
        t = Transform.similarity(dx=rng.uniform(-4, 4), dy=rng.uniform(-4, 4), rotation_deg=rng.uniform(-1, 1))
        scene, _ = synth.render_stars(width=size, height=size, catalogue=catalogue, transform=t, fwhm=3.5,
                                      sky=300.0 + 20.0 * i)
        frames.append((scene + 6.0 * rng.standard_normal(scene.shape)).astype(np.float32))
        transforms.append(t)
    return frames, transforms, catalogue


def test_regrid_equals_stacking_onto_the_new_grid() -> None:
    """Frames stacked on grid A and regridded onto grid B (rotated, shifted, scaled by 1.01, with the caller's
    area factor, background shift and weight rescaling) give what stacking them onto B directly gives: the
    same star fluxes (0.5 %) and positions (0.05 px), the same sky, weight sums and samples inside, a sigma map
    within 15 %; and frames added afterwards are rejected or kept alike."""
    size, n = 160, 7
    frames, transforms, catalogue = _star_frames(n + 3, size=size, seed=43)
    weights = [1.0 + 0.15 * i for i in range(n + 3)]
    offsets = [-20.0 * i for i in range(n + 3)]  # every frame's sky onto 300
    to_b = Transform.similarity(dx=6.0, dy=-9.0, rotation_deg=7.0, scale=1.01)
    k, c, f = 1.0 / 1.01**2, 40.0, 0.5  # area factor, background shift, weight rescaling
    on_a = Stacker((size, size), weighting="snr")
    on_b = Stacker((size, size), weighting="snr")
    for i in range(n):
        on_a.add(warp(frames[i], transforms[i], shape=(size, size)), weights[i], norm=(offsets[i], 1.0))
        on_b.add(warp(frames[i], transforms[i].compose(to_b), shape=(size, size)), weights[i] * f,
                 norm=(offsets[i] * k + c, k))
    old_count = np.array(on_a.state()["count"])
    on_a.regrid(to_b, shape=(size, size), norm=(c, k), weight_scale=f)

    a, b = on_a.finalize().image.astype(np.float64), on_b.finalize().image.astype(np.float64)
    xy = to_b.apply(catalogue.xy)
    inside = np.all((xy > 25) & (xy < size - 26), axis=1)
    assert inside.sum() >= 6
    yy, xx = np.mgrid[0:size, 0:size]
    sky_level = 300.0 * k + c
    for x, y in xy[inside]:
        ap = (xx - x) ** 2 + (yy - y) ** 2 <= 12.0**2
        assert float(np.sum(a[ap] - sky_level)) == pytest.approx(float(np.sum(b[ap] - sky_level)), rel=0.005)
        box = (np.abs(xx - x) <= 6) & (np.abs(yy - y) <= 6)
        for image in (a, b):
            w = image[box] - sky_level
            assert abs(float(np.sum(w * xx[box]) / np.sum(w)) - x) < 0.05
            assert abs(float(np.sum(w * yy[box]) / np.sum(w)) - y) < 0.05
    both = np.isfinite(a) & np.isfinite(b)
    core = np.zeros_like(both)
    core[30:-30, 30:-30] = True
    sky = core & np.all([(xx - x) ** 2 + (yy - y) ** 2 > 15**2 for x, y in xy], axis=0)
    assert abs(float(np.median(a[sky])) - sky_level) < 0.3 and abs(float(np.median(b[sky])) - sky_level) < 0.3
    sa, sb = on_a.state(), on_b.state()
    offered_a, offered_b = sa["count"] + sa["rejected"], sb["count"] + sb["rejected"]
    assert np.all(offered_a[core] == n) and np.all(offered_b[core] == n)
    # weight sums: f·Σw wherever no sample was rejected nearby (a rejected sample weighs nothing)
    touched = warp((old_count < n).astype(np.float32), to_b, shape=(size, size))  # by a rejection on A
    kept = (touched == 0.0) & (sb["count"] == n)
    assert (kept & core).sum() > 0.9 * core.sum()
    np.testing.assert_allclose(sa["wsum"][kept & core], f * sum(weights[:n]), rtol=1e-5)
    np.testing.assert_allclose(sb["wsum"][kept & core], f * sum(weights[:n]), rtol=1e-5)
    ratio = float(np.median(on_a.sigma()[sky]) / np.median(on_b.sigma()[sky]))
    assert 0.85 < ratio < 1.15

    # frames added next (one with cosmic rays) are judged alike by both stacks' σ
    late = list(frames[n:])
    late[1], rays = synth.add_cosmic_rays(late[1], n=40, seed=44, amplitude=4000.0)
    for j, frame in enumerate(late):
        t = transforms[n + j].compose(to_b)
        for st in (on_a, on_b):
            st.add(warp(frame, t, shape=(size, size)), weights[n + j] * f, norm=(offsets[n + j] * k + c, k))
    ra, rb = on_a.finalize(), on_b.finalize()
    hit = warp(rays.astype(np.float32), transforms[n + 1].compose(to_b), shape=(size, size)) > 0.5
    hit &= core
    assert hit.sum() > 20
    assert ra.rejected[hit].mean() > 0.9 and rb.rejected[hit].mean() > 0.9
    for r in (ra, rb):
        assert r.rejected[sky].sum() < 0.01 * (r.count[sky].sum() + r.rejected[sky].sum())


def test_regrid_uncovers_what_touches_no_coverage_and_checks_its_arguments() -> None:
    """After a sub-pixel regrid, pixels mapping outside the old grid or next to old pixels no frame covered
    are not covered (count 0, NaN in the stack), the covered ones keep the sky (no dark border); bad
    arguments are refused before anything changes."""
    size = 64
    stacker = Stacker((3, size, size))
    frames = noise_frames(3, shape=(3, size, size), seed=45)
    for f in frames:
        f[:, :, :10] = np.nan  # no frame covers the first 10 columns
        stacker.add(f)
    stacker.regrid(Transform.similarity(dx=2.5, dy=-1.5), shape=(size, size + 4))
    result = stacker.finalize()
    assert result.image.shape == (3, size, size + 4) and stacker.shape == (3, size, size + 4)
    # new x covers old x - 2.5: old columns 9 and 10 straddle x = 12.5, old row 63 and beyond y = 61.5
    assert np.all(result.count[:, :, :13] == 0) and np.all(np.isnan(result.image[:, :, :13]))
    assert np.all(result.count[:, 62:, :] == 0)
    assert np.all(result.count[:, :62, 13:size + 2] == 3)
    covered = result.count > 0
    assert abs(float(result.image[covered].mean()) - SKY) < 1.0
    assert float(result.image[covered].min()) > SKY - 5 * SIGMA
    with pytest.raises(ValueError, match="norm"):
        stacker.regrid(Transform.identity(), shape=(size, size), norm=(0.0, -1.0))
    with pytest.raises(ValueError, match="weighting"):
        stacker.regrid(Transform.identity(), shape=(size, size), weight_scale=2.0)
    singular = Transform.from_array(np.array([[1.0, 2.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="regrid"):
        stacker.regrid(singular, shape=(size, size))
    assert stacker.shape == (3, size, size + 4)
