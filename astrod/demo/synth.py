"""Seeded synthetic star fields, sensors, calibration frames and FITS files, each returned with its truth.

Conventions: pixel (x, y) is (column, row) with pixel centres at integer coordinates; arrays are
(height, width) float32. A ``Transform`` maps FRAME pixel coordinates onto REFERENCE coordinates, so a
star at reference position p appears in a frame at ``transform.inverse().apply(p)``.
Scenes are in electrons collected during the whole exposure; sensors turn them into ADU frames.
Every random draw comes from a numpy Generator seeded from an explicit ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from astrod.core.bayer import PATTERNS, check_pattern, colour_map
from astrod.io.files import ensure_folder
from astrod.io.fits import Header
from astrod.io.fits import write_fits as write_fits_file
from astrod.model import FrameKind, Transform

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
Seed = int | np.random.Generator | np.random.SeedSequence

# Stream tags: the same integer seed gives independent streams for different purposes
# (a bias and a dark made with seed=1 must not share their read noise).
_TAG_CATALOGUE = 11
_TAG_SENSOR = 12
_TAG_BIAS = 21
_TAG_DARK = 22
_TAG_FLAT = 23
_TAG_LIGHT = 24
_TAG_COSMIC = 31
_TAG_SESSION = 41
_TAG_RENDER = 51

BAYER_PATTERNS = PATTERNS


def _rng(seed: Seed | None, *tags: int) -> np.random.Generator:
    """A Generator from an int seed mixed with ``tags``; a Generator passed in is used as is."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        raise TypeError("a seed is required (int, SeedSequence or numpy Generator)")
    if isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, *tags)))
    return np.random.default_rng(np.random.SeedSequence([int(seed), *tags]))


def _readonly(a: npt.NDArray[np.generic]) -> None:
    a.setflags(write=False)


# --------------------------------------------------------------------------------------------------------
# Catalogue


@dataclass(frozen=True, eq=False)
class Catalogue:
    """Stars in REFERENCE pixel coordinates; ``flux`` is total electrons per exposure.

    Unpacks as ``x, y, flux = catalogue``.
    """

    x: F64
    y: F64
    flux: F64

    def __post_init__(self) -> None:
        # Accept lists or other dtypes from hand-made catalogues; store read-only float64 arrays.
        for name in ("x", "y", "flux"):
            a = np.array(getattr(self, name), dtype=np.float64).reshape(-1)
            _readonly(a)
            object.__setattr__(self, name, a)
        if not self.x.size == self.y.size == self.flux.size:
            raise ValueError(f"catalogue columns differ in length: {self.x.size}, {self.y.size}, {self.flux.size}")

    @property
    def n(self) -> int:
        return int(self.x.size)

    @property
    def xy(self) -> F64:
        """(N, 2) array of (x, y)."""
        return np.column_stack([self.x, self.y])

    def __iter__(self) -> Iterator[F64]:
        return iter((self.x, self.y, self.flux))


def _power_law(rng: np.random.Generator, n: int, *, index: float, lo: float, hi: float) -> F64:
    """Fluxes with cumulative counts N(>F) ∝ F^-index between lo and hi (inverse-CDF sampling)."""
    u = rng.uniform(0.0, 1.0, n)
    if index == 0.0:
        return np.asarray(lo * (hi / lo) ** u, dtype=np.float64)
    a, b = lo**-index, hi**-index
    return np.asarray((a - u * (a - b)) ** (-1.0 / index), dtype=np.float64)


def _throw_darts(
    rng: np.random.Generator,
    n: int,
    *,
    box: tuple[float, float, float, float],
    hole: tuple[float, float, float, float] | None,
    accepted: F64,
    min_separation: float,
) -> F64:
    """``n`` uniform points in ``box`` (x0, x1, y0, y1) outside ``hole``, ``min_separation`` apart."""
    x0, x1, y0, y1 = box
    out = np.empty((0, 2), dtype=np.float64)
    for _ in range(200):
        need = n - out.shape[0]
        if need <= 0:
            break
        cand = np.column_stack([rng.uniform(x0, x1, 2 * need + 8), rng.uniform(y0, y1, 2 * need + 8)])
        if hole is not None:
            hx0, hx1, hy0, hy1 = hole
            inside = (cand[:, 0] >= hx0) & (cand[:, 0] < hx1) & (cand[:, 1] >= hy0) & (cand[:, 1] < hy1)
            cand = cand[~inside]
        if min_separation <= 0.0:
            out = np.vstack([out, cand[:need]])
            continue
        taken = np.vstack([accepted, out])
        for p in cand:
            if out.shape[0] >= n:
                break
            if taken.shape[0] and np.min(np.hypot(*(taken - p).T)) < min_separation:
                continue
            out = np.vstack([out, p[None, :]])
            taken = np.vstack([taken, p[None, :]])
    if out.shape[0] < n:
        raise ValueError(f"cannot place {n} stars at least {min_separation} px apart: field too crowded")
    return out[:n]


def make_catalogue(
    *,
    width: int,
    height: int,
    n_stars: int = 200,
    seed: Seed,
    margin: float = 0.0,
    power_index: float = 1.5,
    flux_min: float = 2e3,
    flux_max: float = 2e6,
    min_separation: float = 0.0,
) -> Catalogue:
    """A random star catalogue: exactly ``n_stars`` inside the reference frame, and as many more at the
    same density in a ``margin``-pixel band around it (so shifted or rotated frames are full of stars).

    Fluxes follow a power law N(>F) ∝ F^-power_index (1.5 = uniform stars in Euclidean space).
    ``min_separation`` (px) keeps stars apart, e.g. for centroid tests that need isolated stars.
    """
    if width <= 0 or height <= 0 or n_stars < 0 or margin < 0:
        raise ValueError(f"bad catalogue size: width={width} height={height} n_stars={n_stars} margin={margin}")
    if not 0.0 < flux_min <= flux_max:
        raise ValueError(f"need 0 < flux_min <= flux_max, got {flux_min}, {flux_max}")
    rng = _rng(seed, _TAG_CATALOGUE)
    frame = (-0.5, width - 0.5, -0.5, height - 0.5)
    inner = _throw_darts(rng, n_stars, box=frame, hole=None, accepted=np.empty((0, 2)), min_separation=min_separation)
    outer = np.empty((0, 2), dtype=np.float64)
    if margin > 0.0:
        area = float(width * height)
        ext_area = (width + 2.0 * margin) * (height + 2.0 * margin)
        n_out = round(n_stars * (ext_area - area) / area)
        box = (-0.5 - margin, width - 0.5 + margin, -0.5 - margin, height - 0.5 + margin)
        outer = _throw_darts(rng, n_out, box=box, hole=frame, accepted=inner, min_separation=min_separation)
    xy = np.vstack([inner, outer])
    flux = _power_law(rng, xy.shape[0], index=power_index, lo=flux_min, hi=flux_max)
    return Catalogue(x=xy[:, 0], y=xy[:, 1], flux=flux)


# --------------------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True, eq=False)
class StarField:
    """Truth of a rendered scene: the catalogue stars whose centre falls inside the frame.

    ``x, y`` are frame coordinates, ``ref_x, ref_y`` the reference coordinates (``transform.apply`` of
    ``x, y``), ``flux`` total electrons, ``index`` the rows of the catalogue they come from.
    """

    x: F64
    y: F64
    ref_x: F64
    ref_y: F64
    flux: F64
    fwhm: float
    beta: float
    transform: Transform
    sky: float
    gradient: tuple[float, float] = (0.0, 0.0)
    ellipticity: float = 0.0
    trail: tuple[float, float] | None = None
    index: IntArray | None = None
    width: int = 0
    height: int = 0

    @property
    def n(self) -> int:
        return int(self.x.size)

    @property
    def xy(self) -> F64:
        """(N, 2) frame coordinates."""
        return np.column_stack([self.x, self.y])

    @property
    def ref_xy(self) -> F64:
        """(N, 2) reference coordinates."""
        return np.column_stack([self.ref_x, self.ref_y])

    def sky_map(self) -> F32:
        """The true sky (electrons per pixel) of this scene, without stars."""
        return _sky(self.width, self.height, self.sky, self.gradient)


def moffat_alpha(*, fwhm: float, beta: float) -> float:
    """Moffat core width α for a given FWHM and β."""
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def _sky(width: int, height: int, sky: float, gradient: tuple[float, float]) -> F32:
    """Sky level plus a linear gradient (electrons per pixel per pixel), centred so its mean is ``sky``."""
    gx, gy = gradient
    xs = (np.arange(width, dtype=np.float32) - (width - 1) / 2.0) * np.float32(gx)
    ys = (np.arange(height, dtype=np.float32) - (height - 1) / 2.0) * np.float32(gy)
    out = np.float32(sky) + ys[:, None] + xs[None, :]
    return np.maximum(out, np.float32(0.0)).astype(np.float32)


def _line_kernel(length: float, angle_deg: float) -> F32:
    """A normalised, point-symmetric anti-aliased line of ``length`` px (keeps flux and centroid)."""
    half = math.ceil(length / 2.0) + 1
    size = 2 * half + 1
    t = np.linspace(-length / 2.0, length / 2.0, max(2, math.ceil(length * 8) + 1))
    px = half + t * math.cos(math.radians(angle_deg))
    py = half + t * math.sin(math.radians(angle_deg))
    k = np.zeros((size, size), dtype=np.float64)
    ix, iy = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
    fx, fy = px - ix, py - iy
    for dy, dx, w in (
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        np.add.at(k, (iy + dy, ix + dx), w)
    return np.asarray(k / k.sum(), dtype=np.float32)


def render_stars(
    *,
    width: int,
    height: int,
    catalogue: Catalogue,
    transform: Transform | None = None,
    fwhm: float = 3.0,
    beta: float = 4.0,
    sky: float = 100.0,
    gradient: tuple[float, float] = (0.0, 0.0),
    ellipticity: float = 0.0,
    ellipticity_angle_deg: float = 0.0,
    trail: tuple[float, float] | None = None,
    seed: Seed | None = None,
    supersample: int = 5,
    stars_only: bool = False,
) -> tuple[F32, StarField]:
    """A noiseless scene (electrons per exposure, float32 (height, width)) and its truth.

    Moffat PSFs integrated over pixels by ``supersample``² sub-samples in a stamp; each stamp is scaled to
    hold exactly the star's flux. ``ellipticity`` = 1 - b/a with the major axis at ``ellipticity_angle_deg``
    (area kept, so ``fwhm`` is the geometric mean). ``trail=(length_px, angle_deg)`` smears every star along
    a segment centred on it. ``gradient=(gx, gy)`` is electrons/px per px, centred on the frame.
    ``seed`` is accepted for API symmetry; rendering draws nothing at random.
    """
    del seed
    if fwhm <= 0 or beta <= 1.0:
        raise ValueError(f"need fwhm > 0 and beta > 1, got fwhm={fwhm} beta={beta}")
    if not 0.0 <= ellipticity < 1.0:
        raise ValueError(f"ellipticity must be in [0, 1), got {ellipticity}")
    transform = Transform.identity() if transform is None else transform
    ref = catalogue.xy
    pos = transform.inverse().apply(ref) if ref.shape[0] else np.empty((0, 2))

    alpha = moffat_alpha(fwhm=fwhm, beta=beta)
    a_ax, b_ax = alpha / math.sqrt(1.0 - ellipticity), alpha * math.sqrt(1.0 - ellipticity)
    # Stamp radius: where the Moffat leaves < 1e-4 of the flux outside, capped for shallow wings.
    r_cut = a_ax * math.sqrt(1e4 ** (1.0 / (beta - 1.0)) - 1.0)
    rad = math.ceil(min(r_cut, 8.0 * fwhm / math.sqrt(1.0 - ellipticity))) + 1
    trail_len = 0.0 if trail is None else float(trail[0])
    pad = rad + math.ceil(trail_len / 2.0) + 2
    cw, ch = width + 2 * pad, height + 2 * pad
    canvas = np.zeros(ch * cw, dtype=np.float64)

    lim = pad - rad
    sel = (pos[:, 0] >= -lim) & (pos[:, 0] <= width - 1 + lim) & (pos[:, 1] >= -lim) & (pos[:, 1] <= height - 1 + lim)
    idx_all = np.flatnonzero(sel)
    ss = int(supersample)
    sub = (np.arange(ss, dtype=np.float64) + 0.5) / ss - 0.5
    offs = np.arange(-rad, rad + 1, dtype=np.float64)
    # Sub-sample offsets from the stamp's central pixel, shape (S, S, ss, ss).
    fx = offs[None, :, None, None] + sub[None, None, None, :]
    fy = offs[:, None, None, None] + sub[None, None, :, None]
    ct, st = math.cos(math.radians(ellipticity_angle_deg)), math.sin(math.radians(ellipticity_angle_deg))
    size = 2 * rad + 1
    grid_r, grid_c = np.mgrid[-rad : rad + 1, -rad : rad + 1]
    chunk = max(1, 2_000_000 // (size * size * ss * ss))
    for start in range(0, idx_all.size, chunk):
        idx = idx_all[start : start + chunk]
        cx = np.rint(pos[idx, 0])
        cy = np.rint(pos[idx, 1])
        ddx = fx[None] - (pos[idx, 0] - cx)[:, None, None, None, None]
        ddy = fy[None] - (pos[idx, 1] - cy)[:, None, None, None, None]
        u = ddx * ct + ddy * st
        v = -ddx * st + ddy * ct
        prof = (1.0 + (u / a_ax) ** 2 + (v / b_ax) ** 2) ** -beta
        stamps = prof.sum(axis=(3, 4))
        stamps *= (catalogue.flux[idx] / stamps.sum(axis=(1, 2)))[:, None, None]
        rows = (cy.astype(np.int64) + pad)[:, None, None] + grid_r[None]
        cols = (cx.astype(np.int64) + pad)[:, None, None] + grid_c[None]
        np.add.at(canvas, (rows * cw + cols).ravel(), stamps.ravel())

    stars = canvas.reshape(ch, cw).astype(np.float32)
    if trail is not None and trail_len > 0.0:
        kernel = _line_kernel(trail_len, float(trail[1]))
        stars = np.asarray(cv2.filter2D(stars, cv2.CV_32F, kernel, borderType=cv2.BORDER_CONSTANT), dtype=np.float32)
    scene = stars[pad : pad + height, pad : pad + width]
    if not stars_only:
        scene = scene + _sky(width, height, sky, gradient)
    scene = np.ascontiguousarray(scene, dtype=np.float32)

    inside = (pos[:, 0] >= -0.5) & (pos[:, 0] < width - 0.5) & (pos[:, 1] >= -0.5) & (pos[:, 1] < height - 0.5)
    keep = np.flatnonzero(inside)
    arrays = (
        np.ascontiguousarray(pos[keep, 0]),
        np.ascontiguousarray(pos[keep, 1]),
        np.ascontiguousarray(ref[keep, 0]),
        np.ascontiguousarray(ref[keep, 1]),
        np.ascontiguousarray(catalogue.flux[keep]),
        keep.astype(np.int64),
    )
    for a in arrays:
        _readonly(a)
    truth = StarField(
        x=arrays[0],
        y=arrays[1],
        ref_x=arrays[2],
        ref_y=arrays[3],
        flux=arrays[4],
        fwhm=float(fwhm),
        beta=float(beta),
        transform=transform,
        sky=float(sky),
        gradient=(float(gradient[0]), float(gradient[1])),
        ellipticity=float(ellipticity),
        trail=None if trail is None else (float(trail[0]), float(trail[1])),
        index=arrays[5],
        width=width,
        height=height,
    )
    return scene, truth


def to_rgb(scene: F32, *, colour: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> F32:
    """A (3, H, W) RGB scene from a mono one, each channel scaled by ``colour``."""
    c = np.asarray(colour, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray(scene[None, :, :] * c, dtype=np.float32)


# --------------------------------------------------------------------------------------------------------
# Bayer


def cfa_channel_index(pattern: str, offset: tuple[int, int], shape: tuple[int, int]) -> npt.NDArray[np.int8]:
    """Colour of each pixel (0=R, 1=G, 2=B) for a CFA ``pattern`` read from the top-left pixel.

    ``offset`` is (x, y) like XBAYROFF/YBAYROFF: pixel (row, col) has colour
    ``pattern[2 * ((row + oy) % 2) + (col + ox) % 2]``.
    """
    colours = colour_map(shape, pattern=check_pattern(pattern), offset=offset, dtype=np.int8)
    return colours.astype(np.int8, copy=False)


def mosaic(rgb: F32, *, pattern: str, offset: tuple[int, int] = (0, 0)) -> F32:
    """A (H, W) CFA frame sampled from a (3, H, W) RGB image."""
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"mosaic needs a (3, H, W) array, got shape {rgb.shape}")
    idx = cfa_channel_index(pattern, offset, (rgb.shape[1], rgb.shape[2]))
    out = np.take_along_axis(rgb, idx[None, :, :].astype(np.intp), axis=0)[0]
    return np.ascontiguousarray(out, dtype=np.float32)


# --------------------------------------------------------------------------------------------------------
# Sensor


@dataclass(frozen=True)
class Donut:
    """A dust shadow on the flat: an annulus of ``depth`` (fractional loss) between the two radii."""

    x: float
    y: float
    r_inner: float
    r_outer: float
    depth: float


class Sensor:
    """A camera with truth fixed by ``seed``: bias pattern, dark current, hot pixels, amp glow, flat field.

    ``gain`` is e-/ADU, ``read_noise`` electrons rms, ``dark_rate`` e-/s/px at ``ref_temp`` (doubling every
    ``doubling_temp`` °C), ``hot_rate`` e-/s of a hot pixel at ``ref_temp`` (each 0.5–1.5 × hot_rate),
    ``amp_glow`` e-/s at the glowing (top-right) corner (independent of temperature), ``vignetting`` the
    fractional loss at the corners, ``dust`` the number of donuts (``.dust_donuts`` holds their truth).
    For a Bayer sensor ``flat_field`` = ``illumination`` × ``qe[channel]``, normalised to mean 1.
    Frames come back as float32 ADU rounded like a 16-bit camera and clipped to [0, full_well].
    """

    def __init__(
        self,
        *,
        width: int,
        height: int,
        seed: Seed,
        bias_level: float = 500.0,
        read_noise: float = 5.0,
        gain: float = 1.0,
        dark_rate: float = 0.05,
        ref_temp: float = -10.0,
        doubling_temp: float = 6.0,
        hot_pixels: int = 50,
        hot_rate: float = 50.0,
        amp_glow: float = 0.0,
        vignetting: float = 0.3,
        dust: int = 2,
        bayer: str | None = None,
        bayer_offset: tuple[int, int] = (0, 0),
        full_well: float = 65535.0,
        qe: tuple[float, float, float] = (0.75, 1.0, 0.6),
        prnu: float = 0.005,
    ) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"bad sensor size {width}x{height}")
        if gain <= 0 or doubling_temp <= 0:
            raise ValueError(f"need gain > 0 and doubling_temp > 0, got {gain}, {doubling_temp}")
        if hot_pixels < 0 or hot_pixels > width * height:
            raise ValueError(f"hot_pixels must be in [0, {width * height}], got {hot_pixels}")
        if not 0.0 <= vignetting < 1.0:
            raise ValueError(f"vignetting must be in [0, 1), got {vignetting}")
        self.width = int(width)
        self.height = int(height)
        self.seed = seed
        self.bias_level = float(bias_level)
        self.read_noise = float(read_noise)
        self.gain = float(gain)
        self.dark_rate = float(dark_rate)
        self.ref_temp = float(ref_temp)
        self.doubling_temp = float(doubling_temp)
        self.hot_rate = float(hot_rate)
        self.amp_glow = float(amp_glow)
        self.vignetting = float(vignetting)
        self.full_well = float(full_well)
        self.bayer = None if bayer is None else check_pattern(bayer)
        self.bayer_offset = (int(bayer_offset[0]), int(bayer_offset[1]))
        self._seed_key = seed if isinstance(seed, int) else 0

        rng = _rng(seed, _TAG_SENSOR)
        streams = rng.spawn(6)
        h, w = self.height, self.width

        # Bias: column pattern (typical of CMOS readout) + weak row pattern + pixel fixed pattern.
        s = streams[0]
        bias = bias_level + s.normal(0.0, 1.5, w)[None, :] + s.normal(0.0, 0.3, h)[:, None] + s.normal(0.0, 0.5, (h, w))
        self.bias_map: F32 = bias.astype(np.float32)

        # Dark current: mild pixel-to-pixel spread (gamma, mean 1) plus hot pixels.
        s = streams[1]
        dark = dark_rate * s.gamma(25.0, 1.0 / 25.0, (h, w))
        flat_idx = s.choice(h * w, size=hot_pixels, replace=False) if hot_pixels else np.empty(0, np.int64)
        flat_idx = np.sort(flat_idx)
        hot_yx = np.column_stack(np.unravel_index(flat_idx, (h, w))).astype(np.int64).reshape(-1, 2)
        dark.ravel()[flat_idx] = hot_rate * s.uniform(0.5, 1.5, hot_pixels)
        self.dark_rate_map: F32 = dark.astype(np.float32)
        self.hot_pixel_yx: IntArray = hot_yx

        # Amp glow: exponential falloff from the top-right corner (not temperature dependent).
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        scale = 0.1 * min(h, w)
        glow = amp_glow * np.exp(-np.hypot(xx - (w - 1), yy) / scale)
        self.amp_glow_map: F32 = glow.astype(np.float32)

        # Illumination: vignetting (quadratic in radius, corners at 1 - vignetting) × dust donuts × PRNU.
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (cx**2 + cy**2 if cx or cy else 1.0)
        illum = 1.0 - vignetting * r2
        s = streams[2]
        donuts: list[Donut] = []
        r_scale = max(4.0, 0.04 * min(h, w))
        for _ in range(int(dust)):
            r_out = float(s.uniform(1.0, 2.0) * r_scale)
            # Donuts do not overlap, so each one's truth (depth) is what a test measures around it.
            for _attempt in range(100):
                x = float(s.uniform(r_out + 2, max(r_out + 3, w - 3 - r_out)))
                y = float(s.uniform(r_out + 2, max(r_out + 3, h - 3 - r_out)))
                if all(math.hypot(x - o.x, y - o.y) > r_out + o.r_outer + 8.0 for o in donuts):
                    break
            d = Donut(x=x, y=y, r_inner=0.45 * r_out, r_outer=r_out, depth=float(s.uniform(0.04, 0.10)))
            donuts.append(d)
            r = np.hypot(xx - d.x, yy - d.y)
            # Smooth-edged annulus: the shadow of an out-of-focus dust mote through a central obstruction.
            edge = 1.0
            ring = _smoothstep((r - d.r_inner) / edge + 0.5) * _smoothstep((d.r_outer - r) / edge + 0.5)
            # The obstructed centre is not fully clear: a quarter of the depth remains there.
            core = 0.25 * _smoothstep((d.r_inner - r) / edge + 0.5)
            illum *= 1.0 - d.depth * (ring + core)
        self.dust_donuts: tuple[Donut, ...] = tuple(donuts)
        illum *= 1.0 + streams[3].normal(0.0, prnu, (h, w))
        illum /= illum.mean()
        self.illumination: F32 = illum.astype(np.float32)

        if self.bayer is None:
            self.qe: F64 | None = None
            self.cfa_index: npt.NDArray[np.int8] | None = None
            flat = illum
        else:
            self.cfa_index = cfa_channel_index(self.bayer, self.bayer_offset, (h, w))
            qe_arr = np.asarray(qe, dtype=np.float64)
            qe_map = qe_arr[self.cfa_index]
            # Normalise so that flat_field = illumination × qe[channel] has mean exactly 1.
            qe_arr = qe_arr / float((illum * qe_map).mean())
            self.qe = qe_arr
            flat = illum * qe_arr[self.cfa_index]
        self.flat_field: F32 = flat.astype(np.float32)

        for a in (
            self.bias_map,
            self.dark_rate_map,
            self.hot_pixel_yx,
            self.amp_glow_map,
            self.illumination,
            self.flat_field,
        ):
            _readonly(a)
        if self.qe is not None:
            _readonly(self.qe)
        if self.cfa_index is not None:
            _readonly(self.cfa_index)
        self._frozen = True

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError(f"Sensor is frozen: cannot set {name!r}")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return (
            f"Sensor({self.width}x{self.height}, seed={self.seed!r}, bias={self.bias_level}, "
            f"rn={self.read_noise}, gain={self.gain}, bayer={self.bayer})"
        )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def dark_scale(self, temperature: float) -> float:
        """Dark-current multiplier at ``temperature`` relative to ``ref_temp``."""
        return float(2.0 ** ((temperature - self.ref_temp) / self.doubling_temp))

    def dark_current(self, *, exposure: float, temperature: float) -> F32:
        """True expected dark electrons per pixel (thermal dark with hot pixels, plus amp glow)."""
        thermal = self.dark_rate_map * np.float32(exposure * self.dark_scale(temperature))
        return (thermal + self.amp_glow_map * np.float32(exposure)).astype(np.float32)

    def _frame_rng(self, seed: Seed | None, positional: Seed | None, tag: int) -> np.random.Generator:
        chosen = seed if seed is not None else positional
        if chosen is None:
            raise TypeError("a seed is required for every synthetic frame")
        if isinstance(chosen, int):
            return _rng(np.random.SeedSequence([self._seed_key & 0xFFFFFFFF, int(chosen)]), tag)
        return _rng(chosen, tag)

    def _readout(self, electrons: npt.NDArray[np.floating], rng: np.random.Generator) -> F32:
        """Poisson(electrons) → ADU + bias pattern + read noise, rounded and clipped like a 16-bit camera."""
        lam = np.maximum(np.asarray(electrons, dtype=np.float64), 0.0)
        e = rng.poisson(lam).astype(np.float64)
        adu = e / self.gain + self.bias_map + rng.normal(0.0, self.read_noise / self.gain, self.shape)
        return np.clip(np.rint(adu), 0.0, self.full_well).astype(np.float32)

    def bias(self, rng_or_seed: Seed | None = None, /, *, seed: Seed | None = None) -> F32:
        """A bias frame: bias pattern + read noise."""
        rng = self._frame_rng(seed, rng_or_seed, _TAG_BIAS)
        return self._readout(np.zeros(self.shape), rng)

    def dark(self, *, exposure: float, temperature: float, seed: Seed) -> F32:
        """A dark (or dark-flat) frame of ``exposure`` seconds at ``temperature`` °C."""
        rng = self._frame_rng(seed, None, _TAG_DARK)
        return self._readout(self.dark_current(exposure=exposure, temperature=temperature), rng)

    def flat(
        self,
        *,
        level: float = 20000.0,
        seed: Seed,
        exposure: float = 1.0,
        temperature: float | None = None,
        filter: str | None = None,
    ) -> F32:
        """A flat: uniform illumination giving ``level`` ADU above bias on average, × flat_field, Poisson.

        ``temperature`` None means ``ref_temp``. ``filter`` is accepted for API symmetry; the flat field does
        not depend on it (lights have no filter either, so flats always calibrate them).
        """
        del filter
        rng = self._frame_rng(seed, None, _TAG_FLAT)
        temp = self.ref_temp if temperature is None else temperature
        electrons = level * self.gain * self.flat_field + self.dark_current(exposure=exposure, temperature=temp)
        return self._readout(electrons, rng)

    def expected_light_electrons(self, scene: F32, *, exposure: float, temperature: float) -> F32:
        """Expected electrons per pixel: scene (mosaicked if RGB) × flat_field + dark current."""
        if scene.ndim == 3:
            if self.bayer is None:
                raise ValueError("an RGB scene needs a Bayer sensor; pass a mono (H, W) scene")
            scene = mosaic(scene, pattern=self.bayer, offset=self.bayer_offset)
        if scene.shape != self.shape:
            raise ValueError(f"scene shape {scene.shape} does not match sensor {self.shape}")
        dark = self.dark_current(exposure=exposure, temperature=temperature)
        return (scene * self.flat_field + dark).astype(np.float32)

    def light(self, scene: F32, *, exposure: float, temperature: float, seed: Seed) -> F32:
        """A light frame from a scene in electrons (mono (H, W), or (3, H, W) RGB for a Bayer sensor)."""
        rng = self._frame_rng(seed, None, _TAG_LIGHT)
        return self._readout(self.expected_light_electrons(scene, exposure=exposure, temperature=temperature), rng)


def _smoothstep(t: F64) -> F64:
    t = np.clip(t, 0.0, 1.0)
    return np.asarray(t * t * (3.0 - 2.0 * t), dtype=np.float64)


# --------------------------------------------------------------------------------------------------------
# Sessions


@dataclass(frozen=True, eq=False)
class Session:
    """Frames of one target through one sensor, with their truth. Iterates as (frame, truth) pairs."""

    frames: list[F32]
    truths: list[StarField]
    sensor: Sensor
    catalogue: Catalogue
    exposure: float
    temperature: float
    pier_sides: list[str]
    fwhm: float = 3.0
    beta: float = 4.0
    sky: float = 100.0
    gradient: tuple[float, float] = (0.0, 0.0)

    def reference_scene(self, *, sky: bool = True) -> F32:
        """The noiseless scene (electrons) in reference coordinates: what a perfect stack converges to
        before the sensor's flat field (without sky when ``sky`` is False)."""
        scene, _ = render_stars(
            width=self.sensor.width,
            height=self.sensor.height,
            catalogue=self.catalogue,
            fwhm=self.fwhm,
            beta=self.beta,
            sky=self.sky,
            gradient=self.gradient,
            stars_only=not sky,
        )
        return scene

    @property
    def transforms(self) -> list[Transform]:
        return [t.transform for t in self.truths]

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[tuple[F32, StarField]]:
        return iter(zip(self.frames, self.truths, strict=True))

    def __getitem__(self, i: int) -> tuple[F32, StarField]:
        return self.frames[i], self.truths[i]

    def write(
        self,
        directory: str | Path,
        *,
        dialect: str = "nina",
        object: str = "M 31",
        filter: str = "L",
        start: datetime | None = None,
        gap: float = 2.0,
        extra: Mapping[str, Any] | None = None,
    ) -> list[Path]:
        """Write every frame as a FITS light with consecutive DATE-OBS; returns the paths in order."""
        t0 = datetime(2024, 10, 5, 21, 30, 0, tzinfo=UTC) if start is None else start
        paths = []
        for i, frame in enumerate(self.frames):
            date = t0 + timedelta(seconds=i * (self.exposure + gap))
            stamp = f"{date:%Y-%m-%d_%H-%M-%S}"
            name = f"{object.replace(' ', '')}_{stamp}_{filter}_{self.exposure:.2f}s_{i:04d}.fits"
            paths.append(
                write_fits(
                    Path(directory) / name,
                    frame,
                    dialect=dialect,
                    kind="light",
                    exposure=self.exposure,
                    temperature=self.temperature,
                    set_temperature=self.temperature,
                    filter=filter,
                    object=object,
                    date_obs=date,
                    bayer=self.sensor.bayer,
                    bayer_offset=self.sensor.bayer_offset,
                    pier_side=self.pier_sides[i],
                    egain=self.sensor.gain,
                    extra=extra,
                )
            )
        return paths


def _similarity_about(
    *, centre: tuple[float, float], dx: float, dy: float, rotation_deg: float, scale: float
) -> Transform:
    """x_ref = s·R·(x - c) + c + d: rotation about the frame centre, then a shift."""
    t = math.radians(rotation_deg)
    c, s = scale * math.cos(t), scale * math.sin(t)
    cx, cy = centre
    tx = cx + dx - (c * cx - s * cy)
    ty = cy + dy - (s * cx + c * cy)
    return Transform(((c, -s, tx), (s, c, ty), (0.0, 0.0, 1.0)))


def make_session(
    *,
    n_frames: int,
    width: int = 512,
    height: int = 512,
    seed: Seed,
    n_stars: int = 200,
    fwhm: float = 3.0,
    beta: float = 4.0,
    max_shift: float = 50.0,
    max_rotation_deg: float = 2.0,
    meridian_flip_at: int | None = None,
    scale_jitter: float = 0.005,
    exposure: float = 60.0,
    temperature: float = -10.0,
    sky: float = 100.0,
    gradient: tuple[float, float] = (0.0, 0.0),
    fwhm_jitter: float = 0.0,
    sensor: Sensor | None = None,
    min_separation: float = 0.0,
    power_index: float = 1.5,
    flux_min: float = 2e3,
    flux_max: float = 2e6,
) -> Session:
    """``n_frames`` light frames (ADU float32, through ``sensor``) of one star field with known transforms.

    Frame 0 has the identity transform. Other frames are shifted by up to ``max_shift`` px, rotated about the
    frame centre by up to ``max_rotation_deg`` and scaled by 1 ± ``scale_jitter`` (uniform draws). Frames with
    index >= ``meridian_flip_at`` are additionally rotated by 180° about the centre (pier side West).
    ``fwhm_jitter`` is the fractional rms seeing variation between frames.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    rng = _rng(seed, _TAG_SESSION)
    streams = rng.spawn(5)
    if sensor is None:
        sensor = Sensor(width=width, height=height, seed=int(streams[0].integers(0, 2**31)))
    elif sensor.shape != (height, width):
        raise ValueError(f"sensor shape {sensor.shape} does not match {height}x{width}")
    margin = max_shift + 0.5 * math.hypot(width, height) * (math.radians(max_rotation_deg) + scale_jitter)
    margin += 4.0 * fwhm
    catalogue = make_catalogue(
        width=width,
        height=height,
        n_stars=n_stars,
        seed=int(streams[1].integers(0, 2**31)),
        margin=margin,
        min_separation=min_separation,
        power_index=power_index,
        flux_min=flux_min,
        flux_max=flux_max,
    )
    geo = streams[2]
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    frames: list[F32] = []
    truths: list[StarField] = []
    sides: list[str] = []
    for i in range(n_frames):
        flipped = meridian_flip_at is not None and i >= meridian_flip_at
        if i == 0:
            transform = Transform.identity()
            # Draw anyway so frame i's geometry does not depend on whether frame 0 is special.
            geo.uniform(size=4)
            frame_fwhm = fwhm
        else:
            dx, dy = geo.uniform(-max_shift, max_shift, 2)
            rot = geo.uniform(-max_rotation_deg, max_rotation_deg)
            scl = 1.0 + geo.uniform(-scale_jitter, scale_jitter)
            transform = _similarity_about(
                centre=centre,
                dx=float(dx),
                dy=float(dy),
                rotation_deg=float(rot) + (180.0 if flipped else 0.0),
                scale=float(scl),
            )
            frame_fwhm = fwhm * max(0.3, 1.0 + fwhm_jitter * float(streams[3].normal()))
        if i == 0 and flipped:
            transform = _similarity_about(centre=centre, dx=0.0, dy=0.0, rotation_deg=180.0, scale=1.0)
        scene, truth = render_stars(
            width=width,
            height=height,
            catalogue=catalogue,
            transform=transform,
            fwhm=frame_fwhm,
            beta=beta,
            sky=sky,
            gradient=gradient,
        )
        frame_seed = np.random.SeedSequence([int(streams[4].integers(0, 2**31)), i, _TAG_RENDER])
        frames.append(sensor.light(scene, exposure=exposure, temperature=temperature, seed=_rng(frame_seed)))
        truths.append(truth)
        sides.append("West" if flipped else "East")
    return Session(
        frames=frames,
        truths=truths,
        sensor=sensor,
        catalogue=catalogue,
        exposure=float(exposure),
        temperature=float(temperature),
        pier_sides=sides,
        fwhm=float(fwhm),
        beta=float(beta),
        sky=float(sky),
        gradient=(float(gradient[0]), float(gradient[1])),
    )


# --------------------------------------------------------------------------------------------------------
# Defects


def _segment_distance(shape: tuple[int, int], x0: float, y0: float, x1: float, y1: float) -> F64:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    vx, vy = x1 - x0, y1 - y0
    n2 = vx * vx + vy * vy
    t = np.zeros_like(xx) if n2 == 0 else np.clip(((xx - x0) * vx + (yy - y0) * vy) / n2, 0.0, 1.0)
    return np.asarray(np.hypot(xx - (x0 + t * vx), yy - (y0 + t * vy)), dtype=np.float64)


def add_satellite_trail(
    data: F32,
    *,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    width: float = 2.0,
    amplitude: float = 2000.0,
) -> tuple[F32, BoolArray]:
    """A new array with a straight trail (Gaussian cross-section of FWHM ``width``, peak ``amplitude``)
    from (x0, y0) to (x1, y1); the mask marks pixels receiving more than 1% of the peak."""
    dist = _segment_distance(data.shape[-2:], x0, y0, x1, y1)  # type: ignore[arg-type]
    sigma = width / 2.3548200450309493
    add = amplitude * np.exp(-0.5 * (dist / sigma) ** 2)
    mask = add > 0.01 * amplitude
    return (data + add.astype(np.float32)).astype(np.float32), mask


def add_cosmic_rays(data: F32, *, n: int, seed: Seed, amplitude: float = 5000.0) -> tuple[F32, BoolArray]:
    """A new array with ``n`` cosmic-ray hits (single pixels or short 2–3 px tracks, 0.5–1.5 × amplitude)."""
    rng = _rng(seed, _TAG_COSMIC)
    h, w = data.shape[-2:]
    add = np.zeros((h, w), dtype=np.float32)
    ys = rng.integers(0, h, n)
    xs = rng.integers(0, w, n)
    lengths = rng.integers(1, 4, n)
    steps = np.array([(0, 1), (1, 0), (1, 1), (1, -1)])[rng.integers(0, 4, n)]
    amps = amplitude * rng.uniform(0.5, 1.5, n)
    for k in range(3):
        on = lengths > k
        yy = np.clip(ys + k * steps[:, 0], 0, h - 1)[on]
        xx = np.clip(xs + k * steps[:, 1], 0, w - 1)[on]
        np.add.at(add, (yy, xx), (amps[on] * (0.6**k)).astype(np.float32))
    mask = add > 0
    return (data + add).astype(np.float32), mask


def cloudy(scene: F32, *, transmission: float = 0.3, extra_sky: float = 200.0) -> F32:
    """The scene through cloud: dimmed to ``transmission`` plus ``extra_sky`` electrons of scattered light."""
    return (scene * np.float32(transmission) + np.float32(extra_sky)).astype(np.float32)


# --------------------------------------------------------------------------------------------------------
# FITS

_NINA_TYPES = {
    FrameKind.LIGHT: "LIGHT",
    FrameKind.DARK: "DARK",
    FrameKind.FLAT: "FLAT",
    FrameKind.BIAS: "BIAS",
    FrameKind.DARKFLAT: "DARKFLAT",
}
# INDI has no dark-flat type: Ekos takes dark flats as dark frames.
_INDI_TYPES = {
    FrameKind.LIGHT: ("Light Frame", "Light"),
    FrameKind.DARK: ("Dark Frame", "Dark"),
    FrameKind.FLAT: ("Flat Frame", "Flat"),
    FrameKind.BIAS: ("Bias Frame", "Bias"),
    FrameKind.DARKFLAT: ("Dark Frame", "Dark"),
}


def _sexagesimal(value: float, *, decimals: int) -> tuple[bool, int, int, float]:
    """(negative, whole, minutes, seconds) of ``value`` rounded to ``decimals`` places of seconds."""
    base = 10**decimals
    units = round(abs(value) * 3600.0 * base)
    whole, rem = divmod(units, 3600 * base)
    minutes, rem = divmod(rem, 60 * base)
    return value < 0 and units > 0, int(whole), int(minutes), rem / base


def ra_hms(ra_deg: float, *, dialect: str = "nina") -> str:
    """RA in degrees as N.I.N.A. writes it ('00 42 44') or INDI (' 0 42 44.33': fs_sexa, width 2)."""
    hours = (ra_deg % 360.0) / 15.0
    if dialect == "indi":
        _, h, m, sec = _sexagesimal(hours, decimals=2)
        return f"{h % 24:2d} {m:02d} {sec:05.2f}"
    _, h, m, sec = _sexagesimal(hours, decimals=0)
    return f"{h % 24:02d} {m:02d} {int(sec):02d}"


def dec_dms(dec_deg: float, *, dialect: str = "nina") -> str:
    """Dec in degrees as N.I.N.A. writes it ('+41 16 08') or INDI ('41 16 07.50', '-5 23 28.00')."""
    if dialect == "indi":
        neg, d, m, sec = _sexagesimal(dec_deg, decimals=2)
        whole = f"-{d}" if neg else f"{d}"
        return f"{whole:>2} {m:02d} {sec:05.2f}"
    neg, d, m, sec = _sexagesimal(dec_deg, decimals=0)
    return f"{'-' if neg else '+'}{d:02d} {m:02d} {int(sec):02d}"


def _mjd(t: datetime) -> float:
    return (t - datetime(1858, 11, 17, tzinfo=UTC)).total_seconds() / 86400.0


def _iso(t: datetime, *, digits: int) -> str:
    """ISO time without zone, with ``digits`` (3 or 7) decimals of seconds like the writers do."""
    frac = f"{t.microsecond:06d}" + "0"
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + frac[:digits]


def write_fits(
    path: str | Path,
    data: npt.ArrayLike,
    *,
    dialect: str = "nina",
    kind: str | FrameKind = "light",
    exposure: float = 60.0,
    gain: int = 100,
    offset: int = 50,
    temperature: float = -10.0,
    set_temperature: float | None = -10.0,
    filter: str | None = "L",
    object: str | None = "M 31",
    camera: str | None = None,
    date_obs: datetime | None = None,
    bayer: str | None = None,
    bayer_offset: tuple[int, int] = (0, 0),
    ra: float | None = None,
    dec: float | None = None,
    binning: int | tuple[int, int] = 1,
    egain: float = 1.0,
    serial: str = "",
    pixel_size: float | None = None,
    pier_side: str | None = None,
    utc_offset_hours: float = 2.0,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``data`` (rounded, clipped to 0..65535) as uint16 FITS (BITPIX 16, BZERO 32768) with a header
    in the ``dialect`` of N.I.N.A. ("nina") or INDI/Ekos ("indi").

    Like the real N.I.N.A., OBJECT/OBJCTRA/OBJCTDEC go only on lights and flats, and DATE-OBS has 7 decimals;
    INDI writes 3 decimals and OBJCTRA/OBJCTDEC the way its fs_sexa does. ``serial`` ends N.I.N.A.'s CAMERAID.
    ``extra`` adds or overrides keys (value or (value, comment)); a value of None removes the key.
    Returns the path.
    """
    fk = FrameKind(kind.lower()) if isinstance(kind, str) else kind
    if fk not in _NINA_TYPES:
        raise ValueError(f"cannot write a frame of kind {fk.value!r}")
    dialect = dialect.lower()
    if dialect not in ("nina", "indi"):
        raise ValueError(f"unknown FITS dialect {dialect!r}; expected 'nina' or 'indi'")
    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim not in (2, 3):
        raise ValueError(f"FITS data must be (H, W) or (planes, H, W), got shape {arr.shape}")
    pixels = np.clip(np.rint(arr), 0, 65535).astype(np.uint16)
    xbin, ybin = (binning, binning) if isinstance(binning, int) else binning
    date = datetime(2024, 10, 5, 21, 30, 0, tzinfo=UTC) if date_obs is None else date_obs
    if date.tzinfo is None:
        date = date.replace(tzinfo=UTC)
    date_utc = date.astimezone(UTC)
    date_avg = date_utc + timedelta(seconds=exposure / 2.0)
    date_loc = date_utc + timedelta(hours=utc_offset_hours)
    bayer_p = None if bayer is None else check_pattern(bayer)

    h = Header()  # astropy stores uint16 pixels as int16 with BZERO 32768
    cards: list[tuple[str, Any, str]] = []
    if dialect == "nina":
        cam = camera or ("ZWO ASI2600MC Pro" if bayer_p else "ZWO ASI2600MM Pro")
        px = 3.76 if pixel_size is None else pixel_size
        cards += [
            ("IMAGETYP", _NINA_TYPES[fk], "Type of exposure"),
            ("EXPOSURE", float(exposure), "[s] Exposure duration"),
            ("EXPTIME", float(exposure), "[s] Exposure duration"),
            ("DATE-LOC", _iso(date_loc, digits=7), "Time of observation (local)"),
            ("DATE-OBS", _iso(date_utc, digits=7), "Time of observation (UTC)"),
            ("MJD-OBS", _mjd(date_utc), "Modified Julian Date of observation"),
            ("DATE-AVG", _iso(date_avg, digits=7), "Averaged midpoint time (UTC)"),
            ("MJD-AVG", _mjd(date_avg), "Modified Julian Date of averaged midpoint"),
            ("XBINNING", int(xbin), "X axis binning factor"),
            ("YBINNING", int(ybin), "Y axis binning factor"),
            ("GAIN", int(gain), "Sensor gain"),
            ("OFFSET", int(offset), "Sensor gain offset"),
            ("EGAIN", float(egain), "[e-/ADU] Electrons per A/D unit"),
            ("XPIXSZ", float(px * xbin), "[um] Pixel X axis size"),
            ("YPIXSZ", float(px * ybin), "[um] Pixel Y axis size"),
            ("INSTRUME", cam, "Imaging instrument name"),
            ("CAMERAID", f"ZWOptical_{cam}_{serial}", "Imaging instrument identifier"),
        ]
        if set_temperature is not None:
            cards.append(("SET-TEMP", float(set_temperature), "[degC] CCD temperature setpoint"))
        cards.append(("CCD-TEMP", float(temperature), "[degC] CCD temperature"))
        if bayer_p:
            cards += [
                ("BAYERPAT", bayer_p, "Sensor Bayer pattern"),
                ("XBAYROFF", int(bayer_offset[0]), "Bayer pattern X axis offset"),
                ("YBAYROFF", int(bayer_offset[1]), "Bayer pattern Y axis offset"),
            ]
        cards += [
            ("USBLIMIT", 40, "Camera-specific USB setting"),
            ("TELESCOP", "Askar FRA400", "Name of telescope"),
            ("FOCALLEN", 400.0, "[mm] Focal length"),
            ("FOCRATIO", 5.6, "Focal ratio"),
        ]
        if ra is not None and dec is not None:
            cards += [
                ("RA", float(ra), "[deg] RA of telescope"),
                ("DEC", float(dec), "[deg] Declination of telescope"),
            ]
        if pier_side is not None:
            cards.append(("PIERSIDE", pier_side.capitalize(), "Telescope pointing state"))
        cards += [
            ("SITEELEV", 350.0, "[m] Observation site elevation"),
            ("SITELAT", 48.1, "[deg] Observation site latitude"),
            ("SITELONG", 11.6, "[deg] Observation site longitude"),
        ]
        if filter is not None:
            cards += [("FWHEEL", "EFW", "Filter Wheel name"), ("FILTER", filter, "Active filter name")]
        # N.I.N.A. names the target only on frames taken for it (lights, flats), not on darks or bias.
        if object is not None and fk in (FrameKind.LIGHT, FrameKind.FLAT):
            cards.append(("OBJECT", object, "Name of the object of interest"))
            if ra is not None and dec is not None:
                cards += [
                    ("OBJCTRA", ra_hms(ra), "[H M S] RA of imaged object"),
                    ("OBJCTDEC", dec_dms(dec), "[D M S] Declination of imaged object"),
                ]
        cards += [
            ("ROWORDER", "TOP-DOWN", "FITS Image Orientation"),
            ("EQUINOX", 2000.0, "Equinox of celestial coordinate system"),
            ("SWCREATE", "N.I.N.A. 3.2.0.3005 (x64)", "Software that created this file"),
        ]
    else:
        itype, frame = _INDI_TYPES[fk]
        px = 5.2 if pixel_size is None else pixel_size
        cards += [
            ("ROWORDER", "TOP-DOWN", "Row Order"),
            ("INSTRUME", camera or "CCD Simulator", "CCD Name"),
            ("TELESCOP", "Telescope Simulator", "Telescope name"),
            ("OBSERVER", "Unknown", "Observer name"),
        ]
        if object is not None:
            cards.append(("OBJECT", object, "Object name"))
        cards += [
            ("EXPTIME", float(exposure), "Total Exposure Time (s)"),
            ("CCD-TEMP", float(temperature), "CCD Temperature (Celsius)"),
            ("PIXSIZE1", float(px), "Pixel Size 1 (microns)"),
            ("PIXSIZE2", float(px), "Pixel Size 2 (microns)"),
            ("XBINNING", int(xbin), "Binning factor in width"),
            ("YBINNING", int(ybin), "Binning factor in height"),
            ("XPIXSZ", float(px * xbin), "X binned pixel size in microns"),
            ("YPIXSZ", float(px * ybin), "Y binned pixel size in microns"),
            ("FRAME", frame, "Frame Type"),
            ("IMAGETYP", itype, "Frame Type"),
        ]
        if filter is not None:
            cards.append(("FILTER", filter, "Filter"))
        cards += [
            ("GAIN", float(gain), "Gain"),
            ("OFFSET", float(offset), "Offset"),
            ("FOCALLEN", 400.0, "Focal Length (mm)"),
            ("APTDIA", 72.0, "Telescope diameter (mm)"),
        ]
        if ra is not None and dec is not None:
            cards += [
                ("OBJCTRA", ra_hms(ra, dialect="indi"), "Object J2000 RA in Hours"),
                ("OBJCTDEC", dec_dms(dec, dialect="indi"), "Object J2000 DEC in Degrees"),
                ("RA", float(ra), "Object J2000 RA in Degrees"),
                ("DEC", float(dec), "Object J2000 DEC in Degrees"),
            ]
        if pier_side is not None:
            cards.append(("PIERSIDE", pier_side.upper(), "West, looking East"))
        cards += [("EQUINOX", 2000, "Equinox"), ("DATE-OBS", _iso(date_utc, digits=3), "UTC start date of observation")]
        if bayer_p:
            cards += [
                ("XBAYROFF", int(bayer_offset[0]), "X offset of Bayer array"),
                ("YBAYROFF", int(bayer_offset[1]), "Y offset of Bayer array"),
                ("BAYERPAT", bayer_p, "Bayer color pattern"),
            ]
    for key, value, comment in cards:
        h[key] = (value, comment)
    if dialect == "indi":
        h.add_comment("Generated by INDI")
    for key, value in (extra or {}).items():
        if value is None:
            h.remove(key, ignore_missing=True)
        elif isinstance(value, tuple):
            h[key] = value
        else:
            h[key] = value
    out = Path(path)
    ensure_folder(out.parent)
    return write_fits_file(out, pixels, h)


def write_calibration_set(
    directory: str | Path,
    sensor: Sensor,
    *,
    seed: int,
    n: int = 5,
    dialect: str = "nina",
    dark_exposures: Sequence[float] = (60.0,),
    temperature: float = -10.0,
    flat_level: float = 20000.0,
    flat_exposure: float = 1.0,
    filter: str = "L",
) -> dict[str, list[Path]]:
    """Write ``n`` bias, darks per exposure, flats and dark-flats from ``sensor``; returns paths by kind."""
    d = Path(directory)
    out: dict[str, list[Path]] = {"bias": [], "dark": [], "flat": [], "darkflat": []}

    def put(kind: str, name: str, frame: F32, exposure: float) -> None:
        path = write_fits(
            d / name,
            frame,
            dialect=dialect,
            kind=kind,
            exposure=exposure,
            temperature=temperature,
            set_temperature=temperature,
            filter=filter,
            object=None,
            bayer=sensor.bayer,
            bayer_offset=sensor.bayer_offset,
            egain=sensor.gain,
        )
        out[kind].append(path)

    base = seed * 1000
    for i in range(n):
        put("bias", f"BIAS_{i:04d}.fits", sensor.bias(seed=base + i), 0.0)
        for e in dark_exposures:
            dark = sensor.dark(exposure=e, temperature=temperature, seed=base + 100 + i)
            put("dark", f"DARK_{e:.2f}s_{i:04d}.fits", dark, e)
        flat = sensor.flat(level=flat_level, seed=base + 200 + i, exposure=flat_exposure, temperature=temperature)
        put("flat", f"FLAT_{filter}_{i:04d}.fits", flat, flat_exposure)
        dflat = sensor.dark(exposure=flat_exposure, temperature=temperature, seed=base + 300 + i)
        put("darkflat", f"DARKFLAT_{i:04d}.fits", dflat, flat_exposure)
    return out
