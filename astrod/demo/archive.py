"""A seeded synthetic archive of nights for ``astrod reprocess`` (its tests and benchmark): 3 nights × 2 targets ×
2 filters through one sensor, with its calibration frames."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from astrod.demo import synth

NIGHTS = (datetime(2024, 10, 5, 21, 0, tzinfo=UTC), datetime(2024, 10, 6, 21, 0, tzinfo=UTC),
          datetime(2024, 10, 7, 21, 0, tzinfo=UTC))
TARGETS = ("M 31", "NGC 7000")
FILTERS = ("L", "R")


@dataclass(frozen=True, slots=True)
class Archive:
    root: Path
    lights: dict[tuple[str, str, str], list[Path]]  # (night, target, filter) -> lights in order
    calibration: Path
    # (night, target, filter) -> the session's stars on its first frame (the truth), 0-based pixels
    catalogues: dict[tuple[str, str, str], synth.Catalogue] = field(default_factory=dict)


def make_archive(root: Path, *, frames: int = 6, size: int = 128, seed: int = 190) -> Archive:
    """``frames`` lights of ``size`` × ``size`` px per session under ``root/lights/<night>/<target>/``, and a
    cloudy one more (rejected by the gates) in each night's first session; calibration frames (bias, dark,
    flats per filter, dark flats) under ``root/calib``."""
    sensor = synth.Sensor(width=size, height=size, seed=seed)
    lights: dict[tuple[str, str, str], list[Path]] = {}
    catalogues: dict[tuple[str, str, str], synth.Catalogue] = {}
    for n, start in enumerate(NIGHTS):
        for t, target in enumerate(TARGETS):
            for f, band in enumerate(FILTERS):
                s = seed + 100 * n + 10 * t + f
                session = synth.make_session(n_frames=frames, width=size, height=size, seed=s, sensor=sensor,
                                             max_shift=6.0, max_rotation_deg=1.0, n_stars=70, flux_min=2e4,
                                             flux_max=1e6, fwhm=2.5, fwhm_jitter=0.15)
                folder = root / "lights" / start.date().isoformat() / target.replace(" ", "")
                begin = start + timedelta(minutes=40 * t + 20 * f)
                paths = session.write(folder, object=target, filter=band, start=begin)
                if f == 0 and t == 0:  # a cloudy frame at the end of the night's first session
                    scene, _ = synth.render_stars(width=size, height=size, catalogue=session.catalogue, sky=100.0)
                    cloudy = sensor.light(synth.cloudy(scene, transmission=0.2, extra_sky=600.0), exposure=60.0,
                                          temperature=-10.0, seed=s + 7)
                    when = begin + timedelta(seconds=frames * 62.0)
                    paths.append(synth.write_fits(folder / f"zz_cloudy_{band}.fits", cloudy, object=target,
                                                  filter=band, date_obs=when))
                lights[(start.date().isoformat(), target, band)] = paths
                catalogues[(start.date().isoformat(), target, band)] = session.catalogue
    calib = root / "calib"
    for band in FILTERS:
        synth.write_calibration_set(calib / band, sensor, seed=seed + ord(band), n=3, filter=band)
    return Archive(root=root, lights=lights, calibration=calib, catalogues=catalogues)
