"""Router: which session a light belongs to — the second room of a frame's way (ingest -> router -> session).

A pure decision on the light's metadata and the sessions open now: the session key (night, target, filter,
camera settings), or a rejection when the light names no target and points nowhere known.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from astrod.model import FrameMeta
from astrod.pipeline.ingest import Rejected
from astrod.pipeline.sessions import Pointing, SessionKey, session_key, target_of


@dataclass(frozen=True, slots=True)
class Route:
    key: SessionKey


def route(path: Path, meta: FrameMeta, *, pointings: Iterable[Pointing], radius_arcmin: float,
          longitude: float | None) -> Route | Rejected:
    """The session key of a light (its DATE-OBS already set by ingest), or why it has none."""
    target = target_of(meta, pointings=pointings, radius_arcmin=radius_arcmin)
    if target is None:
        return Rejected(f"{path}: no OBJECT and no RA/DEC: cannot tell which target it belongs to", kind="light")
    try:
        return Route(session_key(meta, target=target, longitude=longitude))
    except (ValueError, OverflowError) as err:
        return Rejected(f"{path}: cannot tell the night of DATE-OBS {meta.date_obs}: {err}", kind="light")
