"""How a frame is registered onto its session's reference: star matching, with phase correlation of binned
images as the fallback for star-poor frames (`register_onto`), and the binned image phase correlation keeps
(`phase_image`); a frame that star matching refuses may still be registered some other way, by a hook the daemon
gives the live stack (`register_otherwise`: `astrod.service.session_solving` registers through the frame's plate
solution and the reference's)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from astrod.core.register import Registration, find_transform, register, star_poor
from astrod.core.stars import StarList
from astrod.errors import RegistrationError
from astrod.model import Transform
from astrod.pipeline.repick import one_line
from astrod.pipeline.settings import PipelineSettings
from astrod.pipeline.state import Reference

if TYPE_CHECKING:
    from astrod.pipeline.live import Measured

FloatArray = npt.NDArray[np.float32]
_PHASE_MAX_PIXELS = 4_000_000  # the most pixels the image kept for phase correlation has (16 MB)


def register_onto(stars: StarList, small: FloatArray | None, ref: Reference,
                  settings: PipelineSettings) -> Registration:
    """A frame's registration onto the reference: its stars matched to the reference's, or, for a star-poor
    frame whose matching fails, phase correlation of the binned images (``small``) polished by its stars.
    Raises RegistrationError."""
    s = settings
    try:
        return find_transform(stars, ref.asterisms, model=s.transform, min_matches=s.min_matches,
                              match_radius_px=s.match_radius_px)
    except RegistrationError:
        if small is None or ref.small is None or small.shape != ref.small.shape \
                or not star_poor(len(stars), min_matches=s.min_matches):
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


def phase_image(data: FloatArray, *, cfa: bool) -> FloatArray:
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


# Registers a frame that failed star matching (the reason given) some other way; raises RegistrationError when it
# cannot either.
WcsRegistrar = Callable[["Measured", str], Registration]


def register_otherwise(registrar: WcsRegistrar | None, measured: Measured, why: str, ref: Reference, *,
                       settings: PipelineSettings) -> Registration | str:
    """A frame that failed star matching (``why``) registered by ``registrar``, when there is one and the frame
    has stars to solve with, with the number of its stars the transform brings onto reference stars; else the
    reason it is rejected (``why``, and the registrar's reason when it could not either)."""
    stars = measured.stars
    if registrar is None or stars is None or len(stars) < settings.min_matches:
        return why
    try:
        reg = registrar(measured, why)
    except RegistrationError as err:
        return f"{why}; {one_line(err)}"
    dist, _ = ref.asterisms.tree.query(reg.transform.apply(stars.xy), distance_upper_bound=settings.match_radius_px)
    return replace(reg, matched=int(np.count_nonzero(np.isfinite(dist))))
