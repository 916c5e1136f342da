"""The per-frame pipeline of a session: calibrate, measure, gate, register, warp, accumulate; checkpoint; finalize.

One `LiveStack` per session. A frame goes through two public stages so the service layer can overlap them
(read and prepare frame N+1 while frame N is being accumulated); each stage is single-threaded code over the
multi-threaded kernels of `astrod.core`:

``prepare(frame)``
    calibrate (the injected calibrator), detect stars, measure quality (FWHM, eccentricity, star count,
    background, noise), apply the gates against the session's figures as they are, register onto the
    reference's stars. It only *reads* the session state, so it may run while ``accumulate`` runs.
``accumulate(prepared)``
    decides: the gates are evaluated again against the session's figures at this moment (they only depend on
    frames accumulated before, so a pipelined run gives what a serial one gives), the first frame with enough
    stars becomes the reference, a frame prepared before the reference existed is registered now; then
    demosaic (colour), warp onto the reference grid, and add to the `Stacker` with its normalisation offset
    and weight.

``process(frame) = accumulate(prepare(frame))``. A bad frame never raises: it comes back ``rejected`` with a
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
from astropy.io import fits

from astrod import __version__
from astrod.config import Config
from astrod.core.debayer import debayer, effective_pattern
from astrod.core.quality import FrameQuality, measure_quality
from astrod.core.quality_gates import FrameFigures, GateThresholds, SessionStats, check_gates, flux_ratio
from astrod.core.register import ReferenceAsterisms, Registration, build_reference, find_transform, register
from astrod.core.stack import Rejection, Stacker, Weighting, fwhm_weight, integrate_bands, snr_weight
from astrod.core.stars import StarList, detect_stars, estimate_background
from astrod.core.stretch import auto_stretch, downsample
from astrod.core.warp import Interpolation, warp_bands
from astrod.errors import AstrodError, RegistrationError
from astrod.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from astrod.io.fits import write_fits
from astrod.io.frame_cache import CachedFrameWriter, read_cached_rows, remove_cached_frames, rewarp_cached_frame
from astrod.io.previews import write_frames_table, write_preview
from astrod.library.keys import ascii_text
from astrod.model import Frame, FrameMeta, Transform

FloatArray = npt.NDArray[np.float32]
Model = Literal["similarity", "affine", "homography"]
Metric = float | int | str | None

TABLE_COLUMNS = ("path", "status", "reason", "dx", "dy", "rotation_deg", "scale", "residual_px", "stars", "fwhm",
                 "fwhm_err", "eccentricity", "eccentricity_err", "shape_stars", "background", "noise",
                 "transparency", "weight")
# The figures the quality gates judge a frame by, per accepted frame, as the checkpoint stores them.
_ACCEPTED_COLUMNS = ("fwhm", "fwhm_err", "eccentricity", "eccentricity_err", "shape_stars", "star_count",
                     "background", "noise", "hfr", "transparency")
STAGES = ("calibrate", "detect", "register", "warp", "accumulate", "cache")
_MODEL_POINTS = {"similarity": 2, "affine": 3, "homography": 4}
_STATE_FORMAT = 1
_BAND_ROWS = 128  # rows warped and accumulated at a time: 3.2 MB of a 26 MP mono frame
_PHASE_MAX_PIXELS = 4_000_000  # the most pixels the image kept for phase correlation has (16 MB)


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """What the per-frame pipeline needs from the configuration (``[stack]`` and ``[quality]``).

    ``kappa`` is the online κσ rejection threshold (``math.inf``: plain mean); ``final_rejection`` the full
    re-integration ``finalize`` runs from the cached registered frames (``"none"``: the live stack is final).
    ``min_stars`` is both the fewest stars a reference frame may have and the fewest matched stars that
    register a frame. ``final_memory_bytes`` caps one band of the final re-integration.
    ``reference_repick_after``: once that many frames are stacked, the session's reference becomes the best
    of them (the most stars per px of FWHM) when it scores ``reference_repick_margin`` times the reference's
    score or more, once per session (0: never; see `LiveStack`).
    """

    kappa: float = 3.0
    weighting: Weighting = "snr"
    transform: Model = "similarity"
    min_stars: int = 8
    final_rejection: Rejection = "none"
    gates: GateThresholds = field(default_factory=GateThresholds)
    min_frames_for_rejection: int = 5
    max_stars: int = 300
    detection_sigma: float = 5.0
    match_radius_px: float = 2.0
    interpolation: Interpolation = "linear"
    final_memory_bytes: int = 256 * 2**20
    reference_repick_after: int = 5
    reference_repick_margin: float = 1.25
    preview_every_frames: int = 5
    preview_every_seconds: float = 60.0

    @classmethod
    def from_config(cls, config: Config) -> PipelineSettings:
        s, q = config.stack, config.quality
        return cls(kappa=s.kappa, weighting=s.weighting, transform=s.transform,  # type: ignore[arg-type]
                   min_stars=s.min_stars, final_rejection=s.final_rejection,  # type: ignore[arg-type]
                   gates=GateThresholds(
                       margin_sigma=q.margin_sigma, min_frames=q.min_frames, max_fwhm_ratio=q.max_fwhm_ratio,
                       max_axis_ratio_drop=q.max_axis_ratio_drop, min_star_ratio=q.min_star_ratio,
                       min_transparency_ratio=q.min_transparency_ratio,
                       max_background_ratio=q.max_background_ratio, collapse_star_ratio=q.collapse_star_ratio,
                       max_fwhm_px=q.max_fwhm_px, max_eccentricity=q.max_eccentricity,
                       min_star_count=q.min_star_count),
                   reference_repick_after=s.reference_repick_after,
                   reference_repick_margin=s.reference_repick_margin,
                   preview_every_frames=s.preview_every_frames, preview_every_seconds=s.preview_every_seconds)

    @property
    def min_matches(self) -> int:
        """Matched stars needed to register: ``min_stars``, but never fewer than the model can be fitted from."""
        return max(self.min_stars, _MODEL_POINTS[self.transform] + 1)

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["gates"] = {name: getattr(self.gates, name) for name in self.gates.__dataclass_fields__}
        return out


@dataclass(frozen=True, slots=True, eq=False)
class Calibrated:
    """What a calibrator may return instead of a bare `Frame`: the frame and the masters that made it."""

    frame: Frame
    masters: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


Calibrator = Callable[[Frame], Frame | Calibrated]


@dataclass(frozen=True, slots=True)
class FrameResult:
    """What happened to one frame: ``stacked`` or ``rejected`` (with a one-line ``reason``), and its figures.

    ``metrics`` holds the frames-table columns (``dx dy rotation_deg scale residual_px stars fwhm eccentricity
    background noise weight``; None where unknown) and the time of each stage in ms (``ms_<stage>``).
    """

    path: Path | None
    status: Literal["stacked", "rejected"]
    reason: str | None
    metrics: Mapping[str, Metric]

    def row(self) -> dict[str, object]:
        """The frames-table row: path, status, reason and the figures, in `TABLE_COLUMNS` order."""
        out: dict[str, object] = {"path": "" if self.path is None else str(self.path), "status": self.status,
                                  "reason": self.reason}
        for name in TABLE_COLUMNS[3:]:
            out[name] = self.metrics.get(name)
        return out


@dataclass(frozen=True, slots=True, eq=False)
class Prepared:
    """A frame after `LiveStack.prepare`: calibrated pixels, stars, quality, and its registration (or why it
    failed) against the reference of the time (``reference_id``; 0: none yet). ``reason`` set: rejected for
    good, whatever the session."""

    path: Path | None
    meta: FrameMeta
    data: FloatArray | None
    stars: StarList | None
    quality: FrameQuality | None
    registration: Registration | None
    registration_error: str | None
    reference_id: int
    reason: str | None
    masters: tuple[str, ...]
    notes: tuple[str, ...]
    pattern: str | None
    small: FloatArray | None
    timings: Mapping[str, float]


@dataclass(frozen=True, slots=True, eq=False)
class StackProduct:
    """A finished stack: float32 (H, W) or (3, H, W) in R, G, B order, NaN where no frame covered; header cards
    (key -> (value, comment)); HISTORY lines; the frames table; the per-pixel count of frames used; and the
    file names of the calibration masters used."""

    image: FloatArray
    header: dict[str, tuple[Any, str]]
    rows: list[dict[str, object]]
    history: tuple[str, ...] = ()
    count: npt.NDArray[np.uint16] | None = None
    masters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class _Reference:
    """The session reference: its stars (matching side precomputed), its figures and grid.

    ``small`` is the image phase correlation uses: the first reference's, which ``small_grid`` maps (its
    frame's pixels) onto this reference's grid; identity until the reference is re-picked."""

    id: int
    path: str
    asterisms: ReferenceAsterisms
    flux: npt.NDArray[np.float64]
    small: FloatArray | None
    frame_shape: tuple[int, int]
    stack_shape: tuple[int, ...]
    background: float
    noise: float
    fwhm: float
    small_grid: Transform = field(default_factory=Transform.identity)


@dataclass(frozen=True, slots=True, eq=False)
class _Candidate:
    """A stacked frame the reference may be re-picked from: what becoming the reference needs (its stars,
    figures, weight and transform onto the reference of the time) and where its traces are (its row in the
    frames table). A few hundred stars: a few KB, kept only until the re-pick."""

    path: str
    row: int
    transform: Transform
    xy: npt.NDArray[np.float64]
    flux: npt.NDArray[np.float64]
    frame_shape: tuple[int, int]
    weight: float
    figures: FrameFigures  # what the gates judged it by

    @property
    def fwhm(self) -> float:
        return self.figures.quality.fwhm

    @property
    def stars(self) -> int:
        return self.figures.quality.star_count

    @property
    def score(self) -> float:
        """Stars detected per px of FWHM, higher is better (-inf when the FWHM is unknown)."""
        if not (math.isfinite(self.fwhm) and self.fwhm > 0.0):
            return -math.inf
        return self.stars / self.fwhm


@dataclass(slots=True)
class _Session:
    """Mutable per-session bookkeeping that is not pixels (all of it goes into the checkpoint)."""

    rows: list[dict[str, object]] = field(default_factory=list)
    accepted: list[FrameFigures] = field(default_factory=list)  # what the gates judge the next frame by
    cached: list[dict[str, Any]] = field(default_factory=list)  # file, offset, weight per stacked frame
    masters: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_stacked: int = 0
    n_rejected: int = 0
    total_exposure: float = 0.0
    first_meta: dict[str, Any] = field(default_factory=dict)
    date_first: str | None = None
    date_last: str | None = None
    candidates: list[_Candidate] = field(default_factory=list)  # stacked frames until the reference re-pick
    repicked: bool = False  # the re-pick is done (or was not needed): candidates are no longer kept
    stale_cache: list[str] = field(default_factory=list)  # cached files re-warped away, deleted at the next save


class LiveStack:
    """The live stack of one session; see the module docstring for the stages.

    ``calibrator`` turns a raw frame into a calibrated one (or a `Calibrated`); it may raise `AstrodError`
    for a frame it cannot calibrate. It may calibrate into the frame's own array, or reuse one output buffer,
    only when ``prepare`` and ``accumulate`` are not overlapped (the prepared frame holds the calibrated pixels
    until it is accumulated).
    ``cache_dir`` receives the registered frames when ``settings.final_rejection`` is not ``"none"`` (one
    float32 ``.npy`` per stacked frame).

    Concurrency: ``prepare`` may run in one thread while ``accumulate`` runs in another; ``accumulate``,
    ``reject``, ``save``, ``preview`` and ``finalize`` must not run at the same time as each other.
    """

    def __init__(self, settings: PipelineSettings, *, calibrator: Calibrator | None = None,
                 cache_dir: Path | None = None) -> None:
        if settings.transform not in _MODEL_POINTS:
            raise ValueError(f"unknown registration model {settings.transform!r}")
        self.settings = settings
        self._calibrator = calibrator
        self._cache_dir = None if cache_dir is None else Path(cache_dir)
        self._stacker: Stacker | None = None
        self._ref: _Reference | None = None
        self._session = _Session()
        self._warp_buffer: FloatArray | None = None
        self._extra: dict[str, Any] = {}

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
        """``accumulate(prepare(frame))``."""
        return self.accumulate(self.prepare(frame))

    def prepare(self, frame: Frame) -> Prepared:
        """Calibrate, detect, measure, gate and register one frame; reads the session state, never changes it."""
        timings: dict[str, float] = {}
        ref = self._ref
        ref_id = 0 if ref is None else ref.id
        meta = frame.meta
        masters: tuple[str, ...] = ()
        notes: tuple[str, ...] = ()

        def early(reason: str, **kw: Any) -> Prepared:
            base: dict[str, Any] = {"data": None, "stars": None, "quality": None, "registration": None,
                                    "registration_error": None, "pattern": None, "small": None}
            base.update(kw)
            return Prepared(path=frame.path, meta=meta, reference_id=ref_id, reason=reason, masters=masters,
                            notes=notes, timings=timings, **base)

        t0 = time.perf_counter()
        if self._calibrator is not None:
            try:
                out = self._calibrator(frame)
            except AstrodError as err:
                timings["calibrate"] = _ms(t0)
                return early(f"calibration failed: {_one_line(err)}")
            if isinstance(out, Calibrated):
                masters, notes = out.masters, out.notes
                out = out.frame
            meta = out.meta
            data = np.asarray(out.data, dtype=np.float32)
        else:
            data = np.asarray(frame.data, dtype=np.float32)
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
        if ref is None or len(stars) < 2 * self.settings.min_matches:
            # the reference's copy for the phase-correlation fallback, or this star-poor frame's own
            small = _phase_image(data, cfa=pattern is not None)
        registration = None
        registration_error = None
        reason = "no stars detected" if quality.star_count == 0 or len(stars) == 0 else None
        if reason is None and ref is not None and not self._gate_reasons(FrameFigures(quality)):
            t0 = time.perf_counter()
            try:
                registration = self._register(stars, small, ref)
            except RegistrationError as err:
                registration_error = _one_line(err)
            timings["register"] = _ms(t0)
        return Prepared(path=frame.path, meta=meta, data=data, stars=stars, quality=quality,
                        registration=registration, registration_error=registration_error, reference_id=ref_id,
                        reason=reason, masters=masters, notes=notes, pattern=pattern, small=small, timings=timings)

    def accumulate(self, prepared: Prepared) -> FrameResult:
        """Decide on a prepared frame (gates, reference, registration) and add it to the stack."""
        timings = dict(prepared.timings)
        metrics: dict[str, Metric] = {name: None for name in TABLE_COLUMNS[3:]}
        q = prepared.quality
        if q is not None:
            metrics.update(stars=q.star_count, fwhm=_num(q.fwhm), fwhm_err=_num(q.fwhm_err),
                           eccentricity=_num(q.eccentricity), eccentricity_err=_num(q.eccentricity_err),
                           shape_stars=q.shape_stars, background=_num(q.background), noise=_num(q.noise))
        reason = prepared.reason
        reg: Registration | None = None
        data, stars, ref = prepared.data, prepared.stars, self._ref
        transparency = math.nan
        if reason is None:
            assert q is not None and stars is not None and data is not None
            if ref is None:
                if len(stars) < self.settings.min_matches:
                    reason = f"{len(stars)} stars measured, a reference frame needs {self.settings.min_matches}"
                else:
                    self._set_reference(prepared)
                    reg = Registration(transform=Transform.identity(), matched=len(stars), residual_px=0.0,
                                       method="stars")
                    transparency = 1.0
            elif _planes(prepared) != (ref.stack_shape[0] if len(ref.stack_shape) == 3 else 1):
                reason = (f"{_planes(prepared)}-plane frame in a session of "
                          f"{ref.stack_shape[0] if len(ref.stack_shape) == 3 else 1}-plane frames")
            else:
                gates = self._gate_reasons(FrameFigures(q))
                if gates:
                    reason = "; ".join(gates)
                elif prepared.reference_id == ref.id:
                    reg, reason = prepared.registration, prepared.registration_error
                if reason is None and reg is None:
                    t0 = time.perf_counter()
                    try:
                        reg = self._register(stars, prepared.small, ref)
                    except RegistrationError as err:
                        reason = _one_line(err)
                    timings["register"] = timings.get("register", 0.0) + _ms(t0)
                if reason is None and reg is not None:
                    # Transparency needs the frame's stars on the reference's: judged once registered.
                    transparency = flux_ratio(stars.xy, stars.flux, reg.transform, ref.asterisms.xy, ref.flux,
                                              radius=self.settings.match_radius_px)
                    gates = self._gate_reasons(FrameFigures(q, transparency))
                    if gates:
                        reason = "; ".join(gates)
        metrics["transparency"] = _num(transparency)
        if reg is not None:
            t = reg.transform
            metrics.update(dx=t.dx, dy=t.dy, rotation_deg=t.rotation_deg, scale=t.scale,
                           residual_px=_num(reg.residual_px))
        if reason is not None or data is None or reg is None:
            return self._record(prepared, "rejected", reason or "not registered", metrics, timings)
        assert self._ref is not None and self._stacker is not None and q is not None

        t0 = time.perf_counter()
        pixels = debayer(data, pattern=prepared.pattern) if prepared.pattern is not None else data
        try:
            bands = warp_bands(pixels, reg.transform, shape=self._ref.frame_shape,
                               interpolation=self.settings.interpolation, band_rows=_BAND_ROWS,
                               buffer=self._band_buffer())
        except ValueError as err:  # a degenerate fitted transform (a wild homography)
            return self._record(prepared, "rejected", f"cannot warp: {_one_line(err)}", metrics, timings)
        debayer_ms = _ms(t0)

        weight = self._weight(q, transparency)
        if self._stacker.weighting == "none":
            weight = 1.0
        # Flux is conserved: a frame whose pixels cover less sky (scale > 1) spreads each star over more
        # reference pixels than it had, and resampling alone would multiply its flux by that area ratio.
        scale = 1.0 / _area_ratio(reg.transform, self._ref.frame_shape)
        offset = self._ref.background - q.background * scale
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
        metrics["weight"] = weight
        if cache_name is not None:
            self._session.cached.append({"file": cache_name, "offset": offset, "scale": scale, "weight": weight})
        self._session.accepted.append(FrameFigures(q, transparency))
        self._consider_repick(prepared, reg, weight, metrics, timings)
        return self._record(prepared, "stacked", None, metrics, timings)

    def reject(self, path: Path | None, reason: str) -> FrameResult:
        """Record a frame that never reached `prepare` (unreadable, not a light) in the frames table."""
        metrics: dict[str, Metric] = {name: None for name in TABLE_COLUMNS[3:]}
        result = FrameResult(path=path, status="rejected", reason=reason, metrics=metrics)
        self._session.rows.append(result.row())
        self._session.n_rejected += 1
        return result

    def note_rejected(self, path: Path | None, reason: str) -> FrameResult:
        """The same as `reject` (the name the service layer uses)."""
        return self.reject(path, reason)

    # ------------------------------------------------------------------------------------------- helpers

    def _gate_reasons(self, figures: FrameFigures) -> tuple[str, ...]:
        if not self._session.accepted:
            return ()
        return check_gates(figures, self.session_stats(), self.settings.gates)

    def _register(self, stars: StarList, small: FloatArray | None, ref: _Reference) -> Registration:
        s = self.settings
        try:
            return find_transform(stars, ref.asterisms, model=s.transform, min_matches=s.min_matches,
                                  match_radius_px=s.match_radius_px)
        except RegistrationError:
            if small is None or ref.small is None or small.shape != ref.small.shape \
                    or len(stars) >= 2 * s.min_matches:
                raise
        # Phase correlation of the (possibly 2×2-binned) images; the stars the frame has polish the shift.
        # ``ref.small`` is the first reference's: after a re-pick the reference stars are taken back to its
        # grid and the transform found onto it is carried on to the reference's by ``small_grid``.
        f = max(1, ref.frame_shape[1] // ref.small.shape[1])
        to_full = np.array([[f, 0.0, (f - 1) / 2], [0.0, f, (f - 1) / 2], [0.0, 0.0, 1.0]])
        to_small = Transform.from_array(np.linalg.inv(to_full))
        regridded = ref.small_grid != Transform.identity()
        ref_xy = ref.small_grid.inverse().apply(ref.asterisms.xy) if regridded else ref.asterisms.xy
        src = to_small.apply(stars.xy) if len(stars) else np.empty((0, 2))
        found = register(src, to_small.apply(ref_xy), image=small, reference_image=ref.small,
                         model=s.transform, min_matches=s.min_matches,
                         match_radius_px=max(1.0, s.match_radius_px / f), downsample=2)
        full = to_full @ found.transform.as_array() @ np.linalg.inv(to_full)
        if regridded:
            full = ref.small_grid.as_array() @ full
        return replace(found, transform=Transform.from_array(full),
                       residual_px=found.residual_px * f if math.isfinite(found.residual_px) else math.nan)

    def _set_reference(self, prepared: Prepared) -> None:
        assert prepared.stars is not None and prepared.data is not None and prepared.quality is not None
        data = prepared.data
        frame_shape = (int(data.shape[-2]), int(data.shape[-1]))
        if prepared.pattern is not None:
            stack_shape: tuple[int, ...] = (3, *frame_shape)
        else:
            stack_shape = tuple(int(n) for n in data.shape)
        asterisms = build_reference(prepared.stars, max_stars=self.settings.max_stars)
        flux = np.array(prepared.stars.flux[: len(asterisms)], dtype=np.float64)
        small = prepared.small if prepared.small is not None else _phase_image(data, cfa=prepared.pattern is not None)
        q = prepared.quality
        self._ref = _Reference(id=1, path="" if prepared.path is None else str(prepared.path), asterisms=asterisms,
                               flux=flux, small=small, frame_shape=frame_shape, stack_shape=stack_shape,
                               background=q.background, noise=q.noise, fwhm=q.fwhm)
        self._stacker = Stacker(stack_shape, kappa=self.settings.kappa,
                                min_frames_for_rejection=self.settings.min_frames_for_rejection,
                                weighting=self.settings.weighting)
        if self._caching:
            assert self._cache_dir is not None
            self._cache_dir.mkdir(parents=True, exist_ok=True)

    def _consider_repick(self, prepared: Prepared, reg: Registration, weight: float, metrics: dict[str, Metric],
                         timings: dict[str, float]) -> None:
        """Keep a frame just stacked as a candidate reference; once ``reference_repick_after`` frames are
        stacked, re-pick the reference among them (`_repick`), once per session. The frame's row is not in the
        table yet: its ``metrics`` are re-expressed in place."""
        s, after = self._session, self.settings.reference_repick_after
        if s.repicked:
            return
        if after <= 1:  # disabled, or the reference would be picked among itself alone
            s.repicked, s.candidates = True, []
            return
        assert prepared.stars is not None and prepared.quality is not None and prepared.data is not None
        q, stars, data = prepared.quality, prepared.stars, prepared.data
        n = min(len(stars), self.settings.max_stars)
        s.candidates.append(_Candidate(
            path="" if prepared.path is None else str(prepared.path), row=len(s.rows), transform=reg.transform,
            xy=np.array(stars.xy[:n], dtype=np.float64), flux=np.array(stars.flux[:n], dtype=np.float64),
            frame_shape=(int(data.shape[-2]), int(data.shape[-1])), weight=float(weight),
            figures=FrameFigures(q, _float_or_nan(metrics.get("transparency")))))
        if len(s.candidates) < after:
            return
        t0 = time.perf_counter()
        picked = self._repick(metrics)
        s.repicked, s.candidates = True, []
        if picked is not None:
            timings["repick"] = _ms(t0)
            metrics["reference_repicked"] = picked

    def _repick(self, metrics: dict[str, Metric]) -> str | None:
        """Make the best candidate the reference when it beats the current one by the margin; returns its path.

        Best: the most stars detected per px of FWHM (``_Candidate.score``): both fall with defocus, bad seeing
        or haze, and their ratio rewards the sharp, deep frame whose stars register the others best; an
        unknown FWHM never wins. The margin keeps a session of equally good frames on its first reference (a
        re-pick costs a second interpolation of the frames stacked so far).

        Everything stacked is moved onto the new reference's grid through ``to_new`` (old grid → new grid, the
        inverse of the best frame's transform onto the old reference; transforms compose):

        * the live stack (`Stacker.regrid`), its values mapped as a frame's are in `accumulate`: divided by
          the area ratio of ``to_new`` (flux conserved) and shifted from the old reference's sky onto the new
          one's (additive normalisation), so every frame stacked so far is, up to interpolation, normalised as
          if registered onto the new reference from the start;
        * the weights: SNR weights are ((transparency / noise) / (1 / noise_ref))² with transparency measured
          on the reference's stars, FWHM weights (FWHM_ref / FWHM)², so a frame's weight relative to the new
          reference is its weight relative to the old one divided by the new reference's (w_i / w_best, up to
          the median of the star-flux ratios): the weight sums (and M2, which is weight-scaled) are divided by
          w_best, and so are the cached frames' weights and the table's weight column;
        * transparency (a frame's star flux against the reference's) is divided by the new reference's, in
          the frames table and in the figures the gates judge the next frames by;
        * the cached registered frames (re-warped into new files, their norms composed) and the frames-table
          rows (transforms composed, residuals measured against the new reference's stars).
        """
        s, ref, stacker = self._session, self._ref, self._stacker
        assert ref is not None and stacker is not None
        cands = s.candidates
        if not cands or cands[0].path != ref.path or cands[0].transform != Transform.identity():
            return None  # the candidates do not start with the reference (a state from elsewhere): keep it
        scores = [c.score for c in cands]
        best = max(range(len(cands)), key=lambda i: (scores[i], -i))
        current = cands[0]
        if best == 0 or scores[best] == -math.inf:
            return None
        if math.isfinite(scores[0]) and scores[best] < self.settings.reference_repick_margin * scores[0]:
            return None
        b = cands[best]
        to_new = b.transform.inverse()
        k = 1.0 / _area_ratio(to_new, ref.frame_shape)
        bq, b_transparency = b.figures.quality, b.figures.transparency
        c = bq.background - ref.background * k
        f = 1.0 / b.weight if stacker.weighting != "none" and b.weight > 0.0 else 1.0
        rescale_transparency = math.isfinite(b_transparency) and b_transparency > 0.0
        stack_shape = (*ref.stack_shape[:-2], *b.frame_shape)
        stacker.regrid(to_new, shape=b.frame_shape, norm=(c, k), weight_scale=f)
        new_id = ref.id + 1
        asterisms = build_reference(b.xy, max_stars=max(1, b.xy.shape[0]))
        self._ref = _Reference(id=new_id, path=b.path, asterisms=asterisms,
                               flux=np.array(b.flux[: len(asterisms)], dtype=np.float64), small=ref.small,
                               frame_shape=b.frame_shape, stack_shape=stack_shape, background=bq.background,
                               noise=bq.noise, fwhm=bq.fwhm, small_grid=ref.small_grid.compose(to_new))
        self._warp_buffer = None
        if self._caching:
            self._rewarp_cache(to_new, stack_shape, new_id=new_id, norm=(c, k), weight_scale=f)
        for i, cand in enumerate(cands):
            row: dict[str, Any] = s.rows[cand.row] if cand.row < len(s.rows) else metrics
            t = Transform.identity() if i == best else cand.transform.compose(to_new)
            residual = row.get("residual_px")
            if i == best:
                residual = 0.0
            elif residual is not None:
                residual = _match_rms(t.apply(cand.xy), self._ref.asterisms, self.settings.match_radius_px)
            weight, transparency = row.get("weight"), row.get("transparency")
            row.update(dx=t.dx, dy=t.dy, rotation_deg=t.rotation_deg, scale=t.scale, residual_px=residual,
                       weight=None if weight is None else float(weight) * f)
            if transparency is not None and rescale_transparency:
                row["transparency"] = float(transparency) / b_transparency
        if rescale_transparency:
            # the gates' figures too: the next frames' transparency is measured on the new reference's stars
            s.accepted = [replace(a, transparency=a.transparency / b_transparency) for a in s.accepted]
        s.notes.append(f"reference re-picked: {Path(b.path).name} (FWHM {b.fwhm:.2f}, {b.stars} stars) replaces "
                       f"{Path(current.path).name} (FWHM {current.fwhm:.2f}, {current.stars} stars)")
        return b.path

    def _rewarp_cache(self, to_new: Transform, stack_shape: tuple[int, ...], *, new_id: int,
                      norm: tuple[float, float], weight_scale: float) -> None:
        """Re-warp the cached frames onto the new reference's grid into new files and compose their norms and
        weights as `_repick` does the live stack's; the old files are deleted at the next `save`. A frame that
        cannot be re-warped is left out of the cache (the final re-integration then gives way to the live
        stack), with a note."""
        assert self._cache_dir is not None
        c, k = norm
        s = self._session
        for entry in s.cached:
            old = str(entry["file"])
            new = f"{Path(old).stem}_ref{new_id}.npy"
            try:
                rewarp_cached_frame(self._cache_dir / old, self._cache_dir / new, to_new, shape=stack_shape,
                                    interpolation=self.settings.interpolation, band_rows=_BAND_ROWS)
            except (OSError, ValueError) as err:
                s.notes.append(f"cached frame {old} not re-warped: {_one_line(err)}")
            else:
                s.stale_cache.append(old)
            entry.update(file=new, offset=float(entry["offset"]) * k + c, scale=float(entry["scale"]) * k,
                         weight=float(entry["weight"]) * weight_scale)

    def _weight(self, q: FrameQuality, transparency: float) -> float:
        """The frame's weight relative to the reference: SNR (``transparency``: its stars' flux ratio to the
        reference's, 1 when unmeasured) or FWHM."""
        ref = self._ref
        assert ref is not None
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
        return self._cache_dir is not None and self.settings.final_rejection != "none"

    def _band_buffer(self) -> FloatArray:
        assert self._ref is not None
        if self._warp_buffer is None:
            planes = self._ref.stack_shape[0] if len(self._ref.stack_shape) == 3 else 1
            self._warp_buffer = np.empty(planes * _BAND_ROWS * self._ref.frame_shape[1], dtype=np.float32)
        return self._warp_buffer

    def _record(self, prepared: Prepared, status: Literal["stacked", "rejected"], reason: str | None,
                metrics: dict[str, Metric], timings: Mapping[str, float]) -> FrameResult:
        for stage, ms in timings.items():
            metrics[f"ms_{stage}"] = round(ms, 3)
        result = FrameResult(path=prepared.path, status=status, reason=reason, metrics=metrics)
        s = self._session
        s.rows.append(result.row())
        if status == "stacked":
            s.n_stacked += 1
            meta = prepared.meta
            s.total_exposure += float(meta.exposure or 0.0)
            for name in prepared.masters:
                if name not in s.masters:
                    s.masters.append(name)
            for note in prepared.notes:
                if note not in s.notes:
                    s.notes.append(note)
            if not s.first_meta:
                s.first_meta = {k: getattr(meta, k) for k in ("object", "filter", "camera", "gain", "offset",
                                                              "set_temperature", "exposure")}
                s.first_meta["binning"] = list(meta.binning)
            if meta.date_obs is not None:
                stamp = meta.date_obs.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
                s.date_first = stamp if s.date_first is None else min(s.date_first, stamp)
                s.date_last = stamp if s.date_last is None else max(s.date_last, stamp)
        else:
            s.n_rejected += 1
        return result

    # ------------------------------------------------------------------------------------------- outputs

    def preview(self, *, max_size: int = 1600) -> tuple[FloatArray, npt.NDArray[np.uint8]]:
        """The current stack reduced so its longer side is at most ``max_size`` px: linear float32, and
        auto-stretched uint8 ((H, W) grey or (H, W, 3) RGB)."""
        if self._stacker is None or self._ref is None:
            raise AstrodError("no frame has been stacked yet: there is no preview")
        mean = self._stacker.state()["mean"]
        h, w = self._ref.frame_shape
        factor = max(1, math.ceil(max(h, w) / max(1, max_size)))
        small = downsample(np.asarray(mean, dtype=np.float32), factor)
        return small, auto_stretch(small, downsample_factor=1)

    def finalize(self) -> StackProduct:
        """The stack with its provenance: the live stack, or the full re-integration of the cached frames.

        The product's ``count`` map is a read-only view of the live one (not a 52 MB copy at 26 MP): it
        follows any frame added afterwards; the image is the product's own."""
        if self._stacker is None or self._ref is None or self._session.n_stacked == 0:
            raise AstrodError("no frame was stacked: nothing to finalize")
        s = self._session
        history: list[str] = []
        method = "mean" if not math.isfinite(self.settings.kappa) else "online-sigma"
        result = None
        if self.settings.final_rejection != "none":
            if self._caching and len(s.cached) == s.n_stacked and self._cache_complete():
                result = self._reintegrate()
                method = self.settings.final_rejection
            else:
                history.append(f"astrod: {self.settings.final_rejection} re-integration impossible (registered "
                               "frames not cached): the live online-sigma stack is given")
        if result is None:
            result = self._stacker.finalize(copy_maps=False)
        header = self._header(method)
        for name in s.masters:
            history.append(f"master: {name}")  # short: a HISTORY card holds 72 characters
        for note in s.notes:
            history.append(f"astrod: {note}")
        return StackProduct(image=result.image, header=header, rows=self.rows, history=tuple(history),
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

    def _header(self, method: str) -> dict[str, tuple[Any, str]]:
        assert self._ref is not None
        s, st = self._session, self.settings
        kappa = st.kappa if math.isfinite(st.kappa) else 0.0
        cards: dict[str, tuple[Any, str]] = {
            "NCOMBINE": (s.n_stacked, "frames combined"),
            "EXPTIME": (round(s.total_exposure, 3), "total exposure of the combined frames, s"),
            "EXPTOTAL": (round(s.total_exposure, 3), "total exposure of the combined frames, s"),
            "STACKMTH": (method, "combination: mean, online-sigma or final rejection"),
            "KAPPA": (kappa, "rejection threshold, sigma (0: none)"),
            "NREJECT": (s.n_rejected, "frames rejected (see the frames table)"),
            "NFRAMES": (s.n_stacked + s.n_rejected, "frames offered to the stack"),
            "WEIGHTNG": (st.weighting, "frame weights"),
            "REGMODEL": (st.transform, "registration model"),
            "INTERP": (st.interpolation, "warp interpolation"),
            "NORMALIS": ("additive", "background normalisation onto the reference"),
            "FLUXCONS": (True, "warped frames scaled by 1/area ratio: flux conserved"),
            "REFFRAME": (Path(self._ref.path).name[:68], "registration reference"),
            "NMASTERS": (len(s.masters), "calibration masters used"),
            "CREATOR": (f"astrod {__version__}", "software that made this stack"),
            "DATE": (datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "file written, UTC"),
        }
        if len(self._ref.stack_shape) == 3 and self._ref.stack_shape[0] == 3:
            cards["PLANES"] = ("R,G,B", "colour planes, in order")
        meta = s.first_meta
        for key, name, comment in (("OBJECT", "object", "target"), ("FILTER", "filter", "filter"),
                                   ("INSTRUME", "camera", "camera"), ("GAIN", "gain", "camera gain setting"),
                                   ("OFFSET", "offset", "camera offset setting"),
                                   ("SET-TEMP", "set_temperature", "sensor set temperature, C")):
            value = meta.get(name)
            if value is not None:
                cards[key] = (value if not isinstance(value, str) else value[:68], comment)
        if s.date_first is not None:
            cards["DATE-OBS"] = (s.date_first, "start of the first frame, UTC")
            cards["DATE-END"] = (s.date_last, "start of the last frame, UTC")
        return cards

    # ------------------------------------------------------------------------------------------- state

    def save(self, path: Path, *, extra: Mapping[str, Any] | None = None) -> None:
        """Write the whole session state to ``path`` atomically (see `load`)."""
        arrays: dict[str, npt.NDArray[Any]] = {}
        ref_meta: dict[str, Any] | None = None
        if self._stacker is not None and self._ref is not None:
            for key, value in self._stacker.state().items():
                arrays[f"stacker_{key}"] = value
            ref = self._ref
            arrays["ref_xy"] = ref.asterisms.xy
            arrays["ref_flux"] = ref.flux
            if ref.small is not None:
                arrays["ref_small"] = ref.small
            ref_meta = {"id": ref.id, "path": ref.path, "frame_shape": list(ref.frame_shape),
                        "stack_shape": list(ref.stack_shape), "background": ref.background, "noise": ref.noise,
                        "fwhm": ref.fwhm, "small_grid": [list(r) for r in ref.small_grid.matrix]}
        s = self._session
        arrays["accepted"] = np.array([_accepted_row(a) for a in s.accepted],
                                      dtype=np.float64).reshape(-1, len(_ACCEPTED_COLUMNS))
        meta = {"format": _STATE_FORMAT, "astrod": __version__, "settings": _jsonable(self.settings.as_dict()),
                "reference": ref_meta, "rows": _jsonable(s.rows), "cached": _jsonable(s.cached),
                "masters": s.masters, "notes": s.notes, "n_stacked": s.n_stacked, "n_rejected": s.n_rejected,
                "total_exposure": s.total_exposure, "first_meta": _jsonable(s.first_meta),
                "date_first": s.date_first, "date_last": s.date_last,
                "extra": _jsonable(dict(extra) if extra is not None else {})}
        meta["repick"] = self._save_repick(arrays)
        save_checkpoint(path, arrays, meta)
        if self._session.stale_cache and self._cache_dir is not None:
            # the checkpoint just written names the re-warped files only: the old ones can go
            remove_cached_frames([self._cache_dir / name for name in self._session.stale_cache])
            self._session.stale_cache = []

    def _save_repick(self, arrays: dict[str, npt.NDArray[Any]]) -> dict[str, Any]:
        """The re-pick state for the checkpoint: its candidates' figures (their stars go into ``arrays``)."""
        s = self._session
        candidates = []
        for i, c in enumerate(s.candidates):
            arrays[f"repick_xy_{i}"] = c.xy
            arrays[f"repick_flux_{i}"] = c.flux
            candidates.append({"path": c.path, "row": c.row, "transform": [list(r) for r in c.transform.matrix],
                               "frame_shape": list(c.frame_shape), "weight": c.weight,
                               "figures": _accepted_row(c.figures)})
        return {"done": s.repicked, "candidates": candidates}

    def _load_repick(self, state: Mapping[str, Any] | None, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        """Restore what `_save_repick` saved; a checkpoint from before re-picks existed has no candidates, so
        a session that has its reference already keeps it."""
        s = self._session
        if state is None:
            s.repicked = self._ref is not None
            return
        s.repicked = bool(state["done"])
        s.candidates = [
            _Candidate(path=str(c["path"]), row=int(c["row"]), transform=Transform.from_array(c["transform"]),
                       xy=np.asarray(arrays[f"repick_xy_{i}"], dtype=np.float64).reshape(-1, 2),
                       flux=np.asarray(arrays[f"repick_flux_{i}"], dtype=np.float64).reshape(-1),
                       frame_shape=_shape2(c["frame_shape"]), weight=float(c["weight"]),
                       figures=_accepted_figures(np.asarray(c["figures"], dtype=np.float64)))
            for i, c in enumerate(state["candidates"])]

    @classmethod
    def load(cls, path: Path, settings: PipelineSettings, *, calibrator: Calibrator | None = None,
             cache_dir: Path | None = None) -> LiveStack:
        """A stack restored from `save`: adding the same frames next gives what an uninterrupted run gives
        (bit for bit), given the same ``settings``."""
        arrays, meta = load_checkpoint(path)
        if meta.get("format") != _STATE_FORMAT:
            raise CheckpointError(f"{path}: live-stack state format {meta.get('format')} is not {_STATE_FORMAT}")
        stack = cls(settings, calibrator=calibrator, cache_dir=cache_dir)
        try:
            ref_meta = meta["reference"]
            if ref_meta is not None:
                state = {k[len("stacker_"):]: v for k, v in arrays.items() if k.startswith("stacker_")}
                stack._stacker = Stacker.from_state(state, copy=False)
                xy = arrays["ref_xy"]
                stack._ref = _Reference(
                    id=int(ref_meta["id"]), path=str(ref_meta["path"]),
                    asterisms=build_reference(xy, max_stars=max(1, xy.shape[0])), flux=arrays["ref_flux"],
                    small=arrays.get("ref_small"), frame_shape=_shape2(ref_meta["frame_shape"]),
                    stack_shape=tuple(int(n) for n in ref_meta["stack_shape"]),
                    background=float(ref_meta["background"]), noise=float(ref_meta["noise"]),
                    fwhm=float(ref_meta["fwhm"]),
                    small_grid=Transform.from_array(ref_meta.get("small_grid", np.eye(3))))
            s = stack._session
            s.rows = list(meta["rows"])
            s.accepted = [_accepted_figures(row) for row in np.asarray(arrays["accepted"], dtype=np.float64)]
            s.cached = list(meta["cached"])
            s.masters = list(meta["masters"])
            s.notes = list(meta["notes"])
            s.n_stacked = int(meta["n_stacked"])
            s.n_rejected = int(meta["n_rejected"])
            s.total_exposure = float(meta["total_exposure"])
            s.first_meta = dict(meta["first_meta"])
            s.date_first, s.date_last = meta["date_first"], meta["date_last"]
            stack._extra = dict(meta["extra"])
            stack._load_repick(meta.get("repick"), arrays)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: incomplete live-stack state: {err}") from err
        return stack


# ------------------------------------------------------------------------------------------------ outputs


def product_header(product: StackProduct) -> fits.Header:
    """The FITS header of a stack: its cards, then its HISTORY lines."""
    header = fits.Header()
    for key, (value, comment) in product.header.items():
        header[key] = (ascii_text(value) if isinstance(value, str) else value, ascii_text(comment))
    for line in product.history:
        header.add_history(ascii_text(line))
    return header


def write_outputs(product: StackProduct, *, stack_path: Path, preview_path: Path | None = None,
                  table_path: Path | None = None, preview_max_size: int = 1600) -> None:
    """Write the stack (FITS float32, colour as a 3-plane cube), its auto-stretched preview (PNG or JPEG by
    suffix, the longer side at most ``preview_max_size`` px) and the frames table (CSV); every write atomic."""
    write_fits(stack_path, np.asarray(product.image, dtype=np.float32), product_header(product))
    if preview_path is not None:
        h, w = product.image.shape[-2:]
        factor = max(1, math.ceil(max(h, w) / max(1, preview_max_size)))
        write_preview(preview_path, auto_stretch(product.image, downsample_factor=factor))
    if table_path is not None:
        write_frames_table(table_path, product.rows, TABLE_COLUMNS)


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


def _accepted_row(figures: FrameFigures) -> list[float]:
    q = figures.quality
    return [q.fwhm, q.fwhm_err, q.eccentricity, q.eccentricity_err, float(q.shape_stars), float(q.star_count),
            q.background, q.noise, q.hfr, figures.transparency]


def _accepted_figures(row: npt.NDArray[np.float64]) -> FrameFigures:
    """An accepted frame's figures from its checkpoint row (`_ACCEPTED_COLUMNS`)."""
    if row.size != len(_ACCEPTED_COLUMNS):
        raise ValueError(f"accepted-frame row of {row.size} figures, expected {len(_ACCEPTED_COLUMNS)}")
    v = dict(zip(_ACCEPTED_COLUMNS, row.tolist(), strict=True))
    q = FrameQuality(star_count=int(v["star_count"]), fwhm=v["fwhm"], hfr=v["hfr"], eccentricity=v["eccentricity"],
                     background=v["background"], noise=v["noise"], fwhm_err=v["fwhm_err"],
                     eccentricity_err=v["eccentricity_err"], shape_stars=int(v["shape_stars"]))
    return FrameFigures(q, v["transparency"])


def _num(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _shape2(values: Sequence[Any]) -> tuple[int, int]:
    return int(values[0]), int(values[1])


def _planes(prepared: Prepared) -> int:
    """Planes the frame will have on the reference grid: 3 for a CFA frame (demosaiced), else its own."""
    if prepared.pattern is not None:
        return 3
    return 1 if prepared.data is None or prepared.data.ndim == 2 else int(prepared.data.shape[0])


def _area_ratio(transform: Transform, frame_shape: tuple[int, int]) -> float:
    """Reference-grid area covered by one frame pixel (|det| of the transform's Jacobian, at the frame centre
    for a homography)."""
    m = transform.as_array()
    h, w = frame_shape
    x, y = (w - 1) / 2.0, (h - 1) / 2.0
    den = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    # Jacobian of (a·p + t) / (c·p + 1): (A - (A·p + t)·c / den) / den
    top = m[:2, :2] - np.outer(m[:2, :2] @ [x, y] + m[:2, 2], m[2, :2]) / den
    area = abs(float(np.linalg.det(top / den)))
    return area if math.isfinite(area) and area > 0 else 1.0


def _float_or_nan(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _match_rms(xy: npt.NDArray[np.float64], ref: ReferenceAsterisms, radius: float) -> float | None:
    """RMS distance (px) from points to the nearest reference star within ``radius``; None when none is."""
    if xy.shape[0] == 0 or len(ref.xy) == 0:
        return None
    dist, _ = ref.tree.query(xy, distance_upper_bound=radius)
    near = dist[np.isfinite(dist)]
    return float(np.sqrt(np.mean(near**2))) if near.size else None


def _phase_image(data: FloatArray, *, cfa: bool) -> FloatArray:
    """The image kept for phase correlation: the (plane-averaged) frame, binned by the smallest even factor
    that brings it under `_PHASE_MAX_PIXELS` when it is larger (to bound the memory the reference holds:
    a 26 MP frame is kept 4×4-binned, 6.5 MB), and at least 2×2 when it is a CFA mosaic (superpixel
    luminance). The shift it gives is polished by the frame's stars."""
    lum: FloatArray = data if data.ndim == 2 else np.asarray(np.mean(data, axis=0, dtype=np.float32))
    if not cfa and lum.size <= _PHASE_MAX_PIXELS:
        return np.array(lum, dtype=np.float32, copy=True)
    f = 2
    while lum.size / (f * f) > _PHASE_MAX_PIXELS:
        f += 2
    h, w = lum.shape[0] // f * f, lum.shape[1] // f * f
    return np.asarray(cv2.resize(lum[:h, :w], (w // f, h // f), interpolation=cv2.INTER_AREA), dtype=np.float32)


def _jsonable(value: Any) -> Any:
    """Plain JSON types (numpy scalars and paths converted; floats kept exactly)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
