"""A session's light curves in the daemon: the `PhotometrySeries` that watches the session's live stack, and
its files in the session's output folder (``lightcurve_<target>.csv``, ``lightcurve_<target>.png``).

The CSV is rewritten whole (atomically) after each stacked frame from the series' measurements, which ride in
the session's checkpoint: after a crash the session resumes from its checkpoint with the measurements of the
frames it holds, the frames after it are stacked and measured again, and the next rewrite has every frame
once. (Rewriting rather than appending also lets a comparison star that turns out saturated or variable leave
every row, not only the later ones; a night of 600 rows is 60 KB.)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from astrod.config import Config
from astrod.io.lightcurves import write_lightcurve, write_plot
from astrod.pipeline.photometry import (
    CSV_COLUMNS,
    PhotometrySeries,
    PhotometrySettings,
    header_locate,
    settings_from_config,
)
from astrod.pipeline.photometry_plot import plot_png
from astrod.pipeline.settings import StackedFrame

STATE_KEY = "photometry"  # its key in the checkpoint's extra
log = structlog.get_logger()


def photometry_for(config: Config) -> PhotometrySettings | None:
    """The sessions' photometry settings, None when no target is configured."""
    settings = settings_from_config(config)
    return settings if settings.targets else None


class SessionPhotometry:
    """The light curves of one session. ``observe`` is the live stack's observer (it measures into whatever
    series is current: `restore` and `reset` replace it). Targets given by RA/Dec only are placed by the WCS in
    the first reference frame's header when it has one (the background plate solution comes after that frame
    was measured)."""

    def __init__(self, settings: PhotometrySettings, output: Path) -> None:
        self.settings = settings
        self.output = output
        self.series = PhotometrySeries(settings, locate=header_locate)

    def observe(self, frame: StackedFrame) -> None:
        """Measure a frame just stacked; a failure is logged and leaves that frame out of the light curves,
        never out of the stack (the observer runs inside `LiveStack.process`)."""
        try:
            self.series.observe(frame)
        except Exception:
            log.exception("photometry_failed", frame=None if frame.path is None else str(frame.path))

    def restore(self, extra: Mapping[str, Any]) -> None:
        """Take up the measurements a checkpoint's ``extra`` holds (none: start afresh)."""
        self.series = PhotometrySeries.restore(self.settings, extra.get(STATE_KEY), locate=header_locate)

    def reset(self) -> None:
        self.series = PhotometrySeries(self.settings, locate=header_locate)

    def extra(self) -> dict[str, Any]:
        return {STATE_KEY: self.series.state()}

    def path(self, name: str, suffix: str) -> Path:
        target = next((t for t in self.settings.targets if t.name == name), None)
        stem = target.file_name if target is not None else name
        return self.output / f"lightcurve_{stem}{suffix}"

    def write_curves(self) -> None:
        """Every target's CSV, from every frame measured so far."""
        for name in self.series.target_names:
            curve = self.series.curve(name)
            write_lightcurve(self.path(name, ".csv"), curve.comment, curve.rows, CSV_COLUMNS)

    def write_plots(self) -> None:
        for name in self.series.target_names:
            write_plot(self.path(name, ".png"), plot_png(self.series.curve(name)))
