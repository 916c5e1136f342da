"""The per-frame pipeline of a session: calibrate, measure, gate, register, warp, accumulate; checkpoint; finalize.

One `LiveStack` per session; `LiveStack.process` takes a frame through named steps, each single-threaded code
over the multi-threaded kernels of `astrod.core`:

measure (`LiveStack._measure`)
    calibrate (the injected calibrator), detect stars, measure quality (FWHM, eccentricity, star count,
    background, noise).
decide (`LiveStack._decide`)
    against the session as it is: the first frame with enough stars becomes the reference; the others are
    gated against the session's figures, registered onto the reference's stars, and gated again on their
    transparency.
stack
    demosaic (colour), warp onto the reference grid, and add to the `Stacker` with its normalisation offset
    and weight, band by band.

(An earlier split into a ``prepare`` stage that could run while the previous frame was being accumulated was
removed: nothing overlapped them, and on two cores the kernels of both stages already use both. Frames come
one exposure apart, so the overlap could only help a burst of frames that arrive together.)

A bad frame never raises: it comes back ``rejected`` with a
one-line reason. Memory stays flat with the number of frames: the stacker state, one small band buffer
(frames are warped and accumulated 128 rows at a time, never as a whole warped frame), and a list of small
per-frame rows; registered frames for the final full-rejection pass go to ``cache_dir`` on disk, band by
band (`astrod.io.frame_cache`).

Normalisation is additive (the frame's sky is moved onto the reference's) and flux-conserving (a frame
whose transform changes pixel area by a factor ``a`` is divided by ``a``, so resampling does not change star
fluxes). Frames are not scaled by a noise ratio as siril's ``addscale`` does: that also scales star fluxes
whenever the noise changes for another reason than transparency (a brighter sky), which biases photometry
(siril 1.0.6's addscale stack of a synthetic session has its star fluxes 4 % low; see
tests/pipeline/test_siril.py). Noisier or hazier frames are instead down-weighted (``weighting = "snr"``:
weight ∝ (transparency / noise)², transparency being the median flux ratio of the stars shared with the
reference).

The reference (and the stack's pixel grid) is chosen by quality once the first
``settings.reference_repick_after`` frames are stacked: the first frame with enough stars is only a
stand-in; the best of those frames (most stars per px of FWHM, by ``reference_repick_margin`` at least)
replaces it, once per session, and everything stacked so far is moved onto its grid, transforms composed
(see `LiveStack._repick`). The re-pick cost 0.7 s at 26 MP mono on 2 cores (the stack state warped once;
memory above the state: one 104 MB array at a time), plus 0.3–0.5 s per frame already cached for the final
re-integration. Until then each stacked frame keeps its stars and transform (a few KB); afterwards nothing
per frame but its table row.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from astrod.core.calibrate import CalibrationRecipe
from astrod.core.colour import ColourBalance
from astrod.core.debayer import debayer, effective_pattern
from astrod.core.quality import FrameQuality, measure_quality
from astrod.core.quality_gates import FrameFigures, SessionStats, check_gates, flux_ratio
from astrod.core.register import MODEL_POINTS, Registration, build_reference, star_poor
from astrod.core.stack import Stacker, fwhm_weight, integrate_bands, snr_weight
from astrod.core.stars import StarList, detect_stars, estimate_background
from astrod.core.stretch import downsample
from astrod.core.warp import check_grid, warp_bands
from astrod.errors import AstrodError, RegistrationError
from astrod.io.files import ensure_folder
from astrod.io.frame_cache import CachedFrameWriter, read_cached_rows, remove_cached_frames
from astrod.model import Frame, FrameMeta, Transform
from astrod.pipeline.outputs import StackProduct, preview_picture, product_header, stack_cards, write_outputs
from astrod.pipeline.registration import WcsRegistrar, phase_image, register_onto, register_otherwise
from astrod.pipeline.repick import area_ratio, one_line, repick
from astrod.pipeline.settings import (
    BAND_ROWS,
    Calibrated,
    Calibrator,
    FrameObserver,
    Model,
    PipelineSettings,
    StackedFrame,
)
from astrod.pipeline.state import (
    TABLE_COLUMNS,
    Candidate,
    FrameResult,
    Metric,
    Reference,
    Session,
    load_state,
    save_state,
    utc_stamp,
)
from astrod.pipeline.twopass import DeferredFrame, DeferredFrames

__all__ = ["TABLE_COLUMNS", "Calibrated", "Calibrator", "FrameResult", "LiveStack", "Measured", "Metric",
           "Model", "PipelineSettings", "StackProduct", "WcsRegistrar", "product_header", "write_outputs"]

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True, eq=False)
class Measured:
    """A frame after `LiveStack._measure`: calibrated pixels, stars and quality. ``reason`` set: rejected for
    good, whatever the session."""

    path: Path | None
    meta: FrameMeta
    data: FloatArray | None
    stars: StarList | None
    quality: FrameQuality | None
    reason: str | None
    masters: tuple[str, ...]
    notes: tuple[str, ...]
    pattern: str | None
    small: FloatArray | None
    timings: dict[str, float]
    recipe: CalibrationRecipe | None = None


class LiveStack:
    """The live stack of one session; see the module docstring for the stages.

    ``calibrator`` turns a raw frame into a calibrated one (or a `Calibrated`); it may raise `AstrodError`
    for a frame it cannot calibrate. It may calibrate into the frame's own array, or reuse one output buffer
    (the calibrated pixels are done with when `process` returns).
    ``cache_dir`` receives the registered frames when ``settings.final_rejection`` is not ``"none"`` (one
    float32 ``.npy`` per stacked frame). ``reread`` (a path to its frame, read again from the file) makes the
    stack two-pass (`astrod.pipeline.twopass`, with a final rejection only): frames are registered as they
    come, and only `finalize` warps and integrates them, reading them again; nothing is cached, there is no
    live stack to preview or checkpoint. ``read_rows(path, row0, row1, out)`` (a frame's raw rows, read into
    ``out`` when it fits) lets it read only the rows each band needs.

    Concurrency: one thread at a time (`process`, `reject`, `save`, `preview` and `finalize` change or read
    the session state).
    """

    def __init__(self, settings: PipelineSettings, *, calibrator: Calibrator | None = None,
                 cache_dir: Path | None = None, reread: Callable[[Path], Frame] | None = None,
                 read_rows: Callable[[Path, int, int, FloatArray], FloatArray] | None = None,
                 observer: FrameObserver | None = None, wcs_registrar: WcsRegistrar | None = None) -> None:
        if settings.transform not in MODEL_POINTS:
            raise ValueError(f"unknown registration model {settings.transform!r}")
        self.settings = settings
        self._calibrator = calibrator
        self._observer = observer  # sees each frame stacked, unwarped (photometry)
        self._wcs_registrar = wcs_registrar
        self._cache_dir = None if cache_dir is None else Path(cache_dir)
        self._stacker: Stacker | None = None
        self._ref: Reference | None = None
        self._session = Session()
        self._warp_buffer: FloatArray | None = None
        self._extra: dict[str, Any] = {}
        self._reread = reread
        self._deferred = (DeferredFrames(self._pixels_again, sub_band_rows=BAND_ROWS, read_rows=read_rows)
                          if reread is not None and settings.final_rejection != "none" else None)
        self.preview_balance: ColourBalance | None = None  # the colour factors of the last preview

    # ------------------------------------------------------------------------------------------- figures

    @property
    def n_stacked(self) -> int:
        return self._session.n_stacked

    @property
    def n_rejected(self) -> int:
        return self._session.n_rejected

    @property
    def total_exposure(self) -> float:
        """Seconds of exposure stacked so far (frames without EXPTIME count 0)."""
        return self._session.total_exposure

    @property
    def shape(self) -> tuple[int, ...] | None:
        """(H, W) or (3, H, W) of the stack; None before the reference frame."""
        return None if self._ref is None else self._ref.stack_shape

    @property
    def rows(self) -> list[dict[str, object]]:
        """The frames table so far (a copy)."""
        return [dict(r) for r in self._session.rows]

    @property
    def extra(self) -> dict[str, Any]:
        """The ``extra`` dict of the checkpoint this stack was loaded from (empty otherwise)."""
        return dict(self._extra)

    @property
    def reference_path(self) -> str | None:
        return None if self._ref is None else self._ref.path

    def session_stats(self) -> SessionStats:
        """The distributions of the accepted frames' figures, which the next frame's gates compare with."""
        return SessionStats.from_accepted(self._session.accepted)

    # ------------------------------------------------------------------------------------------- stages

    def process(self, frame: Frame) -> FrameResult:
        """Measure the frame, decide on it against the session, and stack it (or record why not)."""
        measured = self._measure(frame)
        timings = measured.timings
        metrics: dict[str, Metric] = {name: None for name in TABLE_COLUMNS[3:]}
        q = measured.quality
        if q is not None:
            metrics.update(stars=q.star_count, fwhm=_num(q.fwhm), fwhm_err=_num(q.fwhm_err),
                           eccentricity=_num(q.eccentricity), eccentricity_err=_num(q.eccentricity_err),
                           shape_stars=q.shape_stars, background=_num(q.background), noise=_num(q.noise))
        reg, reason, transparency = self._decide(measured, timings)
        metrics["transparency"] = _num(transparency)
        if reg is not None:
            t = reg.transform
            metrics.update(dx=t.dx, dy=t.dy, rotation_deg=t.rotation_deg, scale=t.scale,
                           residual_px=_num(reg.residual_px), registration=reg.method)
        if reason is not None or measured.data is None or reg is None:
            return self._record(measured, "rejected", reason or "not registered", metrics, timings)
        assert q is not None
        weight = self._weight(q, transparency)
        reason = self._stack(measured, reg, weight, metrics, timings)
        if reason is not None:
            return self._record(measured, "rejected", reason, metrics, timings)
        self._session.accepted.append(FrameFigures(q, transparency))
        self._observe(measured, reg, timings)
        self._consider_repick(measured, reg, weight, metrics, timings)
        return self._record(measured, "stacked", None, metrics, timings)

    def _measure(self, frame: Frame) -> Measured:
        """Calibrate the frame, detect its stars and measure its quality; reads the session state only to
        know whether the phase-correlation image is needed."""
        timings: dict[str, float] = {}
        meta = frame.meta
        masters: tuple[str, ...] = ()
        notes: tuple[str, ...] = ()

        def early(reason: str) -> Measured:
            return Measured(path=frame.path, meta=meta, data=None, stars=None, quality=None, reason=reason,
                            masters=masters, notes=notes, pattern=None, small=None, timings=timings)

        t0 = time.perf_counter()
        try:
            data, meta, masters, notes, recipe = self._calibrate(frame)
        except AstrodError as err:
            timings["calibrate"] = _ms(t0)
            return early(f"calibration failed: {one_line(err)}")
        timings["calibrate"] = _ms(t0)

        if data.ndim not in (2, 3) or data.shape[-1] < 16 or data.shape[-2] < 16:
            return early(f"unsupported image shape {data.shape}")
        t0 = time.perf_counter()
        pattern = None
        if data.ndim == 2 and meta.bayer is not None:
            try:
                pattern = effective_pattern(meta.bayer, meta.bayer_offset)
            except ValueError as err:
                return early(f"cannot demosaic: {err}")
        h, w = data.shape[-2:]
        # Background meshes fine enough to follow vignetting on small frames, coarse (fast) on large ones.
        stars = detect_stars(data, bayer=pattern, max_stars=self.settings.max_stars,
                             threshold_sigma=self.settings.detection_sigma,
                             box=int(min(128, max(32, min(h, w) // 8))))
        background = estimate_background(data, box=int(min(256, max(32, min(h, w) // 8))), bayer=pattern)
        quality = measure_quality(data, stars, background, bayer=pattern)
        timings["detect"] = _ms(t0)

        small = None
        if self._ref is None or star_poor(len(stars), min_matches=self.settings.min_matches):
            # the reference's copy for the phase-correlation fallback, or this star-poor frame's own
            small = phase_image(data, cfa=pattern is not None)
        reason = "no stars detected" if quality.star_count == 0 or len(stars) == 0 else None
        return Measured(path=frame.path, meta=meta, data=data, stars=stars, quality=quality, reason=reason,
                        masters=masters, notes=notes, pattern=pattern, small=small, timings=timings, recipe=recipe)

    def _calibrate(self, frame: Frame) -> tuple[FloatArray, FrameMeta, tuple[str, ...], tuple[str, ...],
                                                CalibrationRecipe | None]:
        """The frame's calibrated pixels (float32), metadata, masters used, notes and how it was calibrated;
        raises `AstrodError`."""
        if self._calibrator is None:
            return np.asarray(frame.data, dtype=np.float32), frame.meta, (), (), None
        out = self._calibrator(frame)
        if isinstance(out, Calibrated):
            return np.asarray(out.frame.data, dtype=np.float32), out.frame.meta, out.masters, out.notes, out.recipe
        return np.asarray(out.data, dtype=np.float32), out.meta, (), (), None

    def _pixels_again(self, path: Path) -> FloatArray:
        """A two-pass stack's frame read and calibrated again (and demosaiced), as `_measure` and `_stack` had
        it; raises `AstrodError`."""
        assert self._reread is not None
        frame = self._reread(path)
        data, meta, _, _, _ = self._calibrate(frame)
        if data.ndim == 2 and meta.bayer is not None:
            return debayer(data, pattern=effective_pattern(meta.bayer, meta.bayer_offset))
        return data

    def _observe(self, measured: Measured, reg: Registration, timings: dict[str, float]) -> None:
        """Hand the stacked frame to the observer, with its transform onto the first reference's pixels."""
        if self._observer is None:
            return
        assert self._ref is not None and measured.data is not None
        assert measured.stars is not None and measured.quality is not None
        t0 = time.perf_counter()
        to_first = reg.transform.compose(self._ref.small_grid.inverse())
        self._observer(StackedFrame(path=measured.path, meta=measured.meta, data=measured.data, stars=measured.stars,
                                    quality=measured.quality, to_first=to_first, pattern=measured.pattern))
        timings["observe"] = _ms(t0)

    def _stack(self, measured: Measured, reg: Registration, weight: float, metrics: dict[str, Metric],
               timings: dict[str, float]) -> str | None:
        """Warp the frame onto the reference grid and add it to the stack, band by band; the reason it could
        not be (None: stacked)."""
        assert self._ref is not None and self._stacker is not None and measured.data is not None
        assert measured.quality is not None
        if self._deferred is not None:
            return self._defer(measured, reg, weight, metrics)
        t0 = time.perf_counter()
        data = measured.data
        pixels = debayer(data, pattern=measured.pattern) if measured.pattern is not None else data
        try:
            bands = warp_bands(pixels, reg.transform, shape=self._ref.frame_shape,
                               interpolation=self.settings.interpolation, band_rows=BAND_ROWS,
                               buffer=self._band_buffer())
        except ValueError as err:  # a degenerate fitted transform (a wild homography)
            return f"cannot warp: {one_line(err)}"
        debayer_ms = _ms(t0)

        # Flux is conserved: a frame whose pixels cover less sky (scale > 1) spreads each star over more
        # reference pixels than it had, and resampling alone would multiply its flux by that area ratio.
        scale = 1.0 / area_ratio(reg.transform, self._ref.frame_shape)
        offset = self._ref.background - measured.quality.background * scale
        # Warp and accumulate band by band (each band still in the CPU cache when it is added): the time
        # spent producing the bands is the warp's, writing them the cache's, the rest the accumulation's.
        spent = {"warp": 0.0, "cache": 0.0}
        cache_name = None
        with contextlib.ExitStack() as scope:
            sink = None
            if self._caching:
                assert self._cache_dir is not None
                cache_name = f"frame_{len(self._session.cached):06d}.npy"
                sink = scope.enter_context(CachedFrameWriter(self._cache_dir / cache_name, self._ref.stack_shape)).write
            t0 = time.perf_counter()
            self._stacker.add_bands(_metered(bands, spent, sink), weight, norm=(offset, scale))
            total = _ms(t0)
        del pixels
        timings["warp"] = debayer_ms + spent["warp"]
        timings["accumulate"] = total - spent["warp"] - spent["cache"]
        if cache_name is not None:
            timings["cache"] = spent["cache"]
            self._session.cached.append({"file": cache_name, "offset": offset, "scale": scale, "weight": weight})
        metrics["weight"] = weight
        return None

    def _defer(self, measured: Measured, reg: Registration, weight: float, metrics: dict[str, Metric]) -> str | None:
        """Pass one of a two-pass stack: the frame's registration and normalisation, kept for `finalize`."""
        assert self._ref is not None and self._deferred is not None and measured.quality is not None
        if measured.path is None:
            return "a two-pass stack needs frames read from files"
        try:
            check_grid(reg.transform, self._ref.frame_shape)  # what `_stack`'s warp would refuse
        except ValueError as err:
            return f"cannot warp: {one_line(err)}"
        scale = 1.0 / area_ratio(reg.transform, self._ref.frame_shape)
        offset = self._ref.background - measured.quality.background * scale
        data = measured.data
        assert data is not None
        self._deferred.add(DeferredFrame(
            path=measured.path, transform=reg.transform, offset=offset, scale=scale, weight=weight,
            rows=data.ndim == 2 and (self._calibrator is None or measured.recipe is not None),
            recipe=measured.recipe, pattern=measured.pattern, shape=(int(data.shape[-2]), int(data.shape[-1]))))
        metrics["weight"] = weight
        return None

    def _decide(self, measured: Measured,
                timings: dict[str, float]) -> tuple[Registration | None, str | None, float]:
        """The frame's registration, the reason it is rejected (None: to be stacked) and its transparency,
        against the session as it is now: the first frame with enough stars becomes the reference; any other
        is gated, registered, and gated again on its transparency."""
        reason = measured.reason
        q, stars, ref = measured.quality, measured.stars, self._ref
        if reason is not None:
            return None, reason, math.nan
        assert q is not None and stars is not None
        if ref is None:
            if len(stars) < self.settings.min_matches:
                return None, f"{len(stars)} stars measured, a reference frame needs {self.settings.min_matches}", \
                    math.nan
            self._set_reference(measured)
            return Registration(transform=Transform.identity(), matched=len(stars), residual_px=0.0,
                                method="stars"), None, 1.0
        planes, ref_planes = _planes(measured), (ref.stack_shape[0] if len(ref.stack_shape) == 3 else 1)
        if planes != ref_planes:
            return None, f"{planes}-plane frame in a session of {ref_planes}-plane frames", math.nan
        gates = self._gate_reasons(FrameFigures(q))
        if gates:
            return None, "; ".join(gates), math.nan
        t0 = time.perf_counter()
        try:
            reg = self._register(stars, measured.small, ref)
        except RegistrationError as err:
            found = register_otherwise(self._wcs_registrar, measured, one_line(err), ref, settings=self.settings)
            if isinstance(found, str):
                return None, found, math.nan
            reg = found
        finally:
            timings["register"] = _ms(t0)
        # Transparency needs the frame's stars on the reference's: judged once registered.
        transparency = flux_ratio(stars.xy, stars.flux, reg.transform, ref.asterisms.xy, ref.flux,
                                  radius=self.settings.match_radius_px)
        gates = self._gate_reasons(FrameFigures(q, transparency))
        if gates:
            return reg, "; ".join(gates), transparency
        return reg, None, transparency

    def forget_rejected(self, path: Path | None) -> bool:
        """The last frame's rejection taken back (see `Session.forget_rejected`)."""
        return self._session.forget_rejected(path)

    def reject(self, path: Path | None, reason: str) -> FrameResult:
        """Record a frame that never reached `prepare` (unreadable, not a light) in the frames table."""
        metrics: dict[str, Metric] = {name: None for name in TABLE_COLUMNS[3:]}
        result = FrameResult(path=path, status="rejected", reason=reason, metrics=metrics)
        self._session.rows.append(result.row())
        self._session.n_rejected += 1
        return result

    # ------------------------------------------------------------------------------------------- helpers

    def _gate_reasons(self, figures: FrameFigures) -> tuple[str, ...]:
        if not self._session.accepted:
            return ()
        return check_gates(figures, self.session_stats(), self.settings.gates)

    def _register(self, stars: StarList, small: FloatArray | None, ref: Reference) -> Registration:
        return register_onto(stars, small, ref, self.settings)

    def _set_reference(self, measured: Measured) -> None:
        assert measured.stars is not None and measured.data is not None and measured.quality is not None
        data = measured.data
        frame_shape = (int(data.shape[-2]), int(data.shape[-1]))
        if measured.pattern is not None:
            stack_shape: tuple[int, ...] = (3, *frame_shape)
        else:
            stack_shape = tuple(int(n) for n in data.shape)
        asterisms = build_reference(measured.stars, max_stars=self.settings.max_stars)
        flux = np.array(measured.stars.flux[: len(asterisms)], dtype=np.float64)
        small = measured.small if measured.small is not None else phase_image(data, cfa=measured.pattern is not None)
        q = measured.quality
        self._ref = Reference(id=1, path="" if measured.path is None else str(measured.path), asterisms=asterisms,
                               flux=flux, small=small, frame_shape=frame_shape, stack_shape=stack_shape,
                               background=q.background, noise=q.noise, fwhm=q.fwhm)
        self._stacker = Stacker(stack_shape, kappa=self.settings.kappa,
                                min_frames_for_rejection=self.settings.min_frames_for_rejection,
                                weighting=self.settings.weighting)
        if self._caching:
            assert self._cache_dir is not None
            ensure_folder(self._cache_dir)

    def _consider_repick(self, measured: Measured, reg: Registration, weight: float, metrics: dict[str, Metric],
                         timings: dict[str, float]) -> None:
        """Keep a frame just stacked as a candidate reference; once ``reference_repick_after`` frames are
        stacked, re-pick the reference among them (`_repick`), once per session. The frame's row is not in the
        table yet: its ``metrics`` are re-expressed in place."""
        s, after = self._session, self.settings.reference_repick_after
        if s.repicked or reg.method == "wcs":  # a frame matched only through plate solutions sets no grid
            return
        if after <= 1:  # disabled, or the reference would be picked among itself alone
            s.repicked, s.candidates = True, []
            return
        assert measured.stars is not None and measured.quality is not None and measured.data is not None
        q, stars, data = measured.quality, measured.stars, measured.data
        n = min(len(stars), self.settings.max_stars)
        s.candidates.append(Candidate(
            path="" if measured.path is None else str(measured.path), row=len(s.rows), transform=reg.transform,
            xy=np.array(stars.xy[:n], dtype=np.float64), flux=np.array(stars.flux[:n], dtype=np.float64),
            frame_shape=(int(data.shape[-2]), int(data.shape[-1])), weight=float(weight),
            figures=FrameFigures(q, _float_or_nan(metrics.get("transparency")))))
        if len(s.candidates) < after:
            return
        assert self._ref is not None and self._stacker is not None
        t0 = time.perf_counter()
        picked = repick(s, self._ref, self._stacker, self.settings, metrics,
                        cache_dir=self._cache_dir if self._caching else None, deferred=self._deferred)
        s.repicked, s.candidates = True, []
        if picked is not None:
            self._ref, self._warp_buffer = picked, None
            timings["repick"] = _ms(t0)
            metrics["reference_repicked"] = picked.path

    def _weight(self, q: FrameQuality, transparency: float) -> float:
        """The frame's weight relative to the reference: SNR (``transparency``: its stars' flux ratio to the
        reference's, 1 when unmeasured) or FWHM."""
        ref = self._ref
        assert ref is not None and self._stacker is not None
        if self._stacker.weighting == "none":  # a checkpoint's stacker keeps the weighting it was made with
            return 1.0
        try:
            if self.settings.weighting == "snr":
                ratio = transparency if math.isfinite(transparency) else 1.0
                return snr_weight(signal=ratio, noise=q.noise, ref_signal=1.0, ref_noise=ref.noise)
            if self.settings.weighting == "fwhm":
                return fwhm_weight(fwhm=q.fwhm, ref_fwhm=ref.fwhm)
        except ValueError:
            return 1.0  # a figure could not be measured: the frame counts as an average one
        return 1.0

    @property
    def _caching(self) -> bool:
        return self._cache_dir is not None and self.settings.final_rejection != "none" and self._deferred is None

    def _band_buffer(self) -> FloatArray:
        assert self._ref is not None
        if self._warp_buffer is None:
            planes = self._ref.stack_shape[0] if len(self._ref.stack_shape) == 3 else 1
            self._warp_buffer = np.empty(planes * BAND_ROWS * self._ref.frame_shape[1], dtype=np.float32)
        return self._warp_buffer

    def _record(self, measured: Measured, status: Literal["stacked", "rejected"], reason: str | None,
                metrics: dict[str, Metric], timings: Mapping[str, float]) -> FrameResult:
        for stage, ms in timings.items():
            metrics[f"ms_{stage}"] = round(ms, 3)
        metrics["date_obs"] = utc_stamp(measured.meta.date_obs)  # the report plots figures against it
        result = FrameResult(path=measured.path, status=status, reason=reason, metrics=metrics)
        s = self._session
        s.rows.append(result.row())
        if status == "stacked":
            s.count_stacked(measured.meta, masters=measured.masters, notes=measured.notes)
        else:
            s.n_rejected += 1
        return result

    # ------------------------------------------------------------------------------------------- outputs

    def preview(self, *, max_size: int = 1600) -> tuple[FloatArray, npt.NDArray[np.uint8]]:
        """The current stack reduced so its longer side is at most ``max_size`` px: linear float32, and
        auto-stretched uint8 ((H, W) grey or (H, W, 3) RGB, colour calibrated with ``preview_balance``)."""
        if self._stacker is None or self._ref is None:
            raise AstrodError("no frame has been stacked yet: there is no preview")
        mean = self._stacker.state()["mean"]
        h, w = self._ref.frame_shape
        factor = max(1, math.ceil(max(h, w) / max(1, max_size)))
        small = downsample(np.asarray(mean, dtype=np.float32), factor)
        picture, self.preview_balance = preview_picture(small, colour=self.settings.finish.colour)
        return small, picture

    def finalize(self, *, last: bool = False) -> StackProduct:
        """The stack with its provenance: the live stack, or the full re-integration of the cached frames.

        The product's ``count`` map is a read-only view of the live one (not a 52 MB copy at 26 MP): it
        follows any frame added afterwards; the image is the product's own. ``last``: nothing is asked of this
        stack afterwards (`astrod stack`), so a re-integration first lets the live state go (416 MB at 26 MP
        mono) instead of holding it beside its own."""
        stacker = self._stacker
        if stacker is None or self._ref is None or self._session.n_stacked == 0:
            raise AstrodError("no frame was stacked: nothing to finalize")
        s = self._session
        history: list[str] = []
        method = "mean" if not math.isfinite(self.settings.kappa) else "online-sigma"
        result = None
        if self._deferred is not None:
            kappa = self.settings.kappa if math.isfinite(self.settings.kappa) else 3.0
            try:
                result = self._deferred.integrate(
                    stack_shape=self._ref.stack_shape, interpolation=self.settings.interpolation,
                    method=self.settings.final_rejection, kappa=kappa, weighted=self.settings.weighting != "none",
                    memory_bytes=self.settings.final_memory_bytes)
            except ValueError as err:
                raise AstrodError(f"cannot integrate the stack: {one_line(err)}") from err
            method = self.settings.final_rejection
        elif self.settings.final_rejection != "none":
            if self._caching and len(s.cached) == s.n_stacked and self._cache_complete():
                if last:
                    self._stacker = stacker = None
                result = self._reintegrate()
                method = self.settings.final_rejection
            else:
                history.append(f"{self.settings.final_rejection} re-integration impossible (registered "
                               "frames not cached): the live online-sigma stack is given")
        if result is None:
            assert stacker is not None
            result = stacker.finalize(copy_maps=False)
        built = stack_cards(s, self.settings, reference=self._ref, method=method, notes=tuple(history))
        return StackProduct(image=result.image, header=built.cards, rows=self.rows, history=built.history,
                            count=result.count, masters=tuple(s.masters))

    def _cache_complete(self) -> bool:
        assert self._cache_dir is not None
        return all((self._cache_dir / str(c["file"])).is_file() for c in self._session.cached)

    def _reintegrate(self) -> Any:
        assert self._cache_dir is not None and self._ref is not None
        files = [self._cache_dir / str(c["file"]) for c in self._session.cached]
        shape = self._ref.stack_shape

        def read_band(row0: int, row1: int) -> FloatArray:
            band = np.empty((len(files), *shape[:-2], row1 - row0, shape[-1]), dtype=np.float32)
            for i, path in enumerate(files):
                band[i] = read_cached_rows(path, row0, row1)
            return band

        weights = [float(c["weight"]) for c in self._session.cached]
        norms = [(float(c["offset"]), float(c["scale"])) for c in self._session.cached]
        return integrate_bands(read_band, len(files), shape, method=self.settings.final_rejection,
                               kappa_low=self.settings.kappa if math.isfinite(self.settings.kappa) else 3.0,
                               kappa_high=self.settings.kappa if math.isfinite(self.settings.kappa) else 3.0,
                               weights=weights if self.settings.weighting != "none" else None, norms=norms,
                               memory_cap_bytes=self.settings.final_memory_bytes)

    # ------------------------------------------------------------------------------------------- state

    def save(self, path: Path, *, extra: Mapping[str, Any] | None = None) -> None:
        """Write the whole session state to ``path`` atomically (see `load`, `astrod.pipeline.state`)."""
        if self._deferred is not None:
            raise AstrodError("a two-pass stack has no live state to checkpoint")
        save_state(path, stacker=self._stacker, reference=self._ref, session=self._session,
                   settings=self.settings.as_dict(), extra=extra)
        if self._session.stale_cache and self._cache_dir is not None:
            # the checkpoint just written names the re-warped files only: the old ones can go
            remove_cached_frames([self._cache_dir / name for name in self._session.stale_cache])
            self._session.stale_cache = []

    @classmethod
    def load(cls, path: Path, settings: PipelineSettings, *, calibrator: Calibrator | None = None,
             cache_dir: Path | None = None, observer: FrameObserver | None = None,
             wcs_registrar: WcsRegistrar | None = None) -> LiveStack:
        """A stack restored from `save`: adding the same frames next gives what an uninterrupted run gives
        (bit for bit), given the same ``settings``."""
        stack = cls(settings, calibrator=calibrator, cache_dir=cache_dir, observer=observer,
                    wcs_registrar=wcs_registrar)
        restored = load_state(path)
        stack._stacker, stack._ref = restored.stacker, restored.reference
        stack._session, stack._extra = restored.session, restored.extra
        return stack


# ------------------------------------------------------------------------------------------------ functions


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


Band = tuple[int, FloatArray]


def _metered(bands: Iterator[Band], spent: dict[str, float],
             sink: Callable[[int, FloatArray], None] | None) -> Iterator[Band]:
    """The bands, each handed to ``sink`` first when there is one; ms spent producing them are added to
    ``spent["warp"]``, ms in ``sink`` to ``spent["cache"]``."""
    while True:
        t0 = time.perf_counter()
        item = next(bands, None)
        spent["warp"] += _ms(t0)
        if item is None:
            return
        if sink is not None:
            t0 = time.perf_counter()
            sink(*item)
            spent["cache"] += _ms(t0)
        yield item


def _num(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _planes(measured: Measured) -> int:
    """Planes the frame will have on the reference grid: 3 for a CFA frame (demosaiced), else its own."""
    if measured.pattern is not None:
        return 3
    return 1 if measured.data is None or measured.data.ndim == 2 else int(measured.data.shape[0])


def _float_or_nan(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan
