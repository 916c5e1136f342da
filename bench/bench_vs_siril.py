"""Benchmark of the one-shot command, ``astrod stack --library``, against siril-cli on the same files.

It writes (once; reused by later runs with the same ``--workdir``) one synthetic mono night with
``astrod.demo.synth`` through `bench_daemon.generate` (5 biases, 5 darks, 5 flats, ``--lights`` lights of
26 MP by default), builds the master library with ``astrod library build``, then runs, as whole processes and
in turn (siril, astrod, siril, astrod, ...; ``--runs`` pairs):

* siril-cli 1.0.6 (when it is on the PATH): ``convert``, ``preprocess`` with the library's master dark and
  master flat, ``register``, ``stack rej 3 3 -norm=addscale``;
* ``astrod stack --library LIB -o OUT LIGHTS`` (winsorized final rejection, the default).

Wall time is measured around each process; peak RSS is the kernel's own accounting of the finished child
(``ru_maxrss`` from ``wait4``: the largest resident set of the process or of any descendant it waited for).
It prints each run, then the min and median of each tool and the ratio siril / astrod pair by pair.

    .venv/bin/python bench/bench_vs_siril.py                               # 12 × 26 MP, 3 pairs
    .venv/bin/python bench/bench_vs_siril.py --workdir /tmp/astrod-vs-siril --keep --runs 5
    .venv/bin/python bench/bench_vs_siril.py --size 3.1 --lights 6 --runs 1 --no-siril    # a quick check

The machine should be quiet: the load average at the start and the end is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_daemon import SIZES, generate, night_ready

STARS = 3000
SEED = 20261121
SIRIL_SCRIPT = """requires 0.99.4
cd {lights}
convert light -out={process}
cd {process}
preprocess light -dark={dark} -flat={flat}
register pp_light
stack r_pp_light rej 3 3 -norm=addscale -out={result}
close
"""


def _astrod(*args: str) -> list[str]:
    return [sys.executable, "-m", "astrod", *args]


def run_timed(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
              log: Path) -> dict[str, Any]:
    """Run ``cmd`` as a whole process: wall seconds, peak RSS (MiB) and exit status."""
    with log.open("w", encoding="utf-8") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024.0, "ok": proc.returncode == 0,
            "tail": "" if proc.returncode == 0 else log.read_text(encoding="utf-8", errors="replace")[-3000:]}


def build_library(night: Path) -> dict[str, Path]:
    """Build (once) the night's master library with astrod; the master dark and flat files siril is given."""
    library = night / "library"
    done = night / "library.json"
    if not done.is_file():
        shutil.rmtree(library, ignore_errors=True)
        out = subprocess.run(_astrod("library", "build", "--library", str(library), "--source",
                                     str(night / "calibration"), "--json"), capture_output=True, text=True,
                             check=False)
        if out.returncode != 0:
            raise SystemExit(f"astrod library build failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        done.write_text("{}\n", encoding="utf-8")
    found: dict[str, Path] = {}
    for path in sorted(library.rglob("*.fits")):
        name = path.name.lower()
        for kind in ("dark", "flat"):
            if kind in name and kind not in found:
                found[kind] = path
    if set(found) != {"dark", "flat"}:
        raise SystemExit(f"{library}: no master dark and flat found ({sorted(found)})")
    return found


def run_siril(night: Path, siril: str, masters: dict[str, Path], run: int) -> dict[str, Any]:
    work = night / "siril"
    shutil.rmtree(work, ignore_errors=True)
    (work / "masters").mkdir(parents=True)
    # siril takes the master names without their suffix: plain names beside its work folder
    for kind, path in masters.items():
        os.symlink(path, work / "masters" / f"master_{kind}.fits")
    script = work / "bench.ssf"
    # absolute paths: siril resolves ``..`` by name, the system through symlinks (siril's paths have no quoting)
    script.write_text(SIRIL_SCRIPT.format(lights=night / "lights", process=work / "process",
                                          dark=work / "masters" / "master_dark",
                                          flat=work / "masters" / "master_flat", result=work / "siril_result"),
                      encoding="utf-8")
    env = dict(os.environ, HOME=str(work), XDG_CONFIG_HOME=str(work / ".config"))
    result = run_timed([siril, "-s", str(script), "-d", str(work)], env=env, log=night / f"siril_{run}.log")
    result["ok"] = result["ok"] and (work / "siril_result.fit").exists()
    shutil.rmtree(work / "process", ignore_errors=True)
    return result


def run_astrod(night: Path, run: int) -> dict[str, Any]:
    out = night / "astrod_stack.fits"
    out.unlink(missing_ok=True)
    lights = sorted((night / "lights").glob("*.fits"))
    result = run_timed(_astrod("stack", "--library", str(night / "library"), "-o", str(out),
                               *map(str, lights)), log=night / f"astrod_{run}.log")
    result["ok"] = result["ok"] and out.exists()
    return result


def _row(name: str, values: list[float], unit: str) -> str:
    if not values:
        return f"  {name:<22}  -"
    return (f"  {name:<22}  min {min(values):8.2f}{unit}  median {statistics.median(values):8.2f}{unit}"
            f"  max {max(values):8.2f}{unit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="26", help="frame size in MP")
    parser.add_argument("--lights", type=int, default=12, help="light frames stacked")
    parser.add_argument("--runs", type=int, default=3, help="pairs of runs (siril then astrod)")
    parser.add_argument("--workdir", help="folder for the synthetic night (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the files (reused by a later run)")
    parser.add_argument("--no-siril", action="store_true", help="do not run siril-cli even if installed")
    parser.add_argument("--child-generate", nargs=3, metavar=("DIR", "W", "H"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    width, height = SIZES[args.size]
    if args.child_generate:
        folder = Path(args.child_generate[0])
        generate(folder, int(args.child_generate[1]), int(args.child_generate[2]), n_lights=args.lights,
                 stars=STARS, seed=SEED)
        return

    siril = None if args.no_siril else shutil.which("siril-cli")
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="astrod-vs-siril-"))
    night = root / f"{width}x{height}-{args.lights}"
    la = os.getloadavg()
    print(f"astrod stack vs siril-cli: {args.lights} lights of {args.size} MP ({width}×{height}), {args.runs} "
          f"pair(s), {os.cpu_count()} CPUs, load average at start {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}; "
          f"siril-cli: {siril or 'not used'}")
    try:
        if not night_ready(night, width, height, n_lights=args.lights, stars=STARS):
            shutil.rmtree(night, ignore_errors=True)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--lights", str(args.lights), "--child-generate",
                            str(night), str(width), str(height)], check=True)
            print(f"generated the night in {time.perf_counter() - t0:.0f} s: {night}")
        else:
            print(f"reusing {night}")
        t0 = time.perf_counter()
        masters = build_library(night)
        print(f"library ready in {time.perf_counter() - t0:.1f} s; siril is given {masters['dark'].name} and "
              f"{masters['flat'].name}")
        results: dict[str, list[dict[str, Any]]] = {"siril": [], "astrod": []}
        print(f"\n  {'run':<5} {'tool':<7} {'wall s':>8} {'peak RSS MiB':>13}  load")
        for run in range(args.runs):
            for tool in (("siril", "astrod") if siril else ("astrod",)):
                r = run_siril(night, siril, masters, run) if tool == "siril" and siril else run_astrod(night, run)
                if not r["ok"]:
                    raise SystemExit(f"{tool} failed:\n{r['tail']}")
                results[tool].append(r)
                print(f"  {run + 1:<5} {tool:<7} {r['seconds']:8.2f} {r['peak_rss_mb']:13.0f}  "
                      f"{os.getloadavg()[0]:.2f}", flush=True)
        print()
        for tool, rs in results.items():
            if rs:
                print(_row(f"{tool} wall", [r["seconds"] for r in rs], " s"))
                print(_row(f"{tool} peak RSS", [r["peak_rss_mb"] * 2**20 / 1e9 for r in rs], " GB"))
        if results["siril"]:
            ratios = [s["seconds"] / a["seconds"] for s, a in zip(results["siril"], results["astrod"], strict=True)]
            print(_row("siril / astrod (pairs)", ratios, "×"))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    la = os.getloadavg()
    print(f"\nload average at the end {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")


if __name__ == "__main__":
    main()
