"""Master combination must equal ccdproc / astropy on the same frames, band by band under a memory cap."""

from __future__ import annotations

import warnings

import ccdproc
import numpy as np
import numpy.typing as npt
import pytest
from astropy.nddata import CCDData
from astropy.stats import sigma_clip

from astrod.core.combine import CombineResult, combine, combine_arrays, combine_flats, frame_medians, plan_band_rows
from tests import synth

F32 = npt.NDArray[np.float32]
H, W = 48, 72


def dark_frames(n: int, *, seed: int = 5, outliers: int = 40) -> list[F32]:
    """Synthetic darks with cosmic-ray-like outliers in a few frames (rejection has something to do)."""
    sensor = synth.Sensor(width=W, height=H, seed=seed, hot_pixels=10)
    rng = np.random.default_rng(seed)
    frames = [sensor.dark(exposure=60.0, temperature=-10.0, seed=i) for i in range(n)]
    out = []
    for i, frame in enumerate(frames):
        f = frame.copy()
        if i % 3 == 0:
            f[rng.integers(0, H, outliers), rng.integers(0, W, outliers)] += rng.uniform(50, 3000, outliers)
        out.append(f)
    return out


def ccds(frames: list[F32]) -> list[CCDData]:
    return [CCDData(f, unit="adu") for f in frames]


def astropy_clipped_mean(frames: list[F32], **clip: object) -> CCDData:
    """ccdproc's Combiner with astropy's sigma_clip applied the way Combiner.sigma_clipping does it (which
    cannot pass maxiters itself), then its average_combine: the reference for iterated clipping."""
    combiner = ccdproc.Combiner(ccds(frames))
    combiner.data_arr.mask |= sigma_clip(combiner.data_arr.data, axis=0, masked=True, copy=True, **clip).mask
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return combiner.average_combine(), (~combiner.data_arr.mask).sum(axis=0)


# ------------------------------------------------------------------------------------------ against ccdproc


@pytest.mark.parametrize("n", [12, 20])
def test_sigma_clip_equals_ccdproc_combine_defaults(n: int) -> None:
    """ccdproc.combine(sigma_clip=True) with its defaults (mean centre, std, 3/3 sigma, one pass) equals
    combine(cenfunc="mean", maxiters=1) within 1e-5 relative, also when the frames are split into bands.
    (Below 10 frames a single outlier can never lie 3 population sigma out, so n >= 12 here.)"""
    frames = dark_frames(n)
    ref = ccdproc.combine(ccds(frames), method="average", sigma_clip=True, sigma_clip_low_thresh=3,
                          sigma_clip_high_thresh=3)
    ours = combine_arrays(frames, method="sigma_clip", sigma_low=3.0, sigma_high=3.0, cenfunc="mean",
                          maxiters=1, memory_cap_bytes=H * W * 6 + n * W * 4 * 5)
    assert ours.n_bands > 1
    assert ours.image.dtype == np.float32
    np.testing.assert_allclose(ours.image, ref.data, rtol=1e-5)
    assert 0.0 < ours.rejected_fraction < 0.1


@pytest.mark.parametrize(("cenfunc", "stdfunc", "low", "high", "maxiters"), [
    ("median", "std", 3.0, 3.0, 5),
    ("median", "mad_std", 2.5, 4.0, 3),
    ("mean", "std", 2.0, 2.0, None),
])
def test_iterated_sigma_clip_equals_astropy(cenfunc: str, stdfunc: str, low: float, high: float,
                                            maxiters: int | None) -> None:
    """Iterated clipping keeps exactly the samples astropy's sigma_clip keeps (same n_used per pixel) and
    their mean equals ccdproc's average_combine within 1e-5 relative."""
    frames = dark_frames(11)
    ref, kept = astropy_clipped_mean(frames, sigma_lower=low, sigma_upper=high, cenfunc=cenfunc,
                                     stdfunc=stdfunc, maxiters=maxiters)
    ours = combine_arrays(frames, sigma_low=low, sigma_high=high, cenfunc=cenfunc,  # type: ignore[arg-type]
                          stdfunc=stdfunc, maxiters=maxiters)  # type: ignore[arg-type]
    np.testing.assert_array_equal(ours.n_used, kept)
    np.testing.assert_allclose(ours.image, ref.data, rtol=1e-5)


@pytest.mark.parametrize("n", [7, 10])
def test_median_equals_ccdproc(n: int) -> None:
    """method="median" equals ccdproc.combine(method="median") (odd and even frame counts)."""
    frames = dark_frames(n)
    ref = ccdproc.combine(ccds(frames), method="median")
    ours = combine_arrays(frames, method="median", memory_cap_bytes=H * W * 6 + n * W * 4 * 7)
    np.testing.assert_allclose(ours.image, ref.data, rtol=1e-5)
    assert (ours.n_used == n).all()


@pytest.mark.parametrize(("nlow", "nhigh"), [(1, 1), (0, 2), (3, 3)])
def test_minmax_equals_ccdproc_clip_extrema(nlow: int, nhigh: int) -> None:
    """method="minmax" equals ccdproc.combine(clip_extrema=True, nlow, nhigh)."""
    frames = dark_frames(10)
    ref = ccdproc.combine(ccds(frames), method="average", clip_extrema=True, nlow=nlow, nhigh=nhigh)
    ours = combine_arrays(frames, method="minmax", nlow=nlow, nhigh=nhigh)
    np.testing.assert_allclose(ours.image, ref.data, rtol=1e-5)
    assert (ours.n_used == 10 - nlow - nhigh).all()


def test_mean_equals_ccdproc_average() -> None:
    """method="mean" equals ccdproc.combine(method="average") without rejection."""
    frames = dark_frames(6)
    ref = ccdproc.combine(ccds(frames), method="average")
    np.testing.assert_allclose(combine_arrays(frames, method="mean").image, ref.data, rtol=1e-5)


def test_scale_applies_before_rejection_like_ccdproc_on_prescaled_frames() -> None:
    """With per-frame ``scale`` the result equals ccdproc combining frames it was given already scaled
    (ccdproc itself would reject on unscaled values); for the median (no rejection) it equals ccdproc's
    own ``scale=``."""
    sensor = synth.Sensor(width=W, height=H, seed=9)
    frames = [sensor.flat(level=level, seed=i) for i, level in enumerate((8000.0, 12000.0, 15000.0, 20000.0,
                                                                          26000.0, 30000.0, 9000.0))]
    scale = 1.0 / np.array([np.median(f) for f in frames])
    prescaled = [CCDData(f.astype(np.float64) * s, unit="adu") for f, s in zip(frames, scale, strict=True)]
    ref = ccdproc.combine(prescaled, method="average", sigma_clip=True)
    ours = combine_arrays(frames, scale=scale, cenfunc="mean", maxiters=1)
    np.testing.assert_allclose(ours.image, ref.data, rtol=1e-5)
    ref_median = ccdproc.combine(ccds(frames), method="median", scale=scale)
    np.testing.assert_allclose(combine_arrays(frames, method="median", scale=scale).image, ref_median.data,
                               rtol=1e-5)


# ------------------------------------------------------------------------------------------ bands and memory


def test_band_height_follows_memory_cap_and_result_does_not_depend_on_it() -> None:
    """The reader is never asked for more rows than the cap allows, and every cap gives the same image."""
    frames = dark_frames(8)
    stack = np.stack(frames)
    asked: list[int] = []

    def read_band(r0: int, r1: int) -> F32:
        asked.append(r1 - r0)
        return stack[:, r0:r1]

    cap = H * W * 6 + 8 * W * 4 * 5
    small = combine(read_band, n_frames=8, shape=(H, W), memory_cap_bytes=cap)
    assert max(asked) == plan_band_rows(n_frames=8, shape=(H, W), memory_cap_bytes=cap) == 5
    assert sum(asked) == H and small.n_bands == len(asked) == 10
    whole = combine(lambda r0, r1: stack[:, r0:r1], n_frames=8, shape=(H, W))
    assert whole.n_bands == 1
    np.testing.assert_array_equal(small.image, whole.image)
    np.testing.assert_array_equal(small.n_used, whole.n_used)


def test_memory_cap_too_small_and_bad_reader_raise() -> None:
    """A cap that cannot hold one row of all frames, or a reader returning the wrong shape, fail clearly."""
    with pytest.raises(ValueError, match="too small"):
        plan_band_rows(n_frames=50, shape=(100, 1000), memory_cap_bytes=100 * 1000 * 6 + 10)
    with pytest.raises(ValueError, match="returned shape"):
        combine(lambda r0, r1: np.zeros((3, r1 - r0, W), np.float32), n_frames=4, shape=(H, W))
    with pytest.raises(ValueError, match="minmax"):
        combine_arrays(dark_frames(3), method="minmax", nlow=2, nhigh=1)
    with pytest.raises(ValueError, match="unknown combine method"):
        combine_arrays(dark_frames(3), method="sum")  # type: ignore[arg-type]


def test_non_finite_samples_are_ignored() -> None:
    """NaN samples drop out: the median and mean equal numpy's nan-aware ones; a pixel NaN in every frame
    comes out NaN with n_used 0."""
    frames = dark_frames(5)
    rng = np.random.default_rng(2)
    for f in frames[:3]:
        f[rng.integers(0, H, 30), rng.integers(0, W, 30)] = np.nan
    for f in frames:
        f[0, 0] = np.nan
    stack = np.stack(frames).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        np.testing.assert_allclose(combine_arrays(frames, method="median").image, np.nanmedian(stack, axis=0),
                                   rtol=1e-6)
        mean = combine_arrays(frames, method="mean")
        np.testing.assert_allclose(mean.image, np.nanmean(stack, axis=0), rtol=1e-6)
    np.testing.assert_array_equal(mean.n_used, np.isfinite(stack).sum(axis=0))
    assert mean.n_used[0, 0] == 0 and np.isnan(mean.image[0, 0])


def test_integer_frames_and_inputs_untouched() -> None:
    """uint16 frames give the same master as their float32 copies; the caller's arrays are not written."""
    frames = [f.astype(np.uint16) for f in dark_frames(7)]
    for f in frames:
        f.setflags(write=False)
    as_int = combine_arrays(frames)
    as_float = combine_arrays([f.astype(np.float32) for f in frames])
    np.testing.assert_array_equal(as_int.image, as_float.image)
    assert isinstance(as_int, CombineResult) and "sigma-clipped mean" in as_int.description


# ------------------------------------------------------------------------------------------------- flats


def test_combine_flats_equals_ccdproc_workflow() -> None:
    """Bias-subtracted flats scaled by 1/median and median-combined, then normalised by the mean, equal the
    ccdproc recipe (subtract_bias, combine(scale=1/median), divide by mean) within 1e-5 relative."""
    sensor = synth.Sensor(width=W, height=H, seed=4)
    bias = combine_arrays([sensor.bias(seed=100 + i) for i in range(5)]).image
    levels = (10000.0, 14000.0, 18000.0, 22000.0, 26000.0)
    flats = [sensor.flat(level=level, seed=i) for i, level in enumerate(levels)]
    stack = np.stack(flats)
    debiased = [ccdproc.subtract_bias(CCDData(f, unit="adu"), CCDData(bias, unit="adu")) for f in flats]
    medians = [float(np.median(d.data)) for d in debiased]
    ref = ccdproc.combine(debiased, method="median", scale=[1.0 / m for m in medians])
    ref_norm = ref.data / ref.data.mean()
    ours = combine_flats(lambda r0, r1: stack[:, r0:r1], n_frames=5, shape=(H, W), bias=bias, medians=medians,
                         method="median")
    np.testing.assert_allclose(ours.image, ref_norm, rtol=1e-5)
    assert abs(float(ours.image.mean()) - 1.0) < 1e-6
    # without given medians they are measured (every pixel of a frame this small): the same master
    measured = combine_flats(lambda r0, r1: stack[:, r0:r1], n_frames=5, shape=(H, W), bias=bias,
                             method="median")
    np.testing.assert_allclose(measured.image, ours.image, rtol=1e-5)


def test_frame_medians_from_subsample() -> None:
    """frame_medians reads band by band and returns each frame's median to within its noise."""
    frames = dark_frames(4, outliers=0)
    stack = np.stack(frames)
    got = frame_medians(lambda r0, r1: stack[:, r0:r1], n_frames=4, shape=(H, W), stride=2,
                        memory_cap_bytes=H * W * 6 + 4 * W * 4 * 7)
    np.testing.assert_allclose(got, [np.median(f) for f in frames], atol=1.0)


# ------------------------------------------------------------------------------------------ temporal noise


def test_noise_map_is_the_scatter_of_the_samples_each_pixel_averaged() -> None:
    """noise=True gives, per pixel, the ddof=1 standard deviation of exactly the samples the combination
    averaged (astropy's sigma_clip mask; the middle values of min/max; all values for the mean), 1.4826 MAD
    for the median; the image and n_used are the same as without it, also in several bands; NaN where fewer
    than two samples are left; None unless asked for."""
    frames = dark_frames(9)
    stack = np.stack(frames).astype(np.float64)
    kept = np.ma.masked_array(stack, sigma_clip(stack, axis=0, sigma=3, maxiters=5, cenfunc="median",
                                                stdfunc="std").mask)
    cap = H * W * 10 + 9 * W * 4 * 7  # bands of 7 rows with the noise map counted
    result = combine_arrays(frames, noise=True, memory_cap_bytes=cap)
    plain = combine_arrays(frames)
    assert result.n_bands > 1 and plain.noise is None
    np.testing.assert_array_equal(result.image, plain.image)
    np.testing.assert_array_equal(result.n_used, plain.n_used)
    assert result.noise is not None and result.noise.dtype == np.float32
    np.testing.assert_allclose(result.noise, kept.std(axis=0, ddof=1).filled(np.nan), rtol=1e-5)
    assert np.any(kept.mask.any(axis=0))  # the cosmic rays were left out, so the test compares something
    mean = combine_arrays(frames, method="mean", noise=True).noise
    np.testing.assert_allclose(mean, stack.std(axis=0, ddof=1), rtol=1e-5)  # type: ignore[arg-type]
    median = combine_arrays(frames, method="median", noise=True).noise
    mad = 1.482602218505602 * np.median(np.abs(stack - np.median(stack, axis=0)), axis=0)
    np.testing.assert_allclose(median, mad, rtol=1e-5)  # type: ignore[arg-type]
    middle = np.sort(stack, axis=0)[1:-1]
    minmax = combine_arrays(frames, method="minmax", nlow=1, nhigh=1, noise=True).noise
    np.testing.assert_allclose(minmax, middle.std(axis=0, ddof=1), rtol=1e-5)  # type: ignore[arg-type]
    single = combine_arrays(frames[:1], noise=True).noise
    assert single is not None and np.isnan(single).all()
