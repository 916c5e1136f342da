"""Which masters calibrate a frame, and why: explainable matching in the spirit of cvastrophoto's dark-annot.

Rules (pure functions over index records, no files):
- every master must share the frame's camera, serial (when both know it), binning, size, ROI and readout
  mode; bias, darks and bad-pixel maps also its gain and offset (flats prefer them, as the flat field does not
  depend on gain);
- bias and darks: temperature within ``temperature_tolerance``, widened 1 °C at a time up to
  ``temperature_max`` with a warning;
- darks: the same exposure preferred; otherwise the nearest exposure, scaled as (dark − bias) × t/t_dark +
  bias (which needs a bias), or optimised per frame when ``dark_optimisation`` is on;
- flats: the same filter, the nearest night within ``flat_max_age_days``;
- a light needs a dark and a flat (and a bias when its dark is scaled); a flat needs a dark-flat or a bias.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from astrod.config import Config
from astrod.io.headers import describe
from astrod.library.keys import MasterKind, frame_temperature, night_of, normalise_exposure, same_sensor_mode
from astrod.library.records import MasterRecord
from astrod.model import FrameKind, FrameMeta

DarkMode = Literal["exact", "scaled", "optimised"]
Role = Literal["bias", "dark", "flat", "badpixels"]


@dataclass(frozen=True, slots=True)
class MatchRules:
    """The matching rules' parameters (``[library]`` and ``[site]`` config)."""

    temperature_tolerance: float = 1.0
    temperature_max: float = 5.0
    flat_max_age_days: float = 30.0
    dark_optimisation: bool = False
    longitude: float | None = None

    @classmethod
    def from_config(cls, config: Config) -> MatchRules:
        lib = config.library
        return cls(temperature_tolerance=lib.temperature_tolerance, temperature_max=lib.temperature_max,
                   flat_max_age_days=lib.flat_max_age_days, dark_optimisation=lib.dark_optimisation,
                   longitude=config.site.longitude)

    def tolerances(self) -> tuple[float, ...]:
        """The temperature tolerances tried in turn: the first, then 1 °C wider each step, then the maximum."""
        first = max(0.0, self.temperature_tolerance)
        last = max(first, self.temperature_max)
        steps = [first]
        t = math.floor(first) + 1.0
        while t < last:
            steps.append(t)
            t += 1.0
        if last > first:
            steps.append(last)
        return tuple(steps)


COLOUR_NO_MASTERS = ("colour (RGB) frame: the library builds masters from single-plane sensor data only, so no "
                     "colour master matches; it is stacked uncalibrated")


@dataclass(frozen=True, slots=True)
class MasterChoice:
    """A chosen master, and in words why: 'exact', 'temperature widened to ±3 °C', 'dark scaled 30 s → 60 s'."""

    role: Role
    record: MasterRecord
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "path": str(self.record.path), "key_id": self.record.key_id,
                "kind": self.record.kind.value, "n_frames": self.record.n_frames, "low_n": self.record.low_n,
                "reason": self.reason}


@dataclass(frozen=True, slots=True)
class MatchResult:
    """The masters chosen for one frame, with their reasons, and what is missing (one line each).

    ``dark_mode`` says how to apply the dark (None without one): ``exact``, ``scaled`` by ``dark_scale``
    (t_frame / t_dark) or ``optimised`` per frame.
    """

    meta: FrameMeta
    bias: MasterChoice | None = None
    dark: MasterChoice | None = None
    flat: MasterChoice | None = None
    badpixels: MasterChoice | None = None
    dark_mode: DarkMode | None = None
    dark_scale: float | None = None
    missing: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when nothing required is missing."""
        return not self.missing

    def choices(self) -> tuple[MasterChoice, ...]:
        return tuple(c for c in (self.bias, self.dark, self.flat, self.badpixels) if c is not None)

    def as_dict(self) -> dict[str, Any]:
        return {"frame": describe(self.meta), "kind": self.meta.kind.value, "ok": self.ok,
                "bias": None if self.bias is None else self.bias.as_dict(),
                "dark": None if self.dark is None else self.dark.as_dict(),
                "flat": None if self.flat is None else self.flat.as_dict(),
                "badpixels": None if self.badpixels is None else self.badpixels.as_dict(),
                "dark_mode": self.dark_mode, "dark_scale": self.dark_scale, "missing": list(self.missing),
                "warnings": list(self.warnings), "notes": list(self.notes)}


# ------------------------------------------------------------------------------------------------ helpers


def _same_exposure(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and normalise_exposure(a) == normalise_exposure(b)


def _temperature_gap(t_frame: float | None, record: MasterRecord) -> float | None:
    t_master = record.key.temperature
    if t_frame is None or t_master is None:
        return None
    return abs(t_frame - t_master)


def _fmt_t(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g} °C"


def _tie_break(record: MasterRecord) -> tuple[int, float, str]:
    # more frames first, then the newest, then a stable order
    return (-record.n_frames, -record.created.timestamp(), record.key_id)


def _within(t_frame: float | None, records: Iterable[MasterRecord], tolerance: float) -> list[MasterRecord]:
    out = []
    for r in records:
        gap = _temperature_gap(t_frame, r)
        if gap is None or gap <= tolerance + 1e-9:
            out.append(r)
    return out


def _temperature_phrase(t_frame: float | None, record: MasterRecord, tolerance: float,
                        first: float) -> tuple[str, str | None]:
    """(reason fragment, warning or None) for the temperature of a chosen master."""
    gap = _temperature_gap(t_frame, record)
    if gap is None:
        if t_frame is None and record.key.temperature is None:
            return "temperature not recorded", None
        return (f"temperature not compared (frame {_fmt_t(t_frame)}, master {_fmt_t(record.key.temperature)})",
                None)
    if tolerance > first + 1e-9:
        text = (f"temperature widened to ±{tolerance:g} °C (master {_fmt_t(record.key.temperature)}, "
                f"frame {_fmt_t(t_frame)})")
        return text, text
    if gap < 1e-9:
        return f"temperature exact ({_fmt_t(t_frame)})", None
    return f"temperature within ±{tolerance:g} °C ({_fmt_t(record.key.temperature)})", None


def _nearest_temperature(t_frame: float | None, records: Sequence[MasterRecord]) -> MasterRecord:
    return min(records, key=lambda r: (_temperature_gap(t_frame, r) or 0.0, *_tie_break(r)))


def _closest_beyond(t_frame: float | None, records: Sequence[MasterRecord]) -> str:
    gaps = [(g, r) for r in records if (g := _temperature_gap(t_frame, r)) is not None]
    if not gaps:
        return ""
    gap, record = min(gaps, key=lambda x: x[0])
    return f" (the nearest is at {_fmt_t(record.key.temperature)}, {gap:g} °C away)"


def _compatible(meta: FrameMeta, records: Iterable[MasterRecord], kind: MasterKind, *,
                with_gain: bool = True) -> list[MasterRecord]:
    return [r for r in records if r.kind is kind and same_sensor_mode(meta, r.key, with_gain=with_gain) is None]


# -------------------------------------------------------------------------------------------------- roles


def choose_bias(meta: FrameMeta, records: Sequence[MasterRecord], rules: MatchRules,
                ) -> tuple[MasterChoice | None, str | None]:
    """The bias for ``meta``: nearest temperature within the widening tolerance. (choice, warning)."""
    t_frame = frame_temperature(meta)
    candidates = _compatible(meta, records, MasterKind.BIAS)
    first = rules.tolerances()[0]
    for tol in rules.tolerances():
        within = _within(t_frame, candidates, tol)
        if within:
            best = _nearest_temperature(t_frame, within)
            phrase, warning = _temperature_phrase(t_frame, best, tol, first)
            return MasterChoice("bias", best, phrase if warning else f"exact; {phrase}"), warning
    return None, None


def choose_dark(meta: FrameMeta, records: Sequence[MasterRecord], rules: MatchRules, *,
                bias: MasterChoice | None, kinds: tuple[MasterKind, ...] = (MasterKind.DARK,),
                ) -> tuple[MasterChoice | None, DarkMode | None, float | None, str | None, str]:
    """The dark (or dark-flat) for ``meta``: (choice, mode, scale, warning, why none).

    At the narrowest temperature tolerance that offers any usable dark: the same exposure (of the first of
    ``kinds`` that has one), else the nearest exposure scaled by exposure time (needs ``bias``).
    """
    t_frame = frame_temperature(meta)
    first = rules.tolerances()[0]
    candidates = [r for kind in kinds for r in _compatible(meta, records, kind)]
    if not candidates:
        return None, None, None, None, ""
    can_scale = bias is not None and meta.exposure is not None and meta.exposure > 0
    for tol in rules.tolerances():
        within = _within(t_frame, candidates, tol)
        if not within:
            continue
        chosen: MasterRecord | None = None
        for kind in kinds:
            same = [r for r in within if r.kind is kind and _same_exposure(r.key.exposure, meta.exposure)]
            if same:
                chosen = _nearest_temperature(t_frame, same)
                break
        phrase_t, warning = "", None
        if chosen is not None:
            phrase_t, warning = _temperature_phrase(t_frame, chosen, tol, first)
            if rules.dark_optimisation and bias is not None:
                return (MasterChoice("dark", chosen, f"same exposure {chosen.key.exposure:g} s, dark optimised per "
                                                     f"frame; {phrase_t}"), "optimised", None, warning, "")
            head = "exact" if warning is None else f"same exposure {chosen.key.exposure:g} s"
            return MasterChoice("dark", chosen, f"{head}; {phrase_t}"), "exact", 1.0, warning, ""
        if not can_scale:
            continue  # a different exposure cannot be scaled without a bias: try a wider tolerance
        exp = float(meta.exposure or 0.0)
        scalable = [r for r in within if r.key.exposure is not None and r.key.exposure > 0]
        if not scalable:
            continue
        kind_rank = {k: i for i, k in enumerate(kinds)}
        # nearest exposure on a log scale; on a tie the longer dark (less noise per second)
        chosen = min(scalable, key=lambda r: (round(abs(math.log(exp / float(r.key.exposure or 1.0))), 9),
                                              -(r.key.exposure or 0.0), kind_rank[r.kind],
                                              _temperature_gap(t_frame, r) or 0.0, *_tie_break(r)))
        phrase_t, warning = _temperature_phrase(t_frame, chosen, tol, first)
        t_dark = float(chosen.key.exposure or 0.0)
        what = "dark-flat" if chosen.kind is MasterKind.DARKFLAT else "dark"
        if rules.dark_optimisation:
            return (MasterChoice("dark", chosen, f"{what} optimised per frame (nearest exposure {t_dark:g} s for "
                                                 f"{exp:g} s); {phrase_t}"), "optimised", None, warning, "")
        scale = exp / t_dark
        return (MasterChoice("dark", chosen, f"{what} scaled {t_dark:g} s → {exp:g} s (×{scale:.4g}); {phrase_t}"),
                "scaled", scale, warning, "")
    # explain why none fits
    if meta.exposure is None:
        return None, None, None, None, " (the frame has no exposure time)"
    if not _within(t_frame, candidates, rules.tolerances()[-1]):
        why = f" within ±{rules.tolerances()[-1]:g} °C{_closest_beyond(t_frame, candidates)}"
    else:
        exposures = sorted({r.key.exposure for r in candidates if r.key.exposure is not None})
        listed = ", ".join(f"{e:g} s" for e in exposures)
        why = f" of that exposure (have {listed}; scaling needs a master bias)"
    return None, None, None, None, why


def choose_flat(meta: FrameMeta, records: Sequence[MasterRecord], rules: MatchRules,
                ) -> tuple[MasterChoice | None, str]:
    """The flat for ``meta``: same filter, nearest night within the age limit (same gain preferred).
    (choice, why none)."""
    wanted = (meta.filter or "").casefold()
    candidates = [r for r in _compatible(meta, records, MasterKind.FLAT, with_gain=False)
                  if (r.key.filter or "").casefold() == wanted]
    if not candidates:
        return None, ""
    frame_night = None if meta.date_obs is None else night_of(meta.date_obs, longitude=rules.longitude)

    def gap_days(r: MasterRecord) -> float | None:
        if frame_night is None or r.key.night is None:
            return None
        return float(abs((r.key.night - frame_night).days))

    usable = [r for r in candidates if (g := gap_days(r)) is None or g <= rules.flat_max_age_days]
    if not usable:
        nearest = min(candidates, key=lambda r: gap_days(r) or 0.0)
        return None, (f" within {rules.flat_max_age_days:g} nights (the nearest is from "
                      f"{nearest.key.night.isoformat() if nearest.key.night else 'an unknown night'})")

    def rank(r: MasterRecord) -> tuple[Any, ...]:
        same_gain = r.key.gain == meta.gain and r.key.offset == meta.offset
        g = gap_days(r)
        newest = -(r.key.night.toordinal() if r.key.night else 0)
        # earlier night first on equal distance: flats taken before the frame with the optics as they were
        signed = 0 if (frame_night is None or r.key.night is None) else (r.key.night - frame_night).days
        return (not same_gain, g is None, g if g is not None else 0.0, signed > 0,
                newest if frame_night is None else 0, *_tie_break(r))

    best = min(usable, key=rank)
    if frame_night is None:
        when = "frame has no date: newest flat"
    elif best.key.night is None:
        when = "flat night unknown"
    elif best.key.night == frame_night:
        when = f"same night {best.key.night}"
    else:
        days = (best.key.night - frame_night).days
        plural = "s" if abs(days) > 1 else ""
        when = f"night {best.key.night}, {abs(days)} night{plural} {'before' if days < 0 else 'after'}"
    parts = [f"filter {best.key.filter or 'none'}", when]
    if best.key.gain != meta.gain or best.key.offset != meta.offset:
        parts.append(f"taken at gain {best.key.gain if best.key.gain is None else f'{best.key.gain:g}'}")
    return MasterChoice("flat", best, ", ".join(parts)), ""


def choose_badpixels(meta: FrameMeta, records: Sequence[MasterRecord]) -> MasterChoice | None:
    """The bad-pixel map of the frame's camera, gain, binning and size, if any."""
    candidates = [r for r in records if r.kind is MasterKind.BADPIXELS
                  and same_sensor_mode(meta, r.key, with_gain=False) is None and r.key.gain == meta.gain]
    if not candidates:
        return None
    best = min(candidates, key=_tie_break)
    return MasterChoice("badpixels", best, f"camera {meta.camera or 'unknown'} gain "
                                           f"{'unknown' if meta.gain is None else f'{meta.gain:g}'}")


# ------------------------------------------------------------------------------------------------- match


def _flat_wanted(meta: FrameMeta) -> str:
    parts = [meta.camera or "unknown camera", f"bin {meta.binning[0]}x{meta.binning[1]}",
             f"{meta.width}x{meta.height}", f"filter {meta.filter or 'none'}"]
    return " ".join(parts)


def match_frame(meta: FrameMeta, records: Sequence[MasterRecord], rules: MatchRules) -> MatchResult:
    """The masters that calibrate a frame, with reasons, warnings and what is missing.

    Lights (and frames of unknown kind, matched as lights) need a dark and a flat, and a bias when the
    dark is scaled or optimised; flats need a dark-flat (or a dark) or a bias; darks take a bias if there
    is one; bias frames and dark-flats need nothing. Debayered colour frames (3 planes) get none: masters are
    single-plane sensor data (`COLOUR_NO_MASTERS` says so).
    """
    warnings: list[str] = []
    notes: list[str] = []
    missing: list[str] = []
    kind = meta.kind
    if kind is FrameKind.UNKNOWN:
        notes.append(f"kind unknown ({meta.kind_reason}): matched as a light")
        kind = FrameKind.LIGHT
    if kind in (FrameKind.BIAS, FrameKind.DARKFLAT):
        return MatchResult(meta=meta, notes=(f"a {kind.value} frame needs no master",))
    if meta.planes > 1:
        return MatchResult(meta=meta, notes=(*notes, COLOUR_NO_MASTERS))
    bias, bias_warning = choose_bias(meta, records, rules)
    if bias_warning:
        warnings.append(f"bias: {bias_warning}")
    if kind is FrameKind.DARK:
        return MatchResult(meta=meta, bias=bias, warnings=tuple(warnings))
    if kind is FrameKind.FLAT:
        dark, mode, scale, dark_warning, why = choose_dark(meta, records, rules, bias=bias,
                                                          kinds=(MasterKind.DARKFLAT, MasterKind.DARK))
        if dark_warning:
            warnings.append(f"dark-flat: {dark_warning}")
        if dark is None and bias is None:
            missing.append(f"no dark-flat or bias for {describe(replace(meta, filter=None))}{why}")
        return MatchResult(meta=meta, bias=bias, dark=dark, dark_mode=mode, dark_scale=scale,
                           missing=tuple(missing), warnings=tuple(warnings), notes=tuple(notes))
    dark, mode, scale, dark_warning, why = choose_dark(meta, records, rules, bias=bias)
    if dark_warning:
        warnings.append(f"dark: {dark_warning}")
    if dark is None:
        missing.append(f"darkless: no dark for {describe(replace(meta, filter=None))}{why}")
    flat, why_flat = choose_flat(meta, records, rules)
    if flat is None:
        missing.append(f"flatless: no flat for {_flat_wanted(meta)}{why_flat}")
    return MatchResult(meta=meta, bias=bias, dark=dark, flat=flat, badpixels=choose_badpixels(meta, records),
                       dark_mode=mode, dark_scale=scale, missing=tuple(missing), warnings=tuple(warnings),
                       notes=tuple(notes))
