"""numba kernels of per-star measurement (see `astrod.core.stars`): the screening of candidates, hot-pixel
and cosmic-ray replacement, the windowed centroid, the half-maximum FWHM (mono and on the CFA greens), the
second moments and the aperture flux and HFR."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit, prange

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
_SPIKE_RATIO = 5.0  # a pixel this many times brighter than its 8 neighbours is not starlight


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


@njit(cache=True, nogil=True, inline="always")
def _gauss_moments(image: FloatArray, b: float, cx: float, cy: float, r: int, inv: float, second: bool,
                   spy: IntArray, spx: IntArray, spv: F64,
                   nsp: int) -> tuple[float, float, float, float, float, float]:  # pragma: no cover - numba
    """Sums over the pixels within ``r`` of (cx, cy) weighted by a circular Gaussian (``inv`` = 1/σ², cut at
    4σ): (weight, first moments x and y, and with ``second`` the second moments xx, xy, yy instead)."""
    xc, yc = math.floor(cx + 0.5), math.floor(cy + 0.5)
    s0 = 0.0
    s1x = 0.0
    s1y = 0.0
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
                if second:
                    mxx += wv * dx * dx
                    mxy += wv * dx * dy
                    myy += wv * dy * dy
                else:
                    s1x += wv * dx
                    s1y += wv * dy
    return s0, s1x, s1y, mxx, mxy, myy


_MOVING, _SETTLED, _WANDERED = 0, 1, 2


@njit(cache=True, nogil=True, inline="always")
def _centroid_step(cx: float, cy: float, ddx: float, ddy: float, x0: float,
                   y0: float) -> tuple[int, float, float]:  # pragma: no cover - numba
    """One step of an iterated centroid: the moved centre, and whether it has settled (a step under 1e-4 px)
    or wandered more than 3 px from where it started."""
    cx += ddx
    cy += ddy
    if abs(cx - x0) > 3.0 or abs(cy - y0) > 3.0:
        return _WANDERED, cx, cy
    if abs(ddx) < 1e-4 and abs(ddy) < 1e-4:
        return _SETTLED, cx, cy
    return _MOVING, cx, cy


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
        s0, s1x, s1y, _, _, _ = _gauss_moments(image, b, cx, cy, r, inv, False, spy, spx, spv, nsp)
        if s0 <= 0.0:
            return False, cx, cy
        # The weighted mean of a Gaussian star under a matching weight lies halfway to its centre.
        step, cx, cy = _centroid_step(cx, cy, 2.0 * s1x / s0, 2.0 * s1y / s0, x0, y0)
        if step == _WANDERED:
            return False, cx, cy
        if step == _SETTLED:
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
        step, cx, cy = _centroid_step(cx, cy, s1x / s0, s1y / s0, x0, y0)
        if step == _WANDERED:
            return False, cx, cy
        if step == _SETTLED:
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


@njit(cache=True, nogil=True)
def _centre_and_fwhm(image: FloatArray, b: float, x0: float, y0: float, wsig: float, rmax: int,
                     pixel_var: float, spy: IntArray, spx: IntArray, spv: F64,
                     nsp: int) -> tuple[bool, float, float, float, float]:  # pragma: no cover - numba
    """The windowed centroid of a star whose brightest pixel is (x0, y0) and its half-maximum FWHM:
    (found, cx, cy, weight σ, FWHM). ``wsig`` > 0 is the weight's σ; otherwise the star's own FWHM sets it."""
    if wsig > 0.0:
        sw = wsig
        ok, cx, cy = _windowed(image, b, x0, y0, sw, rmax, spy, spx, spv, nsp)
        if not ok:
            return False, cx, cy, sw, math.nan
        # Pixels above half maximum lie within FWHM/2 of the centre: 0.9 FWHM leaves room for noise.
        fwhm = _half_max_fwhm(image, b, cx, cy, max(1.5, 0.9 * _FWHM_PER_SIGMA * sw), pixel_var,
                              spy, spx, spv, nsp, -1)
        return True, cx, cy, sw, fwhm
    # The star's own weight: a first FWHM around its brightest pixel, refined at the centroid.
    fwhm = _half_max_fwhm(image, b, x0, y0, min(rmax, 6.0), 0.0, spy, spx, spv, nsp, -1)
    if not np.isfinite(fwhm):
        return False, x0, y0, 1.0, fwhm
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
    return ok, cx, cy, sw, fwhm


@njit(cache=True, nogil=True)
def _cfa_refine(cfa: FloatArray, cfa_green: int, b: float, cx: float, cy: float, sw: float, fwhm: float,
                spy: IntArray, spx: IntArray, spv: F64,
                nsp: int) -> tuple[float, float, float]:  # pragma: no cover - numba
    """(cx, cy, FWHM) of a star of the mean-green superpixel image refined on the CFA frame at full
    resolution: the FWHM on the green pixels, the centroid on all of them."""
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
    return cx, cy, fwhm


@njit(cache=True, nogil=True)
def _moment_shape(image: FloatArray, b: float, cx: float, cy: float, sw: float, rmax: int, pixel_var: float,
                  footprint_xy: float, fwhm: float, spy: IntArray, spx: IntArray, spv: F64,
                  nsp: int) -> tuple[bool, float, float]:  # pragma: no cover - numba
    """(measured, FWHM, eccentricity) from the second moments under the circular weight of σ ``sw``; the
    FWHM is that given unless it is NaN (then the moments' Gaussian-equivalent size)."""
    # Second moments under the same circular weight, deconvolved from it (exact for a Gaussian).
    r = min(rmax, math.ceil(4.0 * sw) + 1)
    inv = 1.0 / (sw * sw)
    s0, _, _, mxx, mxy, myy = _gauss_moments(image, b, cx, cy, r, inv, True, spy, spx, spv, nsp)
    if s0 <= 0.0:
        return False, fwhm, 0.0
    mxx, mxy, myy = mxx / s0, mxy / s0, myy / s0
    det = mxx * myy - mxy * mxy
    if det <= 0.0 or mxx <= 0.0:
        return False, fwhm, 0.0
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
    return True, fwhm, ecc


@njit(cache=True, nogil=True)
def _aperture(image: FloatArray, b: float, cx: float, cy: float, fwhm: float, rmax: int, spy: IntArray,
              spx: IntArray, spv: F64, nsp: int) -> tuple[int, float, float]:  # pragma: no cover - numba
    """(status, flux, HFR) in an aperture of 3 FWHM (at least 3 px; cut by the frame edge down to 1.5
    FWHM) around (cx, cy)."""
    h, w = image.shape
    xc, yc = math.floor(cx + 0.5), math.floor(cy + 0.5)
    ra = min(float(rmax), max(3.0, 3.0 * fwhm), float(min(xc, yc, w - 1 - xc, h - 1 - yc)))
    if ra < max(2.0, 1.5 * fwhm):
        return _EDGE, math.nan, math.nan
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
        return _FAILED, math.nan, math.nan
    acc = 0.0
    hfr = ra
    for i in range(nbins):
        if acc + rings[i] >= 0.5 * total and rings[i] > 0.0:
            hfr = 0.1 * (i + (0.5 * total - acc) / rings[i])
            break
        acc += rings[i]
    return _OK, total, hfr


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
    ox = np.full(n, np.nan)
    oy = np.full(n, np.nan)
    oflux = np.full(n, np.nan)
    ofwhm = np.full(n, np.nan)
    ohfr = np.full(n, np.nan)
    oecc = np.full(n, np.nan)
    status = np.full(n, _FAILED, dtype=np.intp)
    for s in prange(n):
        b = bg[s]
        spy = np.empty(16, dtype=np.intp)
        spx = np.empty(16, dtype=np.intp)
        spv = np.empty(16)
        floor = max(0.2 * (image[iy[s], ix[s]] - b), 5.0 * noise)
        nsp = _find_spikes(image, b, ix[s], iy[s], rmax, ix[s], iy[s], floor, spy, spx, spv)
        ok, cx, cy, sw, fwhm = _centre_and_fwhm(image, b, float(ix[s]), float(iy[s]), weight_sigma[s], rmax,
                                                pixel_var, spy, spx, spv, nsp)
        if not ok:
            continue
        if cfa_green >= 0:
            cx, cy, fwhm = _cfa_refine(cfa, cfa_green, b, cx, cy, sw, fwhm, spy, spx, spv, nsp)
        ok, fwhm, ecc = _moment_shape(image, b, cx, cy, sw, rmax, pixel_var, footprint_xy, fwhm, spy, spx, spv,
                                      nsp)
        if not ok:
            continue
        st, total, hfr = _aperture(image, b, cx, cy, fwhm, rmax, spy, spx, spv, nsp)
        status[s] = st
        if st != _OK:
            continue
        ox[s], oy[s] = cx, cy
        oflux[s] = total
        ofwhm[s] = fwhm
        ohfr[s] = hfr
        oecc[s] = ecc
        status[s] = _OK
    return ox, oy, oflux, ofwhm, ohfr, oecc, status
