"""A frame's star shape (FWHM and eccentricity, each with its uncertainty) from fitted stars.

Why a fit, and which
    Second moments of real stars are biased upwards, in size and in elongation: noise enters them
    squared, an undersampled star (FWHM 1.5–2 px) is mostly pixel box, a Bayer superpixel smears it by a
    colour-dependent amount, and a single faint star's eccentricity is positive whatever its truth. So each
    of the brightest isolated unsaturated stars gets a least-squares fit of an elliptical Moffat profile

        m(x, y) = A_c · (1 + a·dx² + 2b·dx·dy + c·dy²)^(−β),   dx = x − x0, dy = y − y0,

    integrated over every pixel (the model is averaged over sub-pixel samples, so a 1.5 px star is fitted
    as the sensor saw it), with the local sky of each colour fixed from the stamp's border (its median,
    which a neighbour or a hot pixel does not move). A Moffat rather than a Gaussian: seeing-limited stars
    have Moffat wings (β ≈ 2.5–5); a Gaussian fitted to them reads their FWHM 5–10 % wide, and β free lets
    the core be fitted as it is (β → ∞ is a Gaussian). A Bayer frame is fitted at full resolution on its
    raw pixels, with one amplitude ``A_c`` per colour: no superpixel, no interpolation, no colour bias.
    The ellipse (a, b, c) gives the FWHM (geometric mean of the axes) and the ellipticity components
    e1 = (c − a)/(a + c), e2 = −2b/(a + c) of the profile itself, and the fit's covariance gives how well
    each is known.

Frame figures
    FWHM: the median of the stars' FWHM; its uncertainty is the standard error of that median (from the
    MAD). Eccentricity: tracking errors, wind and guiding elongate every star of a frame the same way, so
    the frame's ellipticity is the mean of each component over the stars (weighted by their fits'
    uncertainties, outliers beyond 3 robust σ left out), whose noise averages out
    instead of adding up (a median of per-star eccentricities is biased upwards by noise: each is a
    positive number); the small remaining bias of the length of a noisy vector is removed by subtracting
    the components' variance. Eccentricity e = sqrt(1 − b²/a²) follows from |e1, e2| = (a² − b²)/(a² + b²).
    Patterns that change across the field (tilt, coma) average out: that is on purpose, they are not what
    rejects a frame. Fewer than ``min_stars`` good fits: the figure is unmeasured (NaN), never a reason to
    reject.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numba import njit, prange
from scipy.spatial import cKDTree

from astrod.core.bayer import cell_colours
from astrod.core.stars import StarList

FloatArray = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

_GAMMA_MAX = 1.0 / 1.5  # γ = 1/β: from a Gaussian (0) to the widest wings fitted (β = 1.5)
_SERIES_GAMMA = 1e-3  # below this γ the derivative by γ comes from its series (the closed form cancels)
_MAX_ITER = 20
_OUTLIER_SIGMA = 6.0  # a pixel this far off the first fit (hot pixel, cosmic ray) is left out of the second


@dataclass(frozen=True, slots=True, eq=False)
class StarFits:
    """Per-star fit results (full-resolution pixels; NaN where a fit failed). ``e1, e2`` are the ellipticity
    components of the fitted profile, ``*_err`` their 1σ uncertainties from the fit's covariance."""

    x: F64
    y: F64
    fwhm: F64
    fwhm_err: F64
    e1: F64
    e2: F64
    e1_err: F64
    e2_err: F64
    beta: F64
    status: IntArray

    def __len__(self) -> int:
        return int(self.x.size)

    @property
    def ok(self) -> npt.NDArray[np.bool_]:
        return np.asarray(np.isfinite(self.fwhm) & np.isfinite(self.e1) & np.isfinite(self.e2), dtype=np.bool_)


@dataclass(frozen=True, slots=True)
class ShapeFigures:
    """A frame's FWHM (px) and eccentricity, each with its 1σ uncertainty, from ``n_stars`` fitted stars;
    NaN (unmeasured) when fewer stars could be fitted than a figure needs."""

    fwhm: float
    fwhm_err: float
    eccentricity: float
    eccentricity_err: float
    n_stars: int

    @classmethod
    def unmeasured(cls, n_stars: int = 0) -> ShapeFigures:
        return cls(fwhm=math.nan, fwhm_err=math.nan, eccentricity=math.nan, eccentricity_err=math.nan,
                   n_stars=n_stars)


def ellipticity_to_eccentricity(ellipticity: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """e = sqrt(1 − b²/a²) from the moment ellipticity |ε| = (a² − b²)/(a² + b²)."""
    g = np.clip(np.asarray(ellipticity, dtype=np.float64), 0.0, 1.0)
    return np.asarray(np.sqrt(2.0 * g / (1.0 + g)), dtype=np.float64)


def select_fit_stars(stars: StarList, *, max_stars: int = 40, isolation_fwhm: float = 3.0,
                     min_isolation_px: float = 6.0) -> IntArray:
    """Indices into ``stars`` of the brightest stars with no other detected star within ``isolation_fwhm``
    FWHM (at least ``min_isolation_px``), at most ``max_stars`` of them. The list holds no saturated star
    (`detect_stars` rejects flat tops and stars reaching its saturation level)."""
    n = len(stars)
    if n == 0:
        return np.empty(0, dtype=np.intp)
    finite = np.isfinite(stars.fwhm)
    typical = float(np.median(stars.fwhm[finite])) if finite.any() else 3.0
    radius = max(min_isolation_px, isolation_fwhm * typical)
    if n > 1:
        d, _ = cKDTree(stars.xy).query(stars.xy, k=2)
        isolated = d[:, 1] > radius
    else:
        isolated = np.ones(1, dtype=np.bool_)
    # Much wider than the others: a blend, a galaxy or a nebula knot, and slow to fit.
    single = finite & (stars.fwhm <= 1.5 * typical)
    return np.flatnonzero(isolated & single)[:max_stars].astype(np.intp)


def fit_stars(data: npt.NDArray[np.floating] | npt.NDArray[np.integer], stars: StarList,
              index: npt.ArrayLike, *, bayer: str | None = None) -> StarFits:
    """Fit the stars ``stars[index]`` of ``data`` (H, W; the raw mosaic for a Bayer frame, with ``bayer``
    its pattern seen from pixel (0, 0)) with pixel-integrated elliptical Moffat profiles."""
    image = np.ascontiguousarray(data, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"fit_stars needs a 2-D frame, got shape {image.shape}")
    idx = np.asarray(index, dtype=np.intp)
    channel = _channel_map(bayer)
    x0 = np.ascontiguousarray(stars.x[idx], dtype=np.float64)
    y0 = np.ascontiguousarray(stars.y[idx], dtype=np.float64)
    f0 = np.ascontiguousarray(stars.fwhm[idx], dtype=np.float64)
    res, status = _fit_all(image, x0, y0, f0, channel, 1 if bayer is None else 3)
    x, y, fwhm, fwhm_err, e1, e2, e1_err, e2_err, beta = (np.ascontiguousarray(res[:, j]) for j in range(9))
    return StarFits(x=x, y=y, fwhm=fwhm, fwhm_err=fwhm_err, e1=e1, e2=e2, e1_err=e1_err, e2_err=e2_err, beta=beta,
                    status=np.asarray(status, dtype=np.intp))


def measure_shape(data: npt.NDArray[np.floating] | npt.NDArray[np.integer], stars: StarList, *,
                  bayer: str | None = None, max_stars: int = 20, faint_max_stars: int = 40,
                  faint_error: float = 0.05, min_stars: int = 5) -> ShapeFigures:
    """The frame's shape figures from its ``max_stars`` brightest isolated stars, or up to ``faint_max_stars``
    when those stars are faint (their ellipticity components known to worse than ``faint_error``): the
    noise of the mean falls as the square root of the stars, and the cost rises only on such frames."""
    chosen = select_fit_stars(stars, max_stars=max(max_stars, faint_max_stars))
    if chosen.size < min_stars:
        return ShapeFigures.unmeasured(int(chosen.size))
    fits = fit_stars(data, stars, chosen[:max_stars], bayer=bayer)
    good = fits.ok
    if chosen.size > max_stars and good.any() and float(np.median(fits.e1_err[good])) > faint_error:
        more = fit_stars(data, stars, chosen[max_stars:], bayer=bayer)
        fits = StarFits(**{name: np.concatenate([getattr(fits, name), getattr(more, name)])
                           for name in StarFits.__dataclass_fields__})
    return shape_figures(fits, min_stars=min_stars)


def shape_figures(fits: StarFits, *, min_stars: int = 5) -> ShapeFigures:
    """The frame's FWHM and eccentricity from its fitted stars (see the module docstring)."""
    ok = fits.ok
    fwhm = fits.fwhm[ok]
    if fwhm.size:
        # A fit that wandered onto a blend, a galaxy or a cosmic-ray track is far from the others.
        med = float(np.median(fwhm))
        ok &= (fits.fwhm > 0.5 * med) & (fits.fwhm < 2.0 * med)
    n = int(np.count_nonzero(ok))
    if n < min_stars:
        return ShapeFigures.unmeasured(n)
    fwhm, e1, e2 = fits.fwhm[ok], fits.e1[ok], fits.e2[ok]
    f, f_err = _median_and_error(fwhm, fits.fwhm_err[ok])
    m1, s1 = _weighted_mean_and_error(e1, fits.e1_err[ok])
    m2, s2 = _weighted_mean_and_error(e2, fits.e2_err[ok])
    length2 = m1 * m1 + m2 * m2
    noise2 = s1 * s1 + s2 * s2
    g = math.sqrt(max(0.0, length2 - noise2))
    g_hi = g + math.sqrt(noise2)
    ecc = float(ellipticity_to_eccentricity(g))
    ecc_err = float(ellipticity_to_eccentricity(g_hi)) - ecc
    return ShapeFigures(fwhm=f, fwhm_err=f_err, eccentricity=ecc, eccentricity_err=ecc_err, n_stars=n)


def _median_and_error(values: F64, errors: F64) -> tuple[float, float]:
    """The median and its standard error: from the spread of the values (MAD), never below what the
    stars' own errors allow."""
    n = values.size
    med = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - med)))
    own = float(np.median(errors[np.isfinite(errors)])) if np.isfinite(errors).any() else 0.0
    return med, 1.2533 * max(spread, own) / math.sqrt(n)


def _weighted_mean_and_error(values: F64, errors: F64) -> tuple[float, float]:
    """Mean weighted by 1/error² of the values within 3 robust σ of their median (a blend or a galaxy is
    left out), and its standard error: from the weights, or from the scatter when that is larger."""
    med = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - med)))
    good = np.isfinite(errors) & (errors > 0)
    floor = float(np.median(errors[good])) if good.any() else spread
    keep = good & (np.abs(values - med) <= 3.0 * max(spread, floor))
    if np.count_nonzero(keep) < 2:
        return _median_and_error(values, errors)
    v, w = values[keep], 1.0 / errors[keep] ** 2
    mean = float(np.sum(w * v) / np.sum(w))
    formal = math.sqrt(1.0 / float(np.sum(w)))
    scatter = math.sqrt(float(np.sum(w * (v - mean) ** 2) / np.sum(w)) / (v.size - 1))
    return mean, max(formal, scatter)


def _channel_map(bayer: str | None) -> IntArray:
    """Colour index (0 R, 1 G, 2 B) of the pixel at (y % 2, x % 2); all 0 for mono."""
    if bayer is None:
        return np.zeros((2, 2), dtype=np.intp)
    pattern = bayer.strip().upper()
    if len(pattern) != 4 or sorted(pattern) != ["B", "G", "G", "R"]:
        raise ValueError(f"unknown Bayer pattern {bayer!r}")
    return cell_colours(pattern).astype(np.intp)


# ---------------------------------------------------------------------------------------------------------
# The fit (numba)


@njit(cache=True, nogil=True)
def _model(stamp_x: F64, stamp_y: F64, chan: IntArray, p: F64, nch: int, sub: F64, want_jac: bool,
           jac: F64, model: F64) -> None:  # pragma: no cover - numba
    """Pixel-averaged Moffat (1 + γQ)^(−1/γ), Q = a·dx² + 2b·dx·dy + c·dy², at each stamp pixel; with
    ``want_jac`` also its derivatives by p = (x0, y0, a, b, c, γ, A_0 .. A_nch-1).

    This is β = 1/γ with the quadratic form scaled by β, so that (a, b, c) describe the core whatever the
    wings: γ → 0 is a Gaussian exp(−Q), and the fit does not have to walk β and the core's size together
    towards infinity for a Gaussian-like star."""
    x0, y0, a, b, c, gamma = p[0], p[1], p[2], p[3], p[4], p[5]
    ns = sub.size
    inv = 1.0 / (ns * ns)
    small = gamma < _SERIES_GAMMA
    for i in range(stamp_x.size):
        g = 0.0
        gx0 = 0.0
        gy0 = 0.0
        ga = 0.0
        gb = 0.0
        gc = 0.0
        gg = 0.0
        for sy in range(ns):
            dy = stamp_y[i] + sub[sy] - y0
            for sx in range(ns):
                dx = stamp_x[i] + sub[sx] - x0
                q = a * dx * dx + 2.0 * b * dx * dy + c * dy * dy
                if q < 0.0:
                    q = 0.0
                u = 1.0 + gamma * q
                if small:
                    v = math.exp(-q + 0.5 * gamma * q * q)
                else:
                    lu = math.log(u)
                    v = math.exp(-lu / gamma)
                g += v
                if want_jac:
                    dv_dq = -v / u
                    gx0 += dv_dq * (-2.0 * (a * dx + b * dy))
                    gy0 += dv_dq * (-2.0 * (b * dx + c * dy))
                    ga += dv_dq * dx * dx
                    gb += dv_dq * 2.0 * dx * dy
                    gc += dv_dq * dy * dy
                    if small:
                        gg += v * (0.5 * q * q - (2.0 / 3.0) * gamma * q * q * q)
                    else:
                        gg += v * (lu / (gamma * gamma) - q / (gamma * u))
        k = chan[i]
        amp = p[6 + k]
        model[i] = amp * g * inv
        if want_jac:
            jac[i, 0] = amp * gx0 * inv
            jac[i, 1] = amp * gy0 * inv
            jac[i, 2] = amp * ga * inv
            jac[i, 3] = amp * gb * inv
            jac[i, 4] = amp * gc * inv
            jac[i, 5] = amp * gg * inv
            for q2 in range(nch):
                jac[i, 6 + q2] = g * inv if q2 == k else 0.0


@njit(cache=True, nogil=True)
def _half_level(gamma: float) -> float:  # pragma: no cover - numba
    """Q at half maximum: (2^γ − 1)/γ, ln 2 for a Gaussian."""
    if gamma < _SERIES_GAMMA:
        ln2 = math.log(2.0)
        return ln2 + 0.5 * gamma * ln2 * ln2
    return (math.pow(2.0, gamma) - 1.0) / gamma


@njit(cache=True, nogil=True)
def _samples(fwhm: float) -> int:  # pragma: no cover - numba
    """Sub-pixel samples per axis that integrate the pixel box well enough for a star of this FWHM (the
    midpoint rule's box variance falls short of 1/12 px² by 1/(12 n²))."""
    return 3 if fwhm < 2.5 else 2 if fwhm < 5.0 else 1


@njit(cache=True, nogil=True)
def _offsets(n: int) -> F64:  # pragma: no cover - numba
    return (np.arange(n) + 0.5) / n - 0.5


@njit(cache=True, nogil=True)
def _moffat_fwhm(p: F64) -> float:  # pragma: no cover - numba
    """Geometric-mean FWHM of the profile with parameters ``p``: 2·sqrt(Q_half)·det(a, b, c)^(−1/4)."""
    det = p[2] * p[4] - p[3] * p[3]
    return 2.0 * math.sqrt(_half_level(p[5])) * det ** -0.25 if det > 0.0 else np.nan


@njit(cache=True, nogil=True)
def _valid(p: F64) -> bool:  # pragma: no cover - numba
    return bool(p[2] > 0.0 and p[4] > 0.0 and p[2] * p[4] - p[3] * p[3] > 0.0 and 0.0 <= p[5] <= _GAMMA_MAX)


@njit(cache=True, nogil=True)
def _lm(stamp_x: F64, stamp_y: F64, chan: IntArray, values: F64, weight: F64, p: F64, nch: int,
        sub: F64) -> tuple[bool, F64, float]:  # pragma: no cover - numba
    """Levenberg–Marquardt on the stamp; returns (converged, covariance of p, residual variance)."""
    npar = 6 + nch
    n = values.size
    jac = np.empty((n, npar))
    model = np.empty(n)
    trial = np.empty(n)
    _model(stamp_x, stamp_y, chan, p, nch, sub, True, jac, model)
    chi2 = 0.0
    for i in range(n):
        r = values[i] - model[i]
        chi2 += weight[i] * r * r
    lam = 1e-3
    for _ in range(_MAX_ITER):
        jtj = np.zeros((npar, npar))
        jtr = np.zeros(npar)
        for i in range(n):
            if weight[i] == 0.0:
                continue
            r = values[i] - model[i]
            for q in range(npar):
                jtr[q] += jac[i, q] * r
                for s in range(q, npar):
                    jtj[q, s] += jac[i, q] * jac[i, s]
        for q in range(npar):
            for s in range(q):
                jtj[q, s] = jtj[s, q]
        improved = False
        gain = 0.0
        for _inner in range(10):
            lhs = jtj.copy()
            for q in range(npar):
                lhs[q, q] += lam * jtj[q, q] if jtj[q, q] > 0.0 else 1.0
            step = np.linalg.solve(lhs, jtr)
            cand = p + step
            cand[5] = min(max(cand[5], 0.0), _GAMMA_MAX)
            if not _valid(cand):
                lam *= 10.0
                continue
            _model(stamp_x, stamp_y, chan, cand, nch, sub, False, jac, trial)
            c2 = 0.0
            for i in range(n):
                r = values[i] - trial[i]
                c2 += weight[i] * r * r
            if c2 <= chi2:
                gain = chi2 - c2
                p[:] = cand
                chi2 = c2
                lam = max(lam * 0.1, 1e-7)
                improved = True
                break
            lam *= 10.0
        # No step lowers χ² any more, or the last one hardly did: at the minimum.
        if not improved or gain <= 1e-4 * chi2:
            break
        _model(stamp_x, stamp_y, chan, p, nch, sub, True, jac, model)
    _model(stamp_x, stamp_y, chan, p, nch, sub, True, jac, model)
    jtj = np.zeros((npar, npar))
    used = 0
    for i in range(n):
        if weight[i] == 0.0:
            continue
        used += 1
        for q in range(npar):
            for s in range(npar):
                jtj[q, s] += jac[i, q] * jac[i, s]
    dof = max(used - npar, 1)
    var = chi2 / dof
    if not np.all(np.isfinite(jtj)) or abs(np.linalg.det(jtj)) <= 0.0:
        return False, np.full((npar, npar), np.nan), var
    return True, np.linalg.inv(jtj) * var, var  # type: ignore[return-value]


# Why a star's fit failed (the status array of `fit_stars`).
FIT_OK, FIT_EDGE, FIT_FAINT, FIT_DIVERGED, FIT_OUTLIERS, FIT_MOVED = 0, 1, 2, 3, 4, 5


@njit(cache=True, nogil=True)
def _stamp_sky(image: FloatArray, xc: int, yc: int, big: int, channel: IntArray, nch: int,
               sky: F64) -> bool:  # pragma: no cover - numba
    """The sky of each colour into ``sky``: the median of the stamp's border, two pixels wide (it holds
    every colour of a Bayer mosaic). False when a colour has no border pixel."""
    ring = np.empty(16 * big + 16)
    for q in range(nch):
        nb = 0
        for y in range(yc - big, yc + big + 1):
            for x in range(xc - big, xc + big + 1):
                if max(abs(y - yc), abs(x - xc)) >= big - 1 and channel[y % 2, x % 2] == q:
                    ring[nb] = image[y, x]
                    nb += 1
        if nb == 0:
            return False
        sky[q] = np.median(ring[:nb])
    return True


@njit(cache=True, nogil=True)
def _first_size(image: FloatArray, xc: int, yc: int, big: int, channel: IntArray,
                sky: F64) -> tuple[float, float]:  # pragma: no cover - numba
    """(peak above sky, first FWHM): the brightest pixel near the centre, and how many pixels of its
    colour lie above half of it: the half-maximum area, a size that does not depend on the detection's
    estimate. The FWHM is NaN when the peak is not above the sky."""
    top = 0.0
    tq = 0
    for y in range(yc - 1, yc + 2):
        for x in range(xc - 1, xc + 2):
            q = channel[y % 2, x % 2]
            v = image[y, x] - sky[q]
            if v > top:
                top, tq = v, q
    if top <= 0.0:
        return top, math.nan
    n_half = 0
    n_colour = 0
    for y in range(yc - big + 1, yc + big):
        for x in range(xc - big + 1, xc + big):
            if channel[y % 2, x % 2] == tq:
                n_colour += 1
                if image[y, x] - sky[tq] >= 0.5 * top:
                    n_half += 1
    density = n_colour / ((2.0 * big - 1.0) ** 2)
    return top, max(1.0, 2.0 * math.sqrt(n_half / density / math.pi))


@njit(cache=True, nogil=True)
def _stamp(image: FloatArray, xc: int, yc: int, r: int, channel: IntArray, nch: int,
           sky: F64) -> tuple[F64, F64, IntArray, F64, F64]:  # pragma: no cover - numba
    """The (2r + 1)² stamp around (xc, yc): pixel x, y, colour, value above its colour's sky, and each
    colour's brightest value within one pixel of the centre."""
    side = 2 * r + 1
    npx = side * side
    sx = np.empty(npx)
    sy = np.empty(npx)
    ch = np.empty(npx, dtype=np.intp)
    vals = np.empty(npx)
    amp = np.zeros(nch)
    k = 0
    for y in range(yc - r, yc + r + 1):
        for x in range(xc - r, xc + r + 1):
            q = channel[y % 2, x % 2]
            sx[k], sy[k], ch[k] = x, y, q
            vals[k] = image[y, x] - sky[q]
            if abs(x - xc) <= 1 and abs(y - yc) <= 1:
                amp[q] = max(amp[q], vals[k])
            k += 1
    return sx, sy, ch, vals, amp


@njit(cache=True, nogil=True)
def _fit_stamp(sx: F64, sy: F64, ch: IntArray, vals: F64, p: F64, nch: int, ns: int,
               top: float) -> tuple[int, F64, int]:  # pragma: no cover - numba
    """Fit ``p`` to the stamp, finer sampled when the star turns out small, then again without the pixels
    the fit cannot explain. Returns (FIT_* status, covariance of p, sub-samples per pixel)."""
    npx = vals.size
    # A hot pixel or a cosmic-ray hit beside the star, brighter than the star itself, would pull the fit
    # onto it: pixels that exceed the first guess by more than half the star's peak start left out.
    weight = np.ones(npx)
    model = np.empty(npx)
    jac = np.empty((1, 1))
    _model(sx, sy, ch, p, nch, _offsets(ns), False, jac, model)
    for i in range(npx):
        if vals[i] - model[i] > 0.5 * top:
            weight[i] = 0.0
    ok, cov, var = _lm(sx, sy, ch, vals, weight, p, nch, _offsets(ns))
    if not ok:
        return FIT_DIVERGED, cov, ns
    fine = _samples(_moffat_fwhm(p))
    if fine > ns:
        ns = fine
        ok, cov, var = _lm(sx, sy, ch, vals, weight, p, nch, _offsets(ns))
        if not ok:
            return FIT_DIVERGED, cov, ns
    # Again without the pixels the fit cannot explain (a hot pixel, a cosmic-ray hit), and with those left
    # out at first that it can.
    _model(sx, sy, ch, p, nch, _offsets(ns), False, jac, model)
    limit = _OUTLIER_SIGMA * math.sqrt(var)
    n_out = 0
    changed = False
    for i in range(npx):
        keep = abs(vals[i] - model[i]) <= limit
        if keep != (weight[i] > 0.0):
            changed = True
        weight[i] = 1.0 if keep else 0.0
        n_out += 0 if keep else 1
    if changed:
        if n_out > npx // 10:
            return FIT_OUTLIERS, cov, ns
        ok, cov, var = _lm(sx, sy, ch, vals, weight, p, nch, _offsets(ns))
        if not ok:
            return FIT_DIVERGED, cov, ns
    return FIT_OK, cov, ns


@njit(cache=True, nogil=True)
def _shape_from_fit(p: F64, cov: F64, ns: int, out: F64) -> int:  # pragma: no cover - numba
    """The fitted profile's (x, y, fwhm, fwhm_err, e1, e2, e1_err, e2_err, beta) into ``out``; returns a
    FIT_* status."""
    a, b, c, gamma = p[2], p[3], p[4], p[5]
    # n sub-samples stand for the pixel's box with a variance short of it by 1/(12 n²) px², which the fit
    # gave to the star: remove it from the core (whose Gaussian covariance is (2·[[a, b], [b, c]])⁻¹).
    short = 1.0 / (12.0 * ns * ns)
    det = a * c - b * b
    sxx, sxy, syy = c / (2.0 * det) - short, -b / (2.0 * det), a / (2.0 * det) - short
    dcore = sxx * syy - sxy * sxy
    if sxx <= 0.0 or dcore <= 0.0:
        return FIT_DIVERGED
    a, b, c = syy / (2.0 * dcore), -sxy / (2.0 * dcore), sxx / (2.0 * dcore)
    det = a * c - b * b
    t = a + c
    # FWHM along the axes: 2·sqrt(Q_half/λ); geometric mean over the axes.
    half = _half_level(gamma)
    fwhm = 2.0 * math.sqrt(half) * det ** -0.25
    # dQ_half/dγ, for the uncertainty (its series near a Gaussian).
    if gamma < _SERIES_GAMMA:
        dhalf = 0.5 * math.log(2.0) ** 2
    else:
        dhalf = (2.0 ** gamma * math.log(2.0) * gamma - (2.0 ** gamma - 1.0)) / (gamma * gamma)
    # Uncertainties: the gradients through the covariance of (a, b, c, γ).
    g_f = np.array([-0.25 * fwhm * c / det, 0.5 * fwhm * b / det, -0.25 * fwhm * a / det,
                    0.5 * fwhm * dhalf / half])
    g_1 = np.array([-2.0 * c / (t * t), 0.0, 2.0 * a / (t * t), 0.0])
    g_2 = np.array([2.0 * b / (t * t), -2.0 / t, 2.0 * b / (t * t), 0.0])
    sub_cov = np.ascontiguousarray(cov[2:6, 2:6])
    vf = g_f @ sub_cov @ g_f
    v1 = g_1 @ sub_cov @ g_1
    v2 = g_2 @ sub_cov @ g_2
    if not (vf >= 0.0 and v1 >= 0.0 and v2 >= 0.0):
        return FIT_DIVERGED
    out[0], out[1] = p[0], p[1]
    out[2], out[3] = fwhm, math.sqrt(vf)
    out[4], out[5] = (c - a) / t, -2.0 * b / t
    out[6], out[7] = math.sqrt(v1), math.sqrt(v2)
    out[8] = 1.0 / gamma if gamma > 0.0 else np.inf
    return FIT_OK


@njit(cache=True, nogil=True)
def _fit_one(image: FloatArray, x0: float, y0: float, f_guess: float, channel: IntArray, nch: int,
             out: F64) -> int:  # pragma: no cover - numba
    """Fit one star; ``out`` receives (x, y, fwhm, fwhm_err, e1, e2, e1_err, e2_err, beta). Returns a
    FIT_* status."""
    h, w = image.shape
    # A generous stamp first (1.6 × the detection's FWHM, which may be too large for an undersampled or
    # Bayer star): its border gives the sky of each colour, its core a first size.
    big = min(max(math.ceil(1.6 * f_guess) + 1, 5), 16)
    xc, yc = math.floor(x0 + 0.5), math.floor(y0 + 0.5)
    if xc - big < 0 or yc - big < 0 or xc + big >= w or yc + big >= h:
        return FIT_EDGE
    sky = np.zeros(nch)
    if not _stamp_sky(image, xc, yc, big, channel, nch, sky):
        return FIT_EDGE
    top, f0 = _first_size(image, xc, yc, big, channel, sky)
    if top <= 0.0:
        return FIT_FAINT
    # The stamp fitted: 1.2 FWHM around the centre, the core and the start of the wings (at least 4 px:
    # the wings of an undersampled star are what tells its β).
    r = min(max(math.ceil(1.2 * f0) + 1, 4), big, 12)
    sx, sy, ch, vals, amp = _stamp(image, xc, yc, r, channel, nch, sky)
    gamma0 = 1.0 / 3.5
    p = np.empty(6 + nch)
    p[0], p[1] = x0, y0
    p[2] = 4.0 * _half_level(gamma0) / (f0 * f0)
    p[3] = 0.0
    p[4] = p[2]
    p[5] = gamma0
    for q in range(nch):
        p[6 + q] = max(amp[q], 1e-3 * top)
    status, cov, ns = _fit_stamp(sx, sy, ch, vals, p, nch, _samples(f0), top)
    if status != FIT_OK:
        return status
    if abs(p[0] - x0) > 2.0 or abs(p[1] - y0) > 2.0:
        return FIT_MOVED
    return _shape_from_fit(p, cov, ns, out)


@njit(cache=True, nogil=True, parallel=True)
def _fit_all(image: FloatArray, xs: F64, ys: F64, fwhm0: F64, channel: IntArray,
             nch: int) -> tuple[F64, IntArray]:  # pragma: no cover - numba
    n = xs.size
    res = np.full((n, 9), np.nan)
    status = np.zeros(n, dtype=np.intp)
    for s in prange(n):
        f0 = fwhm0[s] if np.isfinite(fwhm0[s]) and fwhm0[s] > 0.5 else 3.0
        row = np.full(9, np.nan)
        status[s] = _fit_one(image, xs[s], ys[s], f0, channel, nch, row)
        if status[s] == FIT_OK:
            res[s] = row
    return res, status
