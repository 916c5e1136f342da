"""Registration against known transforms, against astroalign, and its failures."""

from __future__ import annotations

import math

import astroalign
import numpy as np
import numpy.typing as npt
import pytest

from astrod.core.register import (
    Registration,
    build_reference,
    find_transform,
    fit_transform,
    phase_correlate,
    register,
)
from astrod.core.stars import StarList, detect_stars
from astrod.errors import RegistrationError
from astrod.model import Transform
from tests import synth

W = H = 512
EXPOSURE, TEMP = 60.0, -10.0


def grid_error(found: npt.ArrayLike, truth: Transform, *, width: int = W, height: int = H) -> float:
    """RMS distance (px) between a 20×20 grid across the frame mapped by ``found`` and by ``truth``."""
    gx, gy = np.meshgrid(np.linspace(0, width - 1, 20), np.linspace(0, height - 1, 20))
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    m = np.asarray(found, dtype=np.float64)
    mapped = Transform.from_array(m).apply(grid)
    return float(np.sqrt(np.mean(np.sum((mapped - truth.apply(grid)) ** 2, axis=1))))


def astroalign_error(image: npt.NDArray[np.float32], reference: npt.NDArray[np.float32],
                     truth: Transform) -> float:
    """astroalign's error on the same pair (it detects its own stars), or inf when it fails."""
    try:
        tf, _ = astroalign.find_transform(image, reference)
    except Exception:  # astroalign raises several kinds when it gives up; that only makes us look better
        return math.inf
    return grid_error(tf.params, truth)


@pytest.fixture(scope="module")
def sessions() -> list[synth.Session]:
    """Two sessions: small rotations with a meridian flip at frame 3, and rotations of any angle."""
    return [
        synth.make_session(n_frames=5, seed=101, n_stars=200, max_shift=50.0, max_rotation_deg=2.0,
                           meridian_flip_at=3, scale_jitter=0.005),
        synth.make_session(n_frames=4, seed=202, n_stars=200, max_shift=50.0, max_rotation_deg=180.0,
                           scale_jitter=0.005),
    ]


def test_known_transforms_to_005_px_and_no_worse_than_astroalign(sessions: list[synth.Session]) -> None:
    """Every frame (shifts up to ±50 px, any rotation, a meridian flip, scale ±0.5 %) registers onto frame
    0 within 0.05 px RMS over the frame, and at least as well as astroalign on the same pair."""
    flips = 0
    for session in sessions:
        ref_img, _ = session[0]
        reference = build_reference(detect_stars(ref_img))
        for i in range(1, len(session)):
            img, truth = session[i]
            reg = find_transform(detect_stars(img), reference)
            ours = grid_error(reg.transform.as_array(), truth.transform)
            theirs = astroalign_error(img, ref_img, truth.transform)
            flips += abs(abs(truth.transform.rotation_deg) - 180.0) < 10.0
            where = f"seed {session.sensor.seed} frame {i} (rotation {truth.transform.rotation_deg:.1f}°)"
            assert ours <= 0.05, f"{where}: {ours:.4f} px"
            assert ours <= max(theirs * 1.1, 0.01), f"{where}: ours {ours:.4f} px, astroalign {theirs:.4f} px"
            assert reg.method == "stars" and reg.matched >= 50 and reg.residual_px < 0.3
    assert flips >= 1  # the flip was exercised


def test_transform_and_its_reverse_compose_to_identity(sessions: list[synth.Session]) -> None:
    """Frame→reference composed with reference→frame is the identity within 0.05 px."""
    session = sessions[1]
    a = detect_stars(session[0][0])
    b = detect_stars(session[2][0])
    forward = find_transform(b, a).transform
    backward = find_transform(a, b).transform
    assert grid_error(forward.compose(backward).as_array(), Transform.identity()) <= 0.05


@pytest.mark.parametrize("model", ["affine", "homography"])
def test_affine_and_homography_models(model: str) -> None:
    """A frame with shear (affine truth) is registered within 0.05 px by the affine and homography
    models, while a similarity cannot follow the shear."""
    truth = Transform.from_array([[0.9990, 0.0040, 12.3], [-0.0025, 1.0015, -7.7], [0.0, 0.0, 1.0]])
    cat = synth.make_catalogue(width=W, height=H, n_stars=200, seed=7, margin=40.0)
    sensor = synth.Sensor(width=W, height=H, seed=8)
    ref_scene, _ = synth.render_stars(width=W, height=H, catalogue=cat, fwhm=3.0)
    scene, _ = synth.render_stars(width=W, height=H, catalogue=cat, fwhm=3.0, transform=truth)
    ref = detect_stars(sensor.light(ref_scene, exposure=EXPOSURE, temperature=TEMP, seed=1))
    img = detect_stars(sensor.light(scene, exposure=EXPOSURE, temperature=TEMP, seed=2))
    reg = find_transform(img, ref, model=model)  # type: ignore[arg-type]
    assert grid_error(reg.transform.as_array(), truth) <= 0.05
    similarity = find_transform(img, ref)
    assert grid_error(similarity.transform.as_array(), truth) > 2 * grid_error(reg.transform.as_array(), truth)


def test_point_lists_deterministic_and_reference_reuse() -> None:
    """Plain (N, 2) arrays work; the same inputs give the same result; a prebuilt reference gives what
    the raw reference list gives; a pure permutation of faint stars does not matter."""
    rng = np.random.default_rng(3)
    ref_xy = rng.uniform(0, 2000, (150, 2))
    truth = Transform.similarity(dx=-31.2, dy=44.9, rotation_deg=77.0, scale=1.003)
    src_xy = truth.inverse().apply(ref_xy) + rng.normal(0.0, 0.02, ref_xy.shape)
    a = find_transform(src_xy, ref_xy)
    b = find_transform(src_xy, build_reference(ref_xy))
    c = find_transform(src_xy, ref_xy, seed=np.random.default_rng(0))
    for other in (b, c):
        assert (other.transform, other.matched, other.residual_px) == (a.transform, a.matched, a.residual_px)
    assert grid_error(a.transform.as_array(), truth, width=2000, height=2000) < 0.02
    assert a.matched == 150
    shuffled = np.vstack([src_xy[:40], rng.permutation(src_xy[40:])])
    d = find_transform(shuffled, ref_xy)
    assert grid_error(d.transform.as_array(), truth, width=2000, height=2000) < 0.02


def test_outliers_and_missing_stars_are_tolerated() -> None:
    """A third of the frame's stars missing and a third replaced by unrelated points still gives the
    transform, from the true matches only."""
    rng = np.random.default_rng(4)
    ref_xy = rng.uniform(0, 3000, (200, 2))
    truth = Transform.similarity(dx=15.0, dy=-8.0, rotation_deg=-135.0, scale=0.996)
    src_xy = truth.inverse().apply(ref_xy)[: 2 * 200 // 3]
    src_xy[::3] = rng.uniform(0, 3000, (src_xy[::3].shape[0], 2))
    reg = find_transform(src_xy, ref_xy)
    assert grid_error(reg.transform.as_array(), truth, width=3000, height=3000) < 1e-6
    assert reg.matched == src_xy.shape[0] - src_xy[::3].shape[0]


def test_frame_without_stars_raises_with_the_counts() -> None:
    """No stars in the frame: RegistrationError naming how many there are and how many are needed."""
    ref = np.random.default_rng(5).uniform(0, 500, (50, 2))
    with pytest.raises(RegistrationError, match=r"0 stars in frame, need 8"):
        find_transform(StarList.empty(width=W, height=H), ref)
    with pytest.raises(RegistrationError, match=r"3 stars in frame, need 8"):
        find_transform(ref[:3], ref)


def test_unrelated_field_raises_instead_of_returning_garbage() -> None:
    """Two unrelated star fields do not match: RegistrationError with the matched count."""
    rng = np.random.default_rng(6)
    with pytest.raises(RegistrationError, match=r"registration failed: \d matched stars, need 8"):
        find_transform(rng.uniform(0, 1000, (100, 2)), rng.uniform(0, 1000, (100, 2)))


def _star_poor_pair(truth: Transform, *, n_stars: int, seed: int) -> tuple[npt.NDArray[np.float32],
                                                                          npt.NDArray[np.float32]]:
    cat = synth.make_catalogue(width=W, height=H, n_stars=n_stars, seed=seed, margin=60.0, flux_min=3e4,
                               flux_max=3e5)
    sensor = synth.Sensor(width=W, height=H, seed=seed + 1)
    ref_scene, _ = synth.render_stars(width=W, height=H, catalogue=cat, fwhm=3.0)
    scene, _ = synth.render_stars(width=W, height=H, catalogue=cat, fwhm=3.0, transform=truth)
    return (sensor.light(scene, exposure=EXPOSURE, temperature=TEMP, seed=seed + 2),
            sensor.light(ref_scene, exposure=EXPOSURE, temperature=TEMP, seed=seed + 3))


@pytest.mark.parametrize("flip", [False, True])
def test_star_poor_frame_falls_back_to_phase_correlation(flip: bool) -> None:
    """A frame with 5 stars cannot be matched by asterisms; `register` falls back to phase correlation
    and finds the translation (and the meridian flip) within 0.5 px, and `phase_correlate` alone too."""
    rot = 180.0 if flip else 0.0
    c = (W - 1) / 2.0
    turn = Transform.from_array([[math.cos(math.radians(rot)), -math.sin(math.radians(rot)), 0.0],
                                 [math.sin(math.radians(rot)), math.cos(math.radians(rot)), 0.0],
                                 [0.0, 0.0, 1.0]])
    about_centre = (Transform.similarity(dx=-c, dy=-c).compose(turn)
                    .compose(Transform.similarity(dx=c + 23.3, dy=c - 17.6)))
    img, ref = _star_poor_pair(about_centre, n_stars=5, seed=11)
    src_stars, ref_stars = detect_stars(img), detect_stars(ref)
    assert len(src_stars) < 8

    with pytest.raises(RegistrationError):
        find_transform(src_stars, ref_stars)
    reg = register(src_stars, ref_stars, image=img, reference_image=ref)
    assert reg.method == "phase"
    assert grid_error(reg.transform.as_array(), about_centre) <= 0.5

    alone = phase_correlate(img, ref)
    assert alone.method == "phase" and alone.matched == 0 and math.isnan(alone.residual_px)
    assert grid_error(alone.transform.as_array(), about_centre) <= 0.5


def test_noise_only_frames_raise_with_both_reasons() -> None:
    """Frames of pure sky (the same sensor's hot pixels and dust in both): no stars and no significant
    correlation peak, so `register` raises, naming the star count and the correlation peak."""
    sensor = synth.Sensor(width=W, height=H, seed=12)
    sky = np.full((H, W), 100.0, dtype=np.float32)
    img = sensor.light(sky, exposure=EXPOSURE, temperature=TEMP, seed=1)
    ref = sensor.light(sky, exposure=EXPOSURE, temperature=TEMP, seed=2)
    empty = StarList.empty(width=W, height=H)
    with pytest.raises(RegistrationError, match=r"0 stars in frame, need 8.*phase correlation peak"):
        register(empty, empty, image=img, reference_image=ref)


def test_star_rich_frame_that_fails_does_not_fall_back() -> None:
    """A frame with plenty of stars that match nothing is bad, not star-poor: no phase fallback."""
    rng = np.random.default_rng(13)
    frame = rng.normal(100.0, 5.0, (H, W)).astype(np.float32)
    with pytest.raises(RegistrationError, match="matched stars"):
        register(rng.uniform(0, 500, (40, 2)), rng.uniform(0, 500, (40, 2)), image=frame,
                 reference_image=frame)


def test_bad_arguments() -> None:
    """An unknown model or a min_matches too small for the model is a ValueError."""
    xy = np.random.default_rng(14).uniform(0, 100, (20, 2))
    with pytest.raises(ValueError, match="unknown registration model"):
        find_transform(xy, xy, model="projective")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_matches"):
        find_transform(xy, xy, model="homography", min_matches=4)


def test_registration_is_frozen() -> None:
    """Registration results are immutable values."""
    reg = Registration(transform=Transform.identity(), matched=10, residual_px=0.1, method="stars")
    with pytest.raises(AttributeError):
        reg.matched = 3  # type: ignore[misc]


@pytest.mark.parametrize("model", ["similarity", "affine", "homography"])
def test_fit_transform_recovers_a_known_map_from_point_pairs(model: str) -> None:
    """Point pairs related by a similarity give it back in every model, with no residual; a mirrored pair asked
    as a similarity (which cannot mirror) comes back as the affine map that mirrors."""
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 1000, size=(40, 2))
    truth = Transform.similarity(dx=12.5, dy=-40.0, rotation_deg=33.0, scale=1.11)
    found, rms = fit_transform(src, truth.apply(src), model=model)  # type: ignore[arg-type]
    np.testing.assert_allclose(found.apply(src), truth.apply(src), atol=1e-4)  # OpenCV's homography: 1e-5 px
    assert rms < 1e-4
    mirror = Transform.from_array([[-1.0, 0.0, 900.0], [0.0, 1.0, 5.0], [0.0, 0.0, 1.0]])
    flipped, rms = fit_transform(src, mirror.apply(src))
    np.testing.assert_allclose(flipped.as_array(), mirror.as_array(), atol=1e-9)
    with pytest.raises(ValueError, match="as many targets"):
        fit_transform(src, src[:3])
