"""Benchmark: building one master dark from N frames with `astrod library build` vs `ccdproc.combine`.

Both read the same uint16 BZERO FITS files (warm, from the page cache) and sigma-clip with the same parameters
(κ=3 low and high, median centre, std, one pass: what ccdproc.combine can do); astrod's default recipe (up to 5
iterations) is timed too. Each side runs in its own process, so the peak RSS reported is that side's alone.
Run: `.venv/bin/python bench/bench_library.py [--frames 50 --width 6248 --height 4176]`
(the default is the issue's case: 50 frames of 26 MP, 2.6 GB of files; ccdproc then needs well over 10 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_frames(folder: Path, *, n: int, width: int, height: int) -> list[Path]:
    from astropy.io import fits

    rng = np.random.default_rng(1)
    hot = rng.integers(0, width * height, size=2000)
    paths = []
    for i in range(n):
        data = rng.normal(500.0, 5.0, size=(height, width)).astype(np.float32)
        data.reshape(-1)[hot] += 3000.0
        if i % 5 == 0:  # cosmic-ray hits for the clipping to reject
            data.reshape(-1)[rng.integers(0, width * height, size=5000)] = 40000.0
        hdu = fits.PrimaryHDU(np.clip(np.rint(data), 0, 65535).astype(np.uint16))
        for key, value in (("IMAGETYP", "DARK"), ("EXPTIME", 300.0), ("INSTRUME", "Bench Camera"), ("GAIN", 100),
                           ("OFFSET", 50), ("SET-TEMP", -10.0), ("CCD-TEMP", -10.0),
                           ("DATE-OBS", f"2024-10-05T22:{i // 60:02d}:{i % 60:02d}")):
            hdu.header[key] = value
        path = folder / f"dark_{i:03d}.fits"
        hdu.writeto(path)
        paths.append(path)
    return paths


def worker_astrod(source: Path, out: Path, *, maxiters: int, cap_mb: int) -> dict[str, float]:
    from astrod.library.build import BuildOptions, CombineParams, build_library

    options = BuildOptions(combine=CombineParams(maxiters=maxiters), memory_cap_bytes=cap_mb * 1024 * 1024)
    t0 = time.perf_counter()
    report = build_library(out, [source], options=options)
    elapsed = time.perf_counter() - t0
    assert report.count("new") >= 1, "no master was built"
    return {"seconds": elapsed}


def worker_ccdproc(source: Path, out: Path) -> dict[str, float]:
    import warnings

    import ccdproc

    paths = sorted(str(p) for p in source.glob("*.fits"))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        master = ccdproc.combine(paths, method="average", sigma_clip=True, sigma_clip_low_thresh=3,
                                 sigma_clip_high_thresh=3, sigma_clip_func=np.ma.median, sigma_clip_dev_func=np.ma.std,
                                 unit="adu", dtype=np.float32)
        master.write(out / "master.fits", overwrite=True)
    return {"seconds": time.perf_counter() - t0}


def run_worker(args: list[str]) -> tuple[dict[str, float], float]:
    """Run one side in a child process; its result and its peak RSS in GiB."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"worker {args[:2]} failed with status {proc.returncode}")
    return json.loads(output.strip().splitlines()[-1]), usage.ru_maxrss / 1024**2  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--width", type=int, default=6248)
    parser.add_argument("--height", type=int, default=4176)
    parser.add_argument("--cap-mb", type=int, default=2048, help="astrod's memory cap (default the config's 2 GiB)")
    parser.add_argument("--skip-ccdproc", action="store_true", help="time astrod only")
    parser.add_argument("--worker", choices=("astrod", "ccdproc"), help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--maxiters", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "astrod":
        print(json.dumps(worker_astrod(Path(args.source), Path(args.out), maxiters=args.maxiters,
                                       cap_mb=args.cap_mb)))
        return
    if args.worker == "ccdproc":
        print(json.dumps(worker_ccdproc(Path(args.source), Path(args.out))))
        return

    with tempfile.TemporaryDirectory(prefix="astrod-bench-") as tmp:
        root = Path(tmp)
        source = root / "darks"
        source.mkdir()
        t0 = time.perf_counter()
        paths = make_frames(source, n=args.frames, width=args.width, height=args.height)
        size_gb = sum(p.stat().st_size for p in paths) / 1e9
        print(f"{args.frames} frames of {args.width}x{args.height} uint16 ({size_gb:.2f} GB) written in "
              f"{time.perf_counter() - t0:.0f} s")
        for p in paths:  # warm the page cache for both sides
            p.read_bytes()
        rows = []
        for label, worker_args in (
                ("astrod library build (kappa 3, 1 pass)", ["--worker", "astrod", "--maxiters", "1"]),
                ("astrod library build (default: 5 iter.)", ["--worker", "astrod", "--maxiters", "5"])):
            out = root / f"lib-{len(rows)}"
            result, peak = run_worker([*worker_args, "--source", str(source), "--out", str(out),
                                       "--cap-mb", str(args.cap_mb)])
            rows.append((label, result["seconds"], peak))
            shutil.rmtree(out)
        if not args.skip_ccdproc:
            out = root / "ccdproc"
            out.mkdir()
            result, peak = run_worker(["--worker", "ccdproc", "--source", str(source), "--out", str(out)])
            rows.append(("ccdproc.combine (kappa 3, 1 pass)", result["seconds"], peak))
    print(f"{'':42} {'seconds':>8} {'peak RSS GiB':>13}")
    for label, seconds, peak in rows:
        print(f"{label:42} {seconds:8.1f} {peak:13.2f}")
    if not args.skip_ccdproc:
        fast, ref = rows[0], rows[-1]
        print(f"astrod vs ccdproc, same parameters: {ref[1] / fast[1]:.1f}x faster at {fast[2] / ref[2]:.2f} of its "
              "peak memory")


if __name__ == "__main__":
    main()
