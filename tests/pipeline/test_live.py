"""Tests of astrod.pipeline.live: the LiveStack stages, gates, weights, checkpoints, memory and outputs."""

from __future__ import annotations

import math
import re
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from astropy.io import fits

from astrod.config import Config
from astrod.core.quality_gates import GateThresholds
from astrod.core.register import Registration, register
from astrod.errors import AstrodError, FrameRejected, RegistrationError
from astrod.io.checkpoint import load_checkpoint, save_checkpoint
from astrod.model import Frame, FrameKind, FrameMeta, Transform
from astrod.pipeline import registration
from astrod.pipeline.live import (
    TABLE_COLUMNS,
    Calibrated,
    FrameResult,
    LiveStack,
    Measured,
    PipelineSettings,
    write_outputs,
)
from tests import synth
from tests.pipeline.conftest import aperture_flux, grid_rms, read_table

F32 = npt.NDArray[np.float32]
SIZE = 256


def _frames(session: synth.Session, *, exposure: float = 60.0) -> list[Frame]:
    return [Frame(meta=FrameMeta(kind=FrameKind.LIGHT, exposure=exposure), data=d, path=Path(f"f{i:02d}.fits"))
            for i, d in enumerate(session.frames)]


@pytest.fixture(scope="module")
def session() -> synth.Session:
    """12 mono frames of 256×256 with shifts, small rotations and scale jitter."""
    return synth.make_session(n_frames=12, width=SIZE, height=SIZE, seed=51, max_shift=15.0, max_rotation_deg=3.0,
                              n_stars=120, flux_min=1e4, flux_max=1e6)


def _light(sensor: synth.Sensor, scene: F32, *, seed: int, name: str) -> Frame:
    data = sensor.light(scene, exposure=60.0, temperature=-10.0, seed=seed)
    return Frame(meta=FrameMeta(kind=FrameKind.LIGHT, exposure=60.0), data=data, path=Path(name))


def _scene(session: synth.Session, *, transform: Transform | None = None, catalogue: synth.Catalogue | None = None,
           fwhm: float | None = None, trail: tuple[float, float] | None = None) -> F32:
    scene, _ = synth.render_stars(width=SIZE, height=SIZE, catalogue=catalogue or session.catalogue,
                                  transform=transform, fwhm=fwhm or session.fwhm, beta=session.beta, sky=session.sky,
                                  trail=trail)
    return scene


# ------------------------------------------------------------------------------------------ stages


def test_registration_and_table_row(session: synth.Session) -> None:
    """Each stacked frame's transform maps it onto the reference as the truth does (< 0.05 px RMS), and its
    row carries the table's columns."""
    stack = LiveStack(PipelineSettings())
    for frame, truth in zip(_frames(session), session.truths, strict=True):
        result = stack.process(frame)
        assert result.status == "stacked", result.reason
        row = result.row()
        assert tuple(row) == TABLE_COLUMNS
        found = Transform.similarity(dx=float(row["dx"]), dy=float(row["dy"]),  # type: ignore[arg-type]
                                     rotation_deg=float(row["rotation_deg"]),  # type: ignore[arg-type]
                                     scale=float(row["scale"]))  # type: ignore[arg-type]
        assert grid_rms(found, truth.transform, width=SIZE, height=SIZE) < 0.05
        assert all(isinstance(result.metrics[f"ms_{s}"], float) for s in ("detect", "warp", "accumulate"))
    assert stack.n_stacked == 12 and stack.shape == (SIZE, SIZE)
    assert stack.total_exposure == 12 * 60.0


# ------------------------------------------------------------------------------------------ reference and gates


def test_first_frame_with_too_few_stars_is_not_the_reference(session: synth.Session) -> None:
    """A first frame without stars, then one with 4 stars, are rejected; the next good frame is the reference."""
    sensor = session.sensor
    blank = _light(sensor, np.full((SIZE, SIZE), 100.0, dtype=np.float32), seed=1, name="blank.fits")
    few = synth.Catalogue(x=session.catalogue.x[:4], y=session.catalogue.y[:4], flux=np.full(4, 2e5))
    sparse = _light(sensor, _scene(session, catalogue=few), seed=2, name="sparse.fits")
    stack = LiveStack(PipelineSettings(min_stars=8))
    r1 = stack.process(blank)
    r2 = stack.process(sparse)
    assert (r1.status, r1.reason) == ("rejected", "no stars detected")
    assert r2.status == "rejected" and r2.reason is not None
    assert re.fullmatch(r"[4-7] stars measured, a reference frame needs 8", r2.reason)
    assert stack.shape is None
    frames = _frames(session)
    r3 = stack.process(frames[5])
    assert r3.status == "stacked" and r3.metrics["dx"] == 0.0
    assert stack.reference_path == str(frames[5].path)
    r4 = stack.process(frames[0])
    expected = session.truths[0].transform.compose(session.truths[5].transform.inverse())
    found = Transform.similarity(dx=r4.metrics["dx"], dy=r4.metrics["dy"],  # type: ignore[arg-type]
                                 rotation_deg=r4.metrics["rotation_deg"], scale=r4.metrics["scale"])  # type: ignore[arg-type]
    assert grid_rms(found, expected, width=SIZE, height=SIZE) < 0.05


def test_quality_gates_reject_with_reasons(session: synth.Session) -> None:
    """Bad seeing (FWHM 2× the session's), a trailed frame, a cloudy frame and a nearly empty one are rejected
    with the gate that caught them; a frame as good as the others is stacked."""
    sensor = session.sensor
    frames = _frames(session)
    stack = LiveStack(PipelineSettings())
    for f in frames[:4]:
        assert stack.process(f).status == "stacked"
    shift = Transform.similarity(dx=3.0, dy=2.0)
    seeing = stack.process(_light(sensor, _scene(session, transform=shift, fwhm=6.5), seed=3, name="seeing.fits"))
    trailed = stack.process(_light(sensor, _scene(session, transform=shift, trail=(6.0, 60.0)), seed=4,
                                   name="trail.fits"))
    # Trailed so far that detection finds hardly a star (12 px on 3 px stars): the star count says so.
    smeared = stack.process(_light(sensor, _scene(session, transform=shift, trail=(12.0, 60.0)), seed=9,
                                   name="smeared.fits"))
    cloud = stack.process(_light(sensor, synth.cloudy(_scene(session, transform=shift), transmission=0.3,
                                                     extra_sky=2000.0), seed=5, name="cloud.fits"))
    faint = stack.process(_light(sensor, synth.cloudy(_scene(session, transform=shift), transmission=0.01,
                                                     extra_sky=0.0), seed=6, name="faint.fits"))
    assert seeing.status == "rejected" and seeing.reason is not None and "FWHM" in seeing.reason
    assert "× the session's median" in seeing.reason
    assert trailed.reason is not None and "eccentricity" in trailed.reason
    assert smeared.reason is not None and "stars," in smeared.reason
    assert cloud.reason is not None and cloud.reason.startswith("background")
    assert faint.reason is not None and "stars," in faint.reason
    assert stack.process(frames[4]).status == "stacked"
    assert (stack.n_stacked, stack.n_rejected) == (5, 5)


def test_snr_weight_follows_transparency(session: synth.Session) -> None:
    """With SNR weighting a frame at half transparency weighs (0.5 · σ_ref/σ)² of the reference's."""
    sensor = session.sensor
    frames = _frames(session)
    stack = LiveStack(PipelineSettings(weighting="snr", gates=GateThresholds(min_star_ratio=0.0)))
    ref = stack.process(frames[0])
    hazy = stack.process(_light(sensor, synth.cloudy(_scene(session), transmission=0.5, extra_sky=0.0), seed=7,
                                name="hazy.fits"))
    assert hazy.status == "stacked", hazy.reason
    expected = (0.5 * float(ref.metrics["noise"]) / float(hazy.metrics["noise"])) ** 2  # type: ignore[arg-type]
    assert float(hazy.metrics["weight"]) == pytest.approx(expected, rel=0.05)  # type: ignore[arg-type]


def test_colour_frame_in_a_mono_session_is_rejected(session: synth.Session) -> None:
    """A Bayer frame offered to a mono session is rejected with the planes named, not a crash."""
    stack = LiveStack(PipelineSettings())
    frames = _frames(session)
    stack.process(frames[0])
    colour = replace(frames[1], meta=replace(frames[1].meta, bayer="RGGB"))
    result = stack.process(colour)
    assert result.status == "rejected" and result.reason == "3-plane frame in a session of 1-plane frames"


def _star_poor(session: synth.Session) -> tuple[synth.Catalogue, PipelineSettings]:
    """Only the 31st to 56th brightest stars (none of those the reference measures), and settings that need
    more matched stars than they give and let the star count drop: phase correlation must register."""
    faint = np.argsort(-session.catalogue.flux)[30:56]
    cat = synth.Catalogue(x=session.catalogue.x[faint], y=session.catalogue.y[faint],
                          flux=session.catalogue.flux[faint])
    return cat, PipelineSettings(min_stars=20, max_stars=30,
                                 gates=GateThresholds(min_star_ratio=0.0, collapse_star_ratio=0.0))


def test_star_poor_frame_is_registered_by_phase_correlation(session: synth.Session) -> None:
    """A frame showing none of the reference's measured stars (only fainter ones) is registered by phase
    correlation within 0.25 px of the truth."""
    cat, settings = _star_poor(session)
    stack = LiveStack(settings)
    assert stack.process(_frames(session)[0]).status == "stacked"
    truth = Transform.similarity(dx=6.3, dy=-4.1)
    result = stack.process(_light(session.sensor, _scene(session, transform=truth, catalogue=cat), seed=8,
                                  name="poor.fits"))
    assert result.status == "stacked", result.reason
    assert result.metrics["residual_px"] is None or isinstance(result.metrics["residual_px"], float)
    found = Transform.similarity(dx=result.metrics["dx"], dy=result.metrics["dy"],  # type: ignore[arg-type]
                                 rotation_deg=result.metrics["rotation_deg"])  # type: ignore[arg-type]
    assert grid_rms(found, truth, width=SIZE, height=SIZE) < 0.25


# ------------------------------------------------------------------------------------------ calibrator


def test_calibrator_is_used_and_its_failures_are_rejections(session: synth.Session) -> None:
    """Calibrated frames are what is stacked; the masters a calibrator reports reach the header; a calibrator
    error rejects that frame with its reason."""
    frames = _frames(session)[:4]
    offset = np.float32(480.0)

    def calibrate(frame: Frame) -> Frame | Calibrated:
        if frame.path == frames[2].path:
            raise FrameRejected("no dark for 60 s")
        return Calibrated(frame=replace(frame, data=frame.data - offset), masters=("dark_60s.fits",),
                          notes=("missing master: flat",))

    stack = LiveStack(PipelineSettings(), calibrator=calibrate)
    results = [stack.process(f) for f in frames]
    assert [r.status for r in results] == ["stacked", "stacked", "rejected", "stacked"]
    assert results[2].reason == "calibration failed: no dark for 60 s"
    raw = LiveStack(PipelineSettings())
    raw.process(frames[0])
    assert float(results[0].metrics["background"]) == pytest.approx(  # type: ignore[arg-type]
        float(raw.rows[0]["background"]) - 480.0, abs=0.5)  # type: ignore[arg-type]
    product = stack.finalize()
    assert product.header["NMASTERS"][0] == 1 and product.masters == ("dark_60s.fits",)
    assert "master: dark_60s.fits" in product.history and "astrod: missing master: flat" in product.history


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("final_rejection", ["none", "winsorized"])
def test_save_and_load_mid_way_is_bit_identical(session: synth.Session, tmp_path: Path,
                                                final_rejection: str) -> None:
    """Stacking 5 frames, saving, loading and stacking the rest gives the uninterrupted stack bit for bit, and
    the same frames table (with the online stack and with the final re-integration from the cache)."""
    settings = PipelineSettings(final_rejection=final_rejection)  # type: ignore[arg-type]
    frames = _frames(session)
    whole = LiveStack(settings, cache_dir=tmp_path / "cache_a")
    for f in frames:
        whole.process(f)
    part = LiveStack(settings, cache_dir=tmp_path / "cache_b")
    for f in frames[:5]:
        part.process(f)
    part.save(tmp_path / "ckpt.npz", extra={"session": "abc", "seq": 5})
    del part
    resumed = LiveStack.load(tmp_path / "ckpt.npz", settings, cache_dir=tmp_path / "cache_b")
    assert resumed.extra == {"session": "abc", "seq": 5}
    assert resumed.n_stacked == 5
    for f in frames[5:]:
        resumed.process(f)
    a, b = whole.finalize(), resumed.finalize()
    assert a.header["STACKMTH"][0] == ("winsorized" if final_rejection == "winsorized" else "online-sigma")
    assert np.array_equal(a.image, b.image, equal_nan=True)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.rows == b.rows
    assert {k: v for k, v in a.header.items() if k != "DATE"} == {k: v for k, v in b.header.items() if k != "DATE"}


def test_load_refuses_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    """A corrupt checkpoint raises a precise AstrodError, not a zipfile or numpy error."""
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(AstrodError, match=r"bad\.npz"):
        LiveStack.load(bad, PipelineSettings())


# ------------------------------------------------------------------------------------------ memory and outputs


def test_memory_does_not_grow_with_the_number_of_frames(session: synth.Session) -> None:
    """After the first frames, stacking more allocates nothing that stays: traced memory grows by far less than
    one frame (256 KB) over 8 more frames (the rows of the frames table are all that accumulates)."""
    frames = _frames(session)
    stack = LiveStack(PipelineSettings())
    for f in frames[:4]:
        stack.process(f)
    tracemalloc.start()
    try:
        stack.process(frames[4])
        start, _ = tracemalloc.get_traced_memory()
        for f in frames[5:]:
            stack.process(f)
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert end - start < 64 * 1024


def test_preview_and_finalize_need_a_stacked_frame() -> None:
    """Before any frame there is no preview and nothing to finalize: a clear AstrodError."""
    stack = LiveStack(PipelineSettings())
    with pytest.raises(AstrodError, match="preview"):
        stack.preview()
    with pytest.raises(AstrodError, match="nothing to finalize"):
        stack.finalize()


def test_preview_is_reduced_and_stretched(session: synth.Session) -> None:
    """The preview's linear image is the stack reduced to at most max_size px; the stretched one is uint8 with
    the brightest star near white and the sky dark."""
    stack = LiveStack(PipelineSettings())
    for f in _frames(session)[:3]:
        stack.process(f)
    linear, stretched = stack.preview(max_size=100)
    assert linear.shape == stretched.shape == (SIZE // 3, SIZE // 3)
    assert linear.dtype == np.float32 and stretched.dtype == np.uint8
    assert np.median(stretched) < 128 < stretched.max()


def test_write_outputs_writes_fits_preview_and_table(session: synth.Session, tmp_path: Path) -> None:
    """write_outputs writes the float32 FITS with the header cards and HISTORY, a JPEG preview and the CSV."""
    stack = LiveStack(PipelineSettings(), calibrator=lambda f: Calibrated(frame=f, masters=("bias.fits",)))
    for f in _frames(session)[:3]:
        stack.process(f)
    stack.reject(Path("junk.fits"), "junk.fits: not a FITS file")
    product = stack.finalize()
    write_outputs(product, stack_path=tmp_path / "s.fits", preview_path=tmp_path / "p.jpg",
                  table_path=tmp_path / "t.csv", preview_max_size=64)
    with fits.open(tmp_path / "s.fits") as hdul:
        assert hdul[0].header["BITPIX"] == -32 and hdul[0].header["NCOMBINE"] == 3
        assert hdul[0].header["NREJECT"] == 1
        assert "master: bias.fits" in [str(h) for h in hdul[0].header["HISTORY"]]
        assert np.array_equal(hdul[0].data, product.image, equal_nan=True)
    preview = cv2.imread(str(tmp_path / "p.jpg"), cv2.IMREAD_UNCHANGED)
    assert preview.shape == (SIZE // 4, SIZE // 4)
    rows = read_table(tmp_path / "t.csv")
    assert [r["status"] for r in rows] == ["stacked"] * 3 + ["rejected"]
    assert rows[3]["reason"] == "junk.fits: not a FITS file" and rows[3]["dx"] == ""


def test_settings_come_from_the_config() -> None:
    """PipelineSettings.from_config copies [stack] and [quality]."""
    config = Config()
    s = PipelineSettings.from_config(config)
    assert (s.kappa, s.weighting, s.transform, s.min_stars, s.final_rejection) == (
        config.stack.kappa, config.stack.weighting, config.stack.transform, config.stack.min_stars,
        config.stack.final_rejection)
    assert (s.reference_repick_after, s.reference_repick_margin) == (
        config.stack.reference_repick_after, config.stack.reference_repick_margin)
    for name in GateThresholds.__dataclass_fields__:
        assert getattr(s.gates, name) == getattr(config.quality, name), name
    assert s.min_matches == config.stack.min_stars
    assert PipelineSettings(min_stars=3, transform="homography").min_matches == 5


def test_frame_result_row_has_none_for_unknowns() -> None:
    """A row of a frame rejected before measurement has the path, status, reason and empty figures."""
    r = FrameResult(path=Path("a.fits"), status="rejected", reason="unreadable", metrics={})
    row = r.row()
    assert tuple(row) == TABLE_COLUMNS
    assert row["path"] == "a.fits" and row["reason"] == "unreadable"
    assert all(row[c] is None for c in TABLE_COLUMNS[3:])


# ------------------------------------------------------------------------------------------ reference re-pick
# A session whose first frame is defocused (FWHM 4.5 px), frames 1, 2 and 4 soft (3.6 px) and frame 3 sharp
# (3.0 px, as all later frames): after 5 stacked frames the reference becomes frame 3.

BEST = 3


@pytest.fixture(scope="module")
def repick_frames(session: synth.Session) -> list[Frame]:
    """The 12 frames of ``session``, the first ones worse than frame 3."""
    frames = _frames(session)
    for i, fwhm in ((0, 4.5), (1, 3.6), (2, 3.6), (4, 3.6)):
        frames[i] = _light(session.sensor, _scene(session, transform=session.truths[i].transform, fwhm=fwhm),
                           seed=100 + i, name=f"f{i:02d}.fits")
    return frames


def _stacked(frames: list[Frame], settings: PipelineSettings, cache_dir: Path | None = None) -> LiveStack:
    stack = LiveStack(settings, cache_dir=cache_dir)
    for f in frames:
        assert stack.process(f).status == "stacked"
    return stack


def _best_first(frames: list[Frame]) -> list[Frame]:
    """The frames with frame 3 first: a session given frame 3 as its reference from the start."""
    return [frames[BEST]] + [f for i, f in enumerate(frames) if i != BEST]


def _row_transform(row: dict[str, object]) -> Transform:
    return Transform.similarity(dx=float(row["dx"]), dy=float(row["dy"]),  # type: ignore[arg-type]
                                rotation_deg=float(row["rotation_deg"]),  # type: ignore[arg-type]
                                scale=float(row["scale"]))  # type: ignore[arg-type]


def _star_mask(xy: npt.NDArray[np.float64], radius: float = 12.0) -> npt.NDArray[np.bool_]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    near = np.zeros((SIZE, SIZE), dtype=bool)
    for x, y in xy:
        near |= (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
    return near


def _isolated_bright(truth: synth.StarField) -> npt.NDArray[np.float64]:
    """Frame positions of the bright stars of a frame's truth with no neighbour within 12 px, 20 px inside."""
    xy = truth.xy
    d = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    np.fill_diagonal(d, np.inf)
    keep = (d.min(axis=1) > 12.0) & np.all((xy > 20) & (xy < SIZE - 21), axis=1) & (truth.flux > 3e4)
    assert keep.sum() >= 5
    return np.asarray(xy[keep])


def _centroid_errors(image: npt.NDArray[np.float64], xy: npt.NDArray[np.float64],
                     level: float) -> npt.NDArray[np.float64]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    out = []
    for x, y in xy:
        box = (np.abs(xx - x) <= 5) & (np.abs(yy - y) <= 5)
        w = image[box] - level
        out.append(np.hypot(np.sum(w * xx[box]) / w.sum() - x, np.sum(w * yy[box]) / w.sum() - y))
    return np.asarray(out)


def test_reference_is_repicked_to_the_best_of_the_first_frames(session: synth.Session,
                                                                repick_frames: list[Frame]) -> None:
    """After 5 frames the reference becomes the sharpest one, once: the frame that triggered it says so, the
    header names it, a HISTORY line tells which frame it replaced, and every row of the frames table (those
    stacked before included) holds the frame's transform onto it (< 0.05 px RMS from the truth), the reference's
    own row being the identity with weight and transparency 1."""
    stack = LiveStack(PipelineSettings())
    results = [stack.process(f) for f in repick_frames]
    assert [r.status for r in results] == ["stacked"] * 12
    assert [r.metrics.get("reference_repicked") for r in results] == [None] * 4 + ["f03.fits"] + [None] * 7
    assert isinstance(results[4].metrics["ms_repick"], float)
    assert stack.reference_path == "f03.fits"
    product = stack.finalize()
    assert product.header["REFFRAME"][0] == "f03.fits"
    notes = [h for h in product.history if "re-picked" in h]
    assert len(notes) == 1
    assert re.fullmatch(r"astrod: reference re-picked: f03\.fits \(FWHM 3\.\d\d, \d+ stars\) replaces f00\.fits "
                        r"\(FWHM 4\.\d\d, \d+ stars\)", notes[0])
    to_best = session.truths[BEST].transform.inverse()
    for row, truth in zip(product.rows, session.truths, strict=True):
        expected = truth.transform.compose(to_best)
        assert grid_rms(_row_transform(row), expected, width=SIZE, height=SIZE) < 0.05, row["path"]
        assert row["residual_px"] is None or float(row["residual_px"]) < 0.5  # type: ignore[arg-type]
    best = product.rows[BEST]
    assert (best["dx"], best["dy"], best["rotation_deg"], best["scale"], best["residual_px"]) == (
        0.0, 0.0, 0.0, 1.0, 0.0)
    assert best["weight"] == pytest.approx(1.0) and best["transparency"] == pytest.approx(1.0)
    # the frames stacked after the re-pick weigh, against the new reference, as the re-weighted first ones do
    weights = [float(r["weight"]) for r in product.rows]  # type: ignore[arg-type]
    assert 0.7 < np.median(weights[:5]) / np.median(weights[5:]) < 1.5


def test_repicked_stack_is_on_the_best_frames_grid_with_its_fluxes(session: synth.Session,
                                                                   repick_frames: list[Frame]) -> None:
    """The re-picked stack is on frame 3's grid (bright stars at frame 3's truth positions, < 0.1 px, 0.05 px
    RMS) and agrees with the stack of a session given frame 3 as its reference from the start: star fluxes
    within 0.5 %, the sky within 0.5 ADU, and pixels covered by all frames within a fraction of the noise
    (plain weighted means, so that the order of the frames does not matter)."""
    settings = PipelineSettings(kappa=math.inf)
    repicked = _stacked(repick_frames, settings).finalize()
    direct = _stacked(_best_first(repick_frames), replace(settings, reference_repick_after=0)).finalize()
    assert repicked.header["REFFRAME"][0] == direct.header["REFFRAME"][0] == "f03.fits"
    a, b = repicked.image.astype(np.float64), direct.image.astype(np.float64)
    truth = session.truths[BEST]
    full = (repicked.count == 12) & (direct.count == 12)  # type: ignore[operator]
    sky = full & ~_star_mask(truth.xy)
    level_a, level_b = float(np.median(a[sky])), float(np.median(b[sky]))
    assert abs(level_a - level_b) < 0.5
    xy = _isolated_bright(truth)
    errors = _centroid_errors(a, xy, level_a)
    assert errors.max() < 0.1 and math.sqrt(float(np.mean(errors**2))) < 0.05
    np.testing.assert_allclose(aperture_flux(a, xy, sky=sky), aperture_flux(b, xy, sky=sky), rtol=0.005)
    noise = 1.4826 * float(np.median(np.abs(b[sky] - level_b)))
    diff = np.abs(a - b)[sky]
    assert float(np.median(diff)) < 0.15 * noise and float(np.percentile(diff, 90)) < 0.4 * noise


def test_repick_moves_the_cached_frames_of_the_final_stack(session: synth.Session, repick_frames: list[Frame],
                                                           tmp_path: Path) -> None:
    """With a final re-integration the frames cached before the re-pick are re-warped onto the new grid (into new
    files; the old ones go at the next checkpoint): the winsorized stack is on frame 3's grid and gives the
    star fluxes of a session given frame 3 from the start (median within 0.5 %, each within 3 %)."""
    settings = PipelineSettings(final_rejection="winsorized")
    stack = _stacked(repick_frames, settings, cache_dir=tmp_path / "a")
    assert len(list((tmp_path / "a").glob("*.npy"))) == 12 + 5
    repicked = stack.finalize()
    stack.save(tmp_path / "ckpt.npz")
    assert sorted(p.name for p in (tmp_path / "a").glob("*.npy")) == sorted(
        [f"frame_{i:06d}_ref2.npy" for i in range(5)] + [f"frame_{i:06d}.npy" for i in range(5, 12)])
    direct = _stacked(_best_first(repick_frames), replace(settings, reference_repick_after=0),
                      cache_dir=tmp_path / "b").finalize()
    assert repicked.header["STACKMTH"][0] == direct.header["STACKMTH"][0] == "winsorized"
    assert repicked.header["REFFRAME"][0] == "f03.fits"
    a, b = repicked.image.astype(np.float64), direct.image.astype(np.float64)
    truth = session.truths[BEST]
    sky = (repicked.count > 0) & (direct.count > 0) & ~_star_mask(truth.xy)  # type: ignore[operator]
    level = float(np.median(a[sky]))
    assert abs(level - float(np.median(b[sky]))) < 0.5
    xy = _isolated_bright(truth)
    errors = _centroid_errors(a, xy, level)
    assert errors.max() < 0.1 and math.sqrt(float(np.mean(errors**2))) < 0.05
    ratio = aperture_flux(a, xy, sky=sky) / aperture_flux(b, xy, sky=sky)
    assert abs(float(np.median(ratio)) - 1.0) < 0.005 and np.all(np.abs(ratio - 1.0) < 0.03)


@pytest.mark.parametrize("final_rejection", ["none", "winsorized"])
@pytest.mark.parametrize("saved_after", [3, 5, 8])
def test_checkpoint_across_the_repick_is_bit_identical(repick_frames: list[Frame], tmp_path: Path,
                                                       final_rejection: str, saved_after: int) -> None:
    """A session saved before the re-pick (3 frames), right after it (5) or later (8), loaded and fed the rest,
    gives the uninterrupted stack bit for bit, with the same frames table and header; the candidates' stars
    are in the checkpoint only until the re-pick."""
    settings = PipelineSettings(final_rejection=final_rejection)  # type: ignore[arg-type]
    whole = _stacked(repick_frames, settings, cache_dir=tmp_path / "a")
    part = _stacked(repick_frames[:saved_after], settings, cache_dir=tmp_path / "b")
    part.save(tmp_path / "ckpt.npz")
    arrays, _ = load_checkpoint(tmp_path / "ckpt.npz")
    assert any(k.startswith("repick_") for k in arrays) == (saved_after < 5)
    del part
    resumed = LiveStack.load(tmp_path / "ckpt.npz", settings, cache_dir=tmp_path / "b")
    for f in repick_frames[saved_after:]:
        assert resumed.process(f).status == "stacked"
    a, b = whole.finalize(), resumed.finalize()
    assert resumed.reference_path == whole.reference_path == "f03.fits"
    assert a.image.tobytes() == b.image.tobytes()
    assert a.rows == b.rows and a.history == b.history
    assert {k: v for k, v in a.header.items() if k != "DATE"} == {k: v for k, v in b.header.items() if k != "DATE"}


def test_star_poor_frame_is_registered_by_phase_correlation_after_the_repick(
        session: synth.Session, repick_frames: list[Frame], monkeypatch: pytest.MonkeyPatch) -> None:
    """After the re-pick, a frame showing none of the new reference's measured stars is still registered by
    phase correlation (on the first reference's image, carried onto the new grid) within 0.25 px of the truth."""
    methods: list[str] = []

    def spy(*args: Any, **kwargs: Any) -> Registration:
        found = register(*args, **kwargs)
        methods.append(found.method)
        return found

    monkeypatch.setattr(registration, "register", spy)
    cat, settings = _star_poor(session)
    stack = _stacked(repick_frames[:5], settings)
    assert stack.reference_path == "f03.fits"
    truth = Transform.similarity(dx=6.3, dy=-4.1)  # onto frame 0's grid
    result = stack.process(_light(session.sensor, _scene(session, transform=truth, catalogue=cat), seed=8,
                                  name="poor.fits"))
    assert result.status == "stacked", result.reason
    assert methods == ["phase"]
    found = _row_transform(result.row())
    expected = truth.compose(session.truths[BEST].transform.inverse())
    assert grid_rms(found, expected, width=SIZE, height=SIZE) < 0.25


def test_no_repick_when_disabled_or_not_better_enough(session: synth.Session, repick_frames: list[Frame]) -> None:
    """With reference_repick_after=0, or a margin the best frame does not reach, the first frame stays the
    reference: rows against it, no HISTORY line, and the same stack as a session before re-picks existed."""
    for settings in (PipelineSettings(reference_repick_after=0), PipelineSettings(reference_repick_margin=3.0)):
        stack = LiveStack(settings)
        results = [stack.process(f) for f in repick_frames]
        assert all("reference_repicked" not in r.metrics for r in results)
        product = stack.finalize()
        assert stack.reference_path == "f00.fits" and product.header["REFFRAME"][0] == "f00.fits"
        assert not [h for h in product.history if "re-picked" in h]
        for row, truth in zip(product.rows, session.truths, strict=True):
            assert grid_rms(_row_transform(row), truth.transform, width=SIZE, height=SIZE) < 0.05
    never = _stacked(repick_frames, PipelineSettings(reference_repick_after=0)).finalize()
    assert np.array_equal(never.image, product.image, equal_nan=True)


def test_a_checkpoint_without_repick_state_keeps_its_reference(repick_frames: list[Frame], tmp_path: Path) -> None:
    """A checkpoint written before re-picks existed (no re-pick state) loads, and its session keeps its
    reference."""
    part = _stacked(repick_frames[:3], PipelineSettings())
    part.save(tmp_path / "ckpt.npz")
    arrays, meta = load_checkpoint(tmp_path / "ckpt.npz")
    del meta["repick"]
    meta["reference"].pop("small_grid")
    save_checkpoint(tmp_path / "old.npz", {k: v for k, v in arrays.items() if not k.startswith("repick_")}, meta)
    resumed = LiveStack.load(tmp_path / "old.npz", PipelineSettings())
    for f in repick_frames[3:]:
        assert resumed.process(f).status == "stacked"
    assert resumed.reference_path == "f00.fits"


# ------------------------------------------------------------------------------------------ registration by WCS


def test_frame_refused_by_star_matching_is_registered_by_the_wcs_registrar(session: synth.Session) -> None:
    """A frame 12 % larger in scale (other optics) fails star matching, which allows 5 %: without a WCS registrar
    it is rejected with that reason; with one (here returning the truth, as two plate solutions give it) it is
    stacked, its row says ``wcs`` and how many of its stars land on reference stars; a registrar that cannot
    either adds its reason to the rejection."""
    truth = Transform.similarity(dx=30.0, dy=-20.0, rotation_deg=40.0, scale=1.12)
    odd = _light(session.sensor, _scene(session, transform=truth), seed=21, name="odd.fits")
    first = _frames(session)[0]
    plain = LiveStack(PipelineSettings())
    plain.process(first)
    refused = plain.process(odd)
    assert refused.status == "rejected" and "registration failed" in str(refused.reason)

    asked: list[str] = []

    def registrar(measured: Measured, why: str) -> Registration:
        asked.append(why)
        assert measured.path == Path("odd.fits") and measured.stars is not None
        return Registration(transform=truth, matched=0, residual_px=0.1, method="wcs")

    stack = LiveStack(PipelineSettings(), wcs_registrar=registrar)
    assert stack.process(first).status == "stacked" and asked == []  # the reference needs no registrar
    result = stack.process(odd)
    assert result.status == "stacked", result.reason
    assert asked == [refused.reason] and result.metrics["registration"] == "wcs"
    assert result.metrics["scale"] == pytest.approx(1.12)
    assert stack.rows[0]["registration"] == "stars"

    def cannot(measured: Measured, why: str) -> Registration:
        raise RegistrationError("the frame is not solved (no solution)")

    failing = LiveStack(PipelineSettings(), wcs_registrar=cannot)
    failing.process(first)
    rejected = failing.process(odd)
    assert rejected.status == "rejected" and str(rejected.reason) == f"{refused.reason}; the frame is not solved " \
        "(no solution)"


def test_a_rejection_cut_short_can_be_taken_back(session: synth.Session) -> None:
    """The last frame's rejection is taken back (no row, not counted) so that it can be judged again; a
    stacked frame's, or another frame's, is not."""
    stack = LiveStack(PipelineSettings())
    first = _frames(session)[0]
    stack.process(first)
    assert not stack.forget_rejected(first.path)  # stacked: stays
    blank = Frame(meta=FrameMeta(kind=FrameKind.LIGHT, exposure=60.0), data=np.zeros((SIZE, SIZE), np.float32),
                  path=Path("blank.fits"))
    assert stack.process(blank).status == "rejected" and stack.n_rejected == 1
    assert not stack.forget_rejected(Path("other.fits"))
    assert stack.forget_rejected(blank.path) and stack.n_rejected == 0 and len(stack.rows) == 1
    assert not stack.forget_rejected(blank.path)
