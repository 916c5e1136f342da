"""Benchmark of the whole per-frame pipeline (file closed -> stack updated), side by side with siril-cli.

For each size (12.6 MP 4096×3072 and 26 MP 6248×4176 by default) it writes a 20-frame synthetic mono session
(uint16 BZERO FITS like a camera's: Gaussian stars, sky gradient, vignetting, dark current, hot pixels, bias,
shot and read noise; shifts up to ±50 px and rotations up to ±1°) with a master dark and a master flat (with
``--colour``: raw RGGB mosaics of a one-shot-colour camera, debayered and stacked as RGB), then in a fresh
process runs every frame through astrod's `LiveStack` (read, calibrate, detect, register, warp,
accumulate) with a preview every 5 frames, and prints per stage the median and worst ms per frame and the
peak RSS. When ``siril-cli`` is on the PATH it then runs siril on the same files in the same run
(preprocess with the same masters, register, ``stack rej 3 3 -norm=addscale``) and prints the ratio.

    .venv/bin/python bench/bench_pipeline.py                 # both sizes, 20 frames, with siril if present
    .venv/bin/python bench/bench_pipeline.py --sizes 26 --frames 200   # RSS over 200 frames (files reused)
    .venv/bin/python bench/bench_pipeline.py --no-siril --keep --workdir /tmp/astrod-bench

The machine should be quiet: the load average at the start and the end is printed with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SIZES = {"3.1": (2048, 1536), "12.6": (4096, 3072), "26": (6248, 4176)}
N_FILES = 20
STAGES = ("read", "calibrate", "detect", "register", "warp", "accumulate")
F32 = npt.NDArray[np.float32]


# ------------------------------------------------------------------------------------------ synthetic session


def _stars(rng: np.random.Generator, width: int, height: int, n: int) -> tuple[npt.NDArray[np.float64], ...]:
    x = rng.uniform(-60, width + 60, n)
    y = rng.uniform(-60, height + 60, n)
    # power-law fluxes (electrons): many faint stars, a few bright ones
    u = rng.uniform(size=n)
    flux = 2e3 * (1.0 - u * (1.0 - (2e3 / 5e5) ** 1.5)) ** (-1.0 / 1.5)
    return x, y, flux


def _render(width: int, height: int, xy: npt.NDArray[np.float64], flux: npt.NDArray[np.float64], *,
            fwhm: float, sky: F32) -> F32:
    """Sky plus Gaussian stars (sampled at pixel centres on 17×17 stamps), electrons."""
    img = sky.copy()
    sigma = fwhm / 2.3548
    r = 8
    inside = (xy[:, 0] > r) & (xy[:, 0] < width - r - 1) & (xy[:, 1] > r) & (xy[:, 1] < height - r - 1)
    xy, flux = xy[inside], flux[inside]
    ix, iy = np.rint(xy[:, 0]).astype(np.intp), np.rint(xy[:, 1]).astype(np.intp)
    off = np.arange(-r, r + 1)
    dx = ix[:, None, None] + off[None, None, :] - xy[:, 0, None, None]
    dy = iy[:, None, None] + off[None, :, None] - xy[:, 1, None, None]
    stamps = np.exp(-0.5 * (dx**2 + dy**2) / sigma**2) * (flux / (2 * math.pi * sigma**2))[:, None, None]
    rows = np.broadcast_to(iy[:, None, None] + off[None, :, None], stamps.shape)
    cols = np.broadcast_to(ix[:, None, None] + off[None, None, :], stamps.shape)
    np.add.at(img, (rows.ravel(), cols.ravel()), stamps.ravel().astype(np.float32))
    return img


# A colour (OSC) sensor's response behind its RGGB filters, relative to green.
CFA_RESPONSE = np.array([[0.8, 1.0], [1.0, 0.6]], dtype=np.float32)


def generate(folder: Path, width: int, height: int, *, n_frames: int, seed: int, colour: bool = False) -> None:
    """Write ``n_frames`` lights and the master dark and flat into ``folder``; with ``colour``, raw RGGB
    mosaics of a one-shot-colour camera (BAYERPAT in the header) instead of mono frames."""
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    lights = folder / "lights"
    masters = folder / "masters"
    lights.mkdir(parents=True, exist_ok=True)
    masters.mkdir(parents=True, exist_ok=True)
    exposure, bias, rn = 120.0, 500.0, 3.5
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    flat = (1.0 - 0.3 * ((xx - cx) ** 2 + (yy - cy) ** 2) / (cx**2 + cy**2)).astype(np.float32)
    flat /= np.float32(flat.mean())
    dark = np.full((height, width), bias, dtype=np.float32)
    dark += rng.gamma(25.0, 0.002 * exposure / 25.0, (height, width)).astype(np.float32)
    hot = rng.choice(width * height, size=2000, replace=False)
    dark.ravel()[hot] += rng.uniform(500, 5000, hot.size).astype(np.float32)
    gradient = (np.float32(300.0) + np.float32(0.02) * xx + np.float32(0.01) * yy).astype(np.float32)
    del xx, yy
    fits.PrimaryHDU(dark).writeto(masters / "master_dark.fit", overwrite=True)
    fits.PrimaryHDU(flat).writeto(masters / "master_flat.fit", overwrite=True)
    n_stars = int(3000 * width * height / (6248 * 4176))
    sx, sy, sflux = _stars(rng, width, height, n_stars)
    ref = np.column_stack([sx, sy])
    for i in range(n_frames):
        if i == 0:
            dx = dy = rot = 0.0
        else:
            dx, dy = rng.uniform(-50, 50, 2)
            rot = rng.uniform(-1.0, 1.0)
        t = math.radians(rot)
        c, s = math.cos(t), math.sin(t)
        # frame -> reference: rotation about the centre, then the shift; stars appear at its inverse
        m = np.array([[c, -s, cx + dx - (c * cx - s * cy)], [s, c, cy + dy - (s * cx + c * cy)], [0, 0, 1.0]])
        inv = np.linalg.inv(m)
        pos = ref @ inv[:2, :2].T + inv[:2, 2]
        electrons = _render(width, height, pos, sflux, fwhm=rng.uniform(3.2, 3.8), sky=gradient)
        electrons *= flat
        if colour:  # each pixel sees its filter's share of the (grey) sky and stars
            electrons.reshape(height // 2, 2, width // 2, 2)[...] *= CFA_RESPONSE[None, :, None, :]
        signal = electrons + (dark - np.float32(bias))
        noise = rng.standard_normal((height, width), dtype=np.float32)
        noise *= np.sqrt(np.maximum(signal, 0.0) + np.float32(rn * rn))
        adu = signal + noise + np.float32(bias)
        del signal, noise, electrons
        data = np.clip(np.rint(adu), 0, 65535).astype(np.uint16)
        del adu
        hdu = fits.PrimaryHDU(data)
        hdu.header["IMAGETYP"] = "LIGHT"
        hdu.header["EXPTIME"] = exposure
        hdu.header["OBJECT"] = "BENCH"
        hdu.header["FILTER"] = "L"
        if colour:
            hdu.header["BAYERPAT"] = "RGGB"
        hdu.header["DATE-OBS"] = f"2024-10-05T21:{i // 2:02d}:{(i % 2) * 30:02d}.000"
        hdu.writeto(lights / f"light_{i:04d}.fit", overwrite=True)
        print(f"  wrote {lights / f'light_{i:04d}.fit'}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ astrod run (child)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_astrod(folder: Path, *, n_frames: int, preview_every: int) -> dict[str, Any]:
    """Stack the folder's lights (cycled to ``n_frames``) through LiveStack; per-stage ms and peak RSS."""
    from astrod.core.calibrate import apply, prepare
    from astrod.io.fits import read_fits
    from astrod.io.frames import read_frame
    from astrod.io.mapped_masters import map_prepared
    from astrod.io.previews import write_preview
    from astrod.model import Frame
    from astrod.pipeline.live import LiveStack, PipelineSettings
    dark, _ = read_fits(folder / "masters" / "master_dark.fit")
    flat, _ = read_fits(folder / "masters" / "master_flat.fit")
    # as the daemon keeps them: mapped from scratch files, a band of rows resident while a frame is calibrated
    masters = map_prepared(prepare(dark=dark, flat=flat), folder / "prepared-masters")
    del dark, flat

    def calibrate(frame: Frame) -> Frame:
        # In place, as the daemon's session workers do: the frame was read into a scratch array.
        out = apply(masters, frame.data, light_exposure=frame.meta.exposure, out=frame.data)
        return Frame(meta=frame.meta, data=out.data, path=frame.path)

    files = sorted((folder / "lights").glob("light_*.fit"))
    stack = LiveStack(PipelineSettings(), calibrator=calibrate)
    times: dict[str, list[float]] = {s: [] for s in (*STAGES, "total")}
    preview_ms: list[float] = []
    rss_at: dict[int, float] = {}
    statuses: list[str] = []
    repick: list[tuple[int, float]] = []  # (frame, ms): the session's one re-pick of its reference
    # warm-up: JIT kernels load from numba's cache (or compile) on first use; not counted
    warm = LiveStack(PipelineSettings(), calibrator=calibrate)
    warm.process(read_frame(files[0]))
    warm.process(read_frame(files[1]))
    del warm
    scratch = None
    for i in range(n_frames):
        path = files[i % len(files)]
        t0 = time.perf_counter()
        # into one reused array, calibrated there in place, as the daemon's session workers do
        frame = read_frame(path, out=scratch)
        scratch = frame.data
        read_ms = (time.perf_counter() - t0) * 1e3
        result = stack.process(frame)
        total_ms = (time.perf_counter() - t0) * 1e3
        # The reference re-pick happens once per session: reported on its own, not as a frame's cost.
        repick_ms = float(result.metrics.get("ms_repick") or 0.0)
        if repick_ms:
            repick.append((i + 1, repick_ms))
            total_ms -= repick_ms
        del frame
        statuses.append(result.status if result.status == "stacked" else f"rejected: {result.reason}")
        times["read"].append(read_ms)
        times["total"].append(total_ms)
        for s in STAGES[1:]:
            times[s].append(float(result.metrics.get(f"ms_{s}") or 0.0))
        if (i + 1) % preview_every == 0:
            t1 = time.perf_counter()
            _, stretched = stack.preview(max_size=1600)
            write_preview(folder / "preview.png", stretched)
            preview_ms.append((time.perf_counter() - t1) * 1e3)
        if i + 1 in (1, 10, 20, 50, 100, 200, n_frames):
            rss_at[i + 1] = _peak_rss_mb()
    scratch = None  # as a session worker does before its final stack
    t1 = time.perf_counter()
    product = stack.finalize()
    finalize_ms = (time.perf_counter() - t1) * 1e3
    del product
    return {"times": times, "preview_ms": preview_ms, "rss_mb": rss_at, "peak_rss_mb": _peak_rss_mb(),
            "finalize_ms": finalize_ms, "stacked": statuses.count("stacked"), "repick": repick,
            "rejected": [s for s in statuses if s != "stacked"]}


# ------------------------------------------------------------------------------------------ siril


SIRIL_SCRIPT = """requires 0.99.4
cd lights
convert light -out=../process
cd ../process
preprocess light -dark=../masters/master_dark -flat=../masters/master_flat{debayer}
register pp_light
stack r_pp_light rej 3 3 -norm=addscale -out=../siril_result
close
"""


def run_siril(folder: Path, siril: str, *, colour: bool = False) -> dict[str, Any]:
    """siril-cli on the same lights and masters (debayered after calibration for colour frames): wall time of
    the whole script and its peak RSS."""
    shutil.rmtree(folder / "process", ignore_errors=True)
    (folder / "bench.ssf").write_text(SIRIL_SCRIPT.format(debayer=" -debayer" if colour else ""), encoding="utf-8")
    import psutil

    env = dict(os.environ, HOME=str(folder), XDG_CONFIG_HOME=str(folder / ".config"))
    log = (folder / "siril.log").open("w", encoding="utf-8")
    t0 = time.perf_counter()
    proc = subprocess.Popen([siril, "-s", str(folder / "bench.ssf"), "-d", str(folder)], stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    peak = 0
    watched = psutil.Process(proc.pid)
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, watched.memory_info().rss)
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    log.close()
    ok = proc.returncode == 0 and (folder / "siril_result.fit").exists()
    shutil.rmtree(folder / "process", ignore_errors=True)
    tail = "" if ok else (folder / "siril.log").read_text(encoding="utf-8", errors="replace")[-3000:]
    return {"ok": ok, "seconds": wall, "peak_rss_mb": peak / 2**20, "tail": tail}


# ------------------------------------------------------------------------------------------ main


def _child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _stats(values: list[float]) -> str:
    if not values:
        return "      -        -"
    return f"{statistics.median(values):7.1f}  {max(values):7.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["12.6", "26"])
    parser.add_argument("--frames", type=int, default=N_FILES, help="frames stacked (the 20 files are cycled)")
    parser.add_argument("--preview-every", type=int, default=5)
    parser.add_argument("--workdir", help="folder for the synthetic files (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the files (reused by a later run)")
    parser.add_argument("--no-siril", action="store_true", help="do not run siril-cli even if installed")
    parser.add_argument("--colour", action="store_true",
                        help="one-shot-colour frames (raw RGGB mosaics, debayered and stacked as RGB)")
    parser.add_argument("--child-generate", nargs=4, metavar=("DIR", "W", "H", "COLOUR"), help=argparse.SUPPRESS)
    parser.add_argument("--child-astrod", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_generate:
        folder, w, h = Path(args.child_generate[0]), int(args.child_generate[1]), int(args.child_generate[2])
        generate(folder, w, h, n_frames=N_FILES, seed=w * h % 100003, colour=args.child_generate[3] == "1")
        print(json.dumps({"ok": True}))
        return
    if args.child_astrod:
        print(json.dumps(run_astrod(Path(args.child_astrod), n_frames=args.frames,
                                    preview_every=args.preview_every)))
        return

    siril = None if args.no_siril else shutil.which("siril-cli")
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="astrod-bench-"))
    print(f"astrod pipeline benchmark: {args.frames} frames per size, {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
          f"siril-cli: {siril or 'not used'}")
    try:
        for size in args.sizes:
            width, height = SIZES[size]
            folder = root / f"{width}x{height}{'-osc' if args.colour else ''}"
            label = f"{size} MP ({width}×{height}{', OSC' if args.colour else ''})"
            if not (folder / "lights" / f"light_{N_FILES - 1:04d}.fit").exists():
                t0 = time.perf_counter()
                _child(["--child-generate", str(folder), str(width), str(height), "1" if args.colour else "0"])
                print(f"\n{label}: generated {N_FILES} frames in {time.perf_counter() - t0:.0f} s")
            else:
                print(f"\n{label}: reusing {folder}")
            r = _child(["--child-astrod", str(folder), "--frames", str(args.frames),
                        "--preview-every", str(args.preview_every)])
            t = r["times"]
            print(f"  astrod: {r['stacked']} of {args.frames} frames stacked"
                  + (f"; rejected: {r['rejected'][:3]}" if r["rejected"] else ""))
            print("  stage            median ms  worst ms")
            for stage in STAGES:
                print(f"  {stage:<15}  {_stats(t[stage])}")
            print(f"  {'preview':<15}  {_stats(r['preview_ms'])}   (every {args.preview_every} frames, ≤1600 px PNG)")
            print(f"  {'TOTAL per frame':<15}  {_stats(t['total'])}   (read + process: file closed -> stack updated)")
            for frame_no, ms in r["repick"]:
                print(f"  reference re-picked at frame {frame_no}: {ms:.0f} ms, once per session "
                      "(not in the figures above)")
            # ru_maxrss is in KiB: the figures are MiB (GB = 10⁹ bytes given beside the peak)
            print(f"  finalize {r['finalize_ms']:.0f} ms; peak RSS {r['peak_rss_mb']:.0f} MiB "
                  f"({r['peak_rss_mb'] * 2**20 / 1e9:.2f} GB); peak RSS after n frames: "
                  + ", ".join(f"{k}: {v:.0f} MiB" for k, v in r["rss_mb"].items()))
            if siril:
                s = run_siril(folder, siril, colour=args.colour)
                if s["ok"]:
                    per = s["seconds"] / N_FILES
                    ours = statistics.median(t["total"]) / 1e3
                    rss = f", peak RSS {s['peak_rss_mb']:.0f} MiB" if s["peak_rss_mb"] else ""
                    print(f"  siril-cli: whole script {s['seconds']:.1f} s = {per:.3f} s per frame{rss}; "
                          f"astrod median {ours:.3f} s per frame: siril / astrod = {per / ours:.1f}×")
                else:
                    print(f"  siril-cli failed:\n{s['tail']}")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    la = os.getloadavg()
    print(f"\nload average at the end {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")


if __name__ == "__main__":
    main()
