"""Calibration of a frame against master bias, dark and flat; overscan; bad pixels; cosmic rays.

Pure functions: arrays in, new arrays out, inputs never modified. The daemon calibrates every frame of a
session with the same masters, so :func:`prepare` does the per-master work once (dark current, inverse
flat normalised per CFA colour, bad-pixel neighbour tables) and :func:`apply` runs one fused numba pass
per frame. :func:`calibrate` is ``apply(prepare(...), light)`` after overscan and trim.
Finding the bad pixels in the masters is :mod:`astrod.core.badpixels` (its public names are re-exported here).

Conventions match ccdproc: FITS sections are 1-based inclusive with x (column) first; the overscan is the
per-row median of the BIASSEC columns (``ccd_process``'s ``oscan_median=True``, no model); the flat is
divided after normalisation by its mean (``flat_correct``); a scaled dark is ``(dark - bias) * t_light /
t_dark``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
import numpy.typing as npt

from astrod.core.badpixels import BAD_PIXEL_REASONS as BAD_PIXEL_REASONS
from astrod.core.badpixels import BadPixelRule as BadPixelRule
from astrod.core.badpixels import BadPixels as BadPixels
from astrod.core.badpixels import DarkNoiseModel as DarkNoiseModel
from astrod.core.badpixels import _robust_sigma
from astrod.core.badpixels import bad_pixel_map as bad_pixel_map
from astrod.core.badpixels import find_bad_pixels as find_bad_pixels
from astrod.core.badpixels import fit_dark_noise as fit_dark_noise
from astrod.core.bayer import colour_map

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
DarkMode = Literal["exact", "scaled", "optimised"]

_SECTION = re.compile(r"^\[\s*(\*|-?\d+\s*:\s*-?\d+)\s*,\s*(\*|-?\d+\s*:\s*-?\d+)\s*\]$")
_MONO_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_CFA_NEIGHBOURS = ((-2, -2), (-2, 0), (-2, 2), (0, -2), (0, 2), (2, -2), (2, 0), (2, 2))


# ------------------------------------------------------------------------------------------ sections


def _axis_slice(part: str, length: int | None, what: str) -> slice:
    if part == "*":
        return slice(None)
    first_s, last_s = part.split(":")
    first, last = int(first_s), int(last_s)
    if first < 1 or last < 1:
        raise ValueError(f"{what} section bounds must be >= 1, got {part}")
    if length is not None and max(first, last) > length:
        raise ValueError(f"{what} section {part} exceeds the image size {length}")
    if first <= last:
        return slice(first - 1, last)
    # a reversed FITS range flips that axis
    return slice(first - 1, last - 2 if last > 1 else None, -1)


def parse_section(section: str, *, shape: tuple[int, int] | None = None) -> tuple[slice, slice]:
    """FITS section ``'[x1:x2,y1:y2]'`` (1-based, inclusive, x = column; ``*`` = all) -> (rows, columns).

    With ``shape`` (height, width) the section is checked against the image size.
    """
    match = _SECTION.match(section.strip())
    if match is None:
        raise ValueError(f"not a FITS section '[x1:x2,y1:y2]': {section!r}")
    x_part, y_part = (p.replace(" ", "") for p in match.groups())
    height, width = shape if shape is not None else (None, None)
    return _axis_slice(y_part, height, "y"), _axis_slice(x_part, width, "x")


def subtract_overscan(data: npt.NDArray[np.generic], *, biassec: str, axis: int | None = None,
                      median: bool = True) -> FloatArray:
    """``data`` minus its overscan (BIASSEC) level, one value per row (or column), as float32.

    The level is the median (``median=True``, ccd_process's default) or mean of the overscan region along
    ``axis`` (numpy order, as ccdproc's ``overscan_axis``; ``None`` = the region's short side, i.e. 1 for
    a strip of columns, giving a value per row).
    """
    if data.ndim != 2:
        raise ValueError(f"overscan subtraction needs a 2-D frame, got shape {data.shape}")
    rows, cols = parse_section(biassec, shape=(data.shape[0], data.shape[1]))
    region = np.asarray(data[rows, cols], dtype=np.float64)
    if region.size == 0:
        raise ValueError(f"overscan section {biassec} is empty")
    if axis is None:
        axis = 0 if region.shape[1] > region.shape[0] else 1
    if axis not in (0, 1):
        raise ValueError(f"overscan axis must be 0, 1 or None, got {axis}")
    level = np.median(region, axis=axis) if median else np.mean(region, axis=axis)
    if level.shape[0] != data.shape[1 - axis]:
        raise ValueError(f"overscan section {biassec} spans {level.shape[0]} lines, the frame has "
                         f"{data.shape[1 - axis]}")
    level_2d = level[:, np.newaxis] if axis == 1 else level[np.newaxis, :]
    return (np.asarray(data, dtype=np.float64) - level_2d).astype(np.float32)


def trim(data: npt.NDArray[np.generic], *, trimsec: str) -> FloatArray:
    """A float32 copy of the TRIMSEC part of ``data``."""
    rows, cols = parse_section(trimsec, shape=(data.shape[0], data.shape[1]))
    return np.array(data[rows, cols], dtype=np.float32)


# ---------------------------------------------------------------------------------------------- CFA


def cfa_colour_map(shape: tuple[int, int], *, bayer: str, bayer_offset: tuple[int, int] = (0, 0),
                   ) -> npt.NDArray[np.uint8]:
    """Colour index (0 R, 1 G, 2 B) of every pixel for a 2x2 pattern like ``"RGGB"``.

    ``bayer_offset`` is (x, y) as in XBAYROFF/YBAYROFF: pixel (x, y) has the colour the pattern gives
    at ((x + x_off) % 2, (y + y_off) % 2).
    """
    return np.asarray(colour_map(shape, pattern=bayer, offset=bayer_offset), dtype=np.uint8)


def flat_normalisation(flat: npt.NDArray[np.floating], *, bayer: str | None = None,
                       bayer_offset: tuple[int, int] = (0, 0)) -> FloatArray:
    """The level a flat is divided by: its mean, or for a CFA sensor the mean of each colour per pixel.

    Returns an array that broadcasts against ``flat`` (shape (1, 1) for mono). Non-finite pixels are
    ignored. Normalising each colour on its own removes the colour of the flat's light source.
    """
    # sums accumulate in float64 without a float64 copy of the flat (800 MB of temporaries at 26 MP)
    values = np.asarray(flat, dtype=np.float32)
    finite = np.isfinite(values)
    if bayer is None:
        n = int(np.count_nonzero(finite))
        mean = float(np.sum(values, where=finite, dtype=np.float64)) / n if n else math.nan
        if not mean > 0:
            raise ValueError(f"flat mean must be positive, got {mean}")
        return np.full((1, 1), mean, dtype=np.float32)
    colours = cfa_colour_map((values.shape[0], values.shape[1]), bayer=bayer, bayer_offset=bayer_offset)
    norm = np.empty(values.shape, dtype=np.float32)
    for colour in range(3):
        sel = colours == colour
        good = sel & finite
        n = int(np.count_nonzero(good))
        mean = float(np.sum(values, where=good, dtype=np.float64)) / n if n else math.nan
        if not mean > 0:
            raise ValueError(f"flat mean of colour {'RGB'[colour]} must be positive, got {mean}")
        norm[sel] = mean
    return norm


# ------------------------------------------- bad pixels: correction (finding them: astrod.core.badpixels)


def _neighbour_table(bad: BoolArray, *, cfa: bool) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Flat indices of the bad pixels and of their same-colour good neighbours (-1 where none)."""
    h, w = bad.shape
    ys, xs = np.nonzero(bad)
    offsets = _CFA_NEIGHBOURS if cfa else _MONO_NEIGHBOURS
    table = np.full((ys.size, len(offsets)), -1, dtype=np.intp)
    for j, (dy, dx) in enumerate(offsets):
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        ok = inside.copy()
        ok[inside] = ~bad[ny[inside], nx[inside]]
        table[ok, j] = ny[ok] * w + nx[ok]
    return ys * w + xs, table


def _replace_bad(data: FloatArray, bad_index: npt.NDArray[np.intp], table: npt.NDArray[np.intp]) -> int:
    """Replace, in place, each bad pixel by the median of its good neighbours; returns how many."""
    if bad_index.size == 0:
        return 0
    flat = data.reshape(-1)
    valid = table >= 0
    values = np.where(valid, flat[np.where(valid, table, 0)], np.nan)
    have = valid.any(axis=1)
    flat[bad_index[have]] = np.nanmedian(values[have], axis=1)
    return int(have.sum())


def correct_bad_pixels(data: npt.NDArray[np.floating], bad: BoolArray, *, cfa: bool = False) -> FloatArray:
    """A float32 copy of ``data`` with each bad pixel replaced by the median of its good same-colour
    neighbours (the 8 around it for mono, those 2 pixels away for a CFA sensor)."""
    if bad.shape != data.shape:
        raise ValueError(f"bad pixel map {bad.shape} does not match the frame {data.shape}")
    out = np.array(data, dtype=np.float32)
    bad_index, table = _neighbour_table(np.asarray(bad, dtype=np.bool_), cfa=cfa)
    _replace_bad(out, bad_index, table)
    return out


# ------------------------------------------------------------------------------------ dark optimisation


def exposure_ratio(light_exposure: float | None, dark_exposure: float | None) -> float:
    """``light_exposure / dark_exposure``, both required and positive."""
    if light_exposure is None or dark_exposure is None:
        raise ValueError("scaling a dark needs both the light and the dark exposure")
    if not (light_exposure > 0 and dark_exposure > 0):
        raise ValueError(f"exposures must be positive, got light {light_exposure}, dark {dark_exposure}")
    return float(light_exposure) / float(dark_exposure)


def _high_pass(image: npt.NDArray[np.float64], step: int) -> npt.NDArray[np.float64]:
    # pixel minus the mean of its 8 same-colour neighbours; linear, so HP(a - k*b) = HP(a) - k*HP(b)
    h, w = image.shape
    centre = image[step:h - step, step:w - step]
    ring = np.zeros_like(centre)
    for dy in (-step, 0, step):
        for dx in (-step, 0, step):
            if dy or dx:
                ring += image[step + dy:h - step + dy, step + dx:w - step + dx]
    return np.asarray(centre - ring / 8.0, dtype=np.float64)


def optimise_dark_scale(light: npt.NDArray[np.generic], dark_current: npt.NDArray[np.floating], *,
                        bias: npt.NDArray[np.floating] | None = None, cfa: bool = False, window: int = 1024,
                        threshold: float = 3.0, clip: float = 5.0, iterations: int = 5) -> float:
    """The factor k minimising the noise of ``light - bias - k * dark_current``, as PixInsight's dark
    optimisation does.

    Noise is measured on a high-pass (pixel minus its neighbours' mean) of the central ``window`` square,
    over the pixels whose dark current is significant (``threshold`` robust sigma, PixInsight's
    optimisation threshold; all pixels if too few). The squared noise is quadratic in k, so its minimum
    is found exactly (least squares) instead of by a golden-section search; values the dark cannot
    explain (stars, cosmic rays: residual beyond ``clip`` robust sigma) are dropped and k refitted.
    """
    if light.shape != dark_current.shape or light.ndim != 2 or (bias is not None and bias.shape != light.shape):
        raise ValueError(f"light {light.shape}, dark {dark_current.shape} and bias must be the same 2-D shape")
    h, w = light.shape
    side_y, side_x = min(h, window), min(w, window)
    y0, x0 = (h - side_y) // 2 // 2 * 2, (w - side_x) // 2 // 2 * 2  # even: keeps the CFA phase
    win = (slice(y0, y0 + side_y), slice(x0, x0 + side_x))
    step = 2 if cfa else 1
    if side_y <= 2 * step or side_x <= 2 * step:
        raise ValueError(f"frame {light.shape} is too small to optimise the dark")
    light_win = np.asarray(light[win], dtype=np.float64)
    if bias is not None:
        light_win = light_win - bias[win]
    a = _high_pass(light_win, step).reshape(-1)
    b = _high_pass(np.asarray(dark_current[win], dtype=np.float64), step).reshape(-1)
    keep = np.isfinite(a) & np.isfinite(b)
    sigma_b = _robust_sigma(b[keep])
    significant = keep & (np.abs(b) > threshold * sigma_b)
    if significant.sum() >= 50:
        keep = significant
    k = 0.0
    for _ in range(iterations):
        bb = float(np.dot(b[keep], b[keep]))
        if bb <= 0:
            return 0.0
        k_new = max(0.0, float(np.dot(a[keep], b[keep])) / bb)
        residual = a - k_new * b
        sigma_r = _robust_sigma(residual[keep])
        keep = keep & (np.abs(residual) <= clip * sigma_r) if sigma_r > 0 else keep
        converged = abs(k_new - k) <= 1e-6 * max(1.0, abs(k_new))
        k = k_new
        if converged:
            break
    return k


# ----------------------------------------------------------------------------------------- fused apply


@numba.njit(parallel=True, cache=True, nogil=True)
def _fused(light: npt.NDArray[np.generic], offset: FloatArray | None, dark: FloatArray | None, k: float,
           inverse_flat: FloatArray | None, out: FloatArray) -> None:  # pragma: no cover - compiled
    # None arguments are pruned at compile time: one specialisation per combination of masters
    h, w = light.shape
    kf = np.float32(k)
    for r in numba.prange(h):
        for c in range(w):
            v = np.float32(light[r, c])
            if offset is not None:
                v -= offset[r, c]
            if dark is not None:
                v -= kf * dark[r, c]
            if inverse_flat is not None:
                v *= inverse_flat[r, c]
            out[r, c] = v


@dataclass(frozen=True, slots=True, eq=False)
class PreparedMasters:
    """Masters ready to apply to many frames. Build with :func:`prepare`.

    ``offset`` is subtracted as it is (the bias, or the bias-including dark in exact mode);
    ``dark_current`` (dark minus bias) is subtracted times the frame's scale in the scaled and optimised
    modes; ``inverse_flat`` multiplies (mean-normalised, per colour for CFA).

    ``release_rows``, when set, is called with ``(first, stop)`` after :func:`apply` has used those rows of
    the masters: `apply` then works in bands of ``band_rows`` rows, so that a caller whose masters are
    memory-mapped from files can drop each band's pages at once (see `astrod.io.mapped_masters`) and never
    holds whole masters in memory.
    """

    shape: tuple[int, int]
    offset: FloatArray | None
    dark_current: FloatArray | None
    inverse_flat: FloatArray | None
    bad_index: npt.NDArray[np.intp]
    bad_neighbours: npt.NDArray[np.intp]
    has_bad_pixel_map: bool
    dark_used: bool
    dark_mode: DarkMode
    dark_exposure: float | None
    bayer: str | None
    bayer_offset: tuple[int, int]
    steps: tuple[str, ...]
    release_rows: Callable[[int, int], None] | None = None
    band_rows: int = 256

    def bad_pixel_mask(self) -> BoolArray | None:
        """The bad-pixel map (True = bad), rebuilt from ``bad_index``: only the indices are kept (a whole
        boolean map is 26 MB at 26 MP, and only cosmic-ray cleaning wants one)."""
        if not self.has_bad_pixel_map:
            return None
        mask = np.zeros(self.shape, dtype=np.bool_)
        mask.reshape(-1)[self.bad_index] = True
        return mask


@dataclass(frozen=True, slots=True, eq=False)
class CalibrationResult:
    """A calibrated float32 frame, what was done to it (for provenance headers) and the dark scale used."""

    data: FloatArray
    steps: tuple[str, ...]
    dark_scale: float
    n_bad_pixels: int = 0
    n_cosmic: int = 0


def _check_master(name: str, master: npt.NDArray[np.generic] | None,
                  shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if master is None:
        return shape
    if master.ndim != 2:
        raise ValueError(f"master {name} must be 2-D, got shape {master.shape}")
    if shape is not None and master.shape != shape:
        raise ValueError(f"master {name} shape {master.shape} differs from {shape}")
    return tuple(master.shape)


def prepare(*, bias: npt.NDArray[np.floating] | None = None, dark: npt.NDArray[np.floating] | None = None,
            flat: npt.NDArray[np.floating] | None = None, bad_pixels: BoolArray | None = None,
            dark_exposure: float | None = None, dark_mode: DarkMode = "exact",
            dark_includes_bias: bool = True, bayer: str | None = None,
            bayer_offset: tuple[int, int] = (0, 0), shape: tuple[int, int] | None = None) -> PreparedMasters:
    """Precompute what calibrating with these masters needs.

    ``dark`` is a master dark that includes the bias (as combined from raw darks) unless
    ``dark_includes_bias=False``. ``dark_mode``: ``"exact"`` subtracts it as it is (same exposure and
    temperature), ``"scaled"`` subtracts ``(dark - bias) * t_light / t_dark``, ``"optimised"`` subtracts
    ``(dark - bias) * k`` with k minimising each frame's noise (:func:`optimise_dark_scale`). ``shape``
    is needed only when no master is given.
    """
    if dark_mode not in ("exact", "scaled", "optimised"):
        raise ValueError(f"unknown dark_mode {dark_mode!r}; expected 'exact', 'scaled' or 'optimised'")
    found: tuple[int, ...] | None = shape
    for name, master in (("bias", bias), ("dark", dark), ("flat", flat), ("bad pixel map", bad_pixels)):
        found = _check_master(name, master, found)
    if found is None:
        raise ValueError("prepare needs a master or a shape")
    shape2 = (int(found[0]), int(found[1]))
    steps: list[str] = []
    offset: FloatArray | None = None
    dark_current: FloatArray | None = None
    if dark is None:
        if bias is not None:
            offset = np.array(bias, dtype=np.float32)
            steps.append("bias subtracted")
    elif dark_mode == "exact":
        if dark_includes_bias:
            offset = np.array(dark, dtype=np.float32)
            steps.append("dark subtracted (exact, bias included)")
        else:
            offset = np.array(dark, dtype=np.float32)
            if bias is not None:
                offset += np.asarray(bias, dtype=np.float32)
                steps.append("bias subtracted")
            steps.append("dark subtracted (exact)")
    else:
        if dark_includes_bias and bias is None:
            raise ValueError(f"dark_mode={dark_mode!r} needs the master bias: the dark includes it")
        if dark_mode == "scaled" and not (dark_exposure is not None and dark_exposure > 0):
            raise ValueError(f"dark_mode='scaled' needs a positive dark_exposure, got {dark_exposure}")
        if bias is not None:
            offset = np.array(bias, dtype=np.float32)
            steps.append("bias subtracted")
        dark_current = np.asarray(dark, dtype=np.float32)
        if dark_includes_bias and bias is not None:
            dark_current = dark_current - np.asarray(bias, dtype=np.float32)
        else:
            dark_current = dark_current.copy()
    inverse_flat: FloatArray | None = None
    if flat is not None:
        norm = flat_normalisation(flat, bayer=bayer, bayer_offset=bayer_offset)
        flat32 = np.asarray(flat, dtype=np.float32)
        usable = np.isfinite(flat32) & (flat32 > 0)
        # unusable flat pixels leave the frame uncorrected there; the bad pixel map should cover them
        inverse_flat = np.ones(flat32.shape, dtype=np.float32)
        np.divide(norm, flat32, out=inverse_flat, where=usable)
        if bayer is None:
            steps.append("flat divided (normalised by its mean)")
        else:
            steps.append(f"flat divided (normalised by its mean per CFA colour, {bayer.upper()} offset "
                         f"{bayer_offset[0]},{bayer_offset[1]})")
        n_unusable = int((~usable).sum())
        if n_unusable:
            steps.append(f"flat unusable at {n_unusable} pixels (left uncorrected)")
    bad = None if bad_pixels is None else np.asarray(bad_pixels, dtype=np.bool_)
    if bad is not None:
        bad_index, table = _neighbour_table(bad, cfa=bayer is not None)
    else:
        bad_index = np.empty(0, dtype=np.intp)
        table = np.empty((0, 8), dtype=np.intp)
    return PreparedMasters(shape=shape2, offset=offset, dark_current=dark_current, inverse_flat=inverse_flat,
                           bad_index=bad_index, bad_neighbours=table, has_bad_pixel_map=bad is not None,
                           dark_used=dark is not None, dark_mode=dark_mode,
                           dark_exposure=dark_exposure, bayer=bayer, bayer_offset=bayer_offset,
                           steps=tuple(steps))


def _clean_cosmics(data: FloatArray, *, bad: BoolArray | None, gain: float, readnoise: float,
                   sigclip: float) -> tuple[FloatArray, int]:
    try:
        import astroscrappy  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as err:
        raise ImportError("cosmic-ray cleaning needs astroscrappy (pip install astroscrappy)") from err
    mask, cleaned = astroscrappy.detect_cosmics(data, inmask=bad, sigclip=sigclip, gain=gain,
                                                readnoise=readnoise, satlevel=np.inf)
    return np.asarray(cleaned, dtype=np.float32), int(np.count_nonzero(mask))


def apply(prepared: PreparedMasters, light: npt.NDArray[np.generic], *, light_exposure: float | None = None,
          gain: float | None = None, cosmic: bool = False, cosmic_readnoise: float = 6.5,
          cosmic_sigclip: float = 4.5, out: FloatArray | None = None) -> CalibrationResult:
    """Calibrate one (already trimmed) frame with prepared masters; ``light`` is not modified unless it is
    ``out``.

    Order: bias and dark, flat, bad pixels, cosmic rays (L.A.Cosmic via astroscrappy, imported only
    when ``cosmic``), gain (``gain`` e-/ADU multiplies the result into electrons). ``out`` (float32, the
    frame's shape) receives the result: reusing one buffer saves the page faults of a fresh 100 MB array
    per frame, which cost more than the calibration itself. ``out`` may be ``light`` itself (a float32
    scratch copy of the file's pixels): every step reads a pixel before it writes it, so calibrating in
    place gives the same values and saves the second frame-sized array. Any other overlap is refused.
    """
    if light.shape != prepared.shape:
        raise ValueError(f"frame shape {light.shape} does not match the masters {prepared.shape}")
    if light.dtype.kind not in "uif":
        raise ValueError(f"frame dtype {light.dtype} is not numeric")
    if gain is not None and not gain > 0:
        raise ValueError(f"gain must be positive, got {gain}")
    steps = list(prepared.steps)
    k = 1.0 if prepared.dark_used else 0.0
    dark_current = prepared.dark_current
    if dark_current is not None:
        if prepared.dark_mode == "scaled":
            k = exposure_ratio(light_exposure, prepared.dark_exposure)
            what = f"scaled by exposure x{k:.6g}"
        else:
            k = optimise_dark_scale(light, dark_current, bias=prepared.offset, cfa=prepared.bayer is not None)
            if prepared.release_rows is not None:
                prepared.release_rows(0, prepared.shape[0])
            what = f"optimised x{k:.6g}"
        # the dark step goes after the bias step, before the flat
        at = 1 if steps and steps[0] == "bias subtracted" else 0
        steps.insert(at, f"dark current subtracted ({what})")
    if out is None:
        out = np.empty(prepared.shape, dtype=np.float32)
    elif out.shape != prepared.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {prepared.shape}")
    elif np.shares_memory(out, light) and not _same_array(out, light):
        raise ValueError("out must be the frame itself or not share memory with it")
    if prepared.release_rows is None:
        _fused(light, prepared.offset, dark_current, float(k), prepared.inverse_flat, out)
    else:
        height, step = prepared.shape[0], max(1, prepared.band_rows)
        for first in range(0, height, step):
            rows = slice(first, min(height, first + step))
            _fused(light[rows], _rows(prepared.offset, rows), _rows(dark_current, rows), float(k),
                   _rows(prepared.inverse_flat, rows), out[rows])
            prepared.release_rows(rows.start, rows.stop)
    n_bad = _replace_bad(out, prepared.bad_index, prepared.bad_neighbours)
    if prepared.has_bad_pixel_map:
        steps.append(f"bad pixels replaced by the median of same-colour neighbours ({n_bad})")
    n_cosmic = 0
    if cosmic:
        cleaned, n_cosmic = _clean_cosmics(out, bad=prepared.bad_pixel_mask(), gain=1.0 if gain is None else gain,
                                           readnoise=cosmic_readnoise, sigclip=cosmic_sigclip)
        out[...] = cleaned
        steps.append(f"cosmic rays cleaned (L.A.Cosmic, {n_cosmic} pixels)")
    if gain is not None:
        out *= np.float32(gain)
        steps.append(f"multiplied by gain {gain:g} e-/ADU")
    return CalibrationResult(data=out, steps=tuple(steps), dark_scale=k, n_bad_pixels=n_bad,
                             n_cosmic=n_cosmic)


@dataclass(frozen=True, slots=True, eq=False)
class CalibrationRecipe:
    """How one frame was calibrated by `apply`: the prepared masters, the dark scale used and the gain, so
    that rows of it can be calibrated again alike (`apply_rows`)."""

    prepared: PreparedMasters
    dark_scale: float
    gain: float | None = None


def apply_rows(recipe: CalibrationRecipe, light_rows: npt.NDArray[np.generic], *, first_row: int,
               out: FloatArray | None = None) -> FloatArray:
    """Rows ``first_row ..`` of a frame (``light_rows``, its raw pixels) calibrated as `apply` calibrated the
    whole frame with ``recipe``, bit for bit, except bad pixels whose same-colour neighbours are not all among
    the rows given (those within 2 rows of an edge of the slice that is not the frame's): they are left as
    they are, so a caller wanting rows r0..r1 exactly passes 2 more rows each side. No cosmic-ray cleaning
    (`apply` cleans a whole frame at once)."""
    p = recipe.prepared
    height, width = p.shape
    rows = int(light_rows.shape[0]) if light_rows.ndim == 2 else -1
    if light_rows.ndim != 2 or light_rows.shape[1] != width or not 0 <= first_row <= height - rows:
        raise ValueError(f"rows {light_rows.shape} at row {first_row} do not fit a frame of {p.shape}")
    if out is None:
        out = np.empty((rows, width), dtype=np.float32)
    elif out.shape != (rows, width) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {(rows, width)}")
    part = slice(first_row, first_row + rows)
    _fused(light_rows, _rows(p.offset, part), _rows(p.dark_current, part), float(recipe.dark_scale),
           _rows(p.inverse_flat, part), out)
    if p.release_rows is not None:
        p.release_rows(part.start, part.stop)
    if p.bad_index.size:
        first, stop = first_row * width, (first_row + rows) * width
        here = (p.bad_index >= first) & (p.bad_index < stop)
        table = p.bad_neighbours[here]
        whole = np.all((table < 0) | ((table >= first) & (table < stop)), axis=1)
        table = table[whole]
        _replace_bad(out, p.bad_index[here][whole] - first, np.where(table >= 0, table - first, -1))
    if recipe.gain is not None:
        out *= np.float32(recipe.gain)
    return out


def _rows(master: FloatArray | None, rows: slice) -> FloatArray | None:
    return None if master is None else master[rows]


def _same_array(out: FloatArray, light: npt.NDArray[np.generic]) -> bool:
    """Whether ``out`` and ``light`` are views of exactly the same float32 pixels (in-place calibration)."""
    return (light.dtype == np.float32 and light.shape == out.shape and light.strides == out.strides
            and light.ctypes.data == out.ctypes.data)


def calibrate(light: npt.NDArray[np.generic], *, bias: npt.NDArray[np.floating] | None = None,
              dark: npt.NDArray[np.floating] | None = None, flat: npt.NDArray[np.floating] | None = None,
              bad_pixels: BoolArray | None = None, light_exposure: float | None = None,
              dark_exposure: float | None = None, dark_mode: DarkMode = "exact",
              dark_includes_bias: bool = True, bayer: str | None = None,
              bayer_offset: tuple[int, int] = (0, 0), overscan: str | None = None, trimsec: str | None = None,
              gain: float | None = None, cosmic: bool = False, cosmic_readnoise: float = 6.5,
              cosmic_sigclip: float = 4.5) -> CalibrationResult:
    """Calibrate one frame; ``light`` and the masters are not modified.

    ``overscan`` (BIASSEC) is subtracted per row and ``trimsec`` cut before the masters, which must have
    the trimmed shape. See :func:`prepare` for the dark modes and :func:`apply` for the order of steps.
    """
    frame: npt.NDArray[np.generic] = light
    pre_steps: list[str] = []
    if overscan is not None:
        frame = subtract_overscan(frame, biassec=overscan)
        pre_steps.append(f"overscan {overscan} subtracted (median per line)")
    if trimsec is not None:
        frame = trim(frame, trimsec=trimsec)
        pre_steps.append(f"trimmed to {trimsec}")
    prepared = prepare(bias=bias, dark=dark, flat=flat, bad_pixels=bad_pixels, dark_exposure=dark_exposure,
                       dark_mode=dark_mode, dark_includes_bias=dark_includes_bias, bayer=bayer,
                       bayer_offset=bayer_offset, shape=(frame.shape[0], frame.shape[1]))
    result = apply(prepared, frame, light_exposure=light_exposure, gain=gain, cosmic=cosmic,
                   cosmic_readnoise=cosmic_readnoise, cosmic_sigclip=cosmic_sigclip)
    return CalibrationResult(data=result.data, steps=tuple(pre_steps) + result.steps,
                             dark_scale=result.dark_scale, n_bad_pixels=result.n_bad_pixels,
                             n_cosmic=result.n_cosmic)
