"""Sky background, star detection and star measurement.

Background
    The frame is cut into a mesh of boxes (64 px by default). Each box gets the σ-clipped median of a
    strided sample of its pixels (one radix sort, then clipping by binary search) as its sky level, and as
    its noise the clipped RMS of differences between pixels a few columns apart, over √2: a difference
    cancels a gradient across the box and the wings of stars, which would inflate the spread of the values.
    A 3×3 median over the mesh removes boxes spoiled by bright stars; the mesh is interpolated bilinearly
    (the `cv2.resize` convention) where a full map is wanted.

Detection
    Stars are found on a 2×2-binned frame smoothed by a [1 2 1]⊗[1 2 1] kernel (one fused pass over the
    frame). A Bayer frame is always binned: every 2×2 block holds one whole CFA cell, so the binned frame
    is a luminance whatever the pattern. The background mesh is measured on that detection image, so the
    threshold (level + k·σ, interpolated from the mesh) accounts for what binning and smoothing did to the
    noise. The thresholding pass also marks local maxima; `cv2.connectedComponents` labels the blobs, and
    every significant maximum of a blob is a candidate (a faint star merged with a cosmic-ray hit or a
    neighbour's wing is not lost). Blobs too large, peaks at the border, flat tops (saturation) and single
    hot pixels (whose neighbours carry no light) are rejected.

Measurement
    Only the brightest ``max_stars`` candidates are measured, on the full-resolution frame (for Bayer
    frames on the mean of each cell's two greens, which sits at the cell centre whatever the star's
    colour). Hot pixels and cosmic-ray hits inside a star's window are replaced by their neighbours'
    median first. The centroid is weighted by a circular Gaussian the size of the PSF (the brightest
    stars' median), iterated to its fixed point (SExtractor's XWIN): unbiased for any symmetric star, and
    the weight keeps the noise of the wings out. On a Bayer frame the centroid is then refined on the raw
    mosaic at full resolution, each colour scaled by the star's own colour ratio: a star of 1–2 px sits in
    one or two superpixels, whose centroid locks onto their grid. Eccentricity comes from the second
    moments under the same weight, deconvolved from it and from the pixel's footprint. FWHM comes from a
    log-quadratic fit of the pixels above half maximum, which unlike second moments does not depend on the
    wings of a Moffat profile; the pixel's box (variance 1/12 px²) is removed, so the FWHM is that of the
    PSF (for Bayer frames the fit uses the green pixels at their own positions). HFR is the radius holding
    half of the flux within an aperture of 3 FWHM. (The frame's FWHM and eccentricity for the quality gates
    come from fitted stars: `astrod.core.psf`.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numba
import numpy as np
import numpy.typing as npt
from numba import njit, prange
from scipy.spatial import cKDTree

from astrod.core.bayer import green_on_main_diagonal

FloatArray = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

# Status codes of `_screen` / `_measure`.
_OK = 0
_SATURATED = 1
_HOT = 2
_EDGE = 3
_FAILED = 4

_PSF_STARS = 30  # brightest stars that set the centroid weight
_PIXEL_VAR = 1.0 / 12.0  # variance of a pixel's box, px²
_SPIKE_RATIO = 5.0  # a pixel this many times brighter than its 8 neighbours is not starlight


@dataclass(frozen=True, slots=True, eq=False)
class Background:
    """Sky level and per-pixel noise of a frame (ADU), overall and per mesh box.

    ``map`` is the interpolated background at the resolution of the data it was measured on (None unless
    asked for); ``mesh`` and ``noise_mesh`` are the per-box values; ``box`` is their size in pixels of that
    data. For a Bayer frame these describe the 2×2 superpixel luminance.
    """

    level: float
    noise: float
    map: FloatArray | None
    mesh: FloatArray
    noise_mesh: FloatArray
    box: int


@dataclass(frozen=True, slots=True, eq=False)
class StarList:
    """Measured stars of one frame, brightest first, in full-resolution pixel coordinates.

    ``x, y`` are sub-pixel centroids (pixel centres at integers), ``flux`` is background-subtracted ADU
    summed over the aperture, ``fwhm`` and ``hfr`` are in pixels, ``eccentricity`` is sqrt(1 - b²/a²) of
    the star's second moments. ``n_detected`` counts the sources that passed detection, including those
    beyond ``max_stars`` that were not measured (see `detect_stars`). ``width, height`` are the frame size.
    """

    x: F64
    y: F64
    flux: F64
    fwhm: F64
    hfr: F64
    eccentricity: F64
    n_detected: int
    width: int
    height: int

    def __len__(self) -> int:
        return int(self.x.size)

    @property
    def xy(self) -> F64:
        """(N, 2) array of (x, y)."""
        return np.column_stack([self.x, self.y])

    @classmethod
    def empty(cls, *, width: int, height: int, n_detected: int = 0) -> StarList:
        z = _frozen(np.empty(0, dtype=np.float64))
        return cls(x=z, y=z, flux=z, fwhm=z, hfr=z, eccentricity=z, n_detected=n_detected,
                   width=width, height=height)

    def brightest(self, n: int) -> StarList:
        """The first ``n`` stars (they are sorted by flux, brightest first)."""
        k = max(0, min(int(n), len(self)))
        return StarList(
            x=self.x[:k], y=self.y[:k], flux=self.flux[:k], fwhm=self.fwhm[:k], hfr=self.hfr[:k],
            eccentricity=self.eccentricity[:k], n_detected=self.n_detected, width=self.width,
            height=self.height,
        )


def _frozen(a: npt.NDArray[np.float64]) -> F64:
    a.setflags(write=False)
    return a


# ---------------------------------------------------------------------------------------------------------
# Public API


def estimate_background(
    data: npt.NDArray[np.floating] | npt.NDArray[np.integer],
    *,
    box: int = 64,
    clip_sigma: float = 3.0,
    step: int | None = None,
    bayer: str | None = None,
    with_map: bool = False,
) -> Background:
    """Sky level and noise of ``data`` (H, W) on a mesh of ``box``-pixel boxes.

    Each box uses every ``step``-th pixel in both directions (default: about 256 samples per box). With
    ``bayer`` set (any pattern name) the statistics are those of the 2×2 superpixel luminance and ``box``
    counts full-resolution pixels. ``with_map`` adds the interpolated full map.
    """
    image = _as_2d_float32(data)
    if bayer is not None:
        image = _bin2(image)
        box = max(2, box // 2)
    return _background(image, box=box, clip_sigma=clip_sigma, step=step, lag=2, with_map=with_map)


def detect_stars(
    data: npt.NDArray[np.floating] | npt.NDArray[np.integer],
    *,
    bayer: str | None = None,
    threshold_sigma: float = 5.0,
    max_stars: int = 300,
    bin2: bool = True,
    box: int = 64,
    saturation: float | None = None,
    min_area: int = 1,
    max_area: int = 2500,
    min_fwhm: float = 0.8,
    max_fwhm: float = 30.0,
    min_neighbour_ratio: float = 0.1,
    min_fwhm_ratio: float = 0.6,
    max_fwhm_ratio: float = 2.5,
    max_radius: int = 24,
) -> StarList:
    """Detect point sources in ``data`` (H, W) and measure the brightest ``max_stars`` of them.

    ``bayer`` (the CFA pattern seen from pixel (0, 0), e.g. "RGGB", or None for mono) makes detection run
    on the 2×2 superpixel luminance and measurement on each cell's mean green (whose ``flux`` is then
    green light); coordinates and sizes are still full-resolution pixels.
    ``bin2`` detects on a 2×2-binned frame (measurement stays at full resolution for mono frames).
    ``threshold_sigma`` is k in level + k·σ on the smoothed detection image; ``box`` is the background mesh
    size in full-resolution pixels. ``saturation`` (ADU) rejects stars whose peak reaches it; without it a
    flat top of three pixels within 0.5 % of the peak counts as saturated. ``min_area``/``max_area`` bound
    a blob's area in full-resolution pixels; ``min_fwhm``/``max_fwhm`` its FWHM. A source whose four
    neighbours of its brightest pixel average less than ``min_neighbour_ratio`` of that pixel (above
    background) is a hot pixel or cosmic-ray hit. A measured source whose FWHM is not within
    [``min_fwhm_ratio``, ``max_fwhm_ratio``] times the brightest stars' median is not a star (a cosmic-ray
    track, a galaxy). ``max_radius`` caps the measurement window (px). ``n_detected`` counts the sources
    that passed detection and the cheap checks (area, border, saturation, hot pixel), less those that
    were measured and failed: sources beyond the measured ones count unverified.
    """
    if threshold_sigma <= 0 or max_stars < 0 or box < 4:
        raise ValueError(f"bad detection parameters: threshold_sigma={threshold_sigma} "
                         f"max_stars={max_stars} box={box}")
    full = _as_2d_float32(data)
    height, width = full.shape
    binned = bin2 or bayer is not None
    if binned and (height < 8 or width < 8):
        raise ValueError(f"frame {width}x{height} is too small to bin for star detection")
    # f: size of one detection-image pixel in full-resolution pixels.
    f = 2 if binned else 1
    if bayer is not None:
        # Detect on the superpixel luminance (all the light); measure on the mean of each cell's two green
        # pixels, which sits exactly at the cell centre whatever the star's colour (the luminance does
        # not: its red and blue pixels are off-centre and weigh by colour).
        lum, measure_img = _bayer_planes(full, green_on_main_diagonal(bayer))
        detect_img = _smooth121(lum)
        m_scale = 2
    else:
        detect_img = _bin2_smooth(full) if binned else _smooth121(full)
        measure_img = full
        m_scale = 1
    # Lag 3: pixels of the [1 2 1]-smoothed detection image that far apart share no noise.
    # About 11×11 samples per box are enough for a threshold: the 3×3 median over boxes and the
    # interpolation average further.
    dbox = max(4, box // f)
    bg = _background(detect_img, box=dbox, clip_sigma=3.0, step=math.ceil(dbox / 11), lag=3, with_map=False)
    if bayer is not None:
        bg_measure = _background(measure_img, box=dbox, clip_sigma=3.0, step=math.ceil(dbox / 11), lag=2,
                                 with_map=False)
        noise_m = bg_measure.noise
    else:
        # Binning and smoothing keep the mean, so the detection mesh is the sky of the full frame too;
        # the per-pixel noise follows from the detection noise through the white-noise gain of 2×2
        # binning (1/2) and of the [1 2 1]⊗[1 2 1] kernel (3/8).
        bg_measure = bg
        noise_m = bg.noise / ((0.5 if binned else 1.0) * 0.375)

    chunks = _chunks(detect_img.shape[0])
    mask = _threshold_mask(detect_img, bg.mesh, bg.noise_mesh, float(threshold_sigma), chunks)
    n_labels, labels = cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)
    area, label, peak, px, py = _blob_maxima(mask, np.asarray(labels, dtype=np.int32), int(n_labels),
                                             detect_img, min(chunks, 2 * numba.get_num_threads()))
    dh, dw = detect_img.shape
    level_at_peak = _mesh_at(bg.mesh, px.astype(np.float64), py.astype(np.float64), dw, dh)
    height_above = peak.astype(np.float64) - level_at_peak
    area_full = area[label] * f * f
    keep = (
        (area_full >= min_area) & (area_full <= max_area) & (height_above > 0)
        & (px >= 1) & (py >= 1) & (px < dw - 1) & (py < dh - 1)
    )
    # Every local maximum of a blob is a candidate, so a faint star merged with a cosmic-ray hit or a
    # brighter neighbour is not lost; maxima within 2.5 px of a higher one in the same blob are its noise.
    cand = np.flatnonzero(keep)
    cand = cand[np.argsort(-height_above[cand], kind="stable")]
    if cand.size > 1:
        pairs = cKDTree(np.column_stack([px[cand], py[cand]])).query_pairs(2.5, output_type="ndarray")
        pairs = pairs[label[cand[pairs[:, 0]]] == label[cand[pairs[:, 1]]]]
        cand = np.delete(cand, np.unique(pairs.max(axis=1)))  # cand is sorted: the later one is lower
    if cand.size == 0:
        return StarList.empty(width=width, height=height)

    # Candidate position in measurement-image pixels: the detection pixel's centre.
    scale_dm = f / m_scale  # detection px -> measurement px
    cx0 = np.asarray((px[cand] + 0.5) * scale_dm - 0.5, dtype=np.float64)
    cy0 = np.asarray((py[cand] + 0.5) * scale_dm - 0.5, dtype=np.float64)
    bg_m = _mesh_at(bg_measure.mesh, px[cand].astype(np.float64), py[cand].astype(np.float64), dw, dh)
    sat = np.inf if saturation is None else float(saturation)
    search = max(1, math.ceil(scale_dm))
    # A star's brightest measured pixel carries at least half its detection peak (a quarter in green
    # alone); what falls short was a hot pixel.
    min_peak = 0.5 * height_above[cand] if bayer is None else 0.25 * height_above[cand]
    status, ix, iy = _screen(measure_img, cx0, cy0, bg_m, min_peak, search, sat, min_neighbour_ratio)
    good = status == _OK
    n_detected = int(np.count_nonzero(good))
    order = np.flatnonzero(good)
    # Some measured candidates fail; measure a few more than asked for.
    order = order[: int(max_stars * 1.2) + 10]
    if order.size == 0 or max_stars == 0:
        return StarList.empty(width=width, height=height, n_detected=n_detected)

    rmax = max(3, max_radius // m_scale)
    # The brightest stars measure the PSF; every star is then centred under a weight of that size, which
    # keeps the faint ones, whose own size is mostly noise, as precise as they can be.
    if bayer is None:
        footprint_xy, cfa, cfa_green = 0.0, np.zeros((1, 1), dtype=np.float32), -1
    else:
        # The mean of two diagonal greens spreads over ±1/4 full px² along its diagonal.
        cfa_green = int(green_on_main_diagonal(bayer))
        footprint_xy, cfa = (0.0625 if cfa_green else -0.0625), full
    first = order[:_PSF_STARS]
    own = _measure(measure_img, ix[first], iy[first], bg_m[first], np.zeros(first.size), noise_m, rmax,
                   _PIXEL_VAR, footprint_xy, cfa, cfa_green)
    good_fwhm = own[3][(own[6] == _OK) & np.isfinite(own[3])]
    if good_fwhm.size:
        weight = np.full(order.size, np.median(good_fwhm) / _FWHM_PER_SIGMA)
    else:
        weight = np.zeros(order.size)
    mx, my, mflux, mfwhm, mhfr, mecc, mstat = _measure(
        measure_img, ix[order], iy[order], bg_m[order], weight, noise_m, rmax, _PIXEL_VAR, footprint_xy, cfa,
        cfa_green,
    )
    # Back to full-resolution pixels (superpixel i covers full pixels 2i and 2i+1).
    x = mx * m_scale + (m_scale - 1) * 0.5
    y = my * m_scale + (m_scale - 1) * 0.5
    flux = mflux * m_scale * m_scale
    fwhm = mfwhm * m_scale
    hfr = mhfr * m_scale
    ok = (mstat == _OK) & (fwhm >= min_fwhm) & (fwhm <= max_fwhm) & (flux > 0) & np.isfinite(x + y + fwhm)
    # The PSF: for a Bayer frame, the brightest stars' FWHM as measured under the common weight, on the
    # green pixels (their own-weight first measurement on superpixels, which only sets that weight, is far
    # off for undersampled stars); for mono, that first measurement.
    measured = fwhm[ok][:_PSF_STARS]
    psf = math.nan
    if bayer is not None and measured.size >= 3:
        psf = float(np.median(measured))
    elif good_fwhm.size:
        psf = m_scale * float(np.median(good_fwhm))
    if math.isfinite(psf):
        # Much wider than the PSF: a galaxy, a nebula knot or a dust-shadow edge; much sharper: a
        # cosmic-ray track. Neither is a star.
        ok &= (fwhm <= max_fwhm_ratio * psf) & (fwhm >= min_fwhm_ratio * psf)
    sel = np.flatnonzero(ok)
    sel = sel[np.argsort(-flux[sel], kind="stable")]
    if sel.size > 1:
        # Two maxima of one star converge on one centre: the brighter measurement stays.
        radius = max(1.5, 0.5 * float(np.median(fwhm[sel])))
        pairs = cKDTree(np.column_stack([x[sel], y[sel]])).query_pairs(radius, output_type="ndarray")
        sel = np.delete(sel, np.unique(pairs.max(axis=1)))
    n_detected -= order.size - sel.size
    sel = sel[:max_stars]
    return StarList(
        x=_frozen(x[sel].copy()), y=_frozen(y[sel].copy()), flux=_frozen(flux[sel].copy()),
        fwhm=_frozen(fwhm[sel].copy()), hfr=_frozen(hfr[sel].copy()), eccentricity=_frozen(mecc[sel].copy()),
        n_detected=n_detected, width=width, height=height,
    )


# ---------------------------------------------------------------------------------------------------------
# Helpers


def _as_2d_float32(data: npt.NDArray[np.floating] | npt.NDArray[np.integer]) -> FloatArray:
    """A float32 (H, W) view or copy; (planes, H, W) colour data becomes the mean of its planes."""
    a = np.asarray(data)
    if a.ndim == 3:
        a = np.asarray(np.mean(a, axis=0, dtype=np.float32))
    if a.ndim != 2:
        raise ValueError(f"expected an (H, W) or (planes, H, W) image, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _bin2(image: FloatArray) -> FloatArray:
    """2×2 mean (odd last row/column dropped); with a CFA this is the superpixel luminance."""
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    out = cv2.resize(image[:h, :w], (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    return np.asarray(out, dtype=np.float32)


def _clip_correction(k: float) -> float:
    """RMS of a Gaussian cut at ±k σ, in units of σ."""
    phi = math.exp(-0.5 * k * k) / math.sqrt(2.0 * math.pi)
    return math.sqrt(max(1e-12, 1.0 - 2.0 * k * phi / math.erf(k / math.sqrt(2.0))))


def _background(image: FloatArray, *, box: int, clip_sigma: float, step: int | None, lag: int,
                with_map: bool) -> Background:
    if box < 2 or clip_sigma <= 0:
        raise ValueError(f"bad background parameters: box={box} clip_sigma={clip_sigma}")
    h, w = image.shape
    ny, nx = max(1, round(h / box)), max(1, round(w / box))
    stride = max(1, math.ceil(box / 16)) if step is None else max(1, int(step))
    level, sigma = _mesh_stats(image, ny, nx, stride, lag, float(clip_sigma), 10, _clip_correction(clip_sigma))
    level = _fill_and_filter(level)
    sigma = _fill_and_filter(sigma)
    full_map = None
    if with_map:
        full_map = np.asarray(cv2.resize(level, (w, h), interpolation=cv2.INTER_LINEAR), dtype=np.float32)
    level.setflags(write=False)
    sigma.setflags(write=False)
    return Background(level=float(np.median(level)), noise=float(np.median(sigma)), map=full_map,
                      mesh=level, noise_mesh=sigma, box=box)


def _fill_and_filter(mesh: FloatArray) -> FloatArray:
    """Boxes without data take the median of the others (all NaN if none has data); then a 3×3 median
    removes outlying boxes."""
    out = mesh.astype(np.float32, copy=True)
    bad = ~np.isfinite(out)
    if bad.all():
        out[:] = np.nan
        return out
    if bad.any():
        out[bad] = np.median(out[~bad])
    if min(out.shape) >= 3:
        out = np.asarray(cv2.medianBlur(out, 3), dtype=np.float32)
    return out


def _mesh_at(mesh: FloatArray, x: F64, y: F64, width: int, height: int) -> F64:
    """Bilinear value of a mesh covering a width×height image at pixel positions (cv2.resize convention)."""
    ny, nx = mesh.shape
    sx = np.clip((x + 0.5) * (nx / width) - 0.5, 0.0, nx - 1)
    sy = np.clip((y + 0.5) * (ny / height) - 0.5, 0.0, ny - 1)
    x0 = np.floor(sx).astype(np.intp)
    y0 = np.floor(sy).astype(np.intp)
    x1 = np.minimum(x0 + 1, nx - 1)
    y1 = np.minimum(y0 + 1, ny - 1)
    fx, fy = sx - x0, sy - y0
    m = mesh.astype(np.float64)
    top = m[y0, x0] * (1 - fx) + m[y0, x1] * fx
    bottom = m[y1, x0] * (1 - fx) + m[y1, x1] * fx
    return np.asarray(top * (1 - fy) + bottom * fy, dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------
# numba kernels


def _smooth121(image: FloatArray) -> FloatArray:
    return _smooth121_kernel(image, _chunks(image.shape[0]))


def _bin2_smooth(image: FloatArray) -> FloatArray:
    return _bin2_smooth_kernel(image, _chunks(image.shape[0] // 2))


def _chunks(rows: int) -> int:
    return max(1, min(64, rows // 16))


@njit(cache=True, nogil=True, inline="always")
def _smooth_row(prev: FloatArray, cur: FloatArray, nxt: FloatArray, tmp: FloatArray, out: FloatArray) -> None:
    w = cur.shape[0]
    for j in range(w):
        tmp[j] = np.float32(0.25) * (prev[j] + nxt[j]) + np.float32(0.5) * cur[j]
    out[0] = tmp[0]
    out[w - 1] = tmp[w - 1]
    for j in range(1, w - 1):
        out[j] = np.float32(0.25) * (tmp[j - 1] + tmp[j + 1]) + np.float32(0.5) * tmp[j]


@njit(cache=True, nogil=True, parallel=True)
def _smooth121_kernel(image: FloatArray, nchunks: int) -> FloatArray:  # pragma: no cover - numba
    h, w = image.shape
    out = np.empty((h, w), dtype=np.float32)
    for c in prange(nchunks):
        tmp = np.empty(w, dtype=np.float32)
        for i in range(c * h // nchunks, (c + 1) * h // nchunks):
            _smooth_row(image[max(i - 1, 0)], image[i], image[min(i + 1, h - 1)], tmp, out[i])
    return out


@njit(cache=True, nogil=True, inline="always")
def _bin_row(image: FloatArray, i: int, out: FloatArray) -> None:
    r0 = image[2 * i]
    r1 = image[2 * i + 1]
    for j in range(out.shape[0]):
        out[j] = np.float32(0.25) * ((r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1]))


@njit(cache=True, nogil=True, parallel=True)
def _bin2_smooth_kernel(image: FloatArray, nchunks: int) -> FloatArray:  # pragma: no cover - numba
    # Binning and smoothing fused: each chunk keeps three binned rows, so the frame is read once.
    h, w = image.shape[0] // 2, image.shape[1] // 2
    out = np.empty((h, w), dtype=np.float32)
    for c in prange(nchunks):
        r0, r1 = c * h // nchunks, (c + 1) * h // nchunks
        if r0 >= r1:
            continue
        prev = np.empty(w, dtype=np.float32)
        cur = np.empty(w, dtype=np.float32)
        nxt = np.empty(w, dtype=np.float32)
        tmp = np.empty(w, dtype=np.float32)
        _bin_row(image, max(r0 - 1, 0), prev)
        _bin_row(image, r0, cur)
        for i in range(r0, r1):
            _bin_row(image, min(i + 1, h - 1), nxt)
            _smooth_row(prev, cur, nxt, tmp, out[i])
            prev, cur, nxt = cur, nxt, prev
    return out


@njit(cache=True, nogil=True)
def _radix_sort(v: FloatArray, keys: npt.NDArray[np.uint32], tmp: npt.NDArray[np.uint32],
                count: IntArray) -> None:  # pragma: no cover - numba
    """Sort finite float32 ``v`` in place: LSD radix sort of their order-preserving uint32 keys.

    About 3× faster than numba's quicksort on the few hundred values of a mesh box, and bytes that all
    keys share (the exponent, mostly) cost one counting pass only.
    """
    n = v.shape[0]
    u = v.view(np.uint32)
    sign = np.uint32(0x80000000)
    ones = np.uint32(0xFFFFFFFF)
    for i in range(n):
        k = u[i]
        keys[i] = (k ^ ones) if k & sign else (k | sign)
    src = keys
    dst = tmp
    for p in range(4):
        shift = np.uint32(8 * p)
        count[:] = 0
        for i in range(n):
            count[(src[i] >> shift) & np.uint32(255)] += 1
        if count[(src[0] >> shift) & np.uint32(255)] == n:
            continue
        total = 0
        for d in range(256):
            c = count[d]
            count[d] = total
            total += c
        for i in range(n):
            d = (src[i] >> shift) & np.uint32(255)
            dst[count[d]] = src[i]
            count[d] += 1
        src, dst = dst, src
    for i in range(n):
        k = src[i]
        u[i] = (k ^ sign) if k & sign else (k ^ ones)


@njit(cache=True, nogil=True, parallel=True)
def _bayer_planes(image: FloatArray, green_main: bool) -> tuple[FloatArray, FloatArray]:  # pragma: no cover
    """Per 2×2 CFA cell: the mean of its four pixels and the mean of its two greens."""
    h, w = image.shape[0] // 2, image.shape[1] // 2
    lum = np.empty((h, w), dtype=np.float32)
    green = np.empty((h, w), dtype=np.float32)
    for i in prange(h):
        r0 = image[2 * i]
        r1 = image[2 * i + 1]
        for j in range(w):
            a, b = r0[2 * j], r0[2 * j + 1]
            c, d = r1[2 * j], r1[2 * j + 1]
            lum[i, j] = np.float32(0.25) * ((a + b) + (c + d))
            green[i, j] = np.float32(0.5) * ((a + d) if green_main else (b + c))
    return lum, green


@njit(cache=True, nogil=True)
def _clipped_stats(v: FloatArray, cs: F64, cs2: F64, k: float,
                   iterations: int) -> tuple[float, float]:  # pragma: no cover - numba
    """Median and standard deviation of sorted ``v`` after iterated k-σ clipping about the median.

    ``cs``, ``cs2`` are scratch (len(v) + 1): prefix sums of (v - pivot) and its square give the mean and
    σ of any clipped range in O(1), so each iteration costs two binary searches.
    """
    n = v.shape[0]
    pivot = float(v[n // 2])
    cs[0] = 0.0
    cs2[0] = 0.0
    for i in range(n):
        d = v[i] - pivot
        cs[i + 1] = cs[i] + d
        cs2[i + 1] = cs2[i] + d * d
    lo, hi = 0, n
    for _ in range(iterations):
        m = hi - lo
        med = 0.5 * (float(v[lo + (m - 1) // 2]) + float(v[lo + m // 2]))
        mean = (cs[hi] - cs[lo]) / m
        s = math.sqrt(max((cs2[hi] - cs2[lo]) / m - mean * mean, 0.0))
        if s == 0.0:
            break
        nlo = int(np.searchsorted(v, med - k * s, side="left"))
        nhi = int(np.searchsorted(v, med + k * s, side="right"))
        if (nlo == lo and nhi == hi) or nhi - nlo < 8:
            break
        lo, hi = nlo, nhi
    m = hi - lo
    mean = (cs[hi] - cs[lo]) / m
    var = max((cs2[hi] - cs2[lo]) / m - mean * mean, 0.0)
    return 0.5 * (float(v[lo + (m - 1) // 2]) + float(v[lo + m // 2])), math.sqrt(var * m / max(m - 1, 1))


@njit(cache=True, nogil=True, parallel=True)
def _mesh_stats(image: FloatArray, ny: int, nx: int, step: int, lag: int, k: float, iterations: int,
                cut_rms: float) -> tuple[FloatArray, FloatArray]:  # pragma: no cover - numba
    """σ-clipped median and noise of every box, from a strided sample of its pixels.

    The noise is the k-σ-clipped RMS of differences between pixels ``lag`` apart along a row, over √2 and
    over ``cut_rms`` (the RMS of a Gaussian cut at ±k σ): unlike the spread of the values, differences
    ignore gradients across the box and the wings of stars, which cancel. ``lag`` must exceed the
    correlation length of the noise. Differences need no sort: their centre is 0, and the clipping
    iterates from the values' interquartile range.
    """
    h, w = image.shape
    level = np.full((ny, nx), np.nan, dtype=np.float32)
    sigma = np.full((ny, nx), np.nan, dtype=np.float32)
    off = step // 2
    cap = ((h // ny + 2 + step - 1) // step) * ((w // nx + 2 + step - 1) // step)
    for by in prange(ny):
        # Buffers once per row of boxes: allocating per box costs more than the statistics.
        vals = np.empty(cap, dtype=np.float32)
        diffs = np.empty(cap, dtype=np.float32)
        keys = np.empty(cap, dtype=np.uint32)
        tmp = np.empty(cap, dtype=np.uint32)
        count = np.empty(256, dtype=np.intp)
        cs = np.empty(cap + 1)
        cs2 = np.empty(cap + 1)
        y0, y1 = by * h // ny, (by + 1) * h // ny
        for bx in range(nx):
            x0, x1 = bx * w // nx, (bx + 1) * w // nx
            n = 0
            nd = 0
            for y in range(y0 + min(off, y1 - y0 - 1), y1, step):
                row = image[y]
                for x in range(x0 + min(off, x1 - x0 - 1), x1, step):
                    val = row[x]
                    if not np.isfinite(val) or n >= cap:
                        continue
                    vals[n] = val
                    n += 1
                    xo = x + lag if x + lag < w else x - lag
                    if 0 <= xo < w and np.isfinite(row[xo]):
                        diffs[nd] = row[xo] - val
                        nd += 1
            if n < 8 or nd < 8:
                continue
            v = vals[:n]
            _radix_sort(v, keys, tmp, count)
            level[by, bx] = _clipped_stats(v, cs, cs2, k, iterations)[0]
            s = math.sqrt(2.0) * max(float(v[(3 * n) // 4] - v[n // 4]), 1e-12) / 1.349
            for _ in range(iterations):
                acc = 0.0
                m = 0
                for i in range(nd):
                    if abs(diffs[i]) <= k * s:
                        acc += diffs[i] * diffs[i]
                        m += 1
                if m < 8:
                    break
                new = math.sqrt(acc / m) / cut_rms
                converged = abs(new - s) <= 1e-4 * s
                s = new
                if converged:
                    break
            sigma[by, bx] = s / math.sqrt(2.0)
    return level, sigma


@njit(cache=True, nogil=True, inline="always")
def _is_local_max(image: FloatArray, i: int, j: int) -> bool:  # pragma: no cover - numba
    """Above its 8 neighbours, strictly above those before it in raster order (one maximum per flat top)."""
    h, w = image.shape
    v = image[i, j]
    for di in range(-1, 2):
        y = i + di
        if y < 0 or y >= h:
            continue
        for dj in range(-1, 2):
            x = j + dj
            if (di == 0 and dj == 0) or x < 0 or x >= w:
                continue
            u = image[y, x]
            if u > v or (u == v and (di < 0 or (di == 0 and dj < 0))):
                return False
    return True


@njit(cache=True, nogil=True, parallel=True)
def _threshold_mask(image: FloatArray, level: FloatArray, sigma: FloatArray, k: float,
                    nchunks: int) -> npt.NDArray[np.uint8]:  # pragma: no cover - numba
    """1 where image > level + k·σ (the mesh interpolated bilinearly like cv2.resize), 2 where such a
    pixel is also a local maximum: above its 8 neighbours, strictly above those before it in raster
    order, so a flat top has one maximum."""
    h, w = image.shape
    ny, nx = level.shape
    thr = (level + np.float32(k) * sigma).astype(np.float32)
    # The mesh rows interpolated along x once; each image row then blends two of them, contiguously.
    tx = np.empty((ny, w), dtype=np.float32)
    for j in range(w):
        sx = min(max((j + 0.5) * nx / w - 0.5, 0.0), nx - 1.0)
        k0 = int(sx)
        k1 = min(k0 + 1, nx - 1)
        f = np.float32(sx - k0)
        for r in range(ny):
            tx[r, j] = thr[r, k0] + f * (thr[r, k1] - thr[r, k0])
    out = np.empty((h, w), dtype=np.uint8)
    for c in prange(nchunks):
        trow = np.empty(w, dtype=np.float32)
        for i in range(c * h // nchunks, (c + 1) * h // nchunks):
            sy = min(max((i + 0.5) * ny / h - 0.5, 0.0), ny - 1.0)
            y0 = int(sy)
            y1 = min(y0 + 1, ny - 1)
            fy = np.float32(sy - y0)
            t0 = tx[y0]
            t1 = tx[y1]
            for j in range(w):
                trow[j] = t0[j] + fy * (t1[j] - t0[j])
            row = image[i]
            o = out[i]
            for j in range(w):
                o[j] = 1 if row[j] > trow[j] else 0
            words = o[: w // 8 * 8].view(np.uint64)
            j = 0
            while j < w:
                # Eight pixels at a time: most of the frame is below threshold.
                if (j & 7) == 0 and j + 8 <= w and words[j >> 3] == 0:
                    j += 8
                    continue
                if o[j] != 0 and _is_local_max(image, i, j):
                    o[j] = 2
                j += 1
    return out


@njit(cache=True, nogil=True, parallel=True)
def _blob_maxima(mask: npt.NDArray[np.uint8], labels: npt.NDArray[np.int32], n: int, image: FloatArray,
                 nchunks: int) -> tuple[IntArray, IntArray, FloatArray, IntArray, IntArray]:  # pragma: no cover
    """Area of every label, and the local maxima marked in ``mask``: (area, label, value, x, y)."""
    h, w = mask.shape
    partial = np.zeros((nchunks, n), dtype=np.intp)
    counts = np.zeros(nchunks + 1, dtype=np.intp)
    for c in prange(nchunks):
        found = 0
        for i in range(c * h // nchunks, (c + 1) * h // nchunks):
            row = mask[i]
            for j in range(w):
                if row[j] != 0:
                    partial[c, labels[i, j]] += 1
                    if row[j] == 2:
                        found += 1
        counts[c + 1] = found
    offsets = np.cumsum(counts)
    total = offsets[nchunks]
    lab = np.empty(total, dtype=np.intp)
    val = np.empty(total, dtype=np.float32)
    mx = np.empty(total, dtype=np.intp)
    my = np.empty(total, dtype=np.intp)
    for c in prange(nchunks):
        k = offsets[c]
        for i in range(c * h // nchunks, (c + 1) * h // nchunks):
            row = mask[i]
            for j in range(w):
                if row[j] == 2:
                    lab[k], val[k], mx[k], my[k] = labels[i, j], image[i, j], j, i
                    k += 1
    area = partial.sum(axis=0)
    return area, lab, val, mx, my


@njit(cache=True, nogil=True, inline="always")
def _is_spike(image: FloatArray, y: int, x: int, b: float) -> bool:  # pragma: no cover - numba
    """A pixel more than 5× as bright (above background) as the mean of its 8 neighbours: no PSF with a
    FWHM above 1.5 px is that sharp (a pixel-integrated Gaussian of FWHM 1.5 peaks at 4× its ring)."""
    v = image[y, x] - b
    if v <= 0.0:
        return False
    ring = 0.0
    for dy in range(-1, 2):
        for dx in range(-1, 2):
            if dy != 0 or dx != 0:
                ring += image[y + dy, x + dx] - b
    return bool(v > _SPIKE_RATIO * ring / 8.0)


@njit(cache=True, nogil=True)
def _screen(image: FloatArray, cx: F64, cy: F64, bg: F64, min_peak: F64, search: int, saturation: float,
            min_ratio: float) -> tuple[IntArray, IntArray, IntArray]:  # pragma: no cover - numba
    """Brightest non-spike pixel near each candidate; reject saturated tops, hot pixels and the border."""
    n = cx.shape[0]
    h, w = image.shape
    status = np.zeros(n, dtype=np.intp)
    ix = np.zeros(n, dtype=np.intp)
    iy = np.zeros(n, dtype=np.intp)
    for s in range(n):
        x0 = math.floor(cx[s] + 0.5)
        y0 = math.floor(cy[s] + 0.5)
        b = bg[s]
        if x0 - search < 3 or y0 - search < 3 or x0 + search > w - 4 or y0 + search > h - 4:
            status[s] = _EDGE
            continue
        best = -np.inf
        bx, by = x0, y0
        brightest = -np.inf
        for y in range(y0 - search, y0 + search + 1):
            for x in range(x0 - search, x0 + search + 1):
                v = image[y, x]
                brightest = max(brightest, v)
                if v > best and not _is_spike(image, y, x, b):
                    best = v
                    bx, by = x, y
        ix[s], iy[s] = bx, by
        if brightest >= saturation:
            status[s] = _SATURATED
            continue
        p = best - b
        # What is left once spikes are set aside must carry the detection: else it was a hot pixel.
        if p < min_peak[s]:
            status[s] = _HOT
            continue
        near = 0
        for y in range(by - 2, by + 3):
            for x in range(bx - 2, bx + 3):
                if image[y, x] - b >= 0.995 * p:
                    near += 1
        if near >= 3:
            status[s] = _SATURATED
            continue
        nb = 0.25 * (image[by - 1, bx] + image[by + 1, bx] + image[by, bx - 1] + image[by, bx + 1]) - b
        if nb < min_ratio * p:
            status[s] = _HOT
    return status, ix, iy


@njit(cache=True, nogil=True, inline="always")
def _px(image: FloatArray, y: int, x: int, b: float, spy: IntArray, spx: IntArray, spv: F64,
        nsp: int) -> float:  # pragma: no cover - numba
    """Background-subtracted pixel, with the spikes found near the star replaced."""
    for t in range(nsp):
        if spy[t] == y and spx[t] == x:
            return float(spv[t])
    return float(image[y, x] - b)


@njit(cache=True, nogil=True)
def _windowed(image: FloatArray, b: float, x0: float, y0: float, sw: float, rmax: int, spy: IntArray,
              spx: IntArray, spv: F64, nsp: int) -> tuple[bool, float, float]:  # pragma: no cover - numba
    """Centroid weighted by a circular Gaussian of σ ``sw`` centred on the estimate, iterated to its fixed
    point (SExtractor's XWIN): unbiased for any symmetric star, and the weight keeps noise out."""
    h, w = image.shape
    cx, cy = x0, y0
    r = min(rmax, math.ceil(4.0 * sw) + 1)
    inv = 1.0 / (sw * sw)
    for _ in range(30):
        xc, yc = math.floor(cx + 0.5), math.floor(cy + 0.5)
        if xc - r < 0 or yc - r < 0 or xc + r >= w or yc + r >= h:
            return False, cx, cy
        s0 = 0.0
        s1x = 0.0
        s1y = 0.0
        for y in range(yc - r, yc + r + 1):
            dy = y - cy
            for x in range(xc - r, xc + r + 1):
                dx = x - cx
                q = (dx * dx + dy * dy) * inv
                if q < 16.0:
                    wv = math.exp(-0.5 * q) * _px(image, y, x, b, spy, spx, spv, nsp)
                    s0 += wv
                    s1x += wv * dx
                    s1y += wv * dy
        if s0 <= 0.0:
            return False, cx, cy
        # The weighted mean of a Gaussian star under a matching weight lies halfway to its centre.
        ddx, ddy = 2.0 * s1x / s0, 2.0 * s1y / s0
        cx += ddx
        cy += ddy
        if abs(cx - x0) > 3.0 or abs(cy - y0) > 3.0:
            return False, cx, cy
        if abs(ddx) < 1e-4 and abs(ddy) < 1e-4:
            break
    return True, cx, cy


@njit(cache=True, nogil=True)
def _fwhm_from_sums(a0: float, a1: float, a2: float, t0: float, t1: float, npx: int,
                    pixel_var: float) -> float:  # pragma: no cover - numba
    """FWHM from the weighted least-squares sums of ln(v) against r² (a Gaussian core: ln v = c − r²/2σ²),
    less the pixel's own variance; NaN when the fit is degenerate or not a peak."""
    den = a0 * a2 - a1 * a1
    if npx < 3 or den <= 1e-12 * a0 * a2:
        return np.nan
    slope = (a0 * t1 - a1 * t0) / den
    if slope >= 0.0:
        return np.nan
    var = -0.5 / slope - pixel_var
    return _FWHM_PER_SIGMA * math.sqrt(var) if var > 0.0 else np.nan


@njit(cache=True, nogil=True)
def _half_max_fwhm(image: FloatArray, b: float, cx: float, cy: float, rlim: float, pixel_var: float,
                   spy: IntArray, spx: IntArray, spv: F64, nsp: int,
                   green_parity: int) -> float:  # pragma: no cover - numba
    """FWHM from a weighted least-squares fit of ln(v) = c - r²/(2σ²) over the pixels above half of the
    brightest pixel near (cx, cy) and within ``rlim`` of it (a neighbour's light beyond must not count),
    minus the pixel's own box; NaN when there are too few pixels.

    ``green_parity`` -1 measures every pixel of ``image``, with the spikes found near the star replaced.
    0 or 1 measures only the green pixels of a CFA frame, those with (x + y) % 2 == ``green_parity``, at their
    own positions (full resolution): (cx, cy) and ``rlim`` are full-resolution, and green pixels whose
    superpixel holds a spike are left out of the fit (not out of the peak).
    """
    h, w = image.shape
    cfa = green_parity >= 0
    xc, yc = math.floor(cx + 0.5), math.floor(cy + 0.5)
    rf = max(math.ceil(rlim), 2 if cfa else 1)
    r2lim = rlim * rlim
    if xc - rf < 0 or yc - rf < 0 or xc + rf >= w or yc + rf >= h:
        return np.nan
    top = -np.inf
    for y in range(yc - 1, yc + 2):
        for x in range(xc - 1, xc + 2):
            if not cfa:
                top = max(top, _px(image, y, x, b, spy, spx, spv, nsp))
            elif (x + y) % 2 == green_parity:
                top = max(top, image[y, x] - b)
    if top <= 0.0:
        return np.nan
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    t0 = 0.0
    t1 = 0.0
    npx = 0
    for y in range(yc - rf, yc + rf + 1):
        for x in range(xc - rf, xc + rf + 1):
            if not cfa:
                v = _px(image, y, x, b, spy, spx, spv, nsp)
                r2 = (x - cx) ** 2 + (y - cy) ** 2
                if not (v >= 0.5 * top and r2 <= r2lim):
                    continue
            else:
                if (x + y) % 2 != green_parity:
                    continue
                v = image[y, x] - b
                r2 = (x - cx) ** 2 + (y - cy) ** 2
                if v < 0.5 * top or r2 > r2lim or _in_superpixel_spike(y, x, spy, spx, nsp):
                    continue
            wt = v * v  # ln(v) has noise σ/v
            lv = math.log(v)
            a0 += wt
            a1 += wt * r2
            a2 += wt * r2 * r2
            t0 += wt * lv
            t1 += wt * r2 * lv
            npx += 1
    return _fwhm_from_sums(a0, a1, a2, t0, t1, npx, pixel_var)


@njit(cache=True, nogil=True, inline="always")
def _in_superpixel_spike(y: int, x: int, spy: IntArray, spx: IntArray, nsp: int) -> bool:  # pragma: no cover
    """Whether full-resolution pixel (x, y) lies in a superpixel that holds one of the spikes."""
    spiked = False
    for t in range(nsp):
        if spy[t] == y // 2 and spx[t] == x // 2:
            spiked = True
    return spiked


@njit(cache=True, nogil=True)
def _cfa_channel(y: int, x: int, green_main: bool) -> int:  # pragma: no cover - numba
    """0 for a green pixel of the mosaic, 1 and 2 for the two other colours (told apart by the row)."""
    if ((x + y) % 2 == 0) == green_main:
        return 0
    return 1 + (y % 2)


@njit(cache=True, nogil=True)
def _cfa_centroid(cfa: FloatArray, x0: float, y0: float, sw: float,
                  green_main: bool) -> tuple[bool, float, float]:  # pragma: no cover - numba
    """Windowed centroid (XWIN, weight σ ``sw``) of a star on a Bayer mosaic at full resolution, starting at
    (x0, y0): each colour's pixels, less that colour's sky (the median of a ring around the window), are
    scaled by the star's green-to-that-colour ratio so that the mosaic reads as one grey star (the star's
    own colour, measured in the window, not a white balance). False when it fails or wanders off."""
    h, w = cfa.shape
    r = min(12, max(3, math.ceil(3.0 * sw) + 1))
    ring_out = r + 2
    xc, yc = math.floor(x0 + 0.5), math.floor(y0 + 0.5)
    if xc - ring_out < 0 or yc - ring_out < 0 or xc + ring_out >= w or yc + ring_out >= h:
        return False, x0, y0
    sky = np.zeros(3)
    buf = np.empty((2 * ring_out + 1) ** 2)
    for c in range(3):
        n = 0
        for y in range(yc - ring_out, yc + ring_out + 1):
            for x in range(xc - ring_out, xc + ring_out + 1):
                if max(abs(y - yc), abs(x - xc)) > r and _cfa_channel(y, x, green_main) == c:
                    buf[n] = cfa[y, x]
                    n += 1
        if n == 0:
            return False, x0, y0
        sky[c] = np.median(buf[:n])
    total = np.zeros(3)
    count = np.zeros(3)
    for y in range(yc - r, yc + r + 1):
        for x in range(xc - r, xc + r + 1):
            if (x - x0) ** 2 + (y - y0) ** 2 <= (2.0 * sw + 1.0) ** 2:
                c = _cfa_channel(y, x, green_main)
                total[c] += cfa[y, x] - sky[c]
                count[c] += 1.0
    if total[0] <= 0.0 or count[0] == 0.0:
        return False, x0, y0
    scale = np.zeros(3)
    for c in range(3):
        if count[c] > 0.0 and total[c] > 0.0:
            scale[c] = min(max((total[0] / count[0]) / (total[c] / count[c]), 0.25), 4.0)
    cx, cy = x0, y0
    inv = 1.0 / (sw * sw)
    for _ in range(40):
        s0 = 0.0
        s1x = 0.0
        s1y = 0.0
        for y in range(yc - r, yc + r + 1):
            dy = y - cy
            for x in range(xc - r, xc + r + 1):
                dx = x - cx
                q = (dx * dx + dy * dy) * inv
                if q < 16.0:
                    c = _cfa_channel(y, x, green_main)
                    wv = math.exp(-0.5 * q) * (cfa[y, x] - sky[c]) * scale[c]
                    s0 += wv
                    s1x += wv * dx
                    s1y += wv * dy
        if s0 <= 0.0:
            return False, cx, cy
        ddx, ddy = s1x / s0, s1y / s0
        cx += ddx
        cy += ddy
        if abs(cx - x0) > 3.0 or abs(cy - y0) > 3.0:
            return False, cx, cy
        if abs(ddx) < 1e-4 and abs(ddy) < 1e-4:
            break
    return True, cx, cy


@njit(cache=True, nogil=True)
def _find_spikes(image: FloatArray, b: float, xc: int, yc: int, r: int, px: int, py: int, floor: float,
                 spy: IntArray, spx: IntArray, spv: F64) -> int:  # pragma: no cover - numba
    """Hot pixels and cosmic-ray hits near a star (single pixels above ``floor``, see `_is_spike`), other
    than its peak (px, py), to be replaced by the median of their 8 neighbours. Returns how many (at most
    the capacity of ``spy``; the brightest are not preferred, there should never be that many)."""
    h, w = image.shape
    nb = np.empty(8)
    n = 0
    for y in range(max(yc - r, 1), min(yc + r + 1, h - 1)):
        for x in range(max(xc - r, 1), min(xc + r + 1, w - 1)):
            if (y == py and x == px) or image[y, x] - b <= floor or not _is_spike(image, y, x, b):
                continue
            if n == spy.shape[0]:
                return n
            k = 0
            for dy in range(-1, 2):
                for dx in range(-1, 2):
                    if dy != 0 or dx != 0:
                        nb[k] = image[y + dy, x + dx] - b
                        k += 1
            nb.sort()
            spy[n], spx[n], spv[n] = y, x, 0.5 * (nb[3] + nb[4])
            n += 1
    return n


@njit(cache=True, nogil=True, parallel=True)
def _measure(image: FloatArray, ix: IntArray, iy: IntArray, bg: F64, weight_sigma: F64, noise: float,
             rmax: int, pixel_var: float, footprint_xy: float, cfa: FloatArray,
             cfa_green: int) -> tuple[F64, F64, F64, F64, F64, F64, IntArray]:  # pragma: no cover - numba
    """Windowed centroid, half-maximum FWHM, eccentricity, HFR and aperture flux of each star.

    ``weight_sigma`` is the σ of each star's centroid weight (<= 0: from the star's own FWHM); ``noise``
    is the per-pixel noise of ``image``: only spikes well above it are replaced. A pixel of ``image``
    averages the PSF over a footprint of covariance [[pixel_var, footprint_xy], [footprint_xy, pixel_var]],
    removed from the shape. With ``cfa_green`` >= 0, ``image`` is the mean-green superpixel image of the
    CFA frame ``cfa`` (1: greens on the main diagonal, 0: on the other) and the FWHM is fitted on the
    green pixels of ``cfa`` at full resolution, where the superpixels would blur it.
    """
    n = ix.shape[0]
    h, w = image.shape
    ox = np.full(n, np.nan)
    oy = np.full(n, np.nan)
    oflux = np.full(n, np.nan)
    ofwhm = np.full(n, np.nan)
    ohfr = np.full(n, np.nan)
    oecc = np.full(n, np.nan)
    status = np.full(n, _FAILED, dtype=np.intp)
    for s in prange(n):
        b = bg[s]
        x0, y0 = float(ix[s]), float(iy[s])
        spy = np.empty(16, dtype=np.intp)
        spx = np.empty(16, dtype=np.intp)
        spv = np.empty(16)
        floor = max(0.2 * (image[iy[s], ix[s]] - b), 5.0 * noise)
        nsp = _find_spikes(image, b, ix[s], iy[s], rmax, ix[s], iy[s], floor, spy, spx, spv)
        if weight_sigma[s] > 0.0:
            sw = weight_sigma[s]
            ok, cx, cy = _windowed(image, b, x0, y0, sw, rmax, spy, spx, spv, nsp)
            if not ok:
                continue
            # Pixels above half maximum lie within FWHM/2 of the centre: 0.9 FWHM leaves room for noise.
            fwhm = _half_max_fwhm(image, b, cx, cy, max(1.5, 0.9 * _FWHM_PER_SIGMA * sw), pixel_var,
                                  spy, spx, spv, nsp, -1)
        else:
            # The star's own weight: a first FWHM around its brightest pixel, refined at the centroid.
            fwhm = _half_max_fwhm(image, b, x0, y0, min(rmax, 6.0), 0.0, spy, spx, spv, nsp, -1)
            if not np.isfinite(fwhm):
                continue
            ok = False
            cx, cy = x0, y0
            sw = 1.0
            for _ in range(2):
                sw = min(max(fwhm / _FWHM_PER_SIGMA, 0.6), rmax / 4.0)
                ok, cx, cy = _windowed(image, b, x0, y0, sw, rmax, spy, spx, spv, nsp)
                if not ok:
                    break
                new = _half_max_fwhm(image, b, cx, cy, min(float(rmax), max(1.5, 0.9 * fwhm)), pixel_var,
                                     spy, spx, spv, nsp, -1)
                if not np.isfinite(new):
                    ok = False
                    break
                settled = abs(new - fwhm) < 0.2 * fwhm
                fwhm = new
                if settled:
                    break
            if not ok:
                continue

        if cfa_green >= 0:
            green_parity = 0 if cfa_green == 1 else 1
            full = _half_max_fwhm(cfa, b, 2.0 * cx + 0.5, 2.0 * cy + 0.5,
                                  2.0 * max(1.5, 0.9 * _FWHM_PER_SIGMA * sw), 1.0 / 12.0, spy, spx, spv, nsp,
                                  green_parity)
            if np.isfinite(full):
                fwhm = 0.5 * full
            # The centre at full resolution: on superpixels a star of 1–2 px sits in one or two of them and
            # its centroid locks onto their grid.
            sw_full = min(max(full / _FWHM_PER_SIGMA, 0.6), 3.0) if np.isfinite(full) else min(2.0 * sw, 3.0)
            found, fx, fy = _cfa_centroid(cfa, 2.0 * cx + 0.5, 2.0 * cy + 0.5, sw_full, cfa_green == 1)
            if found:
                cx, cy = 0.5 * (fx - 0.5), 0.5 * (fy - 0.5)

        # Second moments under the same circular weight, deconvolved from it (exact for a Gaussian).
        xc, yc = math.floor(cx + 0.5), math.floor(cy + 0.5)
        r = min(rmax, math.ceil(4.0 * sw) + 1)
        inv = 1.0 / (sw * sw)
        s0 = 0.0
        mxx = 0.0
        mxy = 0.0
        myy = 0.0
        for y in range(yc - r, yc + r + 1):
            dy = y - cy
            for x in range(xc - r, xc + r + 1):
                dx = x - cx
                q = (dx * dx + dy * dy) * inv
                if q < 16.0:
                    wv = math.exp(-0.5 * q) * _px(image, y, x, b, spy, spx, spv, nsp)
                    s0 += wv
                    mxx += wv * dx * dx
                    mxy += wv * dx * dy
                    myy += wv * dy * dy
        if s0 <= 0.0:
            continue
        mxx, mxy, myy = mxx / s0, mxy / s0, myy / s0
        det = mxx * myy - mxy * mxy
        if det <= 0.0 or mxx <= 0.0:
            continue
        # Σ⁻¹ = M⁻¹ - W⁻¹; when noise makes that non-positive, the weighted moments themselves are used.
        axx, axy, ayy = myy / det - inv, -mxy / det, mxx / det - inv
        if axx > 0.0 and axx * ayy - axy * axy > 0.0:
            da = axx * ayy - axy * axy
            mxx, mxy, myy = ayy / da, -axy / da, axx / da
            # Then the pixel footprint, if what is left is still a shape.
            fxx, fxy, fyy = mxx - pixel_var, mxy - footprint_xy, myy - pixel_var
            if fxx > 0.0 and fxx * fyy - fxy * fxy > 0.0:
                mxx, mxy, myy = fxx, fxy, fyy
        if not np.isfinite(fwhm):
            # Too faint for the half-maximum fit: the Gaussian-equivalent size of the moments.
            fwhm = _FWHM_PER_SIGMA * math.sqrt(math.sqrt(max(mxx * myy - mxy * mxy, 0.0)))
        tr = mxx + myy
        root = math.sqrt(max(0.25 * (mxx - myy) ** 2 + mxy * mxy, 0.0))
        lmax, lmin = 0.5 * tr + root, 0.5 * tr - root
        ecc = math.sqrt(min(1.0, max(0.0, 1.0 - lmin / lmax))) if lmax > 0 else 0.0

        # Aperture of 3 FWHM (at least 3 px; cut by the frame edge down to 1.5 FWHM): flux and HFR.
        ra = min(float(rmax), max(3.0, 3.0 * fwhm), float(min(xc, yc, w - 1 - xc, h - 1 - yc)))
        if ra < max(2.0, 1.5 * fwhm):
            status[s] = _EDGE
            continue
        ri = math.floor(ra)
        # Flux in rings of 0.1 px; the half-flux radius is interpolated within its ring.
        nbins = int(ra * 10.0) + 1
        rings = np.zeros(nbins)
        for y in range(yc - ri, yc + ri + 1):
            for x in range(xc - ri, xc + ri + 1):
                rad = math.sqrt((x - cx) ** 2 + (y - cy) ** 2)
                if rad <= ra:
                    rings[min(int(rad * 10.0), nbins - 1)] += _px(image, y, x, b, spy, spx, spv, nsp)
        total = rings.sum()
        if total <= 0.0:
            continue
        acc = 0.0
        hfr = ra
        for i in range(nbins):
            if acc + rings[i] >= 0.5 * total and rings[i] > 0.0:
                hfr = 0.1 * (i + (0.5 * total - acc) / rings[i])
                break
            acc += rings[i]
        ox[s], oy[s] = cx, cy
        oflux[s] = total
        ofwhm[s] = fwhm
        ohfr[s] = hfr
        oecc[s] = ecc
        status[s] = _OK
    return ox, oy, oflux, ofwhm, ohfr, oecc, status
