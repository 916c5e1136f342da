"""The built-in demo: a synthetic observatory night written to a folder, then processed.

The synthetic generator (``astrod.demo.synth``) is the same one the tests use (``tests/synth.py``), so the demo
shows what the tests check.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from astrod.model import Transform


@dataclass(frozen=True, slots=True)
class DemoNight:
    """What was written: the folder and the files by kind, plus one deliberately broken frame."""

    root: Path
    calibration: tuple[Path, ...]
    lights: tuple[Path, ...]
    bad: Path


def write_demo_night(root: Path, *, seed: int = 2026, size: tuple[int, int] = (384, 256),
                     lights_per_target: int = 4) -> DemoNight:
    """A small night: biases, darks and flats, lights of two targets in two filters, one truncated frame."""
    from astrod.demo import synth

    width, height = size
    sensor = synth.Sensor(width=width, height=height, seed=seed, hot_pixels=30, dust=2)
    start = datetime(2026, 11, 21, 19, 0, tzinfo=UTC)
    calibration: list[Path] = []
    common: dict[str, Any] = {"gain": 100, "offset": 50, "temperature": -10.0, "set_temperature": -10.0,
              "camera": "ZWO ASI2600MM Pro"}
    for i in range(5):
        calibration.append(synth.write_fits(root / "capture" / "Bias" / f"bias_{i:03d}.fits",
                                            sensor.bias(seed=100 + i), kind="bias", exposure=0.0001,
                                            filter=None, object=None, date_obs=start + timedelta(seconds=i),
                                            **common))
        calibration.append(synth.write_fits(root / "capture" / "Darks" / f"dark_60s_{i:03d}.fits",
                                            sensor.dark(exposure=60.0, temperature=-10.0, seed=200 + i),
                                            kind="dark", exposure=60.0, filter=None, object=None,
                                            date_obs=start + timedelta(minutes=1, seconds=i), **common))
    for band in ("L", "Ha"):
        for i in range(5):
            calibration.append(synth.write_fits(root / "capture" / "Flats" / band / f"flat_{band}_{i:03d}.fits",
                                                sensor.flat(level=20000.0, seed=300 + i), kind="flat",
                                                exposure=2.0, filter=band, object=None,
                                                date_obs=start + timedelta(minutes=5, seconds=i), **common))
    lights: list[Path] = []
    rng = np.random.default_rng(seed)
    for t_index, (target, ra, dec) in enumerate((("M 31", 10.68, 41.27), ("NGC 7000", 314.7, 44.3))):
        catalogue = synth.make_catalogue(width=width, height=height, n_stars=120, seed=seed + t_index,
                                         margin=40)
        for band in ("L", "Ha"):
            for i in range(lights_per_target):
                shift = rng.uniform(-8, 8, size=2)
                transform = Transform.similarity(dx=float(shift[0]), dy=float(shift[1]),
                                                 rotation_deg=float(rng.uniform(-0.5, 0.5)))
                scene, _ = synth.render_stars(width=width, height=height, catalogue=catalogue,
                                              transform=transform, fwhm=2.8, sky=150.0 if band == "L" else 40.0)
                data = sensor.light(scene, exposure=60.0, temperature=-10.0, seed=1000 + len(lights))
                dialect = "indi" if target == "NGC 7000" else "nina"
                name = f"{target.replace(' ', '')}_{band}_{i:03d}.fits"
                lights.append(synth.write_fits(root / "capture" / "Lights" / target / band / name, data,
                                               dialect=dialect, kind="light", exposure=60.0, filter=band,
                                               object=target, ra=ra, dec=dec,
                                               date_obs=start + timedelta(hours=1, minutes=len(lights)),
                                               **common))
    bad = root / "capture" / "Lights" / "M 31" / "L" / "M31_L_truncated.fits"
    blob = lights[0].read_bytes()
    bad.write_bytes(blob[: len(blob) // 3])
    return DemoNight(root=root, calibration=tuple(calibration), lights=tuple(lights), bad=bad)


def run_demo(*, workdir: Path | None = None, keep: bool = False) -> int:
    """Write the demo night and show how astrod classifies every frame in it."""
    from astrod.cli import main as cli_main

    root = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="astrod-demo-"))
    print(f"astrod demo: writing a synthetic night to {root}")
    night = write_demo_night(root)
    print(f"  {len(night.calibration)} calibration frames, {len(night.lights)} lights of 2 targets in 2 filters, "
          f"1 broken frame")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli_main(["inspect", "--json", str(root / "capture")])
    records = json.loads(out.getvalue())
    counts: dict[str, int] = {}
    for record in records:
        key = "unreadable" if "error" in record else str(record["kind"])
        counts[key] = counts.get(key, 0) + 1
    cli_main(["inspect", str(root / "capture" / "Lights" / "M 31" / "L")])
    for record in records:
        if "error" in record:
            print(f"rejected: {record['error']}")
    print("frames by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    expected_ok = counts.get("unreadable") == 1 and counts.get("light") == len(night.lights)
    if workdir is None and not keep:
        shutil.rmtree(root)
    else:
        print(f"demo files kept in {root}")
    if not expected_ok:
        print("demo: unexpected classification", file=sys.stderr)
        return 1
    return 0
