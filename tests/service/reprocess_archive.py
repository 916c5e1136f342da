"""A seeded synthetic archive for the reprocess tests: 3 nights × 2 targets × 2 filters through one sensor,
with its calibration frames, small frames (fast tests)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from astrod.demo import synth

SIZE = 128
NIGHTS = (datetime(2024, 10, 5, 21, 0, tzinfo=UTC), datetime(2024, 10, 6, 21, 0, tzinfo=UTC),
          datetime(2024, 10, 7, 21, 0, tzinfo=UTC))
TARGETS = ("M 31", "NGC 7000")
FILTERS = ("L", "R")


@dataclass(frozen=True, slots=True)
class Archive:
    root: Path
    lights: dict[tuple[str, str, str], list[Path]]  # (night, target, filter) -> lights in order
    calibration: Path


def make_archive(root: Path, *, frames: int = 6, seed: int = 190) -> Archive:
    """Lights under ``root/lights/<night>/<target>/``, calibration frames under ``root/calib``. The first
    frame of each session is the most blurred (``fwhm`` grows down the list of seeds), so sessions of more
    than five frames re-pick their reference; one frame per night is cloudy (rejected by the gates)."""
    sensor = synth.Sensor(width=SIZE, height=SIZE, seed=seed)
    lights: dict[tuple[str, str, str], list[Path]] = {}
    for n, start in enumerate(NIGHTS):
        for t, target in enumerate(TARGETS):
            for f, band in enumerate(FILTERS):
                s = seed + 100 * n + 10 * t + f
                session = synth.make_session(n_frames=frames, width=SIZE, height=SIZE, seed=s, sensor=sensor,
                                             max_shift=6.0, max_rotation_deg=1.0, n_stars=70, flux_min=2e4,
                                             flux_max=1e6, fwhm=2.5, fwhm_jitter=0.15)
                folder = root / "lights" / start.date().isoformat() / target.replace(" ", "")
                begin = start + timedelta(minutes=40 * t + 20 * f)
                paths = session.write(folder, object=target, filter=band, start=begin)
                if f == 0 and t == 0:  # a cloudy frame at the end of the night's first session
                    scene, _ = synth.render_stars(width=SIZE, height=SIZE, catalogue=session.catalogue, sky=100.0)
                    cloudy = sensor.light(synth.cloudy(scene, transmission=0.2, extra_sky=600.0), exposure=60.0,
                                          temperature=-10.0, seed=s + 7)
                    when = begin + timedelta(seconds=frames * 62.0)
                    paths.append(synth.write_fits(folder / f"zz_cloudy_{band}.fits", cloudy, object=target,
                                                  filter=band, date_obs=when))
                lights[(start.date().isoformat(), target, band)] = paths
    calib = root / "calib"
    for band in FILTERS:
        synth.write_calibration_set(calib / band, sensor, seed=seed + ord(band), n=3, filter=band)
    return Archive(root=root, lights=lights, calibration=calib)
