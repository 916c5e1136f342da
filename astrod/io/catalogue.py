"""The catalogue of deep-sky objects astrod names fields from: OpenNGC (NGC, IC and their addenda, with the Messier
numbers), the SQLite database the `pyongc` package ships. Reading it is reading a file, hence here in io/; without
pyongc (not installed yet: scripts/setup) there is no catalogue and every query answers nothing."""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass

# pyongc's types that are not an object to name a field after: stars, duplicate and non-existent entries
_NOT_TARGETS = frozenset({"*", "**", "*Ass", "Dup", "NonEx", "Other"})
_NAME = re.compile(r"^(NGC|IC|M)0*(\d+)(.*)$")
MAX_RADIUS_DEG = 10.0  # pyongc's largest search radius


@dataclass(frozen=True, slots=True)
class CatalogueObject:
    """One catalogued object: its display name ('NGC 7023', 'M 31', 'IC 1396'), position (degrees, J2000), OpenNGC
    type ('Galaxy', 'RfN', 'OCl', ...) and major axis (arcmin; None when unknown)."""

    name: str
    ra: float
    dec: float
    kind: str
    major_arcmin: float | None


def catalogue_missing() -> str | None:
    """Why there is no catalogue here (pyongc not installed), or None."""
    if importlib.util.find_spec("pyongc") is None:
        return "pyongc is not installed (scripts/setup installs it): fields are named by their coordinates"
    return None


def display_name(name: str) -> str:
    """'NGC0224' -> 'NGC 224', 'M031' -> 'M 31', 'IC1396' -> 'IC 1396'; other names as they are."""
    found = _NAME.match(name)
    return f"{found.group(1)} {int(found.group(2))}{found.group(3)}" if found else name


def _sexagesimal(ra: float, dec: float) -> str:
    hours = (ra % 360.0) / 15.0
    h, rem = divmod(hours * 3600.0, 3600.0)
    m, s = divmod(rem, 60.0)
    sign = "-" if dec < 0 else "+"
    d, drem = divmod(abs(dec) * 3600.0, 3600.0)
    dm, ds = divmod(drem, 60.0)
    return f"{int(h):02d}:{int(m):02d}:{s:05.2f} {sign}{int(d):02d}:{int(dm):02d}:{ds:04.1f}"


def objects_near(ra: float, dec: float, radius_deg: float) -> list[CatalogueObject]:
    """The catalogued objects within ``radius_deg`` (at most `MAX_RADIUS_DEG`) of (``ra``, ``dec``), nearest
    first, stars and duplicate entries left out; a Messier object under its Messier name. Empty without pyongc."""
    if catalogue_missing() is not None:
        return []
    from pyongc import ongc

    found = ongc.nearby(_sexagesimal(ra, dec), separation=min(radius_deg, MAX_RADIUS_DEG) * 60.0)
    out: list[CatalogueObject] = []
    for dso, _separation in found:
        if dso.type in _NOT_TARGETS:
            continue
        messier = dso.identifiers[0] if dso.identifiers and dso.identifiers[0] else None
        size = dso.dimensions[0] if dso.dimensions else None
        ra_deg, dec_deg = (math.degrees(float(v)) for v in dso.rad_coords)
        out.append(CatalogueObject(name=display_name(messier or dso.name), ra=ra_deg, dec=dec_deg, kind=str(dso.type),
                                   major_arcmin=float(size) if size is not None else None))
    return out
