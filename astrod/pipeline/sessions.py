"""Which session a light belongs to: same target, filter, camera settings and night.

Pure decisions on metadata; the service layer owns the sessions themselves.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from astrod.library.keys import night_of
from astrod.model import FrameMeta

UNKNOWN_OBJECTS = frozenset({"", "unknown", "none", "null", "-"})
# DATE-OBS outside these bounds is a camera or PC clock error, not a night: the file's time is used instead
EARLIEST_DATE = datetime(1970, 1, 2, tzinfo=UTC)
FUTURE_SLACK = timedelta(days=2)


def plausible_date(when: datetime, now: datetime) -> bool:
    """Whether a frame's DATE-OBS can be a real night (a clock that itself says 1970 judges only the past)."""
    aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    if aware < EARLIEST_DATE:
        return False
    return now.year < 2020 or aware <= now + FUTURE_SLACK


@dataclass(frozen=True, slots=True)
class SessionKey:
    """Lights with equal keys are stacked together. The frame size is not part of the key: a frame whose size
    differs from its session's is rejected with that reason rather than silently starting a session."""

    night: date
    target: str
    filter: str | None
    camera: str | None
    gain: float | None
    offset: float | None
    binning: tuple[int, int]
    bayer: str | None

    def settings_tag(self) -> str:
        """A short stable tag of the camera settings (tells apart sessions of one target and filter)."""
        text = repr((self.camera, self.gain, self.offset, self.binning, self.bayer))
        return hashlib.blake2b(text.encode(), digest_size=3).hexdigest()

    def as_dict(self) -> dict[str, object]:
        return {"night": self.night.isoformat(), "target": self.target, "filter": self.filter,
                "camera": self.camera, "gain": self.gain, "offset": self.offset, "binning": list(self.binning),
                "bayer": self.bayer}

    def record(self, pointing: Pointing | None) -> dict[str, Any]:
        """The key as the journal stores it, with the pointing of the session's first light (``ra``/``dec``)."""
        out: dict[str, Any] = dict(self.as_dict())
        out["ra"] = pointing.ra if pointing is not None else None
        out["dec"] = pointing.dec if pointing is not None else None
        return out

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> SessionKey:
        return cls(night=date.fromisoformat(data["night"]), target=data["target"], filter=data["filter"],
                   camera=data["camera"], gain=data["gain"], offset=data["offset"],
                   binning=(int(data["binning"][0]), int(data["binning"][1])), bayer=data["bayer"])


@dataclass(frozen=True, slots=True)
class Pointing:
    """Where a session's first light pointed; later frames without OBJECT near it join its target."""

    target: str
    ra: float
    dec: float

    @classmethod
    def of(cls, key: SessionKey, meta: FrameMeta | None) -> Pointing | None:
        """The pointing of a session's first light (None when its header has no RA/Dec)."""
        if meta is None or meta.ra is None or meta.dec is None:
            return None
        return cls(key.target, meta.ra, meta.dec)

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> Pointing | None:
        """The pointing in a key as the journal stores it (`SessionKey.record`)."""
        if data.get("ra") is None or data.get("dec") is None:
            return None
        return cls(data["target"], float(data["ra"]), float(data["dec"]))


def angular_distance_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Great-circle distance (haversine, stable for small angles), degrees."""
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    h = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((r2 - r1) / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h))))


def pointing_name(ra: float, dec: float) -> str:
    """A target name for a frame without OBJECT: its pointing, e.g. 'RA 05h35m Dec -05°23''."""
    ra_h = (ra % 360.0) / 15.0
    sign = "-" if dec < 0 else "+"
    d = abs(dec)
    return f"RA {int(ra_h):02d}h{int(ra_h * 60) % 60:02d}m Dec {sign}{int(d):02d}°{int(d * 60) % 60:02d}'"


_POINTING_NAME = re.compile(r"^RA \d\dh\d\dm Dec [+-]\d\d°\d\d'$")


def is_pointing_name(name: str) -> bool:
    """Whether a target name was made from a pointing (`pointing_name`): its lights had no OBJECT."""
    return _POINTING_NAME.match(name) is not None


def target_of(meta: FrameMeta, *, pointings: Iterable[Pointing], radius_arcmin: float) -> str | None:
    """OBJECT when it names something; otherwise the open session pointing within ``radius_arcmin``, or a
    name made from the pointing. None when the frame has neither OBJECT nor RA/Dec."""
    name = (meta.object or "").strip()
    if name.lower() not in UNKNOWN_OBJECTS:
        return name
    if meta.ra is None or meta.dec is None:
        return None
    best: tuple[float, str] | None = None
    for p in pointings:
        dist = angular_distance_deg(meta.ra, meta.dec, p.ra, p.dec) * 60.0
        if dist <= radius_arcmin and (best is None or dist < best[0]):
            best = (dist, p.target)
    return best[1] if best is not None else pointing_name(meta.ra, meta.dec)


def session_key(meta: FrameMeta, *, target: str, longitude: float | None) -> SessionKey:
    if meta.date_obs is None:
        raise ValueError("a light without DATE-OBS has no night")
    return SessionKey(night=night_of(meta.date_obs, longitude=longitude), target=target, filter=meta.filter,
                      camera=meta.camera, gain=meta.gain, offset=meta.offset, binning=meta.binning,
                      bayer=meta.bayer if meta.planes == 1 else None)


def slug(text: str) -> str:
    """A file-system-safe name: 'NGC 7000 / North America' -> 'NGC_7000_North_America'."""
    cleaned = re.sub(r"[^A-Za-z0-9+.\-]+", "_", text).strip("_.")
    return cleaned or "unnamed"
