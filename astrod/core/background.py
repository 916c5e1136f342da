"""Background (gradient) extraction: a smooth model of the sky, fitted to star- and object-masked samples and
subtracted per channel, the sky's median level kept.

Why a low-order polynomial and not a mesh (photutils' ``Background2D``, or an RBF through the boxes): a mesh
model follows whatever varies on the scale of a few boxes, so a nebula that fills a fifth of the frame becomes
"background" and is eaten. The gradients to remove — light pollution, moonlight, a warm corner that calibration
left, residual vignetting — vary on the scale of the frame, which a polynomial of degree 2 (6 terms; 3: 10)
in the frame's normalised coordinates describes, and a polynomial cannot bend itself around a nebula. Samples
on a nebula too faint for the per-pixel mask are then rejected as what they are: boxes brighter than the
smooth model by more than the boxes' scatter about it (σ from their MAD). The clipping is asymmetric and
tight above (``kappa_high`` = 1 σ, below only at ``kappa_low`` = 4 σ: extended emission only ever adds light),
and every box is judged again against each new fit: the first fit bends towards a large nebula, so the
nebula's boxes stand out by about the misfit elsewhere, and only a tight threshold catches them; once they are
out the fit is straight and they stand out clearly, while boxes rejected only for the first fit's misfit come
back. The price is a fit to the lower part of the boxes' scatter: about a third of a box's noise (σ/√n of a
box's pixels), negligible.

The steps, on a copy binned so its longer side has at most ``max_side`` px (a block mean: cheap at 26 MP and
the sky is smooth):

1. mask: pixels of the luminance (the channels' mean) more than ``mask_sigma`` σ above the sky, grown by
   ``mask_grow`` binned px (stars, their halos, bright nebulae), and NaN (no coverage);
2. samples: a mesh of ``mesh`` boxes across the longer side; each box with enough unmasked pixels gives its
   σ-clipped median (per channel);
3. fit: least squares per channel, iterated with asymmetric clipping; a box rejected in one channel is rejected
   in every channel (a red nebula is no background in blue either);
4. subtract (`subtract_background`): ``x - (model - median(model))``, in bands of rows, evaluating the model
   per band (no full-size model is ever held).

The model is a value (`BackgroundModel`: the coefficients, the frame's size, the pedestal kept) that renders at
any resolution (`render_background`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from astrod.core.stretch import downsample

FloatArray = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

_MAD = 1.4826
_BAND_ROWS = 512


@dataclass(frozen=True, slots=True)
class BackgroundModel:
    """A polynomial sky per plane: ``coefficients[p]`` of the terms ``x^i y^j`` (i + j ≤ ``degree``, in
    `_terms` order) over coordinates normalised to [-1, 1] across the frame of ``shape`` (H, W); ``pedestal``
    per plane is the model's median, added back after subtraction. ``boxes``: samples used / offered."""

    degree: int
    coefficients: tuple[tuple[float, ...], ...]
    pedestal: tuple[float, ...]
    shape: tuple[int, int]
    boxes_used: int
    boxes_total: int

    @property
    def planes(self) -> int:
        return len(self.coefficients)

    def cards(self) -> dict[str, tuple[float | int | str, str]]:
        """FITS cards saying what was removed (degree, samples, each plane's range of the model)."""
        return {"BKGMODEL": (f"polynomial degree {self.degree}", "sky gradient model removed"),
                "BKGBOXES": (self.boxes_used, f"sky samples used of {self.boxes_total}")}


def background_mask(lum: FloatArray, *, mask_sigma: float = 3.0, grow: int = 2) -> npt.NDArray[np.bool_]:
    """True on background samples of a (H, W) luminance: finite, and not within ``grow`` px of a pixel more
    than ``mask_sigma`` robust σ above the sky (stars, bright nebulae). σ comes from differences of
    neighbouring pixels (a gradient or a nebula does not widen it); the sky is a coarse local one (a 5×5
    median over a copy binned to about 32 px across), so a strong gradient does not mask half the frame."""
    finite = np.isfinite(lum)
    med = float(np.median(lum[finite])) if finite.any() else 0.0
    filled = np.where(finite, lum, np.float32(med)).astype(np.float32)
    diff = np.diff(filled, axis=1)
    sigma = _MAD * float(np.median(np.abs(diff - np.median(diff)))) / math.sqrt(2.0)
    f = max(1, min(filled.shape) // 32)
    coarse = downsample(filled, f) if f > 1 else filled
    if min(coarse.shape) > 5:
        coarse = np.asarray(cv2.medianBlur(coarse, 5), dtype=np.float32)
    local = cv2.resize(coarse, (filled.shape[1], filled.shape[0]), interpolation=cv2.INTER_LINEAR)
    bright = (filled - local) > mask_sigma * sigma if sigma > 0 else np.zeros(filled.shape, bool)
    if grow > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        bright = cv2.dilate(bright.astype(np.uint8), kernel).astype(bool)
    mask: npt.NDArray[np.bool_] = finite & ~bright
    return mask


def fit_background(image: npt.NDArray[np.floating], *, degree: int = 2, mesh: int = 16, max_side: int = 1024,
                   mask_sigma: float = 3.0, mask_grow: int = 2, min_fill: float = 0.3, kappa_high: float = 1.0,
                   kappa_low: float = 4.0, iterations: int = 10) -> BackgroundModel:
    """The `BackgroundModel` of a linear (H, W) or (planes, H, W) image (NaN where nothing was measured)."""
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (planes, H, W), got shape {image.shape}")
    if not 0 <= degree <= 4:
        raise ValueError(f"polynomial degree must be 0 to 4, got {degree}")
    h, w = image.shape[-2:]
    factor = max(1, math.ceil(max(h, w) / max_side))
    small = downsample(image, factor) if factor > 1 else np.array(image, dtype=np.float32)
    cube = small if small.ndim == 3 else small[None]
    lum: FloatArray = np.asarray(np.mean(cube, axis=0, dtype=np.float32))
    keep = background_mask(lum, mask_sigma=mask_sigma, grow=mask_grow)
    xs, ys, values = _box_samples(cube, keep, mesh=mesh, min_fill=min_fill, factor=factor, shape=(h, w))
    total = values.shape[1]
    terms = _terms(xs, ys, degree)
    ok = np.all(np.isfinite(values), axis=0)
    coeffs = np.zeros((cube.shape[0], terms.shape[1]))
    for _ in range(iterations):
        if np.count_nonzero(ok) < 2 * terms.shape[1]:
            break
        coeffs = np.stack([np.linalg.lstsq(terms[ok], v[ok], rcond=None)[0] for v in values])
        resid = values - coeffs @ terms.T
        # every box is judged again against each new fit (a box rejected while the fit was bent comes back)
        finite = np.all(np.isfinite(values), axis=0)
        new_ok = finite.copy()
        for r in resid:
            # the scatter of every box about the fit: over the kept ones only, it would shrink at each pass
            sigma = _MAD * float(np.median(np.abs(r[finite] - np.median(r[ok]))))
            if sigma > 0:
                new_ok &= (r <= kappa_high * sigma) & (r >= -kappa_low * sigma)
        if np.array_equal(new_ok, ok):
            break
        ok = new_ok
    if np.count_nonzero(ok) < 2 * terms.shape[1]:  # too few samples for the surface: a flat sky
        coeffs = np.zeros((cube.shape[0], terms.shape[1]))
        coeffs[:, 0] = [float(np.median(v[np.isfinite(v)])) if np.isfinite(v).any() else 0.0 for v in values]
        degree = 0
        coeffs = coeffs[:, :1]
    model = BackgroundModel(degree=degree, coefficients=tuple(tuple(float(c) for c in row) for row in coeffs),
                            pedestal=(0.0,) * cube.shape[0], shape=(h, w), boxes_used=int(np.count_nonzero(ok)),
                            boxes_total=int(total))
    rendered = render_background(model, factor=max(1, math.ceil(max(h, w) / 256)))
    pedestal = tuple(float(np.median(p)) for p in rendered)
    return BackgroundModel(degree=model.degree, coefficients=model.coefficients, pedestal=pedestal, shape=(h, w),
                           boxes_used=model.boxes_used, boxes_total=model.boxes_total)


def render_background(model: BackgroundModel, *, factor: int = 1, rows: tuple[int, int] | None = None) -> FloatArray:
    """The model (planes, H // factor, W // factor) as sampled at the centres of ``factor``-px blocks (the
    block mean of a smooth surface), optionally only the binned rows ``rows`` = (start, stop)."""
    h, w = model.shape
    bh, bw = h // factor, w // factor
    r0, r1 = rows if rows is not None else (0, bh)
    xc = (np.arange(bw) * factor + (factor - 1) / 2.0) * (2.0 / max(w - 1, 1)) - 1.0
    yc = (np.arange(r0, r1) * factor + (factor - 1) / 2.0) * (2.0 / max(h - 1, 1)) - 1.0
    out = np.empty((model.planes, r1 - r0, bw), dtype=np.float32)
    powers = _powers(model.degree)
    xp = np.stack([xc**i for i in range(model.degree + 1)])  # (degree+1, W)
    yp = np.stack([yc**j for j in range(model.degree + 1)])
    for p, coeffs in enumerate(model.coefficients):
        # sum over j of y^j · P_j(x): one outer product per power of y, in float32
        along_x = np.zeros((model.degree + 1, bw))
        for (i, j), c in zip(powers, coeffs, strict=True):
            along_x[j] += c * xp[i]
        out[p] = np.outer(yp[0], along_x[0]).astype(np.float32)
        for j in range(1, model.degree + 1):
            out[p] += np.outer(yp[j].astype(np.float32), along_x[j].astype(np.float32))
    return out


def subtract_background(image: npt.NDArray[np.floating], model: BackgroundModel, *,
                        out: FloatArray | None = None) -> FloatArray:
    """``image - (model - pedestal)`` per plane, float32, in bands of rows (``out`` may be ``image`` itself;
    NaN stays NaN)."""
    cube = image if image.ndim == 3 else image[None]
    if cube.shape[0] != model.planes or tuple(cube.shape[-2:]) != model.shape:
        raise ValueError(f"image {image.shape} does not match the model ({model.planes} planes, {model.shape})")
    target = np.empty(image.shape, dtype=np.float32) if out is None else out
    if target.shape != image.shape or target.dtype != np.float32:
        raise ValueError(f"out must be float32 {image.shape}, got {target.dtype}{target.shape}")
    tcube = target if target.ndim == 3 else target[None]
    h = model.shape[0]
    for r0 in range(0, h, _BAND_ROWS):
        r1 = min(h, r0 + _BAND_ROWS)
        band = render_background(model, rows=(r0, r1))
        for p in range(model.planes):
            band[p] -= np.float32(model.pedestal[p])
            np.subtract(np.asarray(cube[p, r0:r1], dtype=np.float32), band[p], out=tcube[p, r0:r1])
    return target


def _powers(degree: int) -> list[tuple[int, int]]:
    """The (i, j) of the terms x^i y^j with i + j ≤ degree, constant first."""
    return [(i, t - i) for t in range(degree + 1) for i in range(t, -1, -1)]


def _terms(x: F64, y: F64, degree: int) -> F64:
    return np.stack([x**i * y**j for i, j in _powers(degree)], axis=1)


def _box_samples(cube: FloatArray, keep: npt.NDArray[np.bool_], *, mesh: int, min_fill: float, factor: int,
                 shape: tuple[int, int]) -> tuple[F64, F64, F64]:
    """Per mesh box with at least ``min_fill`` of its pixels unmasked: its centre in normalised full-frame
    coordinates and the σ-clipped median of each plane (NaN for the other boxes)."""
    planes, bh, bw = cube.shape
    box = max(4, math.ceil(max(bh, bw) / mesh))
    ny, nx = math.ceil(bh / box), math.ceil(bw / box)
    xs, ys = [], []
    values = np.full((planes, ny * nx), np.nan)
    h, w = shape
    for by in range(ny):
        for bx in range(nx):
            sl = (slice(by * box, min(bh, (by + 1) * box)), slice(bx * box, min(bw, (bx + 1) * box)))
            sel = keep[sl]
            k = by * nx + bx
            # the box's centre in full-frame pixels (binned pixel i is centred on i·factor + (factor - 1)/2)
            cy = (by * box + min(bh, (by + 1) * box) - 1) / 2.0 * factor + (factor - 1) / 2.0
            cx = (bx * box + min(bw, (bx + 1) * box) - 1) / 2.0 * factor + (factor - 1) / 2.0
            xs.append(cx * 2.0 / max(w - 1, 1) - 1.0)
            ys.append(cy * 2.0 / max(h - 1, 1) - 1.0)
            if np.count_nonzero(sel) < min_fill * sel.size:
                continue
            for p in range(planes):
                values[p, k] = clipped_median(cube[p][sl][sel], max_samples=2048)
    return np.asarray(xs), np.asarray(ys), values


def clipped_median(values: FloatArray, *, kappa: float = 3.0, iterations: int = 3,
                   max_samples: int = 100_000) -> float:
    """σ-clipped median (σ from the MAD) of a sample, from at most ``max_samples`` of its values (evenly
    strided: a median needs no more); NaN for an empty one."""
    flat = values.reshape(-1)
    step = max(1, math.ceil(flat.size / max_samples))
    v = flat[::step].astype(np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan
    for _ in range(iterations):
        med = float(np.median(v))
        sigma = _MAD * float(np.median(np.abs(v - med)))
        if sigma <= 0:
            break
        keep = np.abs(v - med) <= kappa * sigma
        if keep.all():
            break
        v = v[keep]
    return float(np.median(v))
