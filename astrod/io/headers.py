"""Header normalisation: any capture program's FITS header (or a raw file's metadata) to a FrameMeta.

Dialects are data, not ``if`` chains: alias tables list the keywords each field may come from, in order of
preference; path rules fill what a sparse header (DWARF, files renamed by hand) leaves out; folder names
classify a frame that carries no type keyword. The user's ``[headers]`` config adds renames and path rules.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import PurePath
from typing import Any

from astrod.config import HeadersConfig
from astrod.model import FrameKind, FrameMeta

# Keywords that say what a frame is, in order of preference (INDI writes both IMAGETYP and FRAME).
KIND_KEYWORDS: tuple[str, ...] = ("IMAGETYP", "FRAME", "FRAMETYP", "IMAGETYPE", "OBSTYPE")

# Values of those keywords after folding (lower case, no spaces/_/-, without 'frame', 'master', 'field').
KIND_VALUES: Mapping[str, FrameKind] = {
    "light": FrameKind.LIGHT, "lights": FrameKind.LIGHT, "object": FrameKind.LIGHT,
    "science": FrameKind.LIGHT, "sci": FrameKind.LIGHT,
    "dark": FrameKind.DARK, "darks": FrameKind.DARK,
    "flat": FrameKind.FLAT, "flats": FrameKind.FLAT, "skyflat": FrameKind.FLAT, "domeflat": FrameKind.FLAT,
    "twilightflat": FrameKind.FLAT,
    "bias": FrameKind.BIAS, "biases": FrameKind.BIAS, "zero": FrameKind.BIAS, "offset": FrameKind.BIAS,
    "darkflat": FrameKind.DARKFLAT, "darkflats": FrameKind.DARKFLAT, "flatdark": FrameKind.DARKFLAT,
    "flatdarks": FrameKind.DARKFLAT,
}

# Folder names that classify a frame without a type keyword (tokens of a path component, nearest first).
FOLDER_KINDS: Mapping[tuple[str, ...], FrameKind] = {
    ("dark", "flat"): FrameKind.DARKFLAT, ("dark", "flats"): FrameKind.DARKFLAT,
    ("darkflat",): FrameKind.DARKFLAT, ("darkflats",): FrameKind.DARKFLAT,
    ("flat", "dark"): FrameKind.DARKFLAT, ("flat", "darks"): FrameKind.DARKFLAT,
    ("flatdark",): FrameKind.DARKFLAT, ("flatdarks",): FrameKind.DARKFLAT,
    ("light",): FrameKind.LIGHT, ("lights",): FrameKind.LIGHT,
    ("dark",): FrameKind.DARK, ("darks",): FrameKind.DARK,
    ("flat",): FrameKind.FLAT, ("flats",): FrameKind.FLAT,
    ("bias",): FrameKind.BIAS, ("biases",): FrameKind.BIAS, ("offsets",): FrameKind.BIAS,
}

# FrameMeta field -> FITS keywords it may come from, most preferred first.
FIELD_ALIASES: Mapping[str, tuple[str, ...]] = {
    "exposure": ("EXPTIME", "EXPOSURE", "EXP_TIME", "EXPOSURE_TIME", "ITIME"),
    "camera": ("INSTRUME", "CAMMODEL", "CAMERA"),
    "serial": ("CAMSERNO", "SERIALNO", "CAMSN", "SERNUM"),
    "gain": ("GAIN", "ISOSPEED", "ISO"),
    "iso": ("ISOSPEED", "ISO"),
    "offset": ("OFFSET", "BLKLEVEL"),
    "egain": ("EGAIN", "E-GAIN"),
    "temperature": ("CCD-TEMP", "CCD_TEMP", "CCDTEMP", "DET-TEMP", "TEMPERAT", "SENSTEMP"),
    "set_temperature": ("SET-TEMP", "SET_TEMP", "SETTEMP", "CCD-SET"),
    "binx": ("XBINNING", "CCDXBIN", "BINX", "XBIN"),
    "biny": ("YBINNING", "CCDYBIN", "BINY", "YBIN"),
    "roi_x": ("XORGSUBF", "XORGSUB"),
    "roi_y": ("YORGSUBF", "YORGSUB"),
    "readout_mode": ("READOUTM", "READMODE", "READOUT"),
    "filter": ("FILTER", "INSFILTE", "FILTNAME", "FILTER1"),
    "bayer": ("BAYERPAT", "COLORTYP", "CFAPAT", "CFA-PAT"),
    "bayer_x": ("XBAYROFF", "BAYOFFX"),
    "bayer_y": ("YBAYROFF", "BAYOFFY"),
    "object": ("OBJECT", "OBJNAME"),
    "ra": ("RA", "OBJCTRA", "RA_OBJ"),
    "dec": ("DEC", "OBJCTDEC", "DEC_OBJ"),
    "date_obs": ("DATE-OBS", "DATE_OBS"),
    "pier_side": ("PIERSIDE",),
    "stack_count": ("STACKCNT", "NCOMBINE"),
    "biassec": ("BIASSEC",),
    "trimsec": ("TRIMSEC",),
    "software": ("SWCREATE", "CREATOR", "SOFTWARE", "ORIGIN"),
}

# Fields a path rule or a folder default may set, and how their text becomes a value.
SETTABLE_FIELDS: Mapping[str, Callable[[str], Any]] = {
    "kind": lambda v: v, "exposure": float, "gain": float, "offset": float, "temperature": float,
    "set_temperature": float, "binning": int, "filter": str, "camera": str, "serial": str, "object": str,
    "readout_mode": str, "bayer": str,
}


@dataclass(frozen=True, slots=True)
class PathRule:
    """Fill fields from a file's path: a regex (built-in dialects) or a glob (user rules) on the POSIX path.

    ``set`` gives fixed values; named groups of a regex give values read from the path itself.
    Values only fill what the header lacks.
    """

    pattern: str
    set: Mapping[str, str] = field(default_factory=dict)
    regex: bool = False
    note: str = ""

    def match(self, path: PurePath) -> dict[str, str] | None:
        text = path.as_posix()
        if not self.regex:
            return dict(self.set) if fnmatchcase(text, self.pattern) else None
        m = re.search(self.pattern, text, flags=re.IGNORECASE)
        if m is None:
            return None
        found = {k: v for k, v in m.groupdict().items() if v is not None}
        return {**self.set, **found}


# DWARF 3 headers are sparse: its factory calibration frames carry almost nothing but their file names.
BUILTIN_PATH_RULES: tuple[PathRule, ...] = (
    PathRule(r"/CALI_FRAME/(?P<kind>bias|dark|flat)/cam_0/", {"camera": "DWARFIII"}, regex=True,
             note="DWARF 3 factory calibration (tele camera)"),
    PathRule(r"/CALI_FRAME/(?P<kind>bias|dark|flat)/cam_1/", {"camera": "DWARFIII WIDE"}, regex=True,
             note="DWARF 3 factory calibration (wide camera)"),
    PathRule(r"/CALI_FRAME/[^/]+/[^/]+/[a-z]+_(?:exp_(?P<exposure>\d+(?:\.\d+)?)_)?gain_(?P<gain>\d+)"
             r"_bin_(?P<binning>\d+)(?:_(?P<temperature>-?\d+)C)?", regex=True,
             note="DWARF 3 calibration file name"),
    PathRule(r"/DWARF_DARK/[a-z]+_exp_(?P<exposure>\d+(?:\.\d+)?)_gain_(?P<gain>\d+)_bin_(?P<binning>\d+)",
             {"kind": "dark"}, regex=True, note="DWARF 3 dark library"),
    PathRule(r"/DWARF_RAW_[^/]+/[^/]+$", {"kind": "light"}, regex=True, note="DWARF 3 raw light folder"),
)

_SEXAGESIMAL = re.compile(r"^\s*([+-]?)\s*(\d+(?:\.\d*)?)[\s:hd°]+(\d+(?:\.\d*)?)(?:[\s:m']+(\d+(?:\.\d*)?))?")
_BAYER = re.compile(r"^[RGB]{4}$")


def rules_from_config(headers: HeadersConfig) -> tuple[PathRule, ...]:
    """The user's ``[[headers.folders]]`` tables as path rules (globs)."""
    return tuple(PathRule(rule.pattern, dict(rule.set), note=f"config rule {rule.pattern!r}")
                 for rule in headers.folders)


def fold_kind(value: str) -> str:
    text = value.strip().lower()
    for word in ("frame", "master", "field", "image"):
        text = text.replace(word, "")
    return re.sub(r"[\s_\-]+", "", text)


def kind_from_value(value: object) -> FrameKind | None:
    return KIND_VALUES.get(fold_kind(str(value))) if value is not None else None


def kind_from_folders(path: PurePath) -> tuple[FrameKind, str] | None:
    """The kind named by the nearest folder of ``path`` (Lights/, Darks/, 'Dark Flats'/, DWARF_DARK/, ...)."""
    for folder in reversed(path.parent.parts):
        tokens = tuple(t for t in re.split(r"[^a-z]+", folder.lower()) if t)
        for size in (2, 1):
            for i in range(len(tokens) - size + 1):
                kind = FOLDER_KINDS.get(tokens[i:i + size])
                if kind is not None:
                    return kind, folder
    return None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text or None


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _angle(value: Any, *, hours: bool) -> float | None:
    """Degrees from a number (degrees) or a sexagesimal string (hours for RA, degrees for Dec)."""
    number = _number(value)
    if number is not None:
        return number
    text = _text(value)
    if text is None:
        return None
    m = _SEXAGESIMAL.match(text)
    if m is None:
        return None
    sign = -1.0 if m.group(1) == "-" else 1.0
    deg = float(m.group(2)) + float(m.group(3)) / 60.0 + float(m.group(4) or 0.0) / 3600.0
    return sign * deg * (15.0 if hours else 1.0)


def parse_date_obs(value: Any, time_obs: Any = None) -> datetime | None:
    """DATE-OBS (FITS: UTC) to an aware datetime; more than six fractional digits are truncated."""
    text = _text(value)
    if text is None:
        return None
    if "T" not in text and _text(time_obs):
        text = f"{text}T{_text(time_obs)}"
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.rstrip("Z"))
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _first(cards: Mapping[str, Any], field_name: str) -> tuple[str | None, Any]:
    for key in FIELD_ALIASES[field_name]:
        if key in cards and cards[key] is not None and _text(cards[key]) is not None:
            return key, cards[key]
    return None, None


def _filter_name(value: Any) -> str | None:
    text = _text(value)
    return None if text is None or text.lower() == "none" else text


def path_defaults(path: PurePath, rules: Iterable[PathRule]) -> tuple[dict[str, str], list[str]]:
    """Values the path rules give for ``path``; later rules override earlier ones. Also the notes of the hits."""
    values: dict[str, str] = {}
    notes: list[str] = []
    for rule in rules:
        found = rule.match(path)
        if found is not None:
            values.update(found)
            notes.append(rule.note or rule.pattern)
    return values, notes


def _decide_kind(keyword_kind: tuple[str, Any] | None, rule_kind: str | None, rule_notes: list[str],
                 path: PurePath) -> tuple[FrameKind, str]:
    if keyword_kind is not None:
        key, value = keyword_kind
        kind = kind_from_value(value)
        if kind is not None:
            return kind, f"{key}={str(value).strip()!r}"
        unknown_keyword = f"{key}={str(value).strip()!r} is not a known frame type"
    else:
        unknown_keyword = ""
    if rule_kind is not None:
        kind = kind_from_value(rule_kind)
        if kind is not None:
            return kind, f"path rule: {'; '.join(rule_notes)}"
    by_folder = kind_from_folders(path)
    if by_folder is not None:
        return by_folder[0], f"folder {by_folder[1]!r}"
    if unknown_keyword:
        return FrameKind.UNKNOWN, f"{unknown_keyword} and no Lights/Darks/Flats/Bias folder in the path"
    return FrameKind.UNKNOWN, ("no frame type keyword (IMAGETYP/FRAME) and no Lights/Darks/Flats/Bias folder "
                               "in the path")


def _apply_rule_values(values: dict[str, Any], defaults: Mapping[str, str]) -> None:
    """Fill fields the header left empty from path-rule values (converted to their types)."""
    for name, text in defaults.items():
        if name == "kind" or name not in SETTABLE_FIELDS:
            continue
        converted = SETTABLE_FIELDS[name](text)
        if name == "binning":
            if values.get("binning") in (None, (1, 1)) and not values.get("_binning_from_header"):
                values["binning"] = (int(converted), int(converted))
        elif values.get(name) is None:
            values[name] = converted


def normalise(header: Mapping[str, Any], path: str | PurePath, *, rename: Mapping[str, str] | None = None,
              rules: Iterable[PathRule] = ()) -> FrameMeta:
    """A FITS header (astropy Header or any mapping) and its file path to a FrameMeta.

    ``rename`` maps a keyword the user's capture program writes onto the keyword astrod reads
    (e.g. ``{"MYEXP": "EXPTIME"}``); ``rules`` are user path rules, applied after the built-in ones.
    """
    p = PurePath(path)
    cards: dict[str, Any] = {}
    for key in header:
        if key in ("COMMENT", "HISTORY", ""):
            continue
        cards[str(key).upper()] = header[key]
    for source, target in (rename or {}).items():
        if source.upper() in cards:
            cards[target.upper()] = cards[source.upper()]

    values: dict[str, Any] = {}
    for name in ("camera", "serial", "readout_mode", "object", "biassec", "trimsec", "software"):
        values[name] = _text(_first(cards, name)[1])
    for name in ("biassec", "trimsec"):  # '[   4:  13,   1: 520]' and '[4:13,1:520]' are the same section
        values[name] = re.sub(r"\s+", "", values[name]) if values[name] else None
    values["filter"] = _filter_name(_first(cards, "filter")[1])
    for name in ("exposure", "offset", "egain", "temperature", "set_temperature"):
        values[name] = _number(_first(cards, name)[1])
    values["gain"] = _number(_first(cards, "gain")[1])
    iso = _number(_first(cards, "iso")[1])
    values["iso"] = int(iso) if iso is not None else None
    bayer = (_text(_first(cards, "bayer")[1]) or "").upper()
    values["bayer"] = bayer if _BAYER.match(bayer) else None
    values["bayer_offset"] = (int(_number(_first(cards, "bayer_x")[1]) or 0),
                              int(_number(_first(cards, "bayer_y")[1]) or 0))
    binx, biny = _number(_first(cards, "binx")[1]), _number(_first(cards, "biny")[1])
    values["binning"] = (int(binx or 1), int(biny or binx or 1))
    values["_binning_from_header"] = binx is not None
    values["roi_x"] = int(_number(_first(cards, "roi_x")[1]) or 0)
    values["roi_y"] = int(_number(_first(cards, "roi_y")[1]) or 0)
    naxis = int(_number(cards.get("NAXIS")) or 0)
    values["width"] = int(_number(cards.get("NAXIS1")) or 0) if naxis >= 1 else 0
    values["height"] = int(_number(cards.get("NAXIS2")) or 0) if naxis >= 2 else 0
    values["planes"] = int(_number(cards.get("NAXIS3")) or 1) if naxis >= 3 else 1
    ra_key, ra = _first(cards, "ra")
    dec = _first(cards, "dec")[1]
    values["ra"] = _angle(ra, hours=ra_key != "RA" or isinstance(ra, str))
    values["dec"] = _angle(dec, hours=False)
    values["date_obs"] = parse_date_obs(_first(cards, "date_obs")[1], cards.get("TIME-OBS", cards.get("UT")))
    side = _text(_first(cards, "pier_side")[1])
    values["pier_side"] = side.title() if side and side.lower() in ("east", "west") else None
    values["stack_count"] = int(_number(_first(cards, "stack_count")[1]) or 1)

    defaults, notes = path_defaults(p, (*BUILTIN_PATH_RULES, *rules))
    _apply_rule_values(values, defaults)
    keyword_kind = next(((k, cards[k]) for k in KIND_KEYWORDS if _text(cards.get(k)) is not None), None)
    values["kind"], values["kind_reason"] = _decide_kind(keyword_kind, defaults.get("kind"), notes, p)
    values.pop("_binning_from_header")
    return FrameMeta(**values, source_format="fits")


def complete_from_path(meta: FrameMeta, path: str | PurePath, *, rules: Iterable[PathRule] = ()) -> FrameMeta:
    """Classify and fill a FrameMeta that did not come from a FITS header (camera raw) from its path."""
    p = PurePath(path)
    defaults, notes = path_defaults(p, (*BUILTIN_PATH_RULES, *rules))
    values = {f.name: getattr(meta, f.name) for f in dataclasses.fields(meta)}
    values["_binning_from_header"] = True
    _apply_rule_values(values, defaults)
    values.pop("_binning_from_header")
    if meta.kind is FrameKind.UNKNOWN:
        values["kind"], values["kind_reason"] = _decide_kind(None, defaults.get("kind"), notes, p)
    return FrameMeta(**values)


def describe(meta: FrameMeta) -> str:
    """A one-line human summary, as used in reasons: 'ASI2600MM gain 100 offset 50 -10 °C 300 s'."""
    parts: list[str] = [meta.camera or "unknown camera"]
    if meta.gain is not None:
        parts.append(f"gain {meta.gain:g}")
    if meta.offset is not None:
        parts.append(f"offset {meta.offset:g}")
    temp = meta.set_temperature if meta.set_temperature is not None else meta.temperature
    if temp is not None:
        parts.append(f"{temp:g} °C")
    if meta.exposure is not None:
        parts.append(f"{meta.exposure:g} s")
    if meta.filter:
        parts.append(f"filter {meta.filter}")
    return " ".join(parts)
