"""Benchmark: master combination by astrod versus ccdproc.combine on the same FITS files.

Writes ``--frames`` uint16 FITS frames (BZERO 32768, like a camera's) of ``--width`` x ``--height`` into a
temporary folder, then runs each method in its own subprocess so that its peak RSS is its own, and prints
wall time and peak RSS side by side with the ratios. Both use ccdproc's default sigma clipping (mean centre,
std, 3/3 sigma, one pass, then the mean of the kept values); astrod's own default (median centre, up to 5
iterations) is timed as well. The masters are compared at the end (max relative difference).

    python bench/bench_combine.py                      # 50 frames of 26 MP (about 2.6 GB of FITS)
    python bench/bench_combine.py --frames 10 --width 2000 --height 1500
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CCDPROC_LIKE = {"method": "sigma_clip", "sigma_low": 3.0, "sigma_high": 3.0, "cenfunc": "mean", "maxiters": 1}
ASTROD_DEFAULT = {"method": "sigma_clip", "sigma_low": 3.0, "sigma_high": 3.0, "cenfunc": "median",
                  "maxiters": 5}


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def write_frames(folder: Path, *, n: int, width: int, height: int, seed: int) -> list[Path]:
    """Dark-like uint16 frames: a fixed pattern, read noise, and cosmic-ray hits to reject."""
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    pattern = 500.0 + rng.normal(0.0, 1.5, width)[None, :] + rng.normal(0.0, 2.0, (height, width))
    pattern = pattern.astype(np.float32)
    paths = []
    for i in range(n):
        frame = pattern + rng.standard_normal((height, width), dtype=np.float32) * np.float32(5.0)
        hits = height * width // 20000
        frame[rng.integers(0, height, hits), rng.integers(0, width, hits)] += rng.uniform(100, 5000, hits)
        data = np.clip(np.rint(frame), 0, 65535).astype(np.uint16)
        path = folder / f"dark_{i:03d}.fits"
        hdu = fits.PrimaryHDU(data=data)
        hdu.header["EXPTIME"] = 300.0
        hdu.header["IMAGETYP"] = "Dark Frame"
        hdu.writeto(path)
        paths.append(path)
        print(f"\rwrote {i + 1}/{n} frames", end="", flush=True)
    print()
    return paths


def run_astrod(paths: list[Path], params: dict[str, object], memory_cap: int, out: Path) -> dict[str, float]:
    from astropy.io import fits

    from astrod.core.combine import combine

    locations = []
    for path in paths:
        with fits.open(path) as hdul:
            header = hdul[0].header
            if header["BITPIX"] != 16 or header.get("BZERO") != 32768:
                raise SystemExit(f"{path}: expected BITPIX 16 with BZERO 32768")
            locations.append((path, hdul.fileinfo(0)["datLoc"]))
            height, width = int(header["NAXIS2"]), int(header["NAXIS1"])

    read_time = [0.0]

    def read_band(r0: int, r1: int) -> np.ndarray:
        t0 = time.perf_counter()
        band = np.empty((len(locations), r1 - r0, width), dtype=np.uint16)
        for i, (path, offset) in enumerate(locations):
            with path.open("rb") as f:
                f.seek(offset + r0 * width * 2)
                band[i] = np.fromfile(f, dtype=">u2", count=(r1 - r0) * width).reshape(r1 - r0, width)
        band ^= np.uint16(0x8000)  # stored int16 + BZERO 32768 is the uint16 with its top bit flipped
        read_time[0] += time.perf_counter() - t0
        return band

    # compile (or load from numba's cache) outside the timed part
    tiny = np.zeros((len(paths), 4, 8), dtype=np.uint16)
    combine(lambda a, b: tiny[:, a:b], n_frames=len(paths), shape=(4, 8), **params)  # type: ignore[arg-type]
    start = time.perf_counter()
    result = combine(read_band, n_frames=len(paths), shape=(height, width), memory_cap_bytes=memory_cap,
                     sample_bytes=2, **params)  # type: ignore[arg-type]
    wall = time.perf_counter() - start
    np.save(out, result.image)
    return {"wall_s": wall, "read_s": read_time[0], "peak_rss": peak_rss_bytes(), "bands": result.n_bands,
            "rejected": result.rejected_fraction}


def run_ccdproc(paths: list[Path], out: Path) -> dict[str, float]:
    import ccdproc

    start = time.perf_counter()
    master = ccdproc.combine([str(p) for p in paths], method="average", sigma_clip=True,
                             sigma_clip_low_thresh=3, sigma_clip_high_thresh=3, unit="adu")
    wall = time.perf_counter() - start
    np.save(out, master.data.astype(np.float32))
    return {"wall_s": wall, "peak_rss": peak_rss_bytes()}


def child(args: argparse.Namespace) -> None:
    paths = [Path(p) for p in json.loads(Path(args.files).read_text())]
    out = Path(args.out)
    if args.child == "ccdproc":
        report = run_ccdproc(paths, out)
    else:
        params = CCDPROC_LIKE if args.child == "astrod" else ASTROD_DEFAULT
        report = run_astrod(paths, params, args.memory_cap, out)
    print("RESULT " + json.dumps(report))


def spawn(kind: str, files: Path, out: Path, memory_cap: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", kind, "--files", str(files), "--out", str(out),
           "--memory-cap", str(memory_cap)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{proc.stderr[-4000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT "):]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--width", type=int, default=6248)
    parser.add_argument("--height", type=int, default=4176)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--memory-cap", type=int, default=2 * 1024**3, help="astrod's cap in bytes")
    parser.add_argument("--tmp", default="/tmp", help="where the temporary frame folder goes")
    parser.add_argument("--skip-ccdproc", action="store_true")
    parser.add_argument("--child", choices=["astrod", "astrod-default", "ccdproc"], help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    folder = Path(tempfile.mkdtemp(prefix="astrod-bench-combine-", dir=args.tmp))
    try:
        mp = args.width * args.height / 1e6
        print(f"{args.frames} frames of {args.width}x{args.height} ({mp:.1f} MP) in {folder}, "
              f"{os.cpu_count()} CPUs")
        paths = write_frames(folder, n=args.frames, width=args.width, height=args.height, seed=args.seed)
        files = folder / "files.json"
        files.write_text(json.dumps([str(p) for p in paths]))
        runs: dict[str, dict[str, float]] = {}
        for kind in ("astrod", "astrod-default", *(() if args.skip_ccdproc else ("ccdproc",))):
            print(f"running {kind} ...", flush=True)
            runs[kind] = spawn(kind, files, folder / f"{kind}.npy", args.memory_cap)
        print()
        print(f"{'method':<48}{'wall s':>8}{'(reading)':>10}{'peak RSS GiB':>14}")
        labels = {"astrod": "astrod combine (ccdproc's clipping parameters)",
                  "astrod-default": "astrod combine (median centre, maxiters=5)",
                  "ccdproc": "ccdproc.combine (sigma_clip, mem_limit default)"}
        for kind, rep in runs.items():
            reading = f"{rep['read_s']:.2f}" if "read_s" in rep else "-"
            print(f"{labels[kind]:<48}{rep['wall_s']:>8.2f}{reading:>10}{rep['peak_rss'] / 1024**3:>14.2f}")
        if "ccdproc" in runs:
            ours, ref = runs["astrod"], runs["ccdproc"]
            print(f"\nspeed-up {ref['wall_s'] / ours['wall_s']:.1f}x, memory {ours['peak_rss'] / ref['peak_rss']:.2f} "
                  f"of ccdproc's (astrod used {int(ours['bands'])} band(s), rejected "
                  f"{100 * ours['rejected']:.3f}% of samples)")
            a = np.load(folder / "astrod.npy")
            b = np.load(folder / "ccdproc.npy")
            print(f"max relative difference of the masters: {float(np.max(np.abs(a / b - 1))):.2e}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
