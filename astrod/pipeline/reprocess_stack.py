"""A session of an archive stacked in three kinds of independent work, the decisions taken as the live stack
takes them — so that the products equal those of ``astrod stack`` (and the daemon) on the same frames:

1. `measure_frame` (one task per frame, anywhere): read, calibrate, detect stars, measure quality — the live
   stack's own ``_measure`` — and return the small result (stars, figures, the binned phase-correlation image),
   never the pixels.
2. `DecidedStack` (the client, per session, in frame order): the live stack's decisions on those results —
   the reference, the quality gates against the frames accepted before, registration on star lists, the
   weights and normalisation, the reference re-pick — without a pixel: each stacked frame becomes a
   `WarpOrder` (its transform onto the final reference grid: after a re-pick, composed with the move onto the
   new reference, as the two-pass ``astrod stack`` composes it, so each frame is interpolated once).
3. `warp_frame` (one task per stacked frame): read and calibrate the frame again, warp it as the order says
   into the session's registered-frame cache (the live stack's ``.npy`` cache files, whose pixels are those
   the two-pass stack warps, bit for bit); `integrate_rows` (one task per band of rows): read those rows of
   every registered frame and integrate them with the session's rejection, weights and norms
   (`integrate_bands`, per pixel, so bands give what the whole does). The client assembles the bands
   (`DecidedStack.product`).

A frame is read and calibrated twice (to measure, to warp) instead of its calibrated pixels being held
between the two: the decision between them waits for the session's earlier frames, and holding every frame of
an archive until then is what bands exist to avoid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from astrod.core.debayer import debayer
from astrod.core.integrate import integrate_bands
from astrod.core.register import Registration
from astrod.core.stack import Stacker
from astrod.core.warp import check_grid, warp_bands
from astrod.errors import AstrodError
from astrod.io.frame_cache import CachedFrameWriter, read_cached_rows
from astrod.io.frames import read_frame
from astrod.model import Transform
from astrod.pipeline.ingest import ReadOptions
from astrod.pipeline.live import Calibrated, Calibrator, LiveStack, Measured
from astrod.pipeline.outputs import StackProduct, stack_cards
from astrod.pipeline.repick import area_ratio, one_line
from astrod.pipeline.reprocess import SessionPlan
from astrod.pipeline.sessions import plausible_date
from astrod.pipeline.settings import BAND_ROWS, FrameObserver, PipelineSettings
from astrod.pipeline.state import FrameResult, Metric

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True, eq=False)
class FrameMeasure:
    """What a measure task returns: the live stack's `Measured` without its pixels (``shape`` says what they
    were), or ``unread``: why the frame could not be read (a row of the frames table, as ``astrod stack``
    and the daemon record it)."""

    path: Path
    measured: Measured | None
    shape: tuple[int, ...] = ()
    unread: str | None = None


def measure_frame(path: Path, settings: PipelineSettings, *, options: ReadOptions, calibrator: Calibrator | None,
                  now: datetime) -> FrameMeasure:
    """Read, calibrate and measure one light (the live stack's ``_measure`` with no reference yet, so that the
    phase-correlation image is always there: any frame may become the reference)."""
    try:
        frame = read_frame(path, rename=options.rename, rules=options.rules)
    except AstrodError as err:
        return FrameMeasure(path=path, measured=None, unread=one_line(err))
    date = frame.meta.date_obs
    if date is not None and not plausible_date(date, now):  # as ingest and the session worker do
        file_time = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
        frame = replace(frame, meta=replace(frame.meta, date_obs=file_time))
    if frame.meta.kind.is_calibration:
        return FrameMeasure(path=path, measured=None, unread=f"a {frame.meta.kind.value} frame, not a light")
    finite = np.isfinite(frame.data)
    bad = int(finite.size - np.count_nonzero(finite))
    if bad > 0.01 * finite.size:  # the session worker's check before the live stack sees a frame
        return FrameMeasure(path=path, measured=None,
                            unread=f"{path}: {bad} of {finite.size} pixels are NaN or infinite")
    measured = LiveStack(settings, calibrator=calibrator)._measure(frame)
    shape = () if measured.data is None else tuple(int(n) for n in measured.data.shape)
    return FrameMeasure(path=path, measured=replace(measured, data=None), shape=shape)


@dataclass(slots=True)
class WarpOrder:
    """How one stacked frame becomes its registered file ``file``: warped by ``transform`` onto the reference
    grid of ``frame_shape`` into ``stack_shape`` (``pattern``: demosaiced first)."""

    path: Path
    transform: Transform
    frame_shape: tuple[int, int]
    stack_shape: tuple[int, ...]
    pattern: str | None
    file: str


class _NoPixels:
    """The stacker a decided stack has: its weighting, and a re-grid that moves no pixels (there are none on
    the client; a re-pick composes the frames' transforms in their `WarpOrder`)."""

    def __init__(self, weighting: str) -> None:
        self.weighting = weighting

    def regrid(self, transform: Transform, **_: Any) -> None:
        del transform


class DecidedStack(LiveStack):
    """The live stack's decisions on measured frames, in their order, without their pixels (see the module
    docstring). ``orders``: one `WarpOrder` per stacked frame, in the order of the session's cached frames."""

    def __init__(self, settings: PipelineSettings, *, observer: FrameObserver | None = None) -> None:
        """``observer`` sees each frame stacked as the live stack's does, but with no pixels: its ``data`` is
        a zero-strided stand-in of their shape (photometry is measured where the pixels are read again)."""
        if settings.final_rejection == "none":
            raise ValueError("a decided stack is integrated from its registered frames: final_rejection is needed")
        super().__init__(settings, observer=observer)
        self.orders: list[WarpOrder] = []

    def offer(self, measure: FrameMeasure) -> FrameResult:
        """The frame's fate in the session, as `LiveStack.process` decides it."""
        if measure.measured is None:
            return self.reject(measure.path, measure.unread or "not measured")
        shape = self.shape
        if shape is not None and measure.shape[-2:] != shape[-2:]:  # the session worker's precheck
            return self.reject(measure.path, f"{measure.path}: frame is {measure.shape[-1]}x{measure.shape[-2]}, "
                                             f"the session's stack is {shape[-1]}x{shape[-2]}")
        measured = measure.measured
        if measure.shape:  # a stand-in with the pixels' shape and no memory: decisions read only the shape
            placeholder = np.broadcast_to(np.float32(0.0), measure.shape)
            measured = replace(measured, data=placeholder)
        return self.process_measured(measured)

    def process_measured(self, measured: Measured) -> FrameResult:
        """`LiveStack.process` on a frame measured elsewhere."""
        return self.process(cast(Any, _Given(measured)))

    def _measure(self, frame: Any) -> Measured:
        if not isinstance(frame, _Given):
            raise TypeError("a decided stack is given measured frames (`offer`), not pixels")
        return frame.measured

    def _set_reference(self, measured: Measured) -> None:
        super()._set_reference(measured)
        self._stacker = cast(Stacker, _NoPixels(self.settings.weighting))

    def _stack(self, measured: Measured, reg: Registration, weight: float, metrics: dict[str, Metric],
               timings: dict[str, float]) -> str | None:
        """The live stack's ``_stack`` without the pixels: the norms and weight it would give, and the order."""
        ref = self._ref
        assert ref is not None and measured.quality is not None and measured.path is not None
        try:
            check_grid(reg.transform, ref.frame_shape)  # what the warp would refuse
        except ValueError as err:
            return f"cannot warp: {one_line(err)}"
        scale = 1.0 / area_ratio(reg.transform, ref.frame_shape)
        offset = ref.background - measured.quality.background * scale
        name = f"frame_{len(self._session.cached):06d}.npy"
        self.orders.append(WarpOrder(path=measured.path, transform=reg.transform, frame_shape=ref.frame_shape,
                                     stack_shape=ref.stack_shape, pattern=measured.pattern, file=name))
        self._session.cached.append({"file": name, "offset": offset, "scale": scale, "weight": weight})
        metrics["weight"] = weight
        return None

    def _consider_repick(self, measured: Measured, reg: Registration, weight: float, metrics: dict[str, Metric],
                         timings: dict[str, float]) -> None:
        """The live stack's re-pick; when it moves the reference, the frames' transforms, norms and weights
        are composed onto the new one as a two-pass stack's are (`DeferredFrames.regrid`)."""
        candidates, old = self._session.candidates, self._ref
        super()._consider_repick(measured, reg, weight, metrics, timings)
        new = self._ref
        if new is old or old is None or new is None:
            return
        best = next(c for c in candidates if c.path == new.path)
        to_new = best.transform.inverse()
        k = 1.0 / area_ratio(to_new, old.frame_shape)
        c = best.figures.quality.background - old.background * k
        f = 1.0 / best.weight if self.settings.weighting != "none" and best.weight > 0.0 else 1.0
        for entry, order in zip(self._session.cached, self.orders, strict=True):
            entry.update(offset=float(entry["offset"]) * k + c, scale=float(entry["scale"]) * k,
                         weight=float(entry["weight"]) * f)
            order.transform = order.transform.compose(to_new)
            order.frame_shape, order.stack_shape = new.frame_shape, new.stack_shape

    def integration(self) -> Integration:
        """What the band tasks integrate: the registered files in order, their weights and norms."""
        if self._ref is None or not self.orders:
            raise AstrodError("no frame was stacked: nothing to integrate")
        s, cached = self.settings, self._session.cached
        kappa = s.kappa if math.isfinite(s.kappa) else 3.0
        return Integration(files=tuple(str(c["file"]) for c in cached), shape=self._ref.stack_shape,
                           method=s.final_rejection, kappa=kappa,
                           weights=tuple(float(c["weight"]) for c in cached) if s.weighting != "none" else None,
                           norms=tuple((float(c["offset"]), float(c["scale"])) for c in cached))

    def product(self, image: FloatArray, count: npt.NDArray[np.uint16]) -> StackProduct:
        """The stack with its provenance, as `LiveStack.finalize` gives a re-integration."""
        assert self._ref is not None
        built = stack_cards(self._session, self.settings, reference=self._ref, method=self.settings.final_rejection)
        return StackProduct(image=image, header=built.cards, rows=self.rows, history=built.history, count=count,
                            masters=tuple(self._session.masters))


class _Given:
    """What `DecidedStack.process` is handed in place of a frame: its measurement, already made."""

    def __init__(self, measured: Measured) -> None:
        self.measured = measured



@dataclass(frozen=True, slots=True)
class Integration:
    """A session's final integration: registered files (names in its cache folder), stack shape, rejection."""

    files: tuple[str, ...]
    shape: tuple[int, ...]
    method: str
    kappa: float
    weights: tuple[float, ...] | None
    norms: tuple[tuple[float, float], ...]

    def bands(self, memory_bytes: int) -> list[tuple[int, int]]:
        """Row ranges of at most ``memory_bytes`` of samples each (one row of every frame at least)."""
        planes = self.shape[0] if len(self.shape) == 3 else 1
        height, width = self.shape[-2], self.shape[-1]
        rows = max(1, min(height, memory_bytes // (len(self.files) * planes * width * 4)))
        return [(r, min(height, r + rows)) for r in range(0, height, rows)]


def calibrated_pixels(path: Path, *, options: ReadOptions, calibrator: Calibrator | None) -> FloatArray:
    """A light read and calibrated again, as `measure_frame` had its pixels (not demosaiced)."""
    frame = read_frame(path, rename=options.rename, rules=options.rules)
    out = calibrator(frame) if calibrator is not None else frame
    return np.asarray((out.frame if isinstance(out, Calibrated) else out).data, dtype=np.float32)


def warp_frame(order: WarpOrder, cache: Path, settings: PipelineSettings, *, options: ReadOptions,
               calibrator: Calibrator | None) -> str:
    """Read, calibrate and warp one stacked frame into ``cache`` as its order says; the file's name."""
    data = calibrated_pixels(order.path, options=options, calibrator=calibrator)
    pixels = debayer(data, pattern=order.pattern) if order.pattern is not None else data
    planes = order.stack_shape[0] if len(order.stack_shape) == 3 else 1
    buffer = np.empty(planes * BAND_ROWS * order.frame_shape[1], dtype=np.float32)
    bands = warp_bands(pixels, order.transform, shape=order.frame_shape, interpolation=settings.interpolation,
                       band_rows=BAND_ROWS, buffer=buffer)
    with CachedFrameWriter(cache / order.file, order.stack_shape) as writer:
        for row0, band in bands:
            writer.write(row0, band)
    return order.file


def integrate_rows(integration: Integration, cache: Path, row0: int, row1: int, *,
                   memory_bytes: int) -> tuple[FloatArray, npt.NDArray[np.uint16]]:
    """Rows [row0, row1) of the session's stack and their frame counts, from the registered files."""
    shape = integration.shape
    files = [cache / name for name in integration.files]
    band_shape = (*shape[:-2], row1 - row0, shape[-1])

    def read_band(a: int, b: int) -> FloatArray:
        band = np.empty((len(files), *shape[:-2], b - a, shape[-1]), dtype=np.float32)
        for i, path in enumerate(files):
            band[i] = read_cached_rows(path, row0 + a, row0 + b)
        return band

    result = integrate_bands(read_band, len(files), band_shape, method=cast(Any, integration.method),
                             kappa_low=integration.kappa, kappa_high=integration.kappa,
                             weights=integration.weights, norms=integration.norms, memory_cap_bytes=memory_bytes)
    return result.image, result.count


def assemble(shape: Sequence[int], bands: Sequence[tuple[int, int, FloatArray, npt.NDArray[np.uint16]]]
             ) -> tuple[FloatArray, npt.NDArray[np.uint16]]:
    """The whole stack and count map from their bands ((row0, row1, image rows, count rows))."""
    image = np.empty(tuple(shape), dtype=np.float32)
    count = np.empty(tuple(shape), dtype=np.uint16)
    for row0, row1, rows, counts in bands:
        image[..., row0:row1, :] = rows
        count[..., row0:row1, :] = counts
    return image, count


def session_summary(plan: SessionPlan, stack: DecidedStack) -> dict[str, Any]:
    """The session's ``session.json`` as the daemon writes it on close (``closed_because``: reprocessed)."""
    rows = stack.rows
    rejections: dict[str, int] = {}
    for row in rows:
        if row.get("status") != "stacked":
            cls = _reason_class(str(row.get("reason") or "unknown"), str(row.get("path")))
            rejections[cls] = rejections.get(cls, 0) + 1
    return {"session": plan.id, "label": plan.label, "key": plan.key.record(plan.pointing),
            "closed_because": "reprocessed", "stacked": stack.n_stacked, "rejected": stack.n_rejected,
            "total_exposure_s": stack.total_exposure, "rejections": rejections,
            "rejected_frames": [{"path": r.get("path"), "reason": r.get("reason")} for r in rows
                                if r.get("status") != "stacked"],
            "masters": []}


def _reason_class(reason: str, path: str) -> str:
    """The kind of a rejection, for counts by reason (as the daemon's session summary counts them)."""
    text = reason.strip()
    if text.startswith(f"{path}: "):
        text = text[len(path) + 2:]
    text = text.split(":")[0].strip()
    return text if len(text) <= 40 else text[:40]
