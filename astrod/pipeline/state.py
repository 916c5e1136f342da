"""A live stack's session state that is not pixels (the frames table, the figures the gates judge by, the
reference, the re-pick candidates) and its checkpoint: `save_state` writes it with the stacker's state,
`load_state` reads it back, so that a session resumed from its checkpoint stacks the next frames bit for bit
as an uninterrupted one would."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from astrod import __version__
from astrod.core.quality import FrameQuality
from astrod.core.quality_gates import FrameFigures
from astrod.core.register import ReferenceAsterisms, build_reference
from astrod.core.stack import Stacker
from astrod.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from astrod.model import FrameMeta, Transform

FloatArray = npt.NDArray[np.float32]
Metric = float | int | str | None

# Where a stacked frame points once the session's reference is solved (`astrod.pipeline.solving.rows_with_sky`):
# its centre RA/Dec (degrees), the position angle of its up direction (° east of north) and its scale ("/px).
SKY_COLUMNS = ("ra", "dec", "sky_rotation_deg", "scale_arcsec")
# ``registration``: how the frame was registered: ``stars`` (matched), ``phase`` (correlation), ``wcs`` (through
# its own plate solution and the reference's).
TABLE_COLUMNS = ("path", "status", "reason", "dx", "dy", "rotation_deg", "scale", "residual_px", "registration",
                 "stars", "fwhm", "fwhm_err", "eccentricity", "eccentricity_err", "shape_stars", "background",
                 "noise", "transparency", "weight", "date_obs", *SKY_COLUMNS)
# The figures the quality gates judge a frame by, per accepted frame, as the checkpoint stores them.
_ACCEPTED_COLUMNS = ("fwhm", "fwhm_err", "eccentricity", "eccentricity_err", "shape_stars", "star_count",
                     "background", "noise", "hfr", "transparency")
STATE_FORMAT = 1


def utc_stamp(when: datetime | None) -> str | None:
    """A time as the frames table writes it: UTC, ISO 8601 to the millisecond (None stays None)."""
    return None if when is None else when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


@dataclass(frozen=True, slots=True)
class FrameResult:
    """What happened to one frame: ``stacked`` or ``rejected`` (with a one-line ``reason``), and its figures.

    ``metrics`` holds the frames-table columns (``dx dy rotation_deg scale residual_px stars fwhm eccentricity
    background noise weight``; None where unknown) and the time of each stage in ms (``ms_<stage>``).
    """

    path: Path | None
    status: Literal["stacked", "rejected"]
    reason: str | None
    metrics: Mapping[str, Metric]

    def row(self) -> dict[str, object]:
        """The frames-table row: path, status, reason and the figures, in `TABLE_COLUMNS` order."""
        out: dict[str, object] = {"path": "" if self.path is None else str(self.path), "status": self.status,
                                  "reason": self.reason}
        for name in TABLE_COLUMNS[3:]:
            out[name] = self.metrics.get(name)
        return out



@dataclass(frozen=True, slots=True, eq=False)
class Reference:
    """The session reference: its stars (matching side precomputed), its figures and grid.

    ``small`` is the image phase correlation uses: the first reference's, which ``small_grid`` maps (its
    frame's pixels) onto this reference's grid; identity until the reference is re-picked."""

    id: int
    path: str
    asterisms: ReferenceAsterisms
    flux: npt.NDArray[np.float64]
    small: FloatArray | None
    frame_shape: tuple[int, int]
    stack_shape: tuple[int, ...]
    background: float
    noise: float
    fwhm: float
    small_grid: Transform = field(default_factory=Transform.identity)


@dataclass(frozen=True, slots=True, eq=False)
class Candidate:
    """A stacked frame the reference may be re-picked from: what becoming the reference needs (its stars,
    figures, weight and transform onto the reference of the time) and where its traces are (its row in the
    frames table). A few hundred stars: a few KB, kept only until the re-pick."""

    path: str
    row: int
    transform: Transform
    xy: npt.NDArray[np.float64]
    flux: npt.NDArray[np.float64]
    frame_shape: tuple[int, int]
    weight: float
    figures: FrameFigures  # what the gates judged it by

    @property
    def fwhm(self) -> float:
        return self.figures.quality.fwhm

    @property
    def stars(self) -> int:
        return self.figures.quality.star_count

    @property
    def score(self) -> float:
        """Stars detected per px of FWHM, higher is better (-inf when the FWHM is unknown)."""
        if not (math.isfinite(self.fwhm) and self.fwhm > 0.0):
            return -math.inf
        return self.stars / self.fwhm


@dataclass(slots=True)
class Session:
    """Mutable per-session bookkeeping that is not pixels (all of it goes into the checkpoint)."""

    rows: list[dict[str, object]] = field(default_factory=list)
    accepted: list[FrameFigures] = field(default_factory=list)  # what the gates judge the next frame by
    cached: list[dict[str, Any]] = field(default_factory=list)  # file, offset, weight per stacked frame
    masters: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_stacked: int = 0
    n_rejected: int = 0
    total_exposure: float = 0.0
    first_meta: dict[str, Any] = field(default_factory=dict)
    date_first: str | None = None
    date_last: str | None = None
    candidates: list[Candidate] = field(default_factory=list)  # stacked frames until the reference re-pick
    repicked: bool = False  # the re-pick is done (or was not needed): candidates are no longer kept
    stale_cache: list[str] = field(default_factory=list)  # cached files re-warped away, deleted at the next save

    def count_stacked(self, meta: FrameMeta, *, masters: Sequence[str], notes: Sequence[str]) -> None:
        """Count a frame just stacked: exposure, the masters and notes it brings, the session's first frame's
        description and the span of observation times."""
        self.n_stacked += 1
        self.total_exposure += float(meta.exposure or 0.0)
        self.masters.extend(name for name in dict.fromkeys(masters) if name not in self.masters)
        self.notes.extend(note for note in dict.fromkeys(notes) if note not in self.notes)
        if not self.first_meta:
            self.first_meta = {k: getattr(meta, k) for k in ("object", "filter", "camera", "gain", "offset",
                                                             "set_temperature", "exposure")}
            self.first_meta["binning"] = list(meta.binning)
        stamp = utc_stamp(meta.date_obs)
        if stamp is not None:
            self.date_first = stamp if self.date_first is None else min(self.date_first, stamp)
            self.date_last = stamp if self.date_last is None else max(self.date_last, stamp)

    def forget_rejected(self, path: Path | None) -> bool:
        """Take back the rejection of the frame just processed (``path``: the last row), to be judged again later
        (its registration was cut short); whether there was one."""
        if not self.rows or self.rows[-1].get("status") != "rejected" or self.rows[-1].get("path") != str(path or ""):
            return False
        self.rows.pop()
        self.n_rejected -= 1
        return True



@dataclass(frozen=True, slots=True, eq=False)
class Restored:
    """What `load_state` reads back: the stacker and reference (None before the first frame), the session's
    bookkeeping and the caller's ``extra``."""

    stacker: Stacker | None
    reference: Reference | None
    session: Session
    extra: dict[str, Any]


def save_state(path: Path, *, stacker: Stacker | None, reference: Reference | None, session: Session,
               settings: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> None:
    """Write the whole session state to ``path`` atomically (see `load_state`)."""
    arrays: dict[str, npt.NDArray[Any]] = {}
    ref_meta: dict[str, Any] | None = None
    if stacker is not None and reference is not None:
        for key, value in stacker.state().items():
            arrays[f"stacker_{key}"] = value
        ref = reference
        arrays["ref_xy"] = ref.asterisms.xy
        arrays["ref_flux"] = ref.flux
        if ref.small is not None:
            arrays["ref_small"] = ref.small
        ref_meta = {"id": ref.id, "path": ref.path, "frame_shape": list(ref.frame_shape),
                    "stack_shape": list(ref.stack_shape), "background": ref.background, "noise": ref.noise,
                    "fwhm": ref.fwhm, "small_grid": [list(r) for r in ref.small_grid.matrix]}
    s = session
    arrays["accepted"] = np.array([_accepted_row(a) for a in s.accepted],
                                  dtype=np.float64).reshape(-1, len(_ACCEPTED_COLUMNS))
    meta = {"format": STATE_FORMAT, "astrod": __version__, "settings": _jsonable(settings),
            "reference": ref_meta, "rows": _jsonable(s.rows), "cached": _jsonable(s.cached),
            "masters": s.masters, "notes": s.notes, "n_stacked": s.n_stacked, "n_rejected": s.n_rejected,
            "total_exposure": s.total_exposure, "first_meta": _jsonable(s.first_meta),
            "date_first": s.date_first, "date_last": s.date_last,
            "extra": _jsonable(dict(extra) if extra is not None else {})}
    meta["repick"] = _save_repick(s, arrays)
    save_checkpoint(path, arrays, meta)


def load_state(path: Path) -> Restored:
    """The state `save_state` wrote to ``path``; raises `CheckpointError` for another format or a state that
    is incomplete."""
    arrays, meta = load_checkpoint(path)
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: live-stack state format {meta.get('format')} is not {STATE_FORMAT}")
    try:
        stacker, ref = None, None
        ref_meta = meta["reference"]
        if ref_meta is not None:
            state = {k[len("stacker_"):]: v for k, v in arrays.items() if k.startswith("stacker_")}
            stacker = Stacker.from_state(state, copy=False)
            xy = arrays["ref_xy"]
            ref = Reference(
                id=int(ref_meta["id"]), path=str(ref_meta["path"]),
                asterisms=build_reference(xy, max_stars=max(1, xy.shape[0])), flux=arrays["ref_flux"],
                small=arrays.get("ref_small"), frame_shape=_shape2(ref_meta["frame_shape"]),
                stack_shape=tuple(int(n) for n in ref_meta["stack_shape"]),
                background=float(ref_meta["background"]), noise=float(ref_meta["noise"]),
                fwhm=float(ref_meta["fwhm"]),
                small_grid=Transform.from_array(ref_meta.get("small_grid", np.eye(3))))
        s = Session()
        s.rows = list(meta["rows"])
        s.accepted = [_accepted_figures(row) for row in np.asarray(arrays["accepted"], dtype=np.float64)]
        s.cached = list(meta["cached"])
        s.masters = list(meta["masters"])
        s.notes = list(meta["notes"])
        s.n_stacked = int(meta["n_stacked"])
        s.n_rejected = int(meta["n_rejected"])
        s.total_exposure = float(meta["total_exposure"])
        s.first_meta = dict(meta["first_meta"])
        s.date_first, s.date_last = meta["date_first"], meta["date_last"]
        extra = dict(meta["extra"])
        _load_repick(s, meta.get("repick"), arrays, has_reference=ref is not None)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: incomplete live-stack state: {err}") from err
    return Restored(stacker=stacker, reference=ref, session=s, extra=extra)


def _save_repick(s: Session, arrays: dict[str, npt.NDArray[Any]]) -> dict[str, Any]:
    """The re-pick state for the checkpoint: its candidates' figures (their stars go into ``arrays``)."""
    candidates = []
    for i, c in enumerate(s.candidates):
        arrays[f"repick_xy_{i}"] = c.xy
        arrays[f"repick_flux_{i}"] = c.flux
        candidates.append({"path": c.path, "row": c.row, "transform": [list(r) for r in c.transform.matrix],
                           "frame_shape": list(c.frame_shape), "weight": c.weight,
                           "figures": _accepted_row(c.figures)})
    return {"done": s.repicked, "candidates": candidates}


def _load_repick(s: Session, state: Mapping[str, Any] | None, arrays: Mapping[str, npt.NDArray[Any]], *,
                 has_reference: bool) -> None:
    """Restore what `_save_repick` saved; a checkpoint from before re-picks existed has no candidates, so
    a session that has its reference already keeps it."""
    if state is None:
        s.repicked = has_reference
        return
    s.repicked = bool(state["done"])
    s.candidates = [
        Candidate(path=str(c["path"]), row=int(c["row"]), transform=Transform.from_array(c["transform"]),
                  xy=np.asarray(arrays[f"repick_xy_{i}"], dtype=np.float64).reshape(-1, 2),
                  flux=np.asarray(arrays[f"repick_flux_{i}"], dtype=np.float64).reshape(-1),
                  frame_shape=_shape2(c["frame_shape"]), weight=float(c["weight"]),
                  figures=_accepted_figures(np.asarray(c["figures"], dtype=np.float64)))
        for i, c in enumerate(state["candidates"])]


def _accepted_row(figures: FrameFigures) -> list[float]:
    q = figures.quality
    return [q.fwhm, q.fwhm_err, q.eccentricity, q.eccentricity_err, float(q.shape_stars), float(q.star_count),
            q.background, q.noise, q.hfr, figures.transparency]


def _accepted_figures(row: npt.NDArray[np.float64]) -> FrameFigures:
    """An accepted frame's figures from its checkpoint row (`_ACCEPTED_COLUMNS`)."""
    if row.size != len(_ACCEPTED_COLUMNS):
        raise ValueError(f"accepted-frame row of {row.size} figures, expected {len(_ACCEPTED_COLUMNS)}")
    v = dict(zip(_ACCEPTED_COLUMNS, row.tolist(), strict=True))
    q = FrameQuality(star_count=int(v["star_count"]), fwhm=v["fwhm"], hfr=v["hfr"], eccentricity=v["eccentricity"],
                     background=v["background"], noise=v["noise"], fwhm_err=v["fwhm_err"],
                     eccentricity_err=v["eccentricity_err"], shape_stars=int(v["shape_stars"]))
    return FrameFigures(q, v["transparency"])



def _shape2(values: Sequence[Any]) -> tuple[int, int]:
    return int(values[0]), int(values[1])



def _jsonable(value: Any) -> Any:
    """Plain JSON types (numpy scalars and paths converted; floats kept exactly)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
