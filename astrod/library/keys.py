"""What makes calibration frames compatible: the grouping key of a master, and the night a frame belongs to.

Masters are grouped as the issue says: bias by camera+serial, gain, offset, binning, size/ROI, readout mode and
set temperature (bucketed); darks and dark-flats additionally by exposure; flats additionally by filter and
night (local noon to noon). Bad-pixel maps are per camera, gain, binning and size.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from astrod.io.provenance import ascii_text as ascii_text  # re-exported: moved to io, where headers are written
from astrod.model import FrameKind, FrameMeta


class MasterKind(enum.Enum):
    """What a master is. Values are the folder names and the index's ``kind`` column."""

    BIAS = "bias"
    DARK = "dark"
    DARKFLAT = "darkflat"
    FLAT = "flat"
    BADPIXELS = "badpixels"

    @classmethod
    def of_frame(cls, kind: FrameKind) -> MasterKind | None:
        """The master a calibration frame of ``kind`` goes into; None for lights and unknown frames."""
        return _FRAME_TO_MASTER.get(kind)

    @property
    def title(self) -> str:
        """The IMAGETYP of such a master: 'Master Dark', 'Master Dark Flat', 'Bad Pixel Map'."""
        return _TITLES[self]


_FRAME_TO_MASTER = {FrameKind.BIAS: MasterKind.BIAS, FrameKind.DARK: MasterKind.DARK,
                    FrameKind.DARKFLAT: MasterKind.DARKFLAT, FrameKind.FLAT: MasterKind.FLAT}
_TITLES = {MasterKind.BIAS: "Master Bias", MasterKind.DARK: "Master Dark", MasterKind.DARKFLAT: "Master Dark Flat",
           MasterKind.FLAT: "Master Flat", MasterKind.BADPIXELS: "Bad Pixel Map"}
BUILD_ORDER = (MasterKind.BIAS, MasterKind.DARK, MasterKind.DARKFLAT, MasterKind.FLAT, MasterKind.BADPIXELS)


@dataclass(frozen=True, slots=True)
class CalibrationKey:
    """The grouping key of one master: frames with equal keys are combined together.

    ``temperature`` is the bucketed set temperature (the sensor temperature where no set point is recorded,
    None for uncooled cameras without either); ``exposure`` is set for darks and dark-flats (rounded to 4
    significant digits), ``filter`` and ``night`` for flats. ``rotation`` is reserved for flats of a rotator
    angle, which frame metadata does not carry yet.
    """

    kind: MasterKind
    camera: str | None
    serial: str | None
    gain: float | None
    offset: float | None
    binning: tuple[int, int]
    width: int
    height: int
    roi_x: int = 0
    roi_y: int = 0
    readout_mode: str | None = None
    temperature: float | None = None
    exposure: float | None = None
    filter: str | None = None
    night: date | None = None
    rotation: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON object that :meth:`from_dict` turns back into an equal key."""
        return {"kind": self.kind.value, "camera": self.camera, "serial": self.serial, "gain": self.gain,
                "offset": self.offset, "binning": list(self.binning), "width": self.width, "height": self.height,
                "roi_x": self.roi_x, "roi_y": self.roi_y, "readout_mode": self.readout_mode,
                "temperature": self.temperature, "exposure": self.exposure, "filter": self.filter,
                "night": None if self.night is None else self.night.isoformat(), "rotation": self.rotation}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrationKey:
        def num(name: str) -> float | None:
            v = d.get(name)
            return None if v is None else float(v)

        night = d.get("night")
        binning = d.get("binning") or (1, 1)
        return cls(kind=MasterKind(d["kind"]), camera=d.get("camera"), serial=d.get("serial"), gain=num("gain"),
                   offset=num("offset"), binning=(int(binning[0]), int(binning[1])), width=int(d["width"]),
                   height=int(d["height"]), roi_x=int(d.get("roi_x") or 0), roi_y=int(d.get("roi_y") or 0),
                   readout_mode=d.get("readout_mode"), temperature=num("temperature"), exposure=num("exposure"),
                   filter=d.get("filter"), night=None if night is None else date.fromisoformat(night),
                   rotation=num("rotation"))

    @property
    def key_id(self) -> str:
        """A stable identifier: the first 16 hex digits of the SHA-256 of the canonical JSON."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def describe(self) -> str:
        """One line for people: 'dark ZWO ASI2600MM Pro gain 100 offset 50 bin 1x1 -10 °C 300 s'."""
        parts = [self.kind.value, self.camera or "unknown camera"]
        if self.serial:
            parts.append(f"#{self.serial}")
        if self.gain is not None:
            parts.append(f"gain {self.gain:g}")
        if self.offset is not None:
            parts.append(f"offset {self.offset:g}")
        parts.append(f"bin {self.binning[0]}x{self.binning[1]}")
        parts.append(f"{self.width}x{self.height}")
        if self.roi_x or self.roi_y:
            parts.append(f"at {self.roi_x},{self.roi_y}")
        if self.readout_mode:
            parts.append(f"mode {self.readout_mode}")
        if self.temperature is not None:
            parts.append(f"{self.temperature:g} °C")
        if self.exposure is not None:
            parts.append(f"{self.exposure:g} s")
        if self.filter is not None:
            parts.append(f"filter {self.filter}")
        if self.night is not None:
            parts.append(f"night {self.night.isoformat()}")
        return " ".join(parts)

    def file_stem(self) -> str:
        """A descriptive, file-system-safe name, unique per key (it ends with part of the key id)."""
        parts = [self.kind.value]
        if self.gain is not None:
            parts.append(f"g{self.gain:g}")
        if self.offset is not None:
            parts.append(f"o{self.offset:g}")
        parts.append(f"bin{self.binning[0]}x{self.binning[1]}")
        parts.append(f"{self.width}x{self.height}")
        if self.readout_mode:
            parts.append(self.readout_mode)
        if self.temperature is not None:
            parts.append(f"{'m' if self.temperature < 0 else 'p'}{abs(self.temperature):g}C")
        if self.exposure is not None:
            parts.append(f"{self.exposure:g}s")
        if self.filter is not None:
            parts.append(self.filter)
        if self.night is not None:
            parts.append(self.night.isoformat())
        parts.append(self.key_id[:8])
        return safe_name("_".join(parts))


def sort_key(key: CalibrationKey) -> tuple[Any, ...]:
    """Orders keys for people: by kind (build order), camera, gain, offset, size, temperature, exposure,
    filter, night."""
    def num(v: float | None) -> float:
        return -math.inf if v is None else v

    return (BUILD_ORDER.index(key.kind), key.camera or "", num(key.gain), num(key.offset), key.binning,
            key.width, key.height, num(key.temperature), num(key.exposure), key.filter or "",
            key.night.toordinal() if key.night else 0, key.key_id)


def safe_name(text: str) -> str:
    """``text`` with anything but letters, digits, '.', '-' and '_' replaced by '_' (never empty)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip()).strip("._") or "unnamed"
    return cleaned[:120]


def bucket_temperature(value: float | None, *, bucket: float) -> float | None:
    """``value`` rounded to the nearest multiple of ``bucket`` °C (None stays None)."""
    if value is None or not math.isfinite(value):
        return None
    if bucket <= 0:
        raise ValueError(f"temperature bucket must be positive, got {bucket}")
    # round half away from zero on a grid, and without -0.0 or 9.9999999 artefacts
    steps = math.floor(abs(value) / bucket + 0.5) * (1 if value >= 0 else -1)
    return round(steps * bucket, 6) + 0.0


def normalise_exposure(value: float | None) -> float | None:
    """An exposure rounded to 4 significant digits: 59.9999 s and 60.0001 s are the same exposure."""
    if value is None or not math.isfinite(value):
        return None
    if value == 0:
        return 0.0
    return float(f"{value:.4g}")


def frame_temperature(meta: FrameMeta) -> float | None:
    """The temperature that groups and matches a frame: its set point, else its sensor temperature."""
    return meta.set_temperature if meta.set_temperature is not None else meta.temperature


def _local_time(moment: datetime, *, longitude: float | None) -> datetime:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    if longitude is not None:
        # local mean solar time: noon is when the mean sun crosses the site's meridian
        return aware.astimezone(UTC).replace(tzinfo=None) + timedelta(hours=longitude / 15.0)
    return aware.astimezone().replace(tzinfo=None)


def night_of(date_obs: datetime, *, longitude: float | None = None) -> date:
    """The night a moment belongs to, named by the date of its evening: local noon to the next local noon.

    With a site ``longitude`` (degrees east) local time is mean solar time (UTC + longitude/15 h);
    otherwise the machine's local time zone. A naive ``date_obs`` is taken as UTC.
    """
    return (_local_time(date_obs, longitude=longitude) - timedelta(hours=12)).date()


def key_of(meta: FrameMeta, kind: MasterKind, *, temperature_bucket: float = 1.0,
           longitude: float | None = None) -> CalibrationKey:
    """The key of the master a frame of ``kind`` with ``meta`` belongs to (or would be matched against)."""
    base = CalibrationKey(kind=kind, camera=meta.camera, serial=meta.serial, gain=meta.gain, offset=meta.offset,
                          binning=meta.binning, width=meta.width, height=meta.height, roi_x=meta.roi_x,
                          roi_y=meta.roi_y, readout_mode=meta.readout_mode,
                          temperature=bucket_temperature(frame_temperature(meta), bucket=temperature_bucket))
    if kind in (MasterKind.DARK, MasterKind.DARKFLAT):
        return replace(base, exposure=normalise_exposure(meta.exposure))
    if kind is MasterKind.FLAT:
        night = None if meta.date_obs is None else night_of(meta.date_obs, longitude=longitude)
        return replace(base, filter=meta.filter, night=night)
    if kind is MasterKind.BADPIXELS:
        return badpixel_key(base)
    return base


def badpixel_key(key: CalibrationKey) -> CalibrationKey:
    """The bad-pixel map key of a master: camera, serial, gain, binning, size, ROI and readout mode."""
    return CalibrationKey(kind=MasterKind.BADPIXELS, camera=key.camera, serial=key.serial, gain=key.gain,
                          offset=None, binning=key.binning, width=key.width, height=key.height, roi_x=key.roi_x,
                          roi_y=key.roi_y, readout_mode=key.readout_mode)


def same_sensor_mode(a: CalibrationKey | FrameMeta, b: CalibrationKey, *,
                     with_gain: bool = True) -> str | None:
    """None if ``a`` and ``b`` share camera, serial (when both know it), binning, size, ROI, readout mode and,
    with ``with_gain``, gain and offset; otherwise the first difference, as a phrase."""
    if a.camera != b.camera:
        return f"camera {b.camera} is not {a.camera}"
    if a.serial and b.serial and a.serial != b.serial:
        return f"serial {b.serial} is not {a.serial}"
    if tuple(a.binning) != tuple(b.binning):
        return f"binning {b.binning[0]}x{b.binning[1]} is not {a.binning[0]}x{a.binning[1]}"
    if (a.width, a.height) != (b.width, b.height):
        return f"size {b.width}x{b.height} is not {a.width}x{a.height}"
    if (a.roi_x, a.roi_y) != (b.roi_x, b.roi_y):
        return f"ROI origin {b.roi_x},{b.roi_y} is not {a.roi_x},{a.roi_y}"
    if (a.readout_mode or None) != (b.readout_mode or None):
        return f"readout mode {b.readout_mode} is not {a.readout_mode}"
    if with_gain and a.gain != b.gain:
        return f"gain {_num(b.gain)} is not {_num(a.gain)}"
    if with_gain and a.offset != b.offset and b.kind is not MasterKind.BADPIXELS:
        return f"offset {_num(b.offset)} is not {_num(a.offset)}"
    return None


def _num(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g}"
