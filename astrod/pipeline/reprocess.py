"""Reprocess planning: which frames of an archive are calibration frames for the library, which lights belong
to which session, and where each session's products go — the daemon's own decisions (`ingest`, `route`, the
daemon's session ids and folders), taken over a whole archive at once instead of frame by frame as files
arrive. Pure decisions on headers; the Dask client (`astrod.service.reprocess`) carries them out.

An archive has no "open session" in the daemon's sense: the sessions of a light's night play that part (a
light without OBJECT joins the pointing of a session of its night), and one session per key (the daemon may
split a key when a session closed on idle time in the middle of a night; an archive cannot know that).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from astrod import __version__
from astrod.library.keys import night_of
from astrod.pipeline.ingest import Calibration, Ignored, Light, ReadOptions, Rejected, ingest
from astrod.pipeline.photometry import PhotometrySettings
from astrod.pipeline.router import route
from astrod.pipeline.sessions import Pointing, SessionKey, slug
from astrod.pipeline.settings import PipelineSettings


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """One session to stack: its daemon id, label, key, first pointing, output folder and lights in order."""

    id: str
    label: str
    key: SessionKey
    pointing: Pointing | None
    output: Path
    frames: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class ArchivePlan:
    """What an archive holds: calibration frames, sessions, and the files left out with their reasons."""

    calibration: tuple[Path, ...]
    sessions: tuple[SessionPlan, ...]
    rejected: tuple[tuple[Path, str], ...]
    ignored: tuple[tuple[Path, str], ...]
    notes: tuple[str, ...] = ()

    @property
    def n_lights(self) -> int:
        return sum(len(s.frames) for s in self.sessions)


@dataclass(slots=True)
class _Open:
    key: SessionKey
    pointing: Pointing | None
    lights: list[tuple[datetime, Path]] = field(default_factory=list)


def plan_archive(paths: Sequence[Path], *, options: ReadOptions, output: Path, now: datetime,
                 mtimes: Mapping[Path, float], radius_arcmin: float, longitude: float | None,
                 since: date | None = None) -> ArchivePlan:
    """The plan of an archive's frame files (``mtimes``: each file's modification time, which names the night
    of a light without a plausible DATE-OBS, as the daemon does). Lights are routed in DATE-OBS order so
    that a light without OBJECT meets the pointings of the sessions its night opened before it.
    ``since``: sessions of earlier nights are left out."""
    calibration: list[Path] = []
    rejected: list[tuple[Path, str]] = []
    ignored: list[tuple[Path, str]] = []
    notes: list[str] = []
    lights: list[tuple[datetime, Path, Light]] = []
    for path in paths:
        found = ingest(path, mtime=mtimes[path], now=now, options=options)
        if isinstance(found, Rejected):
            rejected.append((path, found.reason))
        elif isinstance(found, Ignored):
            ignored.append((path, found.reason))
        elif isinstance(found, Calibration):
            calibration.append(path)
        else:
            assert found.meta.date_obs is not None  # ingest dates every light
            if found.date_note is not None:
                notes.append(found.date_note)
            lights.append((found.meta.date_obs, path, found))
    lights.sort(key=lambda item: (item[0], str(item[1])))
    opened: dict[SessionKey, _Open] = {}
    for when, path, light in lights:
        night = night_of(when, longitude=longitude)
        pointings = [o.pointing for o in opened.values() if o.pointing is not None and o.key.night == night]
        decision = route(path, light.meta, pointings=pointings, radius_arcmin=radius_arcmin, longitude=longitude)
        if isinstance(decision, Rejected):
            rejected.append((path, decision.reason))
            continue
        session = opened.get(decision.key)
        if session is None:
            session = opened[decision.key] = _Open(decision.key, Pointing.of(decision.key, light.meta))
        session.lights.append((when, path))
    sessions = _named(list(opened.values()), output)
    if since is not None:
        sessions = [s for s in sessions if s.key.night >= since]
    return ArchivePlan(calibration=tuple(calibration), sessions=tuple(sessions), rejected=tuple(rejected),
                       ignored=tuple(ignored), notes=tuple(notes))


def _named(opened: list[_Open], output: Path) -> list[SessionPlan]:
    """Session ids and folders as the daemon names them (`Daemon._session_for`): ``<night>_<target>_<filter>_
    <settings tag>`` and ``<output>/<night>/<target>/<filter>``, a ``_2``, ``_3`` ... when a name is taken."""
    taken_ids: set[str] = set()
    taken_folders: set[Path] = set()
    plans: list[SessionPlan] = []
    for o in sorted(opened, key=lambda o: (o.lights[0][0], o.key.target, o.key.filter or "")):
        key = o.key
        base = f"{key.night.isoformat()}_{slug(key.target)}_{slug(key.filter or 'nofilter')}_{key.settings_tag()}"
        n, sid = 1, base
        while sid in taken_ids:
            n += 1
            sid = f"{base}_{n}"
        folder = output / key.night.isoformat() / slug(key.target) / slug(key.filter or "nofilter")
        if n > 1 or folder in taken_folders:
            folder = folder.with_name(f"{folder.name}_{n}")
        taken_ids.add(sid)
        taken_folders.add(folder)
        plans.append(SessionPlan(id=sid, label=f"{key.target}/{key.filter or 'no filter'}", key=key,
                                 pointing=o.pointing, output=folder, frames=tuple(p for _, p in o.lights)))
    return plans


def session_digest(plan: SessionPlan, *, stamps: Mapping[Path, str], masters: str,
                   settings: PipelineSettings, options: ReadOptions, formats: Iterable[str],
                   photometry: PhotometrySettings | None = None, solve: Mapping[str, object] | None = None) -> str:
    """What a session's products are made of: astrod's version, the settings, the read options, the masters
    (``masters``: a digest of the library), the light curves' targets and settings, the plate solver's settings
    (``solve``; None: the reference is not solved, solving being off or the solver missing), and each frame's
    path and content stamp in order. Equal digests: the products already written are those a new run would
    write."""
    text = json.dumps({
        "version": __version__, "settings": settings.as_dict(), "rename": dict(options.rename),
        "photometry": None if photometry is None else dataclasses.asdict(photometry),
        "solve": None if solve is None else dict(solve),
        "rules": [repr(r) for r in options.rules], "masters": masters, "formats": list(formats),
        "key": plan.key.as_dict(), "output": str(plan.output),
        "frames": [[str(p), stamps[p]] for p in plan.frames],
    }, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

