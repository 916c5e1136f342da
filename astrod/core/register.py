"""Registration of a frame onto the session reference.

Stars first: triangles are formed from each bright star and its nearest neighbours, described by two
side ratios that do not change under shift, rotation (any angle, the 180° meridian flip included) and
scale. Triangles of the frame are matched to the reference's in a k-d tree of those invariants; each
match proposes a similarity transform. Proposals are ordered by how many others agree with them (a vote
over binned rotation, scale and shift) and tested by counting the stars they bring within
``match_radius_px`` of a reference star (RANSAC with hypotheses from triangle pairs, tried in vote order
rather than at random). The best is refined by least squares on every matched star, re-matching until the
set settles, then σ-clipped, in the requested model: similarity, affine or homography.

The reference side (`ReferenceAsterisms`) is built once per session, so matching a frame costs a few
milliseconds. Everything is deterministic: the only random draw (which hypotheses to try when there are
more than ``max_trials``) comes from ``seed``.

Phase correlation is the fallback for frames with too few stars: FFT phase correlation of downsampled,
hot-pixel-filtered, high-passed frames, optionally also against the frame turned by 180°, refined at
full resolution on a central crop. It finds a translation (or translation + 180°) only; a peak no higher
than noise could make is an error, not a result.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from astrod.core.stars import StarList
from astrod.errors import RegistrationError
from astrod.model import Transform

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]
FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.intp]
Model = Literal["similarity", "affine", "homography"]
Stars = StarList | npt.ArrayLike

MODEL_POINTS = {"similarity": 2, "affine": 3, "homography": 4}  # points that fit each model exactly
_EVAL_STARS = 100  # brightest frame stars used to score a hypothesis
_CHUNK = 64  # hypotheses scored per k-d tree query


@dataclass(frozen=True, slots=True)
class Registration:
    """How a frame maps onto the reference.

    ``transform`` maps FRAME pixel coordinates onto REFERENCE coordinates. ``matched`` is the number of
    stars in the final fit and ``residual_px`` their RMS distance (px) after the transform; both are 0
    and NaN for phase correlation, whose correlation peak height (0–1) is ``peak``. ``wcs``: carried through
    the plate solutions of the frame and the reference (``residual_px``: what the fit leaves of their
    distortions; ``matched``: the frame's stars it brings onto reference stars).
    """

    transform: Transform
    matched: int
    residual_px: float
    method: Literal["stars", "phase", "wcs"]
    peak: float = math.nan


@dataclass(frozen=True, slots=True, eq=False)
class ReferenceAsterisms:
    """The reference's stars and triangle invariants, precomputed once per session.

    ``xy`` (N, 2) brightest first; ``triangles`` (T, 3) star indices with the vertices ordered by the
    length of the opposite side, longest first; ``invariants`` (T, 2) the side ratios (L1/L0, L2/L0).
    """

    xy: F64
    tree: cKDTree
    triangles: IntArray
    invariants: F64
    invariant_tree: cKDTree

    def __len__(self) -> int:
        return int(self.xy.shape[0])


# ---------------------------------------------------------------------------------------------------------
# Public API


def build_reference(stars: Stars, *, max_stars: int = 300, asterism_stars: int = 40,
                    neighbours: int = 5) -> ReferenceAsterisms:
    """Precompute the reference side of `find_transform` from its stars (brightest first).

    ``max_stars`` stars are kept for matching, the brightest ``asterism_stars`` of them form triangles
    with their ``neighbours`` nearest stars (the star itself included).
    """
    xy = _xy(stars)[:max_stars]
    tri, inv = _asterisms(xy[:asterism_stars], neighbours)
    for a in (xy, tri, inv):
        a.setflags(write=False)
    return ReferenceAsterisms(xy=xy, tree=cKDTree(xy), triangles=tri, invariants=inv,
                              invariant_tree=cKDTree(inv if inv.size else np.empty((0, 2))))


def find_transform(
    source: Stars,
    reference: ReferenceAsterisms | Stars,
    *,
    model: Model = "similarity",
    min_matches: int = 8,
    match_radius_px: float = 2.0,
    max_scale_change: float = 0.05,
    asterism_stars: int = 40,
    neighbours: int = 5,
    invariant_tolerance: float = 0.01,
    max_trials: int = 2000,
    seed: int | np.random.Generator = 0,
) -> Registration:
    """The transform mapping ``source`` star positions onto ``reference`` ones.

    Star lists are `StarList` or (N, 2) arrays of (x, y), brightest first. ``model`` is the fitted
    transform; hypotheses are similarities whose scale is within ``max_scale_change`` of 1. A star
    matches when it lands within ``match_radius_px`` of a reference star. Raises `RegistrationError`
    when fewer than ``min_matches`` stars match.
    """
    if model not in MODEL_POINTS:
        raise ValueError(f"unknown registration model {model!r}; expected one of {', '.join(MODEL_POINTS)}")
    if min_matches < MODEL_POINTS[model] + 1:
        raise ValueError(f"min_matches must be at least {MODEL_POINTS[model] + 1} for a {model} fit")
    ref = reference if isinstance(reference, ReferenceAsterisms) else build_reference(
        reference, asterism_stars=asterism_stars, neighbours=neighbours)
    src = _xy(source)
    if src.shape[0] < min_matches:
        raise RegistrationError(f"registration failed: {src.shape[0]} stars in frame, need {min_matches}")
    if len(ref) < min_matches:
        raise RegistrationError(f"registration failed: {len(ref)} stars in reference, need {min_matches}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    hyps = _hypotheses(src[:asterism_stars], neighbours, ref, tolerance=invariant_tolerance,
                       max_scale_change=max_scale_change, radius=match_radius_px)
    best, best_count = _best_hypothesis(hyps, src, ref, radius=match_radius_px, min_matches=min_matches,
                                        max_trials=max_trials, rng=rng)
    if best is None or best_count < min_matches:
        raise RegistrationError(f"registration failed: {best_count} matched stars, need {min_matches}")

    matrix, pairs = _refine(best, src, ref, model=model, radius=match_radius_px)
    n = pairs.shape[0]
    if n < min_matches:
        raise RegistrationError(f"registration failed: {n} matched stars, need {min_matches}")
    if model != "homography":
        scale = math.sqrt(abs(np.linalg.det(matrix[:2, :2])))
        if not 1.0 / (1.0 + max_scale_change) <= scale <= 1.0 + max_scale_change:
            raise RegistrationError(f"registration failed: fitted scale {scale:.4f} is out of range")
    resid = _residuals(matrix, src[pairs[:, 0]], ref.xy[pairs[:, 1]])
    return Registration(transform=Transform.from_array(matrix), matched=n,
                        residual_px=float(np.sqrt(np.mean(resid**2))), method="stars")


def phase_correlate(
    image: npt.NDArray[np.floating],
    reference_image: npt.NDArray[np.floating],
    *,
    downsample: int = 4,
    try_flip: bool = True,
    min_significance: float = 3.0,
    refine_size: int = 1024,
) -> Registration:
    """Translation (and, with ``try_flip``, possibly a 180° turn) mapping ``image`` onto the reference.

    Correlates ``downsample``-times reduced copies, then refines at full resolution on a central crop of
    at most ``refine_size`` px. The correlation peak must stand ``min_significance`` σ of the correlation
    surface above the highest peak that noise alone would give (√(2 ln N) σ over N pixels), else
    `RegistrationError` is raised.
    """
    if image.shape != reference_image.shape or image.ndim != 2:
        raise ValueError(f"phase correlation needs two (H, W) images of one shape, got {image.shape} "
                         f"and {reference_image.shape}")
    d = max(1, int(downsample))
    h, w = image.shape
    ref_small = _phase_image(reference_image, d)
    candidates = [False, True] if try_flip else [False]
    best: tuple[float, float, float, float, bool] | None = None
    for flipped in candidates:
        src = image[::-1, ::-1] if flipped else image
        sx, sy, peak, snr = _correlate(_phase_image(src, d), ref_small)
        if best is None or snr > best[1]:
            best = (peak, snr, sx * d, sy * d, flipped)
    assert best is not None
    peak, snr, tx, ty, flipped = best
    needed = math.sqrt(2.0 * math.log(ref_small.size * len(candidates))) + min_significance
    if not snr >= needed:
        raise RegistrationError(f"registration failed: phase correlation peak at {snr:.1f} σ, "
                                f"need {needed:.1f} σ")
    src_full = np.asarray(image[::-1, ::-1] if flipped else image, dtype=np.float32)
    tx, ty = _refine_shift(src_full, np.asarray(reference_image, dtype=np.float32), tx, ty, refine_size)
    if flipped:
        # The turned frame's pixel (x, y) is the frame's (w-1-x, h-1-y).
        matrix = np.array([[-1.0, 0.0, w - 1 + tx], [0.0, -1.0, h - 1 + ty], [0.0, 0.0, 1.0]])
    else:
        matrix = np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])
    return Registration(transform=Transform.from_array(matrix), matched=0, residual_px=math.nan,
                        method="phase", peak=peak)


def star_poor(n_stars: int, *, min_matches: int) -> bool:
    """Whether a frame with ``n_stars`` stars is star-poor (fewer than 2 × ``min_matches``): one whose failed
    star match may fall back to phase correlation. A star-rich frame that cannot be matched is bad instead."""
    return n_stars < 2 * min_matches


def register(
    source: Stars,
    reference: ReferenceAsterisms | Stars,
    *,
    image: npt.NDArray[np.floating] | None = None,
    reference_image: npt.NDArray[np.floating] | None = None,
    model: Model = "similarity",
    min_matches: int = 8,
    match_radius_px: float = 2.0,
    downsample: int = 4,
    seed: int | np.random.Generator = 0,
) -> Registration:
    """`find_transform`, falling back to `phase_correlate` for a star-poor frame.

    The fallback needs both images and is taken only when star matching fails on a frame with fewer than
    2 × ``min_matches`` stars: a star-rich frame that cannot be matched is bad, not star-poor. Stars the
    frame does have then polish the phase translation.
    """
    src = _xy(source)
    try:
        return find_transform(src, reference, model=model, min_matches=min_matches,
                              match_radius_px=match_radius_px, seed=seed)
    except RegistrationError as err:
        if image is None or reference_image is None or not star_poor(src.shape[0], min_matches=min_matches):
            raise
        star_error = err
    try:
        reg = phase_correlate(image, reference_image, downsample=downsample)
    except RegistrationError as err:
        raise RegistrationError(f"{star_error}; {str(err).removeprefix('registration failed: ')}") from err
    ref_xy = reference.xy if isinstance(reference, ReferenceAsterisms) else _xy(reference)
    return _polish_translation(reg, src, ref_xy, radius=max(match_radius_px, 1.5))


# ---------------------------------------------------------------------------------------------------------
# Stars


def _xy(stars: Stars) -> F64:
    if isinstance(stars, StarList):
        return np.column_stack([stars.x, stars.y]).astype(np.float64)
    a = np.asarray(stars, dtype=np.float64)
    if a.size == 0:
        return np.empty((0, 2))
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"star positions must be an (N, 2) array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("star positions must be finite")
    return np.ascontiguousarray(a)


def _asterisms(xy: F64, neighbours: int) -> tuple[IntArray, F64]:
    """Triangles of each star with its nearest neighbours: canonical vertex order and side-ratio invariants."""
    n = xy.shape[0]
    k = min(neighbours, n)
    if k < 3:
        return np.empty((0, 3), dtype=np.intp), np.empty((0, 2))
    _, nn = cKDTree(xy).query(xy, k=k)
    combos = np.array(list(itertools.combinations(range(k), 3)))
    tri = np.unique(np.sort(nn[:, combos].reshape(-1, 3), axis=1), axis=0)
    p = xy[tri]  # (T, 3, 2)
    # Side opposite each vertex.
    opp = np.stack([np.hypot(*(p[:, 2] - p[:, 1]).T), np.hypot(*(p[:, 0] - p[:, 2]).T),
                    np.hypot(*(p[:, 1] - p[:, 0]).T)], axis=1)
    order = np.argsort(-opp, axis=1, kind="stable")
    tri = np.take_along_axis(tri, order, axis=1)
    sides = np.take_along_axis(opp, order, axis=1)
    ok = sides[:, 0] > 1.0
    tri, sides = tri[ok], sides[ok]
    inv = np.column_stack([sides[:, 1] / sides[:, 0], sides[:, 2] / sides[:, 0]])
    return np.ascontiguousarray(tri, dtype=np.intp), np.ascontiguousarray(inv)


def _orientation(p: F64) -> F64:
    """Sign of the turn v0 -> v1 -> v2 of each triangle (a rotation keeps it, a mirror flips it)."""
    a, b = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    return np.asarray(np.sign(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]), dtype=np.float64)


def _hypotheses(src: F64, neighbours: int, ref: ReferenceAsterisms, *, tolerance: float,
                max_scale_change: float, radius: float) -> tuple[C128, C128, IntArray]:
    """Similarities (a, b as complex numbers: z_ref = a·z + b) proposed by matched triangle pairs, ordered
    by the number of proposals that agree with them; returns (a, b, votes)."""
    empty: tuple[C128, C128, IntArray] = (np.empty(0, dtype=np.complex128), np.empty(0, dtype=np.complex128),
                                          np.empty(0, dtype=np.intp))
    tri, inv = _asterisms(src, neighbours)
    if tri.shape[0] == 0 or ref.triangles.shape[0] == 0:
        return empty
    k = min(8, ref.triangles.shape[0])
    dist, idx = ref.invariant_tree.query(inv, k=k, distance_upper_bound=tolerance)
    dist, idx = dist.reshape(inv.shape[0], k), idx.reshape(inv.shape[0], k)
    si, col = np.nonzero(np.isfinite(dist))
    if si.size == 0:
        return empty
    ri = idx[si, col]
    ps, pr = src[tri[si]], ref.xy[ref.triangles[ri]]
    same = _orientation(ps) == _orientation(pr)
    ps, pr = ps[same], pr[same]
    zs = ps[..., 0] + 1j * ps[..., 1]
    zr = pr[..., 0] + 1j * pr[..., 1]
    ms, mr = zs.mean(axis=1, keepdims=True), zr.mean(axis=1, keepdims=True)
    a = np.sum((zr - mr) * np.conj(zs - ms), axis=1) / np.sum(np.abs(zs - ms) ** 2, axis=1)
    b = mr[:, 0] - a * ms[:, 0]
    fit = np.max(np.abs(a[:, None] * zs + b[:, None] - zr), axis=1)
    scale = np.abs(a)
    ok = (fit <= radius) & (scale >= 1.0 / (1.0 + max_scale_change)) & (scale <= 1.0 + max_scale_change)
    a, b, fit = a[ok], b[ok], fit[ok]
    if a.size == 0:
        return empty
    # Vote: proposals from correctly matched triangles share rotation, scale and shift.
    key = np.column_stack([
        np.round(np.degrees(np.angle(a)) / 0.5), np.round(np.log(np.abs(a)) / 0.002),
        np.round(b.real / (2 * radius)), np.round(b.imag / (2 * radius)),
    ]).astype(np.int64)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    votes = counts[inverse.ravel()]
    order = np.lexsort((fit, -votes))
    return a[order], b[order], votes[order]


def _best_hypothesis(hyps: tuple[C128, C128, IntArray], src: F64, ref: ReferenceAsterisms, *, radius: float,
                     min_matches: int, max_trials: int, rng: np.random.Generator) -> tuple[F64 | None, int]:
    """The proposal that brings most frame stars onto reference stars, as a 3×3 matrix, and that count."""
    a, b, _ = hyps
    if a.size == 0:
        return None, 0
    if a.size > max_trials:
        # The best-voted half is kept; the rest of the trials are drawn from the others.
        head = max_trials // 2
        tail = head + np.sort(rng.choice(a.size - head, size=max_trials - head, replace=False))
        pick = np.concatenate([np.arange(head), tail])
        a, b = a[pick], b[pick]
    pts = src[:_EVAL_STARS]
    z = pts[:, 0] + 1j * pts[:, 1]
    enough = max(min_matches, math.ceil(0.5 * min(pts.shape[0], len(ref))))
    best_i, best_count = -1, 0
    for start in range(0, a.size, _CHUNK):
        zz = a[start:start + _CHUNK, None] * z[None, :] + b[start:start + _CHUNK, None]
        q = np.column_stack([zz.real.ravel(), zz.imag.ravel()])
        dist, _ = ref.tree.query(q, distance_upper_bound=radius)
        counts = np.isfinite(dist).reshape(zz.shape).sum(axis=1)
        i = int(np.argmax(counts))
        if counts[i] > best_count:
            best_i, best_count = start + i, int(counts[i])
        if best_count >= enough:
            break
    if best_i < 0:
        return None, 0
    ai, bi = a[best_i], b[best_i]
    matrix = np.array([[ai.real, -ai.imag, bi.real], [ai.imag, ai.real, bi.imag], [0.0, 0.0, 1.0]])
    return matrix, best_count


# ---------------------------------------------------------------------------------------------------------
# Fitting


def _apply(matrix: F64, xy: F64) -> F64:
    h = xy @ matrix[:2, :2].T + matrix[:2, 2]
    if matrix[2, 0] != 0.0 or matrix[2, 1] != 0.0 or matrix[2, 2] != 1.0:
        w = xy @ matrix[2, :2] + matrix[2, 2]
        h = h / w[:, None]
    return np.asarray(h, dtype=np.float64)


def _residuals(matrix: F64, src: F64, dst: F64) -> F64:
    return np.asarray(np.hypot(*(_apply(matrix, src) - dst).T), dtype=np.float64)


def _pairs(matrix: F64, src: F64, ref: ReferenceAsterisms, radius: float) -> IntArray:
    """One-to-one (frame index, reference index) pairs within ``radius`` after ``matrix``."""
    dist, idx = ref.tree.query(_apply(matrix, src), distance_upper_bound=radius)
    si = np.flatnonzero(np.isfinite(dist))
    if si.size == 0:
        return np.empty((0, 2), dtype=np.intp)
    ri = idx[si]
    # Two frame stars on one reference star: the closer one keeps it.
    order = np.argsort(dist[si], kind="stable")
    _, first = np.unique(ri[order], return_index=True)
    keep = np.sort(order[first])
    return np.column_stack([si[keep], ri[keep]]).astype(np.intp)


def fit_transform(source: npt.ArrayLike, target: npt.ArrayLike, *,
                  model: Model = "similarity") -> tuple[Transform, float]:
    """The least-squares ``model`` transform mapping (N, 2) ``source`` points onto ``target`` ones (pairs known,
    e.g. a grid of pixels carried through two plate solutions), and the RMS distance (px) it leaves. A similarity
    cannot mirror: a mirrored pair is fitted as an affine transform."""
    if model not in MODEL_POINTS:
        raise ValueError(f"unknown registration model {model!r}; expected one of {', '.join(MODEL_POINTS)}")
    src, dst = _xy(source), _xy(target)
    if src.shape != dst.shape or src.shape[0] < MODEL_POINTS[model]:
        raise ValueError(f"fit_transform needs as many targets as sources, at least {MODEL_POINTS[model]}")
    matrix = _fit(model, src, dst)
    if model == "similarity" and np.linalg.det(_fit("affine", src, dst)[:2, :2]) < 0.0:
        matrix = _fit("affine", src, dst)
    resid = _residuals(matrix, src, dst)
    return Transform.from_array(matrix), float(np.sqrt(np.mean(resid**2)))


def _fit(model: Model, src: F64, dst: F64, weight: F64 | None = None) -> F64:
    """(Weighted) least-squares ``model`` mapping src onto dst, as a 3×3 matrix. Homographies are fitted
    unweighted (OpenCV's fit takes no weights)."""
    w = np.ones(src.shape[0]) if weight is None else weight
    if model == "similarity":
        zs, zd = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
        ms, md = np.sum(w * zs) / w.sum(), np.sum(w * zd) / w.sum()
        a = np.sum(w * (zd - md) * np.conj(zs - ms)) / np.sum(w * np.abs(zs - ms) ** 2)
        b = md - a * ms
        return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag], [0.0, 0.0, 1.0]])
    if model == "affine":
        root = np.sqrt(w)[:, None]
        design = np.column_stack([src, np.ones(src.shape[0])])
        coef, *_ = np.linalg.lstsq(design * root, dst * root, rcond=None)
        return np.vstack([coef.T, [0.0, 0.0, 1.0]])
    h, _ = cv2.findHomography(src.astype(np.float64), dst.astype(np.float64), 0)
    if h is None:
        raise RegistrationError("registration failed: homography fit is degenerate")
    return np.asarray(h / h[2, 2], dtype=np.float64)


def _rank_weights(pairs: IntArray, resid: F64) -> F64:
    """Inverse-variance weights by brightness: matched stars are split by frame brightness rank (the lists
    are brightest first) into groups of at least 30, and each group is weighted by 1/its mean squared
    residual, so faint stars with noisy centroids count for what they are worth."""
    n = pairs.shape[0]
    groups = min(6, n // 30)
    if groups < 2:
        return np.ones(n)
    weight = np.empty(n)
    for idx in np.array_split(np.argsort(pairs[:, 0], kind="stable"), groups):
        weight[idx] = 1.0 / max(float(np.mean(resid[idx] ** 2)), 1e-8)
    return weight


def _refine(matrix: F64, src: F64, ref: ReferenceAsterisms, *, model: Model,
            radius: float) -> tuple[F64, IntArray]:
    """Least squares on every matched star, re-matching until the set settles, then 3σ clipping, then a
    fit weighted by brightness (see `_rank_weights`)."""
    need = MODEL_POINTS[model] + 1
    pairs = _pairs(matrix, src, ref, radius)
    for _ in range(10):
        if pairs.shape[0] < need:
            return matrix, pairs
        matrix = _fit(model, src[pairs[:, 0]], ref.xy[pairs[:, 1]])
        new = _pairs(matrix, src, ref, radius)
        if np.array_equal(new, pairs):
            break
        pairs = new
    for _ in range(5):
        resid = _residuals(matrix, src[pairs[:, 0]], ref.xy[pairs[:, 1]])
        keep = resid <= max(3.0 * float(np.sqrt(np.mean(resid**2))), 1e-3)
        if keep.all() or np.count_nonzero(keep) < need:
            break
        pairs = pairs[keep]
        matrix = _fit(model, src[pairs[:, 0]], ref.xy[pairs[:, 1]])
    for _ in range(2):
        resid = _residuals(matrix, src[pairs[:, 0]], ref.xy[pairs[:, 1]])
        matrix = _fit(model, src[pairs[:, 0]], ref.xy[pairs[:, 1]], _rank_weights(pairs, resid))
    return matrix, pairs


# ---------------------------------------------------------------------------------------------------------
# Phase correlation


def _phase_image(image: npt.NDArray[np.floating], d: int) -> FloatArray:
    """A downsampled, hot-pixel-free, high-passed copy for phase correlation."""
    a: FloatArray = np.asarray(image, dtype=np.float32)
    h, w = a.shape
    if d >= 2:
        a = np.asarray(cv2.resize(a[: h // 2 * 2, : w // 2 * 2], (w // 2, h // 2),
                                  interpolation=cv2.INTER_AREA), dtype=np.float32)
    # A 3×3 median removes hot pixels: they sit still on the sensor and would pull the peak to zero shift.
    a = np.asarray(cv2.medianBlur(a, 3), dtype=np.float32)
    if d > 2:
        a = np.asarray(cv2.resize(a, (max(1, w // d), max(1, h // d)), interpolation=cv2.INTER_AREA),
                       dtype=np.float32)
    # High-pass: gradients and vignetting sit still on the sensor too. No threshold: clipping star cores
    # changes their shape with their sub-pixel phase and biases the shift by up to half a pixel.
    return np.asarray(a - cv2.GaussianBlur(a, (0, 0), 8.0), dtype=np.float32)


def _refine_shift(src: FloatArray, ref: FloatArray, tx: float, ty: float, size: int) -> tuple[float, float]:
    """Full-resolution phase correlation of the overlapping central crop, around the coarse shift."""
    h, w = ref.shape
    ix, iy = round(tx), round(ty)
    # Reference pixels whose frame counterpart (x - ix, y - iy) is inside the frame.
    x0, x1 = max(0, ix), min(w, w + ix)
    y0, y1 = max(0, iy), min(h, h + iy)
    cw, ch = min(size, x1 - x0), min(size, y1 - y0)
    if cw < 32 or ch < 32:
        return tx, ty
    cx0, cy0 = x0 + (x1 - x0 - cw) // 2, y0 + (y1 - y0 - ch) // 2
    r = _phase_image(ref[cy0:cy0 + ch, cx0:cx0 + cw], 1)
    s = _phase_image(src[cy0 - iy:cy0 - iy + ch, cx0 - ix:cx0 - ix + cw], 1)
    sx, sy, _, snr = _correlate(s, r)
    if not snr >= 8.0 or abs(sx) > 2.0 or abs(sy) > 2.0:
        return tx, ty
    return ix + sx, iy + sy


def _correlate(a: FloatArray, b: FloatArray) -> tuple[float, float, float, float]:
    """Phase correlation: the shift d with b(x) ≈ a(x - d), the peak height (0–1) and its significance in
    σ of the correlation surface. Sub-pixel by the ratio of the peak to its larger neighbour, which is
    exact for the sinc-shaped peak of a pure shift (Foroosh et al. 2002)."""
    window = np.asarray(cv2.createHanningWindow((a.shape[1], a.shape[0]), cv2.CV_32F), dtype=np.float32)
    fa = np.fft.rfft2(a * window)
    fb = np.fft.rfft2(b * window)
    cross = fb * np.conj(fa)
    cross /= np.maximum(np.abs(cross), 1e-30)
    surface = np.fft.irfft2(cross, s=a.shape)
    h, w = surface.shape
    iy, ix = np.unravel_index(int(np.argmax(surface)), surface.shape)
    peak = float(surface[iy, ix])
    snr = (peak - float(surface.mean())) / max(float(surface.std()), 1e-30)

    def offset(c0: float, cm: float, cp: float) -> float:
        if cp >= cm and cp > 0.0:
            return cp / (cp + c0)
        if cm > 0.0:
            return -cm / (cm + c0)
        return 0.0

    fx = offset(peak, float(surface[iy, (ix - 1) % w]), float(surface[iy, (ix + 1) % w]))
    fy = offset(peak, float(surface[(iy - 1) % h, ix]), float(surface[(iy + 1) % h, ix]))
    dx = (ix if ix <= w // 2 else ix - w) + fx
    dy = (iy if iy <= h // 2 else iy - h) + fy
    return float(dx), float(dy), peak, snr


def _polish_translation(reg: Registration, src: F64, ref_xy: F64, *, radius: float) -> Registration:
    """Refine a phase-correlation translation with the few stars the frame has, when they match."""
    if src.shape[0] == 0 or ref_xy.shape[0] == 0:
        return reg
    m = reg.transform.as_array()
    dist, idx = cKDTree(ref_xy).query(_apply(m, src), distance_upper_bound=radius)
    ok = np.isfinite(dist)
    if not ok.any():
        return reg
    offset = np.median(ref_xy[idx[ok]] - _apply(m, src[ok]), axis=0)
    m = m.copy()
    m[:2, 2] += offset
    resid = _residuals(m, src[ok], ref_xy[idx[ok]])
    return Registration(transform=Transform.from_array(m), matched=int(ok.sum()),
                        residual_px=float(np.sqrt(np.mean(resid**2))), method="phase", peak=reg.peak)
