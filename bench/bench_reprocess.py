"""Benchmark: ``astrod reprocess`` frames per second with 1 and 2 Dask workers (a local cluster of processes).

A synthetic archive (3 nights × 2 targets × 2 filters, with calibration frames, seeded) is written once; each
run reprocesses it into a fresh output folder. Reported: the run's wall time, the time before the first task
(planning, checking the masters built beforehand, the cluster's start: worker processes importing astrod), and
frames per second over the whole run and over the part after the start.
Run: `.venv/bin/python bench/bench_reprocess.py [--size 512 --frames 6 --workers 1 2] [--photometry]`
(``--workers 2 1 2 1`` alternates; the first run also pays for the client's first use of the kernels;
``--photometry``: a light-curve target in the middle of every session's field, one more task per stacked frame).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import structlog

from astrod.config import Config, PhotometryTargetConfig, SolveConfig
from astrod.demo.archive import make_archive
from astrod.library.build import BuildOptions, build_library
from astrod.pipeline.commands import settings_for
from astrod.service.reprocess import ReprocessRequest, run_reprocess

# Plate solving is on by default; the synthetic skies cannot be solved, and a blind solve of one would take its
# whole time limit of CPU.
NO_SOLVING = SolveConfig(enabled=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="frame width and height, px")
    parser.add_argument("--frames", type=int, default=6, help="lights per session (12 sessions)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--photometry", action="store_true", help="with a light-curve target")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    config = Config(solve=NO_SOLVING)
    if args.photometry:
        middle = PhotometryTargetConfig(name="T", x=args.size / 2, y=args.size / 2)
        config = replace(config, photometry=replace(config.photometry, targets=(middle,)))
    settings = settings_for(config, method=None, kappa=None)
    with tempfile.TemporaryDirectory(prefix="bench-reprocess-") as tmp:
        root = Path(tmp)
        archive = make_archive(root, frames=args.frames, size=args.size)
        n = sum(len(v) for v in archive.lights.values())
        print(f"archive: {n} lights of {args.size}x{args.size} in 12 sessions, 24 calibration frames")
        # the masters once, before the runs: each run then only checks them (the same start for each)
        build_library(root / "lib", [archive.calibration], options=BuildOptions.from_config(config))
        for run, workers in enumerate(args.workers):  # each run into its own folder: none is skipped
            request = ReprocessRequest(archives=(root / "lights", archive.calibration),
                                       output=root / f"out{run}-{workers}",
                                       library=root / "lib", config=config, settings=settings, workers=workers)
            report = run_reprocess(request, say=lambda _: None)
            work = report.seconds - report.startup_seconds
            print(f"{workers} worker(s): {report.frames} frames, {report.tasks} tasks, {report.seconds:.1f} s "
                  f"(start {report.startup_seconds:.1f} s): {report.frames / report.seconds:.2f} frames/s overall, "
                  f"{report.frames / work:.2f} frames/s after the start; the client's decisions "
                  f"{report.decide_seconds / max(1, report.frames) * 1e3:.1f} ms per frame")


if __name__ == "__main__":
    main()
