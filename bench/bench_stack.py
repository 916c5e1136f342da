"""Benchmark of the per-frame numeric kernels at full sensor size (default 26 MP, 6248×4176 float32).

Prints, after JIT warm-up: median / worst ms per Stacker.add over N frames, warp (warpAffine linear, NaN
coverage), debayer, auto-stretch previews, one integrate_bands pass, and peak RSS at each stage.

    /work/venv/bin/python bench/bench_stack.py [--width 6248 --height 4176 --frames 10]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable

import numba
import numpy as np

from astrod.core.debayer import debayer
from astrod.core.stack import Stacker, integrate_bands
from astrod.core.stretch import auto_stretch
from astrod.core.warp import warp
from astrod.model import Transform


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


Timing = tuple[list[float], list[float]]


def timed(fn: Callable[[], object], repeat: int) -> Timing:
    """Wall-clock and process CPU milliseconds of ``repeat`` calls."""
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return wall, cpu


def report(name: str, timing: Timing) -> None:
    wall, cpu = timing
    print(f"{name:<44} median {statistics.median(wall):7.1f} ms  worst {max(wall):7.1f} ms  "
          f"(cpu median {statistics.median(cpu):7.1f} ms, n={len(wall)})")


def bandwidth_baseline(h: int, w: int) -> Timing:
    """ms of a float32 ``a += b`` at frame size: shows how loaded the machine is while the bench runs."""
    a = np.ones((h, w), dtype=np.float32)
    b = np.ones((h, w), dtype=np.float32)
    np.add(a, b, out=a)
    return timed(lambda: np.add(a, b, out=a), 5)


def warm_up() -> None:
    """Compile every kernel on small data so that timings below exclude JIT time."""
    rng = np.random.default_rng(0)
    small = rng.standard_normal((3, 64, 64), dtype=np.float32)
    for weighting in ("none", "snr"):
        st = Stacker(small.shape[1:], weighting=weighting)  # type: ignore[arg-type]
        for _ in range(6):
            st.add(small[0], 1.0, mask=np.ones((64, 64), dtype=bool))
            st.add(small[0])
    debayer(small[0], pattern="RGGB")
    debayer(small[0], pattern="RGGB", method="bilinear")
    cube = rng.standard_normal((8, 16, 16), dtype=np.float32)
    integrate_bands(lambda a, b: cube[:, a:b], 8, (16, 16), method="winsorized")


def bench_debayer(mosaic: np.ndarray) -> None:
    rgb = debayer(mosaic, pattern="RGGB")
    report("debayer gradient-corrected → (3, H, W)",
           timed(lambda: debayer(mosaic, pattern="RGGB", out=rgb), 3))
    report("debayer bilinear → (3, H, W)",
           timed(lambda: debayer(mosaic, pattern="RGGB", method="bilinear", out=rgb), 3))
    report("debayer gradient, fresh output array", timed(lambda: debayer(mosaic, pattern="RGGB"), 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=6248)
    parser.add_argument("--height", type=int, default=4176)
    parser.add_argument("--frames", type=int, default=10)
    args = parser.parse_args()
    h, w = args.height, args.width
    print(f"{w}×{h} = {w * h / 1e6:.1f} MP float32, numba threads {numba.get_num_threads()}, "
          f"frames {args.frames}")
    t0 = time.perf_counter()
    warm_up()
    print(f"JIT warm-up (or cache load) {time.perf_counter() - t0:.2f} s; peak RSS {peak_rss_mb():.0f} MB")

    rng = np.random.default_rng(1)
    report("baseline: numpy a += b (memory bandwidth)", bandwidth_baseline(h, w))
    stacker = Stacker((h, w))
    print(f"stacker state {stacker.nbytes / 2**20:.0f} MiB (weighting none)")
    frame = np.empty((h, w), dtype=np.float32)
    add_wall: list[float] = []
    add_cpu: list[float] = []
    rejected = 0
    for _ in range(args.frames):
        rng.standard_normal(out=frame, dtype=np.float32)
        frame *= 10.0
        frame += 1000.0
        t, c = time.perf_counter(), time.process_time()
        result = stacker.add(frame)
        add_wall.append((time.perf_counter() - t) * 1e3)
        add_cpu.append((time.process_time() - c) * 1e3)
        rejected += result.rejected
    report("Stacker.add (mono, κσ online rejection)", (add_wall, add_cpu))
    print(f"  rejected {rejected / (args.frames * h * w):.4%} of samples")
    print(f"peak RSS after the live stack: {peak_rss_mb():.0f} MB")

    t_sim = Transform.similarity(dx=12.37, dy=-8.61, rotation_deg=0.35)
    warped = np.empty((h, w), dtype=np.float32)
    report("warp linear + NaN coverage (into a buffer)",
           timed(lambda: warp(frame, t_sim, shape=(h, w), out=warped), 5))
    report("warp cubic", timed(lambda: warp(frame, t_sim, shape=(h, w), interpolation="cubic", out=warped), 3))
    report("Stacker.add of a warped frame (NaN borders)", timed(lambda: stacker.add(warped), 3))
    print(f"peak RSS after warp: {peak_rss_mb():.0f} MB")

    bench_debayer(frame)
    print(f"peak RSS after debayer: {peak_rss_mb():.0f} MB")

    report("finalize()", timed(lambda: stacker.finalize(), 3))
    stacked = stacker.finalize().image
    for factor in (2, 4):
        report(f"auto_stretch mono, 1/{factor} size preview",
               timed(lambda f=factor: auto_stretch(stacked, downsample_factor=f), 3))  # type: ignore[misc]

    n = 10
    band_rows = 64
    band = (1000.0 + 10.0 * rng.standard_normal((n, band_rows, w), dtype=np.float32)).astype(np.float32)
    rows = 512

    def read_band(a: int, b: int) -> np.ndarray:
        return band[:, : b - a]

    t = time.perf_counter()
    integrate_bands(read_band, n, (rows, w), method="winsorized", memory_cap_bytes=band.nbytes)
    ms = (time.perf_counter() - t) * 1e3
    per_mp = ms / (rows * w / 1e6)
    print(f"integrate_bands winsorized, {n} frames: {per_mp:.1f} ms per MP "
          f"(≈ {per_mp * h * w / 1e6 / 1e3:.1f} s for the whole {w}×{h} frame)")
    print(f"peak RSS overall: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
