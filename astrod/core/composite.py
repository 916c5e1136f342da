"""Colour composites of one target's per-filter stacks, once they are registered onto one grid.

* **RGB**: the R, G and B stacks as planes, then colour-calibrated like a one-shot-colour stack
  (`astrod.core.colour`: the sky neutral, the median star white) — each filter's throughput and exposure
  cancel out.
* **LRGB**: that RGB, its brightness replaced by L (the usual luminance layering, done linearly): above the
  sky, every pixel's colour ratios are the RGB's and its brightness is L's, L first scaled onto the RGB's
  luminance by the median ratio of bright pixels.
* **SHO** (Hubble palette: SII red, Ha green, OIII blue) and **HOO** (Ha red, OIII green and blue): each
  narrowband plane above its sky, scaled so its bright end (the 99.9th percentile) is 1, over a small pedestal.

All linear, float32, NaN where a plane has no data. Which kinds are made depends on the channels present
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
        return rgb if kind == "rgb" else luminance_layer(planes["L"], rgb)
    order = ("SII", "Ha", "OIII") if kind == "sho" else ("Ha", "OIII", "OIII")
    scaled = {c: _unit(planes[c]) for c in set(order)}
    return np.stack([scaled[c] for c in order]).astype(np.float32)


def luminance_layer(lum: FloatArray, rgb: FloatArray) -> FloatArray:
    """``rgb`` (3, H, W, colour-calibrated) with its brightness above the sky replaced by ``lum``'s."""
    sky = np.asarray([_sky(p) for p in rgb], dtype=np.float32)[:, None, None]
    above = np.maximum(rgb - sky, 0.0)
    y = above.mean(axis=0)
    l_above = np.maximum(lum - np.float32(_sky(lum)), 0.0)
    bright = y > np.nanpercentile(y, 99.0) * 0.1
    ratio = float(np.nanmedian(y[bright] / np.maximum(l_above[bright], 1e-12))) if bright.any() else 1.0
    target = l_above * np.float32(ratio)
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = np.where(y > 0, target / np.maximum(y, 1e-12), 1.0).astype(np.float32)
    out = above * gain[None] + sky
    # where RGB has no colour to give (the sky), the pixel is grey at L's brightness
    flat = y <= 0
    out[:, flat] = (target[flat] + sky.reshape(3, 1))
    return np.asarray(out, dtype=np.float32)


def _sky(plane: FloatArray) -> float:
    return clipped_median(plane[background_mask(plane)])


def _unit(plane: FloatArray) -> FloatArray:
    """A narrowband plane above its sky, its 99.9th percentile at 1, on `PEDESTAL`."""
    above = plane - np.float32(_sky(plane))
    top = float(np.nanpercentile(above, 99.9))
    scale = np.float32(1.0 / top) if top > 0 else np.float32(1.0)
    return (above * scale * np.float32(1.0 - PEDESTAL) + np.float32(PEDESTAL)).astype(np.float32)
