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

The numba kernels live in `astrod.core.star_detect` (detection image, background mesh, thresholding) and
`astrod.core.star_measure` (per-star measurement); this module holds the steps that call them.
"""


from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numba
import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from astrod.core.bayer import green_on_main_diagonal
from astrod.core.star_detect import (
    _bayer_planes,
    _bin2_smooth,
    _blob_maxima,
    _chunks,
    _mesh_stats,
    _smooth121,
    _threshold_mask,
)
from astrod.core.star_measure import _FWHM_PER_SIGMA, _OK, _measure, _screen

__all__ = ["Background", "StarList", "detect_stars", "estimate_background"]

FloatArray = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

_PSF_STARS = 30  # brightest stars that set the centroid weight
_PIXEL_VAR = 1.0 / 12.0  # variance of a pixel's box, px²


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
    detect_img, measure_img, m_scale = _detection_images(full, bayer, binned)
    bg, bg_measure, noise_m = _detection_backgrounds(detect_img, measure_img, box=box, f=f, bayer=bayer,
                                                     binned=binned)
    px, py, height_above, cand = _candidates(detect_img, bg, threshold_sigma=threshold_sigma, f=f,
                                             min_area=min_area, max_area=max_area)
    if cand.size == 0:
        return StarList.empty(width=width, height=height)
    dh, dw = detect_img.shape
    bg_m = _mesh_at(bg_measure.mesh, px[cand].astype(np.float64), py[cand].astype(np.float64), dw, dh)
    ix, iy, order, n_detected = _screen_candidates(
        measure_img, px[cand], py[cand], height_above[cand], bg_m, scale_dm=f / m_scale, saturation=saturation,
        min_neighbour_ratio=min_neighbour_ratio, mono=bayer is None, max_stars=max_stars,
    )
    if order.size == 0 or max_stars == 0:
        return StarList.empty(width=width, height=height, n_detected=n_detected)
    x, y, flux, fwhm, hfr, ecc, ok, good_fwhm = _measure_candidates(
        full, measure_img, ix[order], iy[order], bg_m[order], noise_m=noise_m, bayer=bayer, m_scale=m_scale,
        max_radius=max_radius,
    )
    ok &= (fwhm >= min_fwhm) & (fwhm <= max_fwhm)
    sel = _select_stars(x, y, flux, fwhm, ok, good_fwhm, m_scale=m_scale, cfa=bayer is not None,
                        min_fwhm_ratio=min_fwhm_ratio, max_fwhm_ratio=max_fwhm_ratio)
    n_detected -= order.size - sel.size
    sel = sel[:max_stars]
    return StarList(
        x=_frozen(x[sel].copy()), y=_frozen(y[sel].copy()), flux=_frozen(flux[sel].copy()),
        fwhm=_frozen(fwhm[sel].copy()), hfr=_frozen(hfr[sel].copy()), eccentricity=_frozen(ecc[sel].copy()),
        n_detected=n_detected, width=width, height=height,
    )


# ---------------------------------------------------------------------------------------------------------
# The steps of detect_stars


def _detection_images(full: FloatArray, bayer: str | None, binned: bool) -> tuple[FloatArray, FloatArray, int]:
    """The detection image, the measurement image and the size of a measurement pixel in full pixels."""
    if bayer is not None:
        # Detect on the superpixel luminance (all the light); measure on the mean of each cell's two green
        # pixels, which sits exactly at the cell centre whatever the star's colour (the luminance does
        # not: its red and blue pixels are off-centre and weigh by colour).
        lum, measure_img = _bayer_planes(full, green_on_main_diagonal(bayer))
        return _smooth121(lum), measure_img, 2
    detect_img = _bin2_smooth(full) if binned else _smooth121(full)
    return detect_img, full, 1


def _detection_backgrounds(detect_img: FloatArray, measure_img: FloatArray, *, box: int, f: int,
                           bayer: str | None, binned: bool) -> tuple[Background, Background, float]:
    """The background of the detection image, that of the measurement image, and the measurement image's
    per-pixel noise."""
    # Lag 3: pixels of the [1 2 1]-smoothed detection image that far apart share no noise.
    # About 11×11 samples per box are enough for a threshold: the 3×3 median over boxes and the
    # interpolation average further.
    dbox = max(4, box // f)
    bg = _background(detect_img, box=dbox, clip_sigma=3.0, step=math.ceil(dbox / 11), lag=3, with_map=False)
    if bayer is not None:
        bg_measure = _background(measure_img, box=dbox, clip_sigma=3.0, step=math.ceil(dbox / 11), lag=2,
                                 with_map=False)
        return bg, bg_measure, bg_measure.noise
    # Binning and smoothing keep the mean, so the detection mesh is the sky of the full frame too;
    # the per-pixel noise follows from the detection noise through the white-noise gain of 2×2
    # binning (1/2) and of the [1 2 1]⊗[1 2 1] kernel (3/8).
    return bg, bg, bg.noise / ((0.5 if binned else 1.0) * 0.375)


def _candidates(detect_img: FloatArray, bg: Background, *, threshold_sigma: float, f: int, min_area: int,
                max_area: int) -> tuple[IntArray, IntArray, F64, IntArray]:
    """Every blob maximum's detection pixel (px, py) and height above the sky, and the indices of the
    candidates among them, highest first."""
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
    return px, py, height_above, cand


def _screen_candidates(measure_img: FloatArray, px: IntArray, py: IntArray, height_above: F64, bg_m: F64, *,
                       scale_dm: float, saturation: float | None, min_neighbour_ratio: float, mono: bool,
                       max_stars: int) -> tuple[IntArray, IntArray, IntArray, int]:
    """The candidates' brightest measurement pixels (ix, iy), the indices of those to measure (those that
    passed the cheap checks, a few more than ``max_stars``) and how many passed."""
    # Candidate position in measurement-image pixels: the detection pixel's centre.
    cx0 = np.asarray((px + 0.5) * scale_dm - 0.5, dtype=np.float64)
    cy0 = np.asarray((py + 0.5) * scale_dm - 0.5, dtype=np.float64)
    sat = np.inf if saturation is None else float(saturation)
    search = max(1, math.ceil(scale_dm))
    # A star's brightest measured pixel carries at least half its detection peak (a quarter in green
    # alone); what falls short was a hot pixel.
    min_peak = 0.5 * height_above if mono else 0.25 * height_above
    status, ix, iy = _screen(measure_img, cx0, cy0, bg_m, min_peak, search, sat, min_neighbour_ratio)
    good = status == _OK
    n_detected = int(np.count_nonzero(good))
    order = np.flatnonzero(good)
    # Some measured candidates fail; measure a few more than asked for.
    return ix, iy, order[: int(max_stars * 1.2) + 10], n_detected


def _measure_candidates(full: FloatArray, measure_img: FloatArray, ix: IntArray, iy: IntArray, bg_m: F64, *,
                        noise_m: float, bayer: str | None, m_scale: int,
                        max_radius: int) -> tuple[F64, F64, F64, F64, F64, F64, npt.NDArray[np.bool_], F64]:
    """x, y, flux, FWHM, HFR (full-resolution pixels) and eccentricity of the candidates, whether each was
    measured, and the FWHMs (measurement pixels) of the brightest under their own weight."""
    rmax = max(3, max_radius // m_scale)
    # The brightest stars measure the PSF; every star is then centred under a weight of that size, which
    # keeps the faint ones, whose own size is mostly noise, as precise as they can be.
    if bayer is None:
        footprint_xy, cfa, cfa_green = 0.0, np.zeros((1, 1), dtype=np.float32), -1
    else:
        # The mean of two diagonal greens spreads over ±1/4 full px² along its diagonal.
        cfa_green = int(green_on_main_diagonal(bayer))
        footprint_xy, cfa = (0.0625 if cfa_green else -0.0625), full
    first = slice(0, _PSF_STARS)
    nfirst = ix[first].size
    own = _measure(measure_img, ix[first], iy[first], bg_m[first], np.zeros(nfirst), noise_m, rmax,
                   _PIXEL_VAR, footprint_xy, cfa, cfa_green)
    good_fwhm = own[3][(own[6] == _OK) & np.isfinite(own[3])]
    if good_fwhm.size:
        weight = np.full(ix.size, np.median(good_fwhm) / _FWHM_PER_SIGMA)
    else:
        weight = np.zeros(ix.size)
    mx, my, mflux, mfwhm, mhfr, mecc, mstat = _measure(
        measure_img, ix, iy, bg_m, weight, noise_m, rmax, _PIXEL_VAR, footprint_xy, cfa, cfa_green,
    )
    # Back to full-resolution pixels (superpixel i covers full pixels 2i and 2i+1).
    x = mx * m_scale + (m_scale - 1) * 0.5
    y = my * m_scale + (m_scale - 1) * 0.5
    flux = mflux * m_scale * m_scale
    fwhm = mfwhm * m_scale
    hfr = mhfr * m_scale
    ok = (mstat == _OK) & (flux > 0) & np.isfinite(x + y + fwhm)
    return x, y, flux, fwhm, hfr, mecc, ok, good_fwhm


def _select_stars(x: F64, y: F64, flux: F64, fwhm: F64, ok: npt.NDArray[np.bool_], good_fwhm: F64, *,
                  m_scale: int, cfa: bool, min_fwhm_ratio: float, max_fwhm_ratio: float) -> IntArray:
    """Indices of the measured sources that are stars, brightest first, one per star."""
    # The PSF: for a Bayer frame, the brightest stars' FWHM as measured under the common weight, on the
    # green pixels (their own-weight first measurement on superpixels, which only sets that weight, is far
    # off for undersampled stars); for mono, that first measurement.
    measured = fwhm[ok][:_PSF_STARS]
    psf = math.nan
    if cfa and measured.size >= 3:
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
    return sel


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
