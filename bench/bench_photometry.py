"""Benchmark the per-frame cost of light-curve photometry at 26 MP (6248×4176) against the rest of the frame's
work in the live pipeline.

Three targets (and the automatic ensemble of 10 comparisons from 20 candidates) are measured by a
`PhotometrySeries` watching a `LiveStack` (its observer) over a few shifted synthetic frames; prints, per frame
after the reference, the observer's ms (`ms_observe`: apertures, annuli and the astropy times of the targets)
beside the pipeline's other stages, and the median of each. Run: .venv/bin/python bench/bench_photometry.py
"""

from __future__ import annotations

import argparse
import statistics
from datetime import UTC, datetime, timedelta

import numpy as np
from bench_detect_register import HEIGHT, WIDTH, render

from astrod.model import Frame, FrameKind, FrameMeta
from astrod.pipeline.live import LiveStack, PipelineSettings
from astrod.pipeline.photometry import PhotometrySeries, PhotometrySettings, Target
from astrod.pipeline.photometry_times import Site


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5, help="frames (the first is the reference)")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    n = 3000
    xy = np.column_stack([rng.uniform(0, WIDTH, n), rng.uniform(0, HEIGHT, n)])
    flux = 2e3 * (1.0 - rng.uniform(0, 1, n)) ** (-1 / 1.5)
    flux = np.minimum(flux, 4e6)
    targets = tuple(Target(f"T{k}", x=float(xy[k, 0]) + 1, y=float(xy[k, 1]) + 1) for k in np.argsort(flux)[-400:-397])
    settings = PhotometrySettings(targets=targets, site=Site(50.0, 10.0, 300.0), coords=(120.0, 40.0))
    series = PhotometrySeries(settings)
    stack = LiveStack(PipelineSettings(), observer=series)
    start = datetime(2025, 1, 10, 22, 0, tzinfo=UTC)
    rows = []
    for i in range(args.frames):
        shift = np.array([3.0 * i, -2.0 * i])
        data = render(xy - shift, flux, seed=10 + i)
        meta = FrameMeta(kind=FrameKind.LIGHT, exposure=60.0, egain=1.0, date_obs=start + timedelta(minutes=i),
                         width=WIDTH, height=HEIGHT)
        result = stack.process(Frame(meta=meta, data=data))
        m = result.metrics
        stages = {k[3:]: float(v) for k, v in m.items() if k.startswith("ms_") and isinstance(v, int | float)}
        print(f"frame {i}: {result.status}; " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()) + " ms")
        if i:
            rows.append(stages)
    observe = [r.get("observe", 0.0) for r in rows]
    rest = [sum(v for k, v in r.items() if k != "observe") for r in rows]
    print(f"median observe {statistics.median(observe):.1f} ms; rest of the pipeline {statistics.median(rest):.0f} ms"
          f" ({100 * statistics.median(observe) / statistics.median(rest):.1f} %); "
          f"{len(series.curve(series.target_names[0]).comparisons)} comparisons")


if __name__ == "__main__":
    main()
