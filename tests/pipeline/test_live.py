"""Tests of astrod.pipeline.live: the LiveStack stages, gates, weights, checkpoints, memory and outputs."""

from __future__ import annotations

import re
import tracemalloc
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from astropy.io import fits

from astrod.config import Config
from astrod.errors import AstrodError, FrameRejected
from astrod.model import Frame, FrameKind, FrameMeta, Transform
from astrod.pipeline.live import (
    TABLE_COLUMNS,
    Calibrated,
    FrameResult,
    LiveStack,
    PipelineSettings,
    write_outputs,
)
from tests import synth
from tests.pipeline.conftest import grid_rms, read_table

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


def _state_bytes(stack: LiveStack, tmp: Path) -> bytes:
    target = tmp / "state.npz"
    stack.save(target)
    return target.read_bytes()


# ------------------------------------------------------------------------------------------ stages


def test_pipelined_stages_give_the_serial_result(session: synth.Session) -> None:
    """prepare(N+1) before accumulate(N), as the service overlaps them, gives the serial stack bit for bit."""
    frames = _frames(session)[:8]
    serial = LiveStack(PipelineSettings())
    for f in frames:
        serial.process(f)
    piped = LiveStack(PipelineSettings())
    pending = piped.prepare(frames[0])
    for f in frames[1:]:
        nxt = piped.prepare(f)
        piped.accumulate(pending)
        pending = nxt
    piped.accumulate(pending)
    a, b = serial.finalize(), piped.finalize()
    assert np.array_equal(a.image, b.image, equal_nan=True)
    assert a.rows == b.rows
    assert piped.n_stacked == 8


def test_prepare_does_not_change_the_session(session: synth.Session, tmp_path: Path) -> None:
    """prepare only reads the session: the saved state is byte-identical before and after it."""
    frames = _frames(session)
    stack = LiveStack(PipelineSettings())
    for f in frames[:3]:
        stack.process(f)
    before = _state_bytes(stack, tmp_path)
    prepared = stack.prepare(frames[3])
    assert prepared.registration is not None and prepared.reason is None
    assert _state_bytes(stack, tmp_path) == before


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
    """Bad seeing (FWHM 2× the best), a trailed frame, a cloudy frame and a nearly empty one are rejected with
    the gate that caught them; a frame as good as the others is stacked."""
    sensor = session.sensor
    frames = _frames(session)
    stack = LiveStack(PipelineSettings())
    for f in frames[:4]:
        assert stack.process(f).status == "stacked"
    shift = Transform.similarity(dx=3.0, dy=2.0)
    seeing = stack.process(_light(sensor, _scene(session, transform=shift, fwhm=6.5), seed=3, name="seeing.fits"))
    trailed = stack.process(_light(sensor, _scene(session, transform=shift, trail=(12.0, 60.0)), seed=4,
                                   name="trail.fits"))
    cloud = stack.process(_light(sensor, synth.cloudy(_scene(session, transform=shift), transmission=0.3,
                                                     extra_sky=2000.0), seed=5, name="cloud.fits"))
    faint = stack.process(_light(sensor, synth.cloudy(_scene(session, transform=shift), transmission=0.01,
                                                     extra_sky=0.0), seed=6, name="faint.fits"))
    assert seeing.status == "rejected" and seeing.reason is not None and "FWHM" in seeing.reason
    assert "× the session's best" in seeing.reason
    assert trailed.reason is not None and "eccentricity" in trailed.reason
    assert cloud.reason is not None and cloud.reason.startswith("background")
    assert faint.reason is not None and "stars," in faint.reason
    assert stack.process(frames[4]).status == "stacked"
    assert (stack.n_stacked, stack.n_rejected) == (5, 4)


def test_snr_weight_follows_transparency(session: synth.Session) -> None:
    """With SNR weighting a frame at half transparency weighs (0.5 · σ_ref/σ)² of the reference's."""
    sensor = session.sensor
    frames = _frames(session)
    stack = LiveStack(PipelineSettings(weighting="snr", min_star_ratio=0.0))
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


def test_star_poor_frame_is_registered_by_phase_correlation(session: synth.Session) -> None:
    """A frame showing none of the reference's measured stars (only fainter ones) is registered by phase
    correlation within 0.25 px of the truth."""
    order = np.argsort(-session.catalogue.flux)
    faint = order[30:56]
    cat = synth.Catalogue(x=session.catalogue.x[faint], y=session.catalogue.y[faint],
                          flux=session.catalogue.flux[faint])
    settings = PipelineSettings(min_stars=20, max_stars=30, min_star_ratio=0.0)
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
    assert (s.max_fwhm_ratio, s.min_star_ratio, s.max_eccentricity, s.max_background_ratio) == (
        config.quality.max_fwhm_ratio, config.quality.min_star_ratio, config.quality.max_eccentricity,
        config.quality.max_background_ratio)
    assert s.min_matches == config.stack.min_stars
    assert PipelineSettings(min_stars=3, transform="homography").min_matches == 5


def test_frame_result_row_has_none_for_unknowns() -> None:
    """A row of a frame rejected before measurement has the path, status, reason and empty figures."""
    r = FrameResult(path=Path("a.fits"), status="rejected", reason="unreadable", metrics={})
    row = r.row()
    assert tuple(row) == TABLE_COLUMNS
    assert row["path"] == "a.fits" and row["reason"] == "unreadable"
    assert all(row[c] is None for c in TABLE_COLUMNS[3:])
