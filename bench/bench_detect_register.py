"""Benchmark star detection and registration on one synthetic 26 MP (6248×4176) frame pair.

Prints the median wall time (and process CPU time, which says how much of the wall time was waiting for a
core on a shared machine) of `detect_stars` and `find_transform` over 5 runs, after one warm-up run that
also loads or compiles the numba kernels, and the registration error against the known transform. The
same frame read as an RGGB mosaic times the colour path.
Run: /work/venv/bin/python bench/bench_detect_register.py
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from astrod.core.register import build_reference, find_transform
from astrod.core.stars import detect_stars
from astrod.model import Transform

WIDTH, HEIGHT = 6248, 4176


def render(xy: np.ndarray, flux: np.ndarray, *, seed: int, fwhm: float = 3.5, sky: float = 800.0,
           read_noise: float = 5.0) -> np.ndarray:
    """A mono frame: Gaussian stars (sampled at pixel centres) on a flat sky, Poisson-like noise, float32."""
    rng = np.random.default_rng(seed)
    img = np.full((HEIGHT, WIDTH), sky, dtype=np.float32)
    sigma = fwhm / 2.3548
    r = 8
    inside = (xy[:, 0] > r) & (xy[:, 0] < WIDTH - r - 1) & (xy[:, 1] > r) & (xy[:, 1] < HEIGHT - r - 1)
    xy, flux = xy[inside], flux[inside]
    ix, iy = np.rint(xy[:, 0]).astype(np.intp), np.rint(xy[:, 1]).astype(np.intp)
    off = np.arange(-r, r + 1)
    dx = ix[:, None, None] + off[None, None, :] - xy[:, 0, None, None]
    dy = iy[:, None, None] + off[None, :, None] - xy[:, 1, None, None]
    stamps = np.exp(-0.5 * (dx**2 + dy**2) / sigma**2) * (flux / (2 * math.pi * sigma**2))[:, None, None]
    rows = np.broadcast_to(iy[:, None, None] + off[None, :, None], stamps.shape)
    cols = np.broadcast_to(ix[:, None, None] + off[None, None, :], stamps.shape)
    np.add.at(img, (rows.ravel(), cols.ravel()), stamps.ravel().astype(np.float32))
    noise = rng.standard_normal((HEIGHT, WIDTH), dtype=np.float32)
    noise *= np.sqrt(np.maximum(img, 0) + read_noise**2, dtype=np.float32)
    img += noise
    return img


def median_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of ``fn`` over ``runs`` calls."""
    wall, cpu = [], []
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stars", type=int, default=3000)
    args = parser.parse_args()

    rng = np.random.default_rng(42)
    n = args.stars
    ref_xy = np.column_stack([rng.uniform(-100, WIDTH + 100, n), rng.uniform(-100, HEIGHT + 100, n)])
    flux = 300.0 * (1.0 - rng.uniform(0, 1, n)) ** (-1.0 / 1.5)  # N(>F) ∝ F^-1.5
    flux = np.minimum(flux, 2e6)
    truth = Transform.similarity(dx=23.4, dy=-17.8, rotation_deg=0.7, scale=1.002)
    t0 = time.perf_counter()
    reference = render(ref_xy, flux, seed=1)
    frame = render(truth.inverse().apply(ref_xy), flux, seed=2)
    print(f"rendered two {WIDTH}x{HEIGHT} frames in {time.perf_counter() - t0:.1f} s; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    ref_stars = detect_stars(reference)
    stars = detect_stars(frame)  # warm-up (numba kernels)
    wall, cpu = median_ms(lambda: detect_stars(frame), args.runs)
    print(f"detect_stars (mono): {wall:.1f} ms wall, {cpu:.1f} ms CPU, median of {args.runs} "
          f"({len(stars)} measured, {stars.n_detected} detected)")
    detect_stars(frame, bayer="RGGB")
    wall, cpu = median_ms(lambda: detect_stars(frame, bayer="RGGB"), args.runs)
    print(f"detect_stars (bayer): {wall:.1f} ms wall, {cpu:.1f} ms CPU")

    ms_build, _ = median_ms(lambda: build_reference(ref_stars), args.runs)
    ref = build_reference(ref_stars)
    reg = find_transform(stars, ref)
    ms_find, cpu_find = median_ms(lambda: find_transform(stars, ref), args.runs)
    ms_find_raw, _ = median_ms(lambda: find_transform(stars, ref_stars), args.runs)
    grid = np.stack(np.meshgrid(np.linspace(0, WIDTH - 1, 20), np.linspace(0, HEIGHT - 1, 20)), -1).reshape(-1, 2)
    err = np.sqrt(np.mean(np.sum((reg.transform.apply(grid) - truth.apply(grid)) ** 2, axis=1)))
    print(f"build_reference: {ms_build:.1f} ms; find_transform: {ms_find:.1f} ms wall ({cpu_find:.1f} ms CPU) "
          f"with a prebuilt reference, {ms_find_raw:.1f} ms from two star lists")
    print(f"registration: {reg.matched} matched, residual {reg.residual_px:.3f} px, "
          f"error vs truth {err:.4f} px RMS over the frame")


if __name__ == "__main__":
    main()
