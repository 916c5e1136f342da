"""The FITS headers of library masters: a master's provenance header, the cards a master dark carries for its
bad-pixel map, the header of its noise-map extension, and the cards of a bad-pixel map.

`astrod.library.build` re-exports its public names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from astrod.core.badpixels import BadPixels
from astrod.core.combine import CombineResult
from astrod.io.bands import RowLayout
from astrod.io.fits import Header
from astrod.io.provenance import ParamValue, Provenance, put_card, write_provenance
from astrod.library.keys import CalibrationKey, MasterKind
from astrod.library.options import BuildOptions
from astrod.library.sources import SourceFrame

NOISE_EXTNAME = "NOISE"  # the image extension of a master dark holding its per-pixel temporal noise


# ------------------------------------------------------------------------------------------------ headers


def _put(header: Header, key: str, value: Any, comment: str = "") -> None:
    put_card(header, key, value, comment)


def _master_header(key: CalibrationKey, frames: Sequence[SourceFrame], *, n: int, low_n: bool,
                   options: BuildOptions, description: str, rejected: float, src_hash: str, build_hash: str,
                   extra: Mapping[str, tuple[Any, str]]) -> Header:
    metas = [f.meta for f in frames]
    temps = [m.temperature for m in metas if m.temperature is not None]
    dates = sorted(m.date_obs for m in metas if m.date_obs is not None)
    first = metas[0]
    h = Header()
    _put(h, "IMAGETYP", key.kind.title, "astrod master")
    _put(h, "ASTRDKEY", key.key_id, "astrod master key id")
    _put(h, "ASTRDKJS", json.dumps(key.as_dict(), sort_keys=True), "grouping key (JSON)")
    c = options.combine
    params: dict[str, tuple[ParamValue, str]] = {
        "LOW_N": (low_n, f"fewer than {options.min_frames} frames"),
        "MINFRAME": (options.min_frames, "frames a master should have")}
    if c.method == "sigma_clip":
        params["COMBKAPP"] = (c.kappa, "sigma-clip threshold (low and high)")
        params["COMBITER"] = (-1 if c.maxiters is None else c.maxiters, "sigma-clip iterations (-1: to convergence)")
        params["COMBCEN"] = (c.cenfunc, "sigma-clip centre")
        params["COMBDEV"] = (c.stdfunc, "sigma-clip deviation")
    if c.method == "minmax":
        params["COMBNLOW"] = (c.nlow, "lowest values dropped")
        params["COMBNHI"] = (c.nhigh, "highest values dropped")
    params["COMBDESC"] = (description, "how the frames were combined")
    params["REJFRAC"] = (round(rejected, 6), "fraction of samples rejected")
    _put(h, "INSTRUME", key.camera, "camera")
    _put(h, "CAMSERNO", key.serial, "camera serial number")
    _put(h, "GAIN", key.gain, "sensor gain")
    _put(h, "OFFSET", key.offset, "sensor offset")
    _put(h, "XBINNING", key.binning[0], "binning in x")
    _put(h, "YBINNING", key.binning[1], "binning in y")
    if key.roi_x or key.roi_y:
        _put(h, "XORGSUBF", key.roi_x, "ROI origin x")
        _put(h, "YORGSUBF", key.roi_y, "ROI origin y")
    _put(h, "READOUTM", key.readout_mode, "readout mode")
    _put(h, "SET-TEMP", key.temperature, "[degC] set temperature (bucket)")
    if temps:
        _put(h, "CCD-TEMP", round(float(np.mean(temps)), 3), "[degC] mean sensor temperature of the sources")
    if key.kind is MasterKind.BIAS:
        _put(h, "EXPTIME", 0.0, "[s] exposure")
    elif key.exposure is not None:
        _put(h, "EXPTIME", key.exposure, "[s] exposure")
    elif key.kind is MasterKind.FLAT:
        exposures = [m.exposure for m in metas if m.exposure is not None]
        if exposures:
            _put(h, "EXPTIME", round(float(np.median(exposures)), 6), "[s] median exposure of the flats")
    _put(h, "FILTER", key.filter, "filter")
    _put(h, "NIGHT", None if key.night is None else key.night.isoformat(), "night (local noon to noon)")
    if dates:
        _put(h, "DATE-OBS", dates[0].strftime("%Y-%m-%dT%H:%M:%S.%f"), "first source frame (UTC)")
        _put(h, "DATE-END", dates[-1].strftime("%Y-%m-%dT%H:%M:%S.%f"), "last source frame (UTC)")
    if first.bayer:
        _put(h, "BAYERPAT", first.bayer, "CFA pattern")
        _put(h, "XBAYROFF", first.bayer_offset[0], "CFA x offset")
        _put(h, "YBAYROFF", first.bayer_offset[1], "CFA y offset")
    for name, (value, comment) in extra.items():
        params[name] = (value, comment)
    params["SRCHASH"] = (src_hash, "")  # SHA-256 of the source list; no room left for a comment
    params["BLDHASH"] = (build_hash, "")  # SHA-256 of the sources and the recipe
    # HISTORY 'source <name>' per frame: _reindex reads them back
    return write_provenance(h, Provenance(
        kind=f"master {key.kind.value}", inputs=tuple(f.path.name for f in frames), method=c.method,
        method_card="COMBMETH", method_comment="combination method", ncombine=n, parameters=params,
        software_cards=("SWCREATE",)))


def _number(value: Any) -> float | None:
    """A header value as a finite float, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if np.isfinite(value) else None


def _adc_ceiling(frames: Sequence[SourceFrame], layouts: Sequence[RowLayout]) -> float | None:
    """The highest value the source frames can hold: the camera's white level where the reader knows it
    (camera raw), else the top of the FITS integer type (``BZERO + BSCALE * its maximum``); None for float
    data, whose ceiling is unknown."""
    whites = [f.meta.white_level for f in frames if f.meta.white_level]
    if whites:
        return float(max(whites))
    tops: list[float] = []
    for lay in layouts:
        if lay.bitpix not in (8, 16, 32) or lay.bscale <= 0:
            return None
        top = 255 if lay.bitpix == 8 else 2 ** (lay.bitpix - 1) - 1
        tops.append(lay.bzero + lay.bscale * top)
    return max(tops) if tops else None


def _dark_cards(frames: Sequence[SourceFrame], layouts: Sequence[RowLayout],
                result: CombineResult) -> dict[str, tuple[Any, str]]:
    """Header cards a master dark carries for its bad-pixel map: the sources' ceiling, gain and noise map."""
    cards: dict[str, tuple[Any, str]] = {}
    ceiling = _adc_ceiling(frames, layouts)
    if ceiling is not None:
        cards["SATURATE"] = (ceiling, "[ADU] ceiling of the source frames' data")
    gains = {f.meta.egain for f in frames}
    if len(gains) == 1 and (gain := gains.pop()) is not None and gain > 0:
        cards["EGAIN"] = (gain, "[e-/ADU] gain of the source frames")
    if result.noise is not None:
        cards["NOISEMAP"] = (True, f"temporal noise per pixel in extension {NOISE_EXTNAME}")
    return cards


def _noise_header(n: int) -> Header:
    h = Header()
    _put(h, "BUNIT", "adu", "temporal standard deviation per pixel")
    _put(h, "NCOMBINE", n, "frames it is measured over")
    for line in ("Per pixel: standard deviation (ddof=1) over the frames of the samples",
                 "the master averaged (after rejection); NaN where fewer than two were",
                 "kept. The bad-pixel map reads it to find the pixels whose dark changes",
                 "between frames, which subtracting the master cannot correct."):
        h.add_comment(line)
    return h


def _badpixel_cards(found: BadPixels) -> list[tuple[str, Any, str]]:
    """How many pixels each reason flagged and the numbers it used, for the bad-pixel map's header."""
    c = found.counts
    t = found.thresholds
    rule_comment = {"temporal": "dark judged by its temporal noise map",
                    "master-only": "no noise map: dark judged by the master alone",
                    "flat-only": "from the flat alone"}[found.rule]
    cards: list[tuple[str, Any, str]] = [
        ("BPMRULE", found.rule, rule_comment),
        ("NBADHOT", c["hot"], "hot: too hot to use" if found.rule == "temporal" else "hot in the master"),
        ("NBADUNST", c["unstable"], "unstable: dark changes between frames"),
        ("NBADSAT", c["saturated"], "saturated or near the ceiling in the dark"),
        ("NBADSTCK", c["stuck"], "stuck low: no temporal noise, far below"),
        ("NBADCOLD", c["cold"], "cold or dead in the flat"),
        ("NBADCOL", c["column"], "pixels of bad columns"),
        ("NCOLBAD", found.n_columns, "bad columns"),
    ]
    named = (("unstable_factor", "BPMUNSTF", "unstable: scatter over model sigma above"),
             ("hot_noise_factor", "BPMHOTF", "hot: shot noise over typical noise above"),
             ("hot_excess", "BPMHOTL", "[ADU] hot: dark above its median by more"),
             ("saturated_level", "BPMSATL", "[ADU] saturated: dark at or above"),
             ("stuck_factor", "BPMSTKF", "stuck: scatter under model sigma over"),
             ("hot_sigma", "BPMHOTS", "[sigma] hot (master) / stuck (below) threshold"),
             ("cold_fraction", "BPMCOLDF", "cold: flat under this of its local level"),
             ("column_fraction", "BPMCOLF", "column bad when this fraction is flagged"),
             ("column_sigma", "BPMCOLS", "column deviation threshold, robust sigmas"))
    for name, card, comment in named:
        if name in t:
            value = t[name]
            cards.append((card, round(value, 3) if np.isfinite(value) else "inf", comment))
    if found.model is not None:
        m = found.model
        cards += [("BPMNFLR", round(math.sqrt(m.floor), 4), "[ADU] typical temporal sigma of a dark pixel"),
                  ("BPMNSLP", round(m.slope, 5), "noise model: variance per ADU of dark excess"),
                  ("BPMNSRC", m.slope_from, "slope from warm pixels, gain, or assumed 1"),
                  ("BPMNWARM", m.n_warm, "warm pixels the slope was fitted on")]
    return cards
