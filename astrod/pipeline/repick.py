"""The re-pick of a session's reference by quality: once the first frames are stacked, the best of them becomes
the reference and everything stacked so far is moved onto its grid (see `repick`)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from astrod.core.register import ReferenceAsterisms, build_reference
from astrod.core.stack import Stacker
from astrod.io.frame_cache import rewarp_cached_frame
from astrod.model import Transform
from astrod.pipeline.settings import BAND_ROWS, PipelineSettings
from astrod.pipeline.state import Metric, Reference, Session
from astrod.pipeline.twopass import DeferredFrames


def repick(session: Session, ref: Reference, stacker: Stacker, settings: PipelineSettings,
           metrics: dict[str, Metric], *, cache_dir: Path | None,
           deferred: DeferredFrames | None = None) -> Reference | None:
    """The best candidate of ``session`` as the new reference when it beats the current one (``ref``) by the
    margin, everything stacked moved onto its grid; None when the reference stays. ``cache_dir``: where the
    cached registered frames are (None: not caching). ``metrics`` is the row of the frame just stacked.

    Best: the most stars detected per px of FWHM (``Candidate.score``): both fall with defocus, bad seeing
    or haze, and their ratio rewards the sharp, deep frame whose stars register the others best; an
    unknown FWHM never wins. The margin keeps a session of equally good frames on its first reference (a
    re-pick costs a second interpolation of the frames stacked so far). ``deferred``: the frames of a two-pass
    stack, which has no live stack or cache to move: their transforms and norms are composed instead.

    Everything stacked is moved onto the new reference's grid through ``to_new`` (old grid → new grid, the
    inverse of the best frame's transform onto the old reference; transforms compose):

    * the live stack (`Stacker.regrid`), its values mapped as a frame's are in `LiveStack.accumulate`: divided
      by the area ratio of ``to_new`` (flux conserved) and shifted from the old reference's sky onto the new
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
    s = session
    cands = s.candidates
    if not cands or cands[0].path != ref.path or cands[0].transform != Transform.identity():
        return None  # the candidates do not start with the reference (a state from elsewhere): keep it
    scores = [c.score for c in cands]
    best = max(range(len(cands)), key=lambda i: (scores[i], -i))
    current = cands[0]
    if best == 0 or scores[best] == -math.inf:
        return None
    if math.isfinite(scores[0]) and scores[best] < settings.reference_repick_margin * scores[0]:
        return None
    b = cands[best]
    to_new = b.transform.inverse()
    k = 1.0 / area_ratio(to_new, ref.frame_shape)
    bq, b_transparency = b.figures.quality, b.figures.transparency
    c = bq.background - ref.background * k
    f = 1.0 / b.weight if stacker.weighting != "none" and b.weight > 0.0 else 1.0
    rescale_transparency = math.isfinite(b_transparency) and b_transparency > 0.0
    stack_shape = (*ref.stack_shape[:-2], *b.frame_shape)
    if deferred is not None:
        deferred.regrid(to_new, norm=(c, k), weight_scale=f)
    else:
        stacker.regrid(to_new, shape=b.frame_shape, norm=(c, k), weight_scale=f)
    new_id = ref.id + 1
    asterisms = build_reference(b.xy, max_stars=max(1, b.xy.shape[0]))
    new_ref = Reference(id=new_id, path=b.path, asterisms=asterisms,
                        flux=np.array(b.flux[: len(asterisms)], dtype=np.float64), small=ref.small,
                        frame_shape=b.frame_shape, stack_shape=stack_shape, background=bq.background,
                        noise=bq.noise, fwhm=bq.fwhm, small_grid=ref.small_grid.compose(to_new))
    if cache_dir is not None:
        _rewarp_cache(s, cache_dir, settings, to_new, stack_shape, new_id=new_id, norm=(c, k), weight_scale=f)
    for i, cand in enumerate(cands):
        row: dict[str, Any] = s.rows[cand.row] if cand.row < len(s.rows) else metrics
        t = Transform.identity() if i == best else cand.transform.compose(to_new)
        residual = row.get("residual_px")
        if i == best:
            residual = 0.0
        elif residual is not None:
            residual = match_rms(t.apply(cand.xy), new_ref.asterisms, settings.match_radius_px)
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
    return new_ref


def _rewarp_cache(s: Session, cache_dir: Path, settings: PipelineSettings, to_new: Transform,
                  stack_shape: tuple[int, ...], *, new_id: int, norm: tuple[float, float],
                  weight_scale: float) -> None:
    """Re-warp the cached frames onto the new reference's grid into new files and compose their norms and
    weights as `repick` does the live stack's; the old files are deleted at the next `save`. A frame that
    cannot be re-warped is left out of the cache (the final re-integration then gives way to the live
    stack), with a note."""
    c, k = norm
    for entry in s.cached:
        old = str(entry["file"])
        new = f"{Path(old).stem}_ref{new_id}.npy"
        try:
            rewarp_cached_frame(cache_dir / old, cache_dir / new, to_new, shape=stack_shape,
                                interpolation=settings.interpolation, band_rows=BAND_ROWS)
        except (OSError, ValueError) as err:
            s.notes.append(f"cached frame {old} not re-warped: {one_line(err)}")
        else:
            s.stale_cache.append(old)
        entry.update(file=new, offset=float(entry["offset"]) * k + c, scale=float(entry["scale"]) * k,
                     weight=float(entry["weight"]) * weight_scale)


def area_ratio(transform: Transform, frame_shape: tuple[int, int]) -> float:
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



def match_rms(xy: npt.NDArray[np.float64], ref: ReferenceAsterisms, radius: float) -> float | None:
    """RMS distance (px) from points to the nearest reference star within ``radius``; None when none is."""
    if xy.shape[0] == 0 or len(ref.xy) == 0:
        return None
    dist, _ = ref.tree.query(xy, distance_upper_bound=radius)
    near = dist[np.isfinite(dist)]
    return float(np.sqrt(np.mean(near**2))) if near.size else None


def one_line(err: BaseException) -> str:
    """An error's message on one line (the frames table's reasons and the session notes)."""
    return " ".join(str(err).split())
