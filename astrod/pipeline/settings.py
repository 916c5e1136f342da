"""What the per-frame pipeline is configured with (`PipelineSettings`, from ``[stack]`` and ``[quality]``) and
what a calibrator hands it (`Calibrated`), and what an observer of stacked frames sees (`StackedFrame`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from astrod.config import Config
from astrod.core.calibrate import CalibrationRecipe
from astrod.core.quality import FrameQuality
from astrod.core.quality_gates import GateThresholds
from astrod.core.register import MODEL_POINTS
from astrod.core.stack import Rejection, Weighting
from astrod.core.stars import StarList
from astrod.core.warp import Interpolation
from astrod.model import Frame, FrameMeta, Transform

Model = Literal["similarity", "affine", "homography"]
BAND_ROWS = 128  # rows warped and accumulated at a time: 3.2 MB of a 26 MP mono frame


@dataclass(frozen=True, slots=True)
class FinishSettings:
    """What makes the finished picture (``[finish]``): colour calibration (also of the previews), gradient
    removal with a mesh of ``background_mesh`` boxes across the longer side, the crop to the area at least
    ``crop_coverage`` of the frames cover (0: none), the report page, and the composites of a target's filters
    (``[composite]``: the kinds made, extra filter names)."""

    colour: bool = True
    background: bool = True
    background_mesh: int = 16
    crop_coverage: float = 0.8
    report: bool = True
    composite_kinds: tuple[str, ...] = ("lrgb", "rgb", "sho", "hoo")
    composite_names: Mapping[str, str] = field(default_factory=dict)


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
    finish: FinishSettings = field(default_factory=FinishSettings)

    @classmethod
    def from_config(cls, config: Config) -> PipelineSettings:
        s, q, f = config.stack, config.quality, config.finish
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
                   preview_every_frames=s.preview_every_frames, preview_every_seconds=s.preview_every_seconds,
                   finish=FinishSettings(colour=f.colour, background=f.background,
                                         background_mesh=f.background_mesh, crop_coverage=f.crop_coverage,
                                         report=f.report, composite_kinds=config.composite.kinds,
                                         composite_names=dict(config.composite.names)))

    @property
    def min_matches(self) -> int:
        """Matched stars needed to register: ``min_stars``, but never fewer than the model can be fitted from."""
        return max(self.min_stars, MODEL_POINTS[self.transform] + 1)

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["gates"] = {name: getattr(self.gates, name) for name in self.gates.__dataclass_fields__}
        out["finish"] = {name: getattr(self.finish, name) for name in self.finish.__dataclass_fields__}
        return out


@dataclass(frozen=True, slots=True, eq=False)
class Calibrated:
    """What a calibrator may return instead of a bare `Frame`: the frame and the masters that made it."""

    frame: Frame
    masters: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    recipe: CalibrationRecipe | None = None  # how, so that rows of the frame can be calibrated again alike


Calibrator = Callable[[Frame], Frame | Calibrated]


@dataclass(frozen=True, slots=True, eq=False)
class StackedFrame:
    """A frame just stacked, as `LiveStack`'s observer sees it: the calibrated, unwarped pixels (valid only
    during the call: they live in a reused buffer), its metadata, its stars and quality figures, and
    ``to_first``: its pixels onto the session's first reference frame (the reference at the time composed
    with the re-pick's grid change, so positions given on that first frame stay valid after a re-pick)."""

    path: Path | None
    meta: FrameMeta
    data: npt.NDArray[np.float32]
    stars: StarList
    quality: FrameQuality
    to_first: Transform
    pattern: str | None


FrameObserver = Callable[[StackedFrame], None]
