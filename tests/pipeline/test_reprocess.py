"""Reprocess planning: an archive's frames sorted into the library's, the daemon's sessions (named and placed
as the daemon names and places them) and the rejected, with the daemon's own ingest and routing rules."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np

from astrod.demo import synth
from astrod.pipeline.ingest import ReadOptions
from astrod.pipeline.photometry import PhotometrySettings, Target
from astrod.pipeline.reprocess import ArchivePlan, plan_archive, session_digest
from astrod.pipeline.settings import PipelineSettings

OPTIONS = ReadOptions.of({}, ())
NIGHT = datetime(2024, 10, 5, 21, 0, tzinfo=UTC)
PIXELS = np.full((32, 32), 1000.0, dtype=np.float32)


def _light(root: Path, name: str, minutes: float, **kw: object) -> Path:
    return synth.write_fits(root / name, PIXELS, date_obs=NIGHT + timedelta(minutes=minutes), **kw)  # type: ignore[arg-type]


def _plan(paths: list[Path], out: Path, **kw: object) -> ArchivePlan:
    return plan_archive(paths, options=OPTIONS, output=out, now=datetime(2026, 1, 1, tzinfo=UTC),
                        mtimes={p: p.stat().st_mtime for p in paths}, radius_arcmin=30.0, longitude=None,
                        **kw)  # type: ignore[arg-type]


def test_plan_sorts_an_archive_as_the_daemon_routes_it(tmp_path: Path) -> None:
    """Lights grouped by night, target, filter and camera settings in DATE-OBS order; a light without OBJECT
    joins the session pointing near it; a second camera setting of the same target and filter gets the
    daemon's ``_2`` folder; calibration frames go to the library; a light with no target is rejected."""
    a = tmp_path / "a"
    paths = [_light(a, "m31_L_2.fits", 2, object="M 31", ra=10.68, dec=41.27),
             _light(a, "m31_L_1.fits", 1, object="M 31", ra=10.68, dec=41.27),
             _light(a, "noname.fits", 3, object=None, ra=10.69, dec=41.27),
             _light(a, "m31_R.fits", 4, object="M 31", filter="R"),
             _light(a, "m31_L_gain.fits", 5, object="M 31", gain=200),
             _light(a, "next_night.fits", 24 * 60, object="M 31"),
             _light(a, "lost.fits", 6, object=None),
             synth.write_fits(a / "dark.fits", PIXELS, kind="dark", object=None)]
    plan = _plan(sorted(paths), tmp_path / "out")
    assert plan.calibration == (a / "dark.fits",)
    assert [p.name for p, _ in plan.rejected] == ["lost.fits"]
    assert "cannot tell which target" in plan.rejected[0][1]
    by_folder = {str(s.output.relative_to(tmp_path / "out")): [p.name for p in s.frames] for s in plan.sessions}
    assert by_folder == {"2024-10-05/M_31/L": ["m31_L_1.fits", "m31_L_2.fits", "noname.fits"],
                         "2024-10-05/M_31/R": ["m31_R.fits"],
                         "2024-10-05/M_31/L_1": ["m31_L_gain.fits"],
                         "2024-10-06/M_31/L": ["next_night.fits"]}
    first = plan.sessions[0]
    assert first.id.startswith("2024-10-05_M_31_L_") and first.pointing is not None
    assert plan.n_lights == 6
    later = _plan(sorted(paths), tmp_path / "out", since=date(2024, 10, 6))
    assert [s.output.name for s in later.sessions] == ["L"] and later.sessions[0].key.night == date(2024, 10, 6)


def test_session_digest_follows_its_frames_masters_and_settings(tmp_path: Path) -> None:
    """A session's digest changes with one of its frames' stamps, the masters, the settings, the light
    curves' targets and settings or the plate solver's (solving turned on, a longer time limit), and not with
    another session's frames."""
    paths = [_light(tmp_path, "a.fits", 1, object="A"), _light(tmp_path, "b.fits", 2, object="B")]
    plan = _plan(paths, tmp_path / "out")
    a, b = plan.sessions
    stamps = {p: "1:x" for p in paths}
    settings = PipelineSettings(final_rejection="winsorized")

    def digest(session: object, **kw: object) -> str:
        args: dict[str, object] = {"stamps": stamps, "masters": "m", "settings": settings, "options": OPTIONS,
                                   "formats": ("fits",)}
        args.update(kw)
        return session_digest(session, **args)  # type: ignore[arg-type]

    changed = {**stamps, paths[0]: "1:y"}
    assert digest(a, stamps=changed) != digest(a)
    assert digest(b, stamps=changed) == digest(b)
    assert digest(a, masters="n") != digest(a)
    assert digest(a, settings=PipelineSettings(final_rejection="sigma")) != digest(a)
    target = PhotometrySettings(targets=(Target("T", x=10.0, y=12.0),))
    assert digest(a, photometry=target) != digest(a)
    assert digest(a, photometry=PhotometrySettings(targets=(Target("T", x=10.0, y=13.0),))) != digest(
        a, photometry=target)
    assert digest(a, photometry=replace(target, aperture_fwhm=2.0)) != digest(a, photometry=target)
    assert digest(a, photometry=target) == digest(a, photometry=PhotometrySettings(targets=(Target("T", x=10.0,
                                                                                                    y=12.0),)))
    solve = {"timeout_s": 30.0, "blind_timeout_s": 120.0, "index_dirs": ["/idx"]}
    assert digest(a, solve=solve) != digest(a)
    assert digest(a, solve={**solve, "timeout_s": 60.0}) != digest(a, solve=solve)
    assert digest(a, solve=dict(solve)) == digest(a, solve=solve)
