"""Light curves of chosen targets: differential aperture photometry of every stacked frame.

A `PhotometrySeries` watches a session's `LiveStack` (its observer): each frame stacked is measured on its
calibrated, unwarped pixels, at the targets' and comparison stars' positions on the session's first reference
frame carried onto the frame through the inverse of its registration transform. What it keeps per frame is
small (fluxes, errors, sky, flags of twenty-odd stars, the times): the light curve is computed from all of it
whenever it is asked for (`PhotometrySeries.curve`), so the comparison ensemble is judged on every frame so far
(a comparison saturated in one frame, unusable in over a tenth of them, or scattering against the others leaves
every row, not only later ones; one missing from a few frames, at the edge or off it, leaves those rows only,
flagged ``comparison_missing``, and the ensemble stays continuous: `astrod.core.photometry.relative_flux`).

Set up on the first frame (the session's first reference):
* aperture radius ``aperture_fwhm`` × that frame's FWHM, sky annulus ``annulus_fwhm`` × FWHM (at least 2 px
  beyond the aperture), the same for the whole session;
* the comparison candidates: the stars given by the user, or twice ``max_comparisons`` stars picked from the
  frame's stars (`astrod.core.photometry.pick_comparisons`); the ensemble is the best ``max_comparisons`` of
  those that stay.

A frame may also be measured apart (`measure_apart`, where its pixels are: a Dask worker of ``astrod
reprocess``) with the series' set-up, and the small result taken up by the series in the frames' order
(`PhotometrySeries.add`): the same rows as `observe`.

The state (`state`, `restore`) is JSON-able and rides in the session's checkpoint, so a restart measures each
frame once: frames after the checkpoint are stacked again, and measured again, from their files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from astrod.config import Config
from astrod.core.photometry import (
    measure_apertures,
    pick_comparisons,
    relative_flux,
    scintillation,
    weed_comparisons,
)
from astrod.errors import AstrodError
from astrod.io.fits import read_fits_header
from astrod.pipeline.photometry_times import Site, point_times
from astrod.pipeline.settings import StackedFrame
from astrod.pipeline.solving import wcs_from_cards

F64 = npt.NDArray[np.float64]

CSV_COLUMNS = ("frame", "jd_utc_mid", "bjd_tdb", "airmass", "rel_flux", "rel_flux_err", "mag_diff", "mag_err",
               "flags", "x", "y", "flux", "flux_err", "sky", "fwhm", "comparisons")
DEFAULT_SATURATION = 0.95 * 65535.0  # a 16-bit camera's, less its bias: unless the header or config says
STATE_VERSION = 1
# (first reference's path, RA, Dec in degrees) -> its 0-based x, y there, None when unknown (no WCS)
Locate = Callable[[str, float, float], tuple[float, float] | None]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}$")


def _angle(text: str, *, hours: bool) -> float:
    """Degrees from ``12.5`` or ``12:30:00`` / ``12 30 00`` (hours for RA when sexagesimal)."""
    parts = text.replace(":", " ").split()
    if len(parts) == 1:
        return float(parts[0])
    sign = -1.0 if parts[0].startswith("-") else 1.0
    d, m, s = (abs(float(parts[0])), float(parts[1]), float(parts[2]) if len(parts) > 2 else 0.0)
    value = sign * (d + m / 60.0 + s / 3600.0)
    return value * 15.0 if hours else value


def parse_coords(text: str) -> tuple[float, float]:
    """``RA,DEC`` in degrees or sexagesimal (RA in hours then): ``286.04,36.63`` or ``19:04:09.8,+36:37:57``."""
    try:
        ra_text, dec_text = text.split(",")
        ra, dec = _angle(ra_text.strip(), hours=":" in ra_text or " " in ra_text.strip()), _angle(
            dec_text.strip(), hours=False)
    except ValueError as err:
        raise ValueError(f"coordinates {text!r}: expected RA,DEC (degrees or h:m:s,d:m:s)") from err
    if not (0 <= ra < 360 and -90 <= dec <= 90):
        raise ValueError(f"coordinates {text!r}: out of range")
    return ra, dec


@dataclass(frozen=True, slots=True)
class Target:
    """A star to follow: ``x, y`` on the session's first reference frame, 1-based as ds9 and FITS count, or
    ``ra, dec`` (degrees), or both (then the position is the pixel one and the coordinates give the times)."""

    name: str
    x: float | None = None
    y: float | None = None
    ra: float | None = None
    dec: float | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"target name {self.name!r}: letters, digits, space, _ . + - (64 at most)")
        if (self.x is None) != (self.y is None) or (self.ra is None) != (self.dec is None):
            raise ValueError(f"target {self.name}: x goes with y, ra with dec")
        if self.x is None and self.ra is None:
            raise ValueError(f"target {self.name}: give x/y or ra/dec")

    @classmethod
    def parse(cls, text: str) -> Target:
        """``NAME@X,Y`` (pixels, 1-based) or ``NAME=RA,DEC``."""
        if "@" in text:
            name, _, where = text.partition("@")
            try:
                x, y = (float(v) for v in where.split(","))
            except ValueError as err:
                raise ValueError(f"target {text!r}: expected NAME@X,Y") from err
            return cls(name.strip(), x=x, y=y)
        if "=" in text:
            name, _, where = text.partition("=")
            ra, dec = parse_coords(where)
            return cls(name.strip(), ra=ra, dec=dec)
        raise ValueError(f"target {text!r}: expected NAME@X,Y or NAME=RA,DEC")

    @property
    def file_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.+-]", "_", self.name)


@dataclass(frozen=True, slots=True)
class PhotometrySettings:
    """What the photometry of a session needs (``[photometry]`` and the command line).

    ``comparisons``: user-given comparison stars (1-based x, y on the first reference; empty: automatic).
    ``gain`` e⁻/ADU (0: the frame's EGAIN, else 1 with a note); ``read_noise`` e⁻; ``saturation`` ADU on the
    calibrated frame (0: 95 % of the header's white level, or of 65535). ``diameter_m``: the telescope's
    aperture for the scintillation term (0: left out). ``coords``: RA/Dec for the times of targets given by
    pixel position only."""

    targets: tuple[Target, ...]
    comparisons: tuple[tuple[float, float], ...] = ()
    aperture_fwhm: float = 1.5
    annulus_fwhm: tuple[float, float] = (4.0, 7.0)
    max_comparisons: int = 10
    gain: float = 0.0
    read_noise: float = 0.0
    saturation: float = 0.0
    site: Site | None = None
    diameter_m: float = 0.0
    coords: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class LightCurve:
    """The rows of one target's light curve (`CSV_COLUMNS`) and the header comment naming the comparison
    stars and the aperture."""

    target: str
    rows: list[dict[str, Any]]
    comment: str
    comparisons: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class FrameMeasurement:
    """One stacked frame's photometry measured apart from its series (`measure_apart`, in a Dask worker): the
    set-up it was measured with (made on this frame when none was given; None: none could be), its record
    (None: not measured) and the notes measuring it gave. Small: a few numbers per star."""

    setup: dict[str, Any] | None
    record: dict[str, Any] | None
    notes: tuple[str, ...] = ()
    error: str | None = None  # why measuring failed (the frame is left out of the curves, as the daemon leaves it)


class PhotometrySeries:
    """The photometry of one session (see the module docstring). ``locate`` turns a target's RA/Dec into its
    0-based position on the first reference frame (a plate solution's WCS); targets with coordinates only are
    left out without it. One thread at a time."""

    def __init__(self, settings: PhotometrySettings, *, locate: Locate | None = None) -> None:
        self.settings = settings
        self._locate = locate
        self._setup: dict[str, Any] | None = None
        self._records: list[dict[str, Any]] = []
        self.notes: list[str] = []

    # ------------------------------------------------------------------------------------------- measuring

    def __call__(self, frame: StackedFrame) -> None:
        self.observe(frame)

    @property
    def frames(self) -> int:
        return len(self._records)

    @property
    def target_names(self) -> tuple[str, ...]:
        return () if self._setup is None else tuple(self._setup["targets"])

    @property
    def setup(self) -> dict[str, Any] | None:
        """The aperture, annulus, saturation level and stars measured, set up on the first frame (None yet)."""
        return self._setup

    def observe(self, frame: StackedFrame) -> None:
        """Measure the targets and comparison candidates on one stacked frame."""
        data = np.asarray(frame.data, dtype=np.float32)
        if data.ndim == 3:
            data = np.asarray(np.mean(data, axis=0, dtype=np.float32))
        if self._setup is None:
            self._setup = self._set_up(frame, data)
            if self._setup is None:
                return
        self._records.append(self._measure(frame, data, self._setup))

    def add(self, measured: FrameMeasurement) -> None:
        """Take up a frame measured apart (`measure_apart`), in the frames' order, as `observe` would have
        measured it: its set-up when the series has none yet (made on that frame), its record and notes."""
        if self._setup is None:
            self._setup = measured.setup
        elif measured.record is not None and measured.setup != self._setup:
            raise ValueError(f"{measured.record.get('frame')}: measured with another set-up than the series'")
        if measured.record is not None:
            self._records.append(dict(measured.record))
        self.notes.extend(n for n in measured.notes if n not in self.notes)

    def _measure(self, frame: StackedFrame, data: npt.NDArray[np.float32], s: dict[str, Any]) -> dict[str, Any]:
        """One frame's record: the fluxes at the set-up's positions carried onto the frame, and its times."""
        first_xy = np.asarray(s["xy"], dtype=np.float64)
        xy = frame.to_first.inverse().apply(first_xy)
        gain = self._gain(frame)
        meta = frame.meta
        coords = self._coords()
        times = point_times(meta.date_obs, meta.exposure, coords=coords, site=self.settings.site)
        scint = 0.0
        if self.settings.diameter_m > 0 and times and math.isfinite(times[0].airmass) and meta.exposure:
            scint = scintillation(diameter_m=self.settings.diameter_m, airmass=times[0].airmass,
                                  exposure_s=float(meta.exposure),
                                  elevation_m=self.settings.site.elevation if self.settings.site else 0.0)
        m = measure_apertures(data, xy, radius=s["radius"], annulus=tuple(s["annulus"]), gain=gain,
                              read_noise=self.settings.read_noise, saturation=s["saturation"], scint=scint)
        return {
            "frame": "" if frame.path is None else Path(frame.path).name,
            "jd": [t.jd_utc_mid for t in times], "bjd": [t.bjd_tdb for t in times],
            "airmass": [t.airmass for t in times], "fwhm": _finite(frame.quality.fwhm),
            "x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(), "flux": m.flux.tolist(), "err": m.flux_err.tolist(),
            "sky": m.sky.tolist(), "sat": m.saturated.tolist(), "clip": m.clipped.tolist(),
        }

    def _set_up(self, frame: StackedFrame, data: npt.NDArray[np.float32]) -> dict[str, Any] | None:
        """Aperture, annulus, saturation level, and the stars to measure, from the first frame."""
        st = self.settings
        fwhm = frame.quality.fwhm
        if not math.isfinite(fwhm) or fwhm <= 0:
            fwhm = float(np.median(frame.stars.fwhm)) if len(frame.stars) else 3.0
        radius = max(1.0, st.aperture_fwhm * fwhm)
        annulus = (max(radius + 2.0, st.annulus_fwhm[0] * fwhm), max(radius + 6.0, st.annulus_fwhm[1] * fwhm))
        white = frame.meta.white_level
        saturation = st.saturation if st.saturation > 0 else (0.95 * white if white else DEFAULT_SATURATION)
        names: list[str] = []
        first: list[tuple[float, float]] = []
        to_ref = frame.to_first.inverse()  # identity for the first reference; another frame if that one failed
        for t in st.targets:
            if t.x is not None and t.y is not None:
                first.append((t.x - 1.0, t.y - 1.0))
            elif (t.ra is not None and t.dec is not None and self._locate is not None
                  and (where := self._locate("" if frame.path is None else str(frame.path), t.ra, t.dec))):
                mapped = frame.to_first.apply([where])[0]  # the frame's pixels onto the first reference's
                first.append((float(mapped[0]), float(mapped[1])))
            else:
                self.notes.append(f"target {t.name}: given by RA/Dec and no plate solution: not measured")
                continue
            names.append(t.name)
        if not names:
            return None
        targets_xy = np.array(first, dtype=np.float64)
        gain = self._gain(frame)
        tm = measure_apertures(data, to_ref.apply(targets_xy), radius=radius, annulus=annulus, gain=gain,
                               saturation=saturation)
        if st.comparisons:
            comps = np.array([(x - 1.0, y - 1.0) for x, y in st.comparisons], dtype=np.float64).reshape(-1, 2)
        else:
            comps = self._candidates(frame, data, targets_xy, float(np.nanmedian(tm.flux)), radius=radius,
                                     annulus=annulus, gain=gain, saturation=saturation, fwhm=fwhm)
        h, w = data.shape
        return {"version": STATE_VERSION, "targets": names, "xy": np.vstack([targets_xy, comps]).tolist(),
                "n_targets": len(names), "radius": radius, "annulus": list(annulus), "saturation": saturation,
                "fwhm": fwhm, "shape": [h, w], "reference": "" if frame.path is None else Path(frame.path).name,
                "user_comparisons": bool(st.comparisons)}

    def _candidates(self, frame: StackedFrame, data: npt.NDArray[np.float32], targets_xy: F64, target_flux: float,
                    *, radius: float, annulus: tuple[float, float], gain: float, saturation: float,
                    fwhm: float) -> F64:
        """Twice ``max_comparisons`` comparison candidates among the frame's stars, by our aperture, on the
        first reference's pixels (``targets_xy`` are; the frame is the first reference unless measuring that
        one failed)."""
        xy = frame.stars.xy
        m = measure_apertures(data, xy, radius=radius, annulus=annulus, gain=gain, saturation=saturation)
        h, w = data.shape
        # room for the annulus and for a drift of a fifth of the frame over the night
        edge = annulus[1] + 0.05 * min(h, w)
        idx = pick_comparisons(xy, m.flux, m.peak, targets_xy=frame.to_first.inverse().apply(targets_xy),
                               target_flux=target_flux, shape=(h, w),
                               isolation_px=annulus[1] + 2.0 * fwhm, edge_px=edge, saturation=saturation,
                               count=2 * self.settings.max_comparisons)
        if idx.size == 0:
            self.notes.append("no comparison star found (similar brightness, isolated, unsaturated)")
        return np.asarray(frame.to_first.apply(xy[idx]), dtype=np.float64).reshape(-1, 2)

    def _gain(self, frame: StackedFrame) -> float:
        if self.settings.gain > 0:
            return self.settings.gain
        egain = frame.meta.egain
        if egain is not None and egain > 0:
            return float(egain)
        note = "gain unknown (no EGAIN, none configured): 1 e-/ADU assumed for the errors"
        if note not in self.notes:
            self.notes.append(note)
        return 1.0

    def _coords(self) -> list[tuple[float, float] | None]:
        """Each measured target's RA/Dec for its times (its own, else the settings' ``coords``)."""
        by_name = {t.name: t for t in self.settings.targets}
        out: list[tuple[float, float] | None] = []
        for name in self.target_names:
            t = by_name.get(name)
            if t is not None and t.ra is not None and t.dec is not None:
                out.append((t.ra, t.dec))
            else:
                out.append(self.settings.coords)
        return out

    # ------------------------------------------------------------------------------------------- state

    def state(self) -> dict[str, Any]:
        """Everything measured so far, JSON-able (see `restore`)."""
        return {"version": STATE_VERSION, "setup": self._setup, "records": list(self._records),
                "notes": list(self.notes)}

    @classmethod
    def restore(cls, settings: PhotometrySettings, state: Mapping[str, Any] | None, *,
                locate: Locate | None = None) -> PhotometrySeries:
        """A series holding what `state` held (a new one for None or another version)."""
        series = cls(settings, locate=locate)
        if state and state.get("version") == STATE_VERSION:
            series._setup = state.get("setup")
            series._records = [dict(r) for r in state.get("records", [])]
            series.notes = list(state.get("notes", []))
        return series

    # ------------------------------------------------------------------------------------------- results

    def curve(self, target: str) -> LightCurve:
        """The light curve of ``target`` over every frame measured so far."""
        s = self._setup
        if s is None or target not in s["targets"]:
            return LightCurve(target=target, rows=[], comment=f"# {target}: not measured")
        i, nt = s["targets"].index(target), s["n_targets"]
        arrays = _arrays(self._records)
        flux, err, usable = arrays["flux"], arrays["err"], ~(arrays["sat"] | arrays["clip"])
        comps, comps_err, comps_use = flux[:, nt:], err[:, nt:], usable[:, nt:]
        # the user's own comparisons leave only when saturated or mostly unusable, not for their scatter
        stay = weed_comparisons(comps, comps_err, comps_use, saturated=arrays["sat"][:, nt:],
                                max_ratio=math.inf if s["user_comparisons"] else 2.5)
        keep = stay & _best(stay, self.settings.max_comparisons)
        weights = np.nanmedian(np.where(comps_use, comps, np.nan), axis=0) if len(self._records) else np.ones(0)
        rel, rel_err = relative_flux(flux[:, i], err[:, i], comps[:, keep], comps_err[:, keep],
                                     comps_use[:, keep], np.nan_to_num(weights[keep], nan=0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            mag = -2.5 * np.log10(rel)
            mag_err = 2.5 / math.log(10.0) * rel_err / rel
        rows = []
        for f, rec in enumerate(self._records):
            flags = [name for name, on in (("saturated", arrays["sat"][f, i]), ("clipped", arrays["clip"][f, i]),
                                           ("no_comparisons", not (keep & comps_use[f]).any()),
                                           ("comparison_missing", (keep & ~comps_use[f]).any())) if on]
            rows.append({"frame": rec["frame"], "jd_utc_mid": _num(rec["jd"][i], 7), "bjd_tdb": _num(rec["bjd"][i], 7),
                         "airmass": _num(rec["airmass"][i], 4), "rel_flux": _num(rel[f], 7),
                         "rel_flux_err": _num(rel_err[f], 7), "mag_diff": _num(mag[f], 5),
                         "mag_err": _num(mag_err[f], 5), "flags": ";".join(flags),
                         "x": _num(rec["x"][i] + 1.0, 2), "y": _num(rec["y"][i] + 1.0, 2),
                         "flux": _num(flux[f, i], 1), "flux_err": _num(err[f, i], 1), "sky": _num(rec["sky"][i], 1),
                         "fwhm": _num(rec["fwhm"], 2), "comparisons": int(keep.sum())})
        names = self._comparison_names(keep)
        return LightCurve(target=target, rows=rows, comment=self._comment(target, names, int((~stay).sum())),
                          comparisons=names)

    def _comparison_names(self, keep: npt.NDArray[np.bool_]) -> tuple[str, ...]:
        assert self._setup is not None
        xy = np.asarray(self._setup["xy"], dtype=np.float64)[self._setup["n_targets"]:]
        return tuple(f"C{j + 1}@{x + 1:.1f},{y + 1:.1f}" for j, (x, y) in enumerate(xy) if keep[j])

    def _comment(self, target: str, names: Sequence[str], dropped: int) -> str:
        s = self._setup
        assert s is not None
        i = s["targets"].index(target)
        x, y = s["xy"][i]
        how = "given" if s["user_comparisons"] else "automatic"
        a_in, a_out = s["annulus"]
        return (f"# target {target} at {x + 1:.2f},{y + 1:.2f} (1-based, on {s['reference'] or 'the first frame'}); "
                f"aperture r={s['radius']:.2f} px ({self.settings.aperture_fwhm:g} x FWHM {s['fwhm']:.2f} px), "
                f"sky annulus {a_in:.2f}-{a_out:.2f} px; {how} comparisons ({len(names)} of "
                f"{len(s['xy']) - s['n_targets']} candidates, {dropped} dropped: saturated, clipped or scattering): "
                f"{' '.join(names) or 'none'}")


def measure_apart(settings: PhotometrySettings, setup: dict[str, Any] | None, frame: StackedFrame, *,
                  locate: Locate | None = None) -> FrameMeasurement:
    """`PhotometrySeries.observe` of one frame alone, with the series' ``setup`` (None: set up on this frame, as
    a series sets up on its first): what `PhotometrySeries.add` takes, where the series is. A failure is
    returned (``error``), not raised: the daemon's observer leaves such a frame out of the curves, never out of
    the stack."""
    series = PhotometrySeries.restore(settings, {"version": STATE_VERSION, "setup": setup}, locate=locate)
    try:
        series.observe(frame)
    except Exception as err:  # any failure of one frame's measuring leaves that frame out
        return FrameMeasurement(setup=series.setup, record=None, notes=tuple(series.notes),
                                error=f"{type(err).__name__}: {err}".splitlines()[0])
    return FrameMeasurement(setup=series.setup, record=series._records[-1] if series._records else None,
                            notes=tuple(series.notes))


def header_locate(path: str, ra: float, dec: float) -> tuple[float, float] | None:
    """The 0-based pixel position of RA/Dec on a frame by the WCS in its header (None without one)."""
    try:
        wcs = wcs_from_cards(read_fits_header(path))
    except (AstrodError, OSError, ValueError):
        return None
    if not wcs.has_celestial:
        return None
    x, y = wcs.world_to_pixel_values(ra, dec)
    return float(x), float(y)


def _best(keep: npt.NDArray[np.bool_], count: int) -> npt.NDArray[np.bool_]:
    """The first ``count`` of the kept comparisons (candidates come closest in brightness first)."""
    out = np.zeros_like(keep)
    out[np.flatnonzero(keep)[:count]] = True
    return out


def _arrays(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The per-frame records as (frames, stars) arrays."""
    if not records:
        z = np.empty((0, 0))
        return {"flux": z, "err": z, "sat": z.astype(bool), "clip": z.astype(bool)}
    return {"flux": np.array([r["flux"] for r in records], dtype=np.float64),
            "err": np.array([r["err"] for r in records], dtype=np.float64),
            "sat": np.array([r["sat"] for r in records], dtype=bool),
            "clip": np.array([r["clip"] for r in records], dtype=bool)}


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _num(value: Any, digits: int) -> float | None:
    if value is None:
        return None
    v = float(value)
    return round(v, digits) if math.isfinite(v) else None


def settings_from_config(config: Config) -> PhotometrySettings:
    """The photometry settings of ``[photometry]`` and ``[site]``."""
    p, site = config.photometry, config.site
    targets = tuple(Target(t.name, x=t.x, y=t.y, ra=t.ra, dec=t.dec) for t in p.targets)
    where = None
    if site.latitude is not None and site.longitude is not None:
        where = Site(site.latitude, site.longitude, site.elevation)
    return PhotometrySettings(targets=targets, aperture_fwhm=p.aperture_fwhm,
                              annulus_fwhm=(p.annulus_inner_fwhm, p.annulus_outer_fwhm),
                              max_comparisons=p.max_comparisons, gain=p.gain, read_noise=p.read_noise,
                              saturation=p.saturation, site=where, diameter_m=p.telescope_diameter_m)
