"""Benchmark plate solving (astrometry.net's solve-field on astrod's star list) with hints and blind.

Frames: synthetic frames of the real sky at 1920×1080 (2.4″/px, a 77′ × 43′ field) and 6248×4176 (1.2″/px,
125′ × 84′), rendered from the installed Tycho-2 index files' stars through a known WCS (`astrod.demo.sky`), and
the real Seestar S50 frame of NGC 7023 (1080×1920, 2.37″/px) from the shared data when it is there. For each:
star detection, then the solve with hints (RA/Dec 0.7° off, scale ±15 %) and blind (no hint), each repeated;
prints the median wall time, the solver's CPU time (children's rusage: how much of the wall time was waiting
for a core on a shared machine) and the error of the solution against the known WCS (the synthetic frames) or
ASTAP's (the Seestar frame).
Run: .venv/bin/python bench/bench_solve.py [--repeat 3] [--blind-timeout 120]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from astrod.demo.sky import catalogue_frame, tan_header
from astrod.io.fits import Header, read_fits_header
from astrod.io.frames import read_frame
from astrod.model import FrameMeta
from astrod.pipeline.solving import SolveHints, SolveResult, wcs_from_cards
from astrod.service.solver import SolverSettings, detect_for_solving, missing_solver, solve_stars

SEESTAR = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "seestar_s50_ngc7023_wcs"
           / "Light_NGC 7023_10.0s_IRCUT_20240730-224436.fit")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _max_error_arcsec(result: SolveResult, truth: Header, width: int, height: int) -> float:
    grid = np.array([[x, y] for x in np.linspace(0, width - 1, 7) for y in np.linspace(0, height - 1, 5)])
    a = result.wcs().all_pix2world(grid, 0)
    b = wcs_from_cards(truth).all_pix2world(grid, 0)
    d_ra = (a[:, 0] - b[:, 0] + 180.0) % 360.0 - 180.0
    return float(np.max(np.hypot(d_ra * np.cos(np.radians(b[:, 1])), a[:, 1] - b[:, 1])) * 3600.0)


def _time_solves(name: str, data: np.ndarray, meta: FrameMeta, truth: Header, hints: SolveHints, *,
                 repeat: int, blind_timeout: float) -> None:
    height, width = data.shape[-2:]
    t0 = time.perf_counter()
    stars = detect_for_solving(data, meta, max_stars=300)
    detect_s = time.perf_counter() - t0
    print(f"{name} {width}x{height}: {len(stars)} stars detected in {detect_s:.2f} s")
    for label, h, timeout in (("hints", hints, 30.0), ("blind", SolveHints(), blind_timeout)):
        walls, cpus, errors, index = [], [], [], ""
        for _ in range(repeat):
            cpu0 = _children_cpu()
            t0 = time.perf_counter()
            settings = SolverSettings(timeout_s=timeout, blind_timeout_s=timeout)
            result = solve_stars(stars, h, settings=settings, name=name)
            walls.append(time.perf_counter() - t0)
            cpus.append(_children_cpu() - cpu0)
            errors.append(_max_error_arcsec(result, truth, width, height))
            index = result.index
        print(f"  {label:5s} ({h.describe()}): median {statistics.median(walls):.2f} s wall "
              f"(min {min(walls):.2f}, max {max(walls):.2f}), solver CPU {statistics.median(cpus):.2f} s, "
              f"max error {max(errors):.2f}\" over the frame, {index}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="solves per case (median reported)")
    parser.add_argument("--blind-timeout", type=float, default=120.0, help="time limit of a blind solve, s")
    args = parser.parse_args()
    missing = missing_solver()
    if missing is not None:
        raise SystemExit(f"cannot benchmark: {missing}")
    for width, height, scale in ((1920, 1080, 2.4), (6248, 4176, 1.2)):
        truth = tan_header(ra=83.82, dec=-5.39, scale_arcsec=scale, rotation_deg=23.0, width=width, height=height)
        frame = catalogue_frame(truth, width=width, height=height, seed=1)
        hints = SolveHints(ra=84.5, dec=-5.0, scale_low=scale / 1.15, scale_high=scale * 1.15)
        _time_solves(f"synthetic M42 field ({frame.stars} catalogue stars)", frame.data, FrameMeta(), truth, hints,
                     repeat=args.repeat, blind_timeout=args.blind_timeout)
    if SEESTAR.is_file():
        seestar = read_frame(SEESTAR)
        header = read_fits_header(SEESTAR)
        hints = SolveHints(ra=seestar.meta.ra, dec=seestar.meta.dec, scale_low=2.3927 / 1.15,
                           scale_high=2.3927 * 1.15)
        _time_solves("Seestar S50 NGC 7023 (vs ASTAP)", seestar.data, seestar.meta, header, hints,
                     repeat=args.repeat, blind_timeout=args.blind_timeout)
    print(f"(machine load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          f"{os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
