"""Differential aperture photometry: apertures with a sigma-clipped annulus sky, CCD-equation errors, the
choice of a comparison ensemble, and relative fluxes against it.

Apertures and annuli are photutils' (`CircularAperture`, `CircularAnnulus` and their masks): exact pixel
overlaps for the aperture, so a star's sum does not jump as it drifts across pixel boundaries, and no
interpolation touches the pixels (they are the calibrated frame's own). The annulus's sigma clipping is done
here for all stars at once: photutils' `ApertureStats` clips star by star through astropy's `SigmaClip`, about
3 ms a star (70–110 ms for two dozen stars, whatever the frame's size); this takes a few ms for all.

Errors follow the CCD equation in ADU (gain ``g`` in e⁻/ADU):
    σ²_F = F / g + n_ap · (1 + n_ap / n_sky) · σ²_sky [+ (F · σ_scint)²]
with σ²_sky the per-pixel sky variance: the annulus's own (sigma-clipped, corrected for the clipping), which
holds the sky's photon noise, the read noise, the dark current's noise and the masters' noise, but never less
than the model sky / g + (RN / g)² (the clipped spread of a handful of pixels can come out low).

Relative flux (`relative_flux`) is target / Σ comparisons. A comparison missing from one frame (saturated
there, off the frame) leaves the ensemble continuous: the sum of those present is scaled by their share of
the whole ensemble in the reference frame.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # photutils costs 0.6 s to import: only the commands that measure pay for it
    from photutils.aperture import CircularAnnulus, CircularAperture

F64 = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]

__all__ = ["ApertureResult", "measure_apertures", "pick_comparisons", "relative_flux", "scintillation",
           "weed_comparisons"]


@dataclass(frozen=True, slots=True, eq=False)
class ApertureResult:
    """Per star: background-subtracted ``flux`` (ADU) and its 1σ error ``flux_err``, the annulus ``sky``
    level and per-pixel ``sky_sigma`` (ADU), the aperture's and the annulus's pixel counts, the aperture's
    brightest pixel ``peak`` (ADU, sky included), and flags: ``saturated`` (a pixel at the saturation
    level), ``clipped`` (the aperture or annulus runs off the frame, or the sky could not be measured)."""

    flux: F64
    flux_err: F64
    sky: F64
    sky_sigma: F64
    n_pix: F64
    n_sky: F64
    peak: F64
    saturated: BoolArray
    clipped: BoolArray

    def __len__(self) -> int:
        return int(self.flux.size)


def _clip_correction(k: float) -> float:
    """RMS of a Gaussian cut at ±k σ, in units of σ (the clipped spread's bias)."""
    phi = math.exp(-0.5 * k * k) / math.sqrt(2.0 * math.pi)
    return math.sqrt(max(1e-12, 1.0 - 2.0 * k * phi / math.erf(k / math.sqrt(2.0))))


def measure_apertures(data: npt.NDArray[np.floating], xy: npt.ArrayLike, *, radius: float,
                      annulus: tuple[float, float], gain: float, read_noise: float = 0.0,
                      saturation: float = math.inf, clip_sigma: float = 3.0,
                      scint: npt.ArrayLike = 0.0) -> ApertureResult:
    """Aperture photometry of ``data`` (H, W, calibrated ADU) at ``xy`` ((N, 2), 0-based pixel centres).

    ``radius`` (px) is the aperture's, ``annulus`` the sky annulus's inner and outer radii; ``gain`` e⁻/ADU,
    ``read_noise`` e⁻; ``saturation`` the ADU level at which a pixel counts as saturated; ``scint`` the
    fractional scintillation noise of each star (or one for all; 0: left out).
    """
    if radius <= 0 or not 0 < annulus[0] < annulus[1] or gain <= 0:
        raise ValueError(f"bad aperture: radius={radius} annulus={annulus} gain={gain}")
    image = np.asarray(data)
    if image.ndim != 2:
        raise ValueError(f"expected an (H, W) image, got shape {image.shape}")
    pos = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    n = pos.shape[0]
    if n == 0:
        z = np.empty(0)
        return ApertureResult(z, z, z, z, z, z, z, np.empty(0, bool), np.empty(0, bool))
    h, w = image.shape
    outer = annulus[1]
    inside = (pos[:, 0] - outer >= -0.5) & (pos[:, 0] + outer <= w - 0.5) & (pos[:, 1] - outer >= -0.5) & (
        pos[:, 1] + outer <= h - 0.5)
    on_frame = (pos[:, 0] >= 0) & (pos[:, 0] <= w - 1) & (pos[:, 1] >= 0) & (pos[:, 1] <= h - 1)
    finite = np.isfinite(pos).all(axis=1)
    # Stars off the frame are measured at a harmless place and flagged (photutils needs a finite position).
    safe = np.where((on_frame & finite)[:, None], pos, 0.0)
    from photutils.aperture import CircularAnnulus, CircularAperture

    total, n_pix, peak = _aperture_sums(image, CircularAperture(safe, r=radius))
    sky, sky_std, n_sky = _annulus_sky(image, CircularAnnulus(safe, r_in=annulus[0], r_out=outer), clip_sigma)
    sky_std = sky_std / _clip_correction(clip_sigma)
    flux = total - sky * n_pix
    model_var = np.maximum(sky, 0.0) / gain + (read_noise / gain) ** 2
    var_sky = np.maximum(np.nan_to_num(sky_std, nan=0.0) ** 2, model_var)
    scint_frac = np.broadcast_to(np.asarray(scint, dtype=np.float64), (n,))
    var = (np.maximum(flux, 0.0) / gain + n_pix * (1.0 + n_pix / np.maximum(n_sky, 1.0)) * var_sky
           + (np.maximum(flux, 0.0) * scint_frac) ** 2)
    clipped = ~(inside & finite) | ~np.isfinite(sky) | (n_sky < n_pix)
    saturated = np.isfinite(peak) & (peak >= saturation)
    nan = np.nan
    flux = np.where(on_frame & finite, flux, nan)
    return ApertureResult(flux=flux, flux_err=np.where(on_frame & finite, np.sqrt(var), nan), sky=sky,
                          sky_sigma=np.sqrt(var_sky), n_pix=n_pix, n_sky=n_sky, peak=peak, saturated=saturated,
                          clipped=clipped)


def _aperture_sums(image: npt.NDArray[np.floating], aperture: CircularAperture) -> tuple[F64, F64, F64]:
    """Per star: the exact-overlap sum, the aperture's area on the frame (px) and its brightest pixel."""
    masks = aperture.to_mask(method="exact")
    n = len(masks)
    total, area, peak = np.full(n, np.nan), np.zeros(n), np.full(n, np.nan)
    for k, m in enumerate(masks):  # per star (a few dozen), each a small cutout
        cut = m.cutout(image, fill_value=np.nan)
        if cut is None:
            continue
        weight = np.where(np.isfinite(cut), m.data, 0.0)
        total[k] = float(np.sum(np.nan_to_num(cut) * weight))
        area[k] = float(weight.sum())
        inside = weight > 0
        peak[k] = float(np.max(cut[inside])) if inside.any() else np.nan
    return total, area, peak


def _annulus_sky(image: npt.NDArray[np.floating], annulus: CircularAnnulus,
                 clip_sigma: float) -> tuple[F64, F64, F64]:
    """Per star: the sigma-clipped median and standard deviation of the annulus's pixels (pixel centres
    inside it: no pixel is shared out), and how many pixels remained; clipped for all stars at once."""
    masks = annulus.to_mask(method="center")
    values = [m.get_values(image) for m in masks]
    width = max((v.size for v in values), default=0)
    table = np.full((len(values), max(1, width)), np.nan)
    for k, v in enumerate(values):
        table[k, : v.size] = v
    table[~np.isfinite(table)] = np.nan
    for _ in range(10):  # astropy's SigmaClip (median centre, std spread), for every star together
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            centre = np.nanmedian(table, axis=1)
            spread = np.nanstd(table, axis=1)
            out = np.abs(table - centre[:, None]) > clip_sigma * spread[:, None]
        if not out.any():
            break
        table[out] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sky = np.nanmedian(table, axis=1)
        std = np.nanstd(table, axis=1, ddof=1)
    count = np.isfinite(table).sum(axis=1).astype(np.float64)
    return np.asarray(sky, dtype=np.float64), np.asarray(std, dtype=np.float64), count


def scintillation(*, diameter_m: float, airmass: float, exposure_s: float, elevation_m: float = 0.0,
                  coefficient: float = 0.09) -> float:
    """Young's (1967) fractional scintillation noise of one exposure: C · D^(-2/3) · X^1.75 · e^(-h/8000) /
    √(2 t), D in cm (Osborn et al. 2015 find C ≈ 1.5 × 0.09 at many sites: pass it as ``coefficient``)."""
    if diameter_m <= 0 or exposure_s <= 0 or not math.isfinite(airmass) or airmass < 1:
        return 0.0
    d_cm = diameter_m * 100.0
    return float(coefficient * d_cm ** (-2.0 / 3.0) * airmass ** 1.75 * math.exp(-elevation_m / 8000.0)
                 / math.sqrt(2.0 * exposure_s))


def pick_comparisons(xy: npt.ArrayLike, flux: npt.ArrayLike, peak: npt.ArrayLike, *, targets_xy: npt.ArrayLike,
                     target_flux: float, shape: tuple[int, int], isolation_px: float, edge_px: float,
                     saturation: float, count: int = 10, flux_range: tuple[float, float] = (0.25, 8.0),
                     peak_fraction: float = 0.6) -> IntArray:
    """Indices (into ``xy``) of up to ``count`` comparison stars for targets of flux ``target_flux``, the
    closest in brightness first, among the stars of the reference frame (``xy`` 0-based, ``flux``, ``peak``
    ADU with the sky).

    A comparison is within ``flux_range`` of the target's flux, its peak under ``peak_fraction`` of the
    ``saturation`` level (room for better seeing in later frames), ``edge_px`` from the frame's edges (room
    for the annulus and the field's drift), not a target, and isolated: no other star within
    ``isolation_px`` carries more than 1 % of its flux (its light would move between the aperture and the
    annulus as the seeing changes).
    """
    p = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    f = np.asarray(flux, dtype=np.float64).reshape(-1)
    pk = np.asarray(peak, dtype=np.float64).reshape(-1)
    t = np.asarray(targets_xy, dtype=np.float64).reshape(-1, 2)
    if p.shape[0] == 0 or not (target_flux > 0):
        return np.empty(0, dtype=np.intp)
    h, w = shape
    ok = np.isfinite(f) & (f > flux_range[0] * target_flux) & (f < flux_range[1] * target_flux)
    ok &= ~(pk >= peak_fraction * saturation)
    ok &= (p[:, 0] >= edge_px) & (p[:, 0] <= w - 1 - edge_px) & (p[:, 1] >= edge_px) & (p[:, 1] <= h - 1 - edge_px)
    if t.shape[0]:
        dt = np.hypot(p[:, None, 0] - t[None, :, 0], p[:, None, 1] - t[None, :, 1])
        ok &= (dt > isolation_px).all(axis=1)
    d = np.hypot(p[:, None, 0] - p[None, :, 0], p[:, None, 1] - p[None, :, 1])  # a few hundred stars: small
    np.fill_diagonal(d, np.inf)
    crowded = ((d < isolation_px) & (f[None, :] > 0.01 * f[:, None])).any(axis=1)
    ok &= ~crowded
    idx = np.flatnonzero(ok)
    order = np.argsort(np.abs(np.log(f[idx] / target_flux)), kind="stable")
    return np.asarray(idx[order][:count], dtype=np.intp)


def relative_flux(target: F64, target_err: F64, comps: F64, comps_err: F64, use: BoolArray,
                  weights: F64) -> tuple[F64, F64]:
    """Relative flux of a target against its ensemble, and its 1σ error, per frame.

    ``target``/``target_err`` are (F,) fluxes; ``comps``/``comps_err`` (F, C); ``use`` (F, C) says which
    comparisons count in each frame; ``weights`` (C,) are the comparisons' reference fluxes. A frame's
    ensemble is the sum of the comparisons it uses scaled by their share of ``weights``: the plain sum when
    all are there. Frames with no comparison give NaN.
    """
    c = np.where(use, comps, 0.0)
    share = np.where(use, weights[None, :], 0.0).sum(axis=1)
    scale = np.where(share > 0, weights.sum() / np.where(share > 0, share, 1.0), np.nan)
    ensemble = c.sum(axis=1) * scale
    ens_var = np.where(use, comps_err ** 2, 0.0).sum(axis=1) * scale ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = target / ensemble
        rel_err = np.abs(rel) * np.sqrt((target_err / target) ** 2 + ens_var / ensemble ** 2)
    return np.asarray(rel, dtype=np.float64), np.asarray(rel_err, dtype=np.float64)


def weed_comparisons(comps: F64, comps_err: F64, use: BoolArray, *, saturated: BoolArray | None = None,
                     max_ratio: float = 2.5, max_missing: float = 0.1, min_frames: int = 5,
                     keep: int = 2) -> BoolArray:
    """Which comparisons (C,) stay in the ensemble: never ``saturated`` (F, C) in a frame, usable (``use``:
    not saturated, clipped or off the frame) in all but ``max_missing`` of the frames (a star the drift takes
    to the edge late in the night leaves those frames only), and not scattering against the others' ensemble
    by more than ``max_ratio`` times what their errors predict (a variable star, a star on a bad column, a
    faint neighbour's changing blend), judged on the frames where all of them are usable. The worst is
    dropped first and the others judged again; at least ``keep`` stay; with fewer than ``min_frames`` frames
    only the saturated and unusable go."""
    n_frames, n_comp = comps.shape
    good: BoolArray = np.ones(n_comp, dtype=bool)
    if n_frames == 0:
        return good
    usable = use & np.isfinite(comps)
    good = np.asarray(usable.mean(axis=0) >= 1.0 - max_missing, dtype=bool)
    if saturated is not None:
        good &= ~saturated.any(axis=0)
    if n_frames < min_frames:
        return good
    while int(good.sum()) > keep:
        frames = usable[:, good].all(axis=1)
        if int(frames.sum()) < min_frames:
            break
        c_all, e_all = comps[frames], comps_err[frames]
        ratios = np.full(n_comp, -np.inf)
        for c in np.flatnonzero(good):  # per comparison, not per pixel: ten or twenty of them
            others = good.copy()
            others[c] = False
            rest = c_all[:, others].sum(axis=1)
            rest_var = (e_all[:, others] ** 2).sum(axis=1)
            r = c_all[:, c] / rest
            predicted = np.abs(r) * np.sqrt((e_all[:, c] / c_all[:, c]) ** 2 + rest_var / rest ** 2)
            norm = np.median(r)
            spread = float(np.std(r / norm, ddof=1))
            expected = float(np.sqrt(np.mean((predicted / norm) ** 2)))
            ratios[c] = spread / expected if expected > 0 else np.inf
        worst = int(np.argmax(ratios))
        if ratios[worst] <= max_ratio:
            break
        good[worst] = False
    return good
