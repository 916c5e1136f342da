"""Colour composites of one target's per-filter stacks, once they are registered onto one grid.

* **RGB**: the R, G and B stacks as planes, then colour-calibrated like a one-shot-colour stack
  (`astrod.core.colour`: the sky neutral, the median star white) — each filter's throughput and exposure
  cancel out.
* **LRGB**: that RGB, its brightness replaced by L (the usual luminance layering, done linearly): every
  pixel keeps the RGB's colour ratios and takes L's brightness, L first mapped onto the RGB's luminance.
* **SHO** (Hubble palette: SII red, Ha green, OIII blue) and **HOO** (Ha red, OIII green and blue): each
  narrowband plane above its sky, scaled so its bright end (the 99.9th percentile) is 1, over a small pedestal.

All linear, float32, NaN wherever one of the filters has no data. Which kinds are made depends on the channels present
(`kinds_for`)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from astrod.core.background import background_mask, clipped_median
from astrod.core.colour import apply_colour, colour_balance

FloatArray = npt.NDArray[np.float32]

KINDS: dict[str, tuple[str, ...]] = {"lrgb": ("L", "R", "G", "B"), "rgb": ("R", "G", "B"),
                                     "sho": ("SII", "Ha", "OIII"), "hoo": ("Ha", "OIII")}
CHANNELS = ("L", "R", "G", "B", "Ha", "OIII", "SII")
# filter names as capture programs write them, lower case, onto the channels
DEFAULT_NAMES = {"l": "L", "lum": "L", "luminance": "L", "clear": "L", "r": "R", "red": "R", "g": "G",
                 "green": "G", "b": "B", "blue": "B", "ha": "Ha", "h-alpha": "Ha", "halpha": "Ha", "h": "Ha",
                 "oiii": "OIII", "o3": "OIII", "o": "OIII", "sii": "SII", "s2": "SII", "s": "SII"}
PEDESTAL = 0.01  # narrowband composites: the sky sits here, the bright end at 1


def channel_of(filter_name: str | None, names: dict[str, str] | None = None) -> str | None:
    """The composite channel a filter feeds (``names``: extra or overriding filter name -> channel), or
    None for a filter that feeds none."""
    if not filter_name:
        return None
    key = filter_name.strip().lower()
    table = {**DEFAULT_NAMES, **{k.strip().lower(): v for k, v in (names or {}).items()}}
    found = table.get(key)
    return found if found in CHANNELS else None


def kinds_for(channels: set[str] | frozenset[str], enabled: tuple[str, ...] = tuple(KINDS)) -> list[str]:
    """The composites the ``channels`` present allow, among ``enabled``; LRGB replaces RGB when L is there."""
    kinds = [k for k in KINDS if k in enabled and set(KINDS[k]) <= set(channels)]
    if "lrgb" in kinds and "rgb" in kinds:
        kinds.remove("rgb")
    return kinds


def compose(kind: str, planes: dict[str, FloatArray]) -> FloatArray:
    """The (3, H, W) composite ``kind`` of registered mono ``planes`` (channel -> (H, W))."""
    if kind not in KINDS:
        raise ValueError(f"unknown composite {kind!r}; expected one of {', '.join(KINDS)}")
    missing = [c for c in KINDS[kind] if c not in planes]
    if missing:
        raise ValueError(f"composite {kind} needs {', '.join(missing)}")
    if kind in ("rgb", "lrgb"):
        rgb = np.stack([planes["R"], planes["G"], planes["B"]]).astype(np.float32)
        rgb = apply_colour(rgb, colour_balance(rgb), out=rgb)
        cube = rgb if kind == "rgb" else luminance_layer(planes["L"], rgb)
    else:
        order = ("SII", "Ha", "OIII") if kind == "sho" else ("Ha", "OIII", "OIII")
        scaled = {c: _unit(planes[c]) for c in set(order)}
        cube = np.stack([scaled[c] for c in order]).astype(np.float32)
    # only where every filter has data: a pixel some planes lack would take a false colour
    uncovered = np.zeros(cube.shape[1:], dtype=bool)
    for c in KINDS[kind]:
        uncovered |= ~np.isfinite(planes[c])
    cube[:, uncovered] = np.nan
    return cube


def luminance_layer(lum: FloatArray, rgb: FloatArray) -> FloatArray:
    """``rgb`` (3, H, W, colour-calibrated) with its brightness replaced by ``lum``'s: every pixel is scaled by
    L / Y, Y being the RGB's luminance (the channels' mean, sky included: positive and smooth, so the sky's
    noise does not become colour), L first mapped affinely onto Y (its sky onto Y's sky, its bright pixels onto
    Y's by their median ratio)."""
    y = rgb.mean(axis=0)
    y_sky, l_sky = _sky(y), _sky(lum)
    y_above, l_above = y - np.float32(y_sky), lum - np.float32(l_sky)
    bright = l_above > np.nanpercentile(l_above, 99.0) * 0.2
    ratio = float(np.nanmedian(y_above[bright] / l_above[bright])) if bright.any() else 1.0
    target = l_above * np.float32(ratio) + np.float32(y_sky)
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = np.where(y > 0, target / y, 1.0).astype(np.float32)
    return np.asarray(rgb * gain[None], dtype=np.float32)


def _sky(plane: FloatArray) -> float:
    return clipped_median(plane[background_mask(plane)])


def _unit(plane: FloatArray) -> FloatArray:
    """A narrowband plane above its sky, its 99.9th percentile at 1, on `PEDESTAL`."""
    above = plane - np.float32(_sky(plane))
    top = float(np.nanpercentile(above, 99.9))
    scale = np.float32(1.0 / top) if top > 0 else np.float32(1.0)
    return (above * scale * np.float32(1.0 - PEDESTAL) + np.float32(PEDESTAL)).astype(np.float32)
