"""`astrod warmup`: compile every numba kernel into numba's on-disk cache, so the first real frame is fast.

A kernel is compiled once per argument types (dtype, dimensions, layout, read-only or not), so calling kernels
with invented arrays would compile other specialisations than the ones frames need. The warm-up therefore
runs the product's own code paths on a small synthetic night (384×288 px, written as camera FITS files):
master library build (bias, dark, flat, bad pixels), then `astrod stack`'s `stack_files` with the library,
in place, and a winsorized final integration, for a mono, a Bayer and an RGB session, with previews; and a
session worker's steps (preview, checkpoint, restore, one more frame). `astrod.io.kernel_cache` then stamps
numba's cache folder, so that its `notice_if_cold` can tell later commands whether a compile is still coming.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from astrod.core.calibrate import apply
from astrod.io.files import ensure_folder, scratch_folder
from astrod.io.frames import read_frame
from astrod.io.kernel_cache import COMPILE_ESTIMATE, compile_counts, is_warm, mark_warm
from astrod.library.build import build_library
from astrod.library.masters import MasterLibrary
from astrod.pipeline.calibration import library_calibrator
from astrod.pipeline.live import Calibrator, LiveStack, PipelineSettings, write_outputs
from astrod.pipeline.oneshot import stack_files

SIZE = (384, 288)  # small, but with room for the detection mesh and registration; even for the Bayer cells


@dataclass(frozen=True, slots=True)
class WarmupResult:
    """What `warm_up` did: skipped (the cache was warm already), and how many kernel signatures it loaded
    from the cache and compiled."""

    skipped: bool
    seconds: float
    loaded: int
    compiled: int
    stamp: Path | None


def warm_up(*, force: bool = False, say: Callable[[str], None] = lambda _: None) -> WarmupResult:
    """Compile astrod's kernels into numba's cache unless the stamp says they are there (``force``: anyway).
    ``say`` gets one line before a compile starts (the CLI prints it)."""
    log = structlog.get_logger()
    t0 = time.perf_counter()
    if not force and is_warm():
        log.info("kernels_checked", warm=True, seconds=round(time.perf_counter() - t0, 1))
        return WarmupResult(skipped=True, seconds=time.perf_counter() - t0, loaded=0, compiled=0, stamp=None)
    say(f"compiling kernels, once: {COMPILE_ESTIMATE}")
    log.info("kernels_compiling", expected=COMPILE_ESTIMATE)
    with scratch_folder("astrod-warmup-") as root:
        _run_night(root)
    seconds = time.perf_counter() - t0
    loaded, compiled = compile_counts()
    stamp = mark_warm(seconds=seconds)
    log.info("kernels_compiled", seconds=round(seconds, 1), loaded=loaded, compiled=compiled, stamp=str(stamp))
    return WarmupResult(skipped=False, seconds=seconds, loaded=loaded, compiled=compiled, stamp=stamp)


def _run_night(root: Path) -> None:
    from astrod.demo import synth

    width, height = SIZE
    sensors = {"mono": synth.Sensor(width=width, height=height, seed=1, hot_pixels=40, dust=1),
               "osc": synth.Sensor(width=width, height=height, seed=2, hot_pixels=40, dust=1, bayer="RGGB")}
    lights: dict[str, list[Path]] = {}
    for i, (name, sensor) in enumerate(sensors.items()):
        synth.write_calibration_set(root / "calibration" / name, sensor, seed=10 + i, filter="L")
        session = synth.make_session(n_frames=6, width=width, height=height, seed=20 + i, sensor=sensor,
                                     n_stars=150, max_shift=8.0, max_rotation_deg=0.5)
        lights[name] = session.write(ensure_folder(root / "lights" / name))
    # RGB frames (a colour camera's debayered or a TIFF's planes): same scenes, 3 planes, no masters
    rgb = synth.make_session(n_frames=6, width=width, height=height, seed=30, n_stars=150, max_shift=8.0,
                             max_rotation_deg=0.5)
    lights["rgb"] = [synth.write_fits(root / "lights" / "rgb" / f"rgb_{i}.fits", synth.to_rgb(frame),
                                      object="M 42", filter=None)
                     for i, frame in enumerate(rgb.frames)]
    log = structlog.get_logger()
    t0 = time.perf_counter()
    build_library(root / "library", [root / "calibration"])
    log.info("warmup_library_built", seconds=round(time.perf_counter() - t0, 1))
    settings = replace(PipelineSettings(), final_rejection="winsorized")
    # `astrod stack` keeps prepared masters in memory, the daemon memory-maps them read-only (another type)
    with MasterLibrary.open(root / "library") as library:
        calibrator = library_calibrator(library, in_place=True)
        for name, paths in lights.items():
            # 3-plane frames are stacked uncalibrated (the calibrator rejects them), as `astrod stack` does
            product = stack_files(paths, settings, calibrator=calibrator if name != "rgb" else None)
            write_outputs(product, stack_path=root / f"{name}.fits", preview_path=root / f"{name}.jpg")
            log.info("warmup_stacked", session=name, seconds=round(time.perf_counter() - t0, 1))
        _master_combinations(library, lights["mono"][0])
    with MasterLibrary.open(root / "library", scratch=ensure_folder(root / "scratch")) as library:
        calibrator = library_calibrator(library, in_place=True)
        for name in ("mono", "osc"):
            _session_steps(root, lights[name], settings, calibrator)
            log.info("warmup_session_done", session=name, seconds=round(time.perf_counter() - t0, 1))
        _master_combinations(library, lights["mono"][0])


def _master_combinations(library: MasterLibrary, light: Path) -> None:
    """The calibration kernel has one specialisation per set of masters present (bias or exact dark, scaled
    dark, flat): calibrate a frame with each set a library can give, from the library's own master arrays."""
    frame = read_frame(light)
    prepared = library.prepared(library.match(frame.meta))
    master = prepared.offset if prepared.offset is not None else prepared.inverse_flat
    assert master is not None, "the warm-up library has masters for its lights"
    for offset, dark, flat in ((master, None, master), (master, None, None), (master, master, master),
                               (master, master, None), (None, None, master)):
        variant = replace(prepared, offset=offset, dark_current=dark, inverse_flat=flat, dark_mode="scaled",
                          dark_exposure=frame.meta.exposure, dark_used=dark is not None)
        apply(variant, frame.data, light_exposure=frame.meta.exposure)


def _session_steps(root: Path, paths: Sequence[Path], settings: PipelineSettings, calibrator: Calibrator) -> None:
    """What a session worker adds to `stack_files`: previews, a checkpoint restored, then more frames."""
    cache = ensure_folder(root / "cache" / paths[0].parent.name)
    live = LiveStack(settings, calibrator=calibrator, cache_dir=cache)
    for path in paths[:3]:
        live.process(read_frame(path))
    live.preview()
    checkpoint = root / f"{paths[0].parent.name}.checkpoint"
    live.save(checkpoint)
    live = LiveStack.load(checkpoint, settings, calibrator=calibrator, cache_dir=cache)
    for path in paths[3:]:
        live.process(read_frame(path))
    live.preview()
    live.finalize()
