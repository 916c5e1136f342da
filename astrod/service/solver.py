"""The plate-solver runner: astrometry.net's ``solve-field`` on astrod's own star list, never over the network.

astrod detects the stars itself (`astrod.core.stars.detect_stars`, the detection every frame gets anyway) and
hands them, brightest first, as an xylist; solve-field only matches them against its index files, within the
header's hints (`astrod.pipeline.solving.solve_hints`) and a time limit. The run happens in a scratch folder
that is removed afterwards; the answer is the ``.wcs`` file, read back as a `SolveResult`.

Why here, in service/: running a program with a time limit and killing its process group is the daemon's kind of
work (like `service.indiserver`); the files it reads and writes go through `astrod.io.solve_files`, and what the
answer means is `astrod.pipeline.solving`, so the background solve of a session's reference and `astrod solve`
share one function, `solve_frame`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from astrod.config import SolveConfig
from astrod.core.debayer import effective_pattern
from astrod.core.stars import StarList, detect_stars
from astrod.errors import SolveError
from astrod.io.files import scratch_folder
from astrod.io.fits import FITS_EXTENSIONS, is_fits_name, read_fits_header
from astrod.io.frames import read_frame
from astrod.io.solve_files import (
    SYSTEM_INDEX_DIR,
    CatalogueStars,
    find_index_files,
    put_wcs_into,
    read_catalogue_table,
    read_wcs_header,
    write_solver_config,
    write_with_wcs,
    write_xylist,
)
from astrod.model import Frame, FrameMeta
from astrod.pipeline.solving import (
    SolveHints,
    SolveResult,
    is_wcs_key,
    product_wcs_cards,
    solve_hints,
    solve_result,
)

log = structlog.get_logger()

PROGRAM = "solve-field"
# Seconds the solver gets beyond its CPU-time limit before it is killed: loading the index files (~1 s) and
# writing the answer are not part of the solve.
KILL_GRACE_S = 10.0
_SOLVED_WITH = re.compile(r"solved with index (\S+?)\.?\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class SolverSettings:
    """How to solve: the time limit (seconds of CPU; the process is killed ``KILL_GRACE_S`` later) of a solve
    with an RA/Dec hint and of a blind one (no position: the whole sky is searched, which takes longer), further
    index folders (searched before the system's), how many of the brightest stars to detect and the fewest to
    try."""

    timeout_s: float = 30.0
    blind_timeout_s: float = 120.0
    index_dirs: tuple[Path, ...] = ()
    max_stars: int = 300
    min_stars: int = 10
    program: str = PROGRAM

    @classmethod
    def from_config(cls, config: SolveConfig) -> SolverSettings:
        return cls(timeout_s=config.timeout_s, blind_timeout_s=config.blind_timeout_s,
                   index_dirs=tuple(config.index_dirs))

    def limit_s(self, hints: SolveHints) -> float:
        """The time limit of a solve with these hints: a blind one (no position) gets the longer one."""
        return self.timeout_s if hints.has_position else max(self.timeout_s, self.blind_timeout_s)

    @property
    def longest_s(self) -> float:
        """The longest one solve can take (the longer limit, then the kill)."""
        return max(self.timeout_s, self.blind_timeout_s) + KILL_GRACE_S

    @property
    def all_index_dirs(self) -> tuple[Path, ...]:
        return (*self.index_dirs, SYSTEM_INDEX_DIR)


def missing_solver(settings: SolverSettings = SolverSettings()) -> str | None:
    """Why nothing can be solved here (no solve-field, no index file), or None."""
    if shutil.which(settings.program) is None:
        return f"{settings.program} is not installed (Debian package astrometry.net; scripts/setup installs it)"
    if not find_index_files(settings.all_index_dirs):
        folders = ", ".join(str(f) for f in settings.all_index_dirs)
        return (f"no astrometry.net index files in {folders}: install astrometry-data-tycho2-* (scripts/setup) "
                "or add folders under [solve] index_dirs")
    return None


def detect_for_solving(data: npt.NDArray[np.floating[Any]], meta: FrameMeta, *, max_stars: int) -> StarList:
    """The brightest ``max_stars`` stars of a frame (a Bayer mosaic, a mono frame or colour planes)."""
    image = np.asarray(data, dtype=np.float32)
    pattern = None
    if image.ndim == 3:
        image = image.mean(axis=0, dtype=np.float32)
    elif meta.bayer is not None:
        pattern = effective_pattern(meta.bayer, meta.bayer_offset)
    h, w = image.shape
    return detect_stars(image, bayer=pattern, max_stars=max_stars, box=int(min(128, max(32, min(h, w) // 8))))


def _uncovered_field(hints: SolveHints, stars: StarList, settings: SolverSettings) -> str | None:
    """A one-line reason when the hinted field is narrower than every installed index can solve, else None."""
    if not hints.has_scale:
        return None
    quads = [f.quad_arcmin[0] for f in find_index_files(settings.all_index_dirs) if f.quad_arcmin is not None]
    field_arcmin = max(stars.width, stars.height) * float(hints.scale_high or 0.0) / 60.0
    if quads and min(quads) > field_arcmin:
        return (f"no index covers a {field_arcmin:.0f}′ field: add 2MASS/Gaia index files under [solve] "
                "index_dirs")
    return None


class RunningSolves:
    """The solver processes running now, so that a stopping daemon ends them (none is left behind: solve-field
    runs in a process group of its own, which no signal to the daemon reaches). Once `kill_all` was called, a
    solve that starts is killed at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[str]] = set()
        self._closed = False

    def started(self, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self._procs.add(proc)
            closed = self._closed
        if closed:
            _kill_group(proc)

    def ended(self, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self._procs.discard(proc)

    @property
    def closed(self) -> bool:
        """`kill_all` was called: solves end at once."""
        with self._lock:
            return self._closed

    def kill_all(self) -> int:
        """Kill every running solve (and refuse new ones); returns how many were running."""
        with self._lock:
            self._closed = True
            procs = list(self._procs)
        for proc in procs:
            _kill_group(proc)
        return len(procs)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # solve-field and the astrometry-engine it started


def _command(settings: SolverSettings, hints: SolveHints, stars: StarList, folder: Path, *,
             limit_s: float) -> list[str]:
    cmd = [settings.program, str(folder / "stars.xyls"), "--width", str(stars.width), "--height",
           str(stars.height), "--x-column", "X", "--y-column", "Y", "--no-plots", "--overwrite",
           "--no-remove-lines", "--crpix-center", "--cpulimit", f"{max(1, round(limit_s))}",
           "--config", str(folder / "astrometry.cfg"), "--dir", str(folder), "--temp-dir", str(folder),
           "--axy", str(folder / "stars.axy"), "--wcs", str(folder / "stars.wcs"), "--new-fits", "none",
           "--corr", "none", "--rdls", "none", "--match", "none", "--index-xyls", "none", "--solved", "none"]
    if hints.has_scale:
        cmd += ["--scale-units", "arcsecperpix", "--scale-low", f"{hints.scale_low:.4f}",
                "--scale-high", f"{hints.scale_high:.4f}"]
    if hints.has_position:
        cmd += ["--ra", f"{hints.ra:.6f}", "--dec", f"{hints.dec:.6f}", "--radius", f"{hints.radius_deg:g}"]
    return cmd


def _run(cmd: list[str], *, cwd: Path, wall_s: float, running: RunningSolves | None = None) -> tuple[str, bool]:
    """Run the solver in its own process group; (its output, whether it was killed at ``wall_s``)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True, stdin=subprocess.DEVNULL)
    if running is not None:
        running.started(proc)
    try:
        out, _ = proc.communicate(timeout=wall_s)
        return out, proc.returncode == -signal.SIGKILL
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, _ = proc.communicate()
        return out, True
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        if running is not None:
            running.ended(proc)


def solve_stars(stars: StarList, hints: SolveHints, *, settings: SolverSettings, name: str,
                running: RunningSolves | None = None) -> SolveResult:
    """Solve a star list (brightest first, 0-based pixel centres) with solve-field within the settings' time
    limit (`SolverSettings.limit_s`). ``name`` (the frame's file) leads every error message; ``running`` keeps
    the process while it runs (see `RunningSolves`). Raises SolveError with a one-line reason."""
    missing = missing_solver(settings)
    if missing is not None:
        raise SolveError(f"{name}: cannot solve: {missing}")
    if len(stars) < settings.min_stars:
        raise SolveError(f"{name}: only {len(stars)} stars detected (at least {settings.min_stars} needed to solve)")
    uncovered = _uncovered_field(hints, stars, settings)
    if uncovered is not None:
        raise SolveError(f"{name}: {uncovered}")
    started = time.monotonic()
    limit = settings.limit_s(hints)
    with scratch_folder("astrod-solve-") as folder:
        write_xylist(folder / "stars.xyls", stars)
        write_solver_config(folder / "astrometry.cfg", settings.all_index_dirs, cpulimit_s=limit)
        try:
            out, killed = _run(_command(settings, hints, stars, folder, limit_s=limit), cwd=folder,
                               wall_s=limit + KILL_GRACE_S, running=running)
        except OSError as err:
            raise SolveError(f"{name}: cannot run {settings.program}: {err.strerror or err}") from err
        seconds = time.monotonic() - started
        if running is not None and running.closed:
            raise SolveError(f"{name}: solve stopped: astrod is stopping")
        wcs_file = folder / "stars.wcs"
        if killed or not wcs_file.is_file():
            if killed or seconds >= limit or "CPU time limit" in out:
                raise SolveError(f"{name}: time limit ({limit:g} s) reached without a solution "
                                 f"({len(stars)} stars, {hints.describe()})")
            last = next((line.strip() for line in reversed(out.splitlines()) if "rror" in line), "")
            raise SolveError(f"{name}: no solution ({len(stars)} stars, {hints.describe()})"
                             + (f": {last}" if last else ""))
        header = read_wcs_header(wcs_file)
    found = _SOLVED_WITH.search(out)
    index = Path(found.group(1)).name if found else ""
    result = solve_result(header, width=stars.width, height=stars.height, index=index, stars=len(stars),
                          seconds=seconds)
    log.info("frame_solved", frame=name, ra=round(result.ra, 5), dec=round(result.dec, 5),
             scale=round(result.scale_arcsec, 4), rotation=round(result.rotation_deg, 3), index=index,
             hints=hints.describe(), s=round(seconds, 2))
    return result


def solve_frame(data: npt.NDArray[np.floating[Any]], meta: FrameMeta, header: Mapping[str, Any], *,
                settings: SolverSettings, name: str, use_wcs_hints: bool = True,
                previous_scale: float | None = None, running: RunningSolves | None = None) -> SolveResult:
    """Detect the stars of a frame and solve them, with the hints its header gives (see `solve_hints`; with
    ``use_wcs_hints=False`` an existing WCS in the header is never looked at)."""
    try:
        stars = detect_for_solving(data, meta, max_stars=settings.max_stars)
    except ValueError as err:  # a frame too small to bin, an unknown Bayer pattern
        raise SolveError(f"{name}: cannot detect stars: {err}") from err
    hints = solve_hints(meta, header, use_wcs=use_wcs_hints, previous_scale=previous_scale)
    return solve_stars(stars, hints, settings=settings, name=name, running=running)


def solution_into_products(paths: Iterable[Path], result: SolveResult, *, frame_shape: tuple[int, int]) -> list[Path]:
    """Put the WCS of a session reference's solution into its products already on disk (``paths``: the stack,
    the preview FITS, the final stack; missing ones are skipped), each scaled to its own grid; a product on
    another grid (cropped, resampled) is left as it is. Returns the products that got it. Products written
    later get it when they are written (`stack_with_wcs`, `write_preview(wcs=...)`); call this from the thread
    that writes the session's products, so that a preview is not rewritten meanwhile."""
    done: list[Path] = []
    for path in paths:
        if not path.is_file():
            continue
        header = read_fits_header(path)
        shape = tuple(int(header.get(f"NAXIS{i}", 0)) for i in range(int(header.get("NAXIS", 0)), 0, -1))
        cards = product_wcs_cards(result, frame_shape=frame_shape, image_shape=shape)
        if cards is None:
            log.info("solution_not_applied", product=str(path), shape=shape, frame_shape=frame_shape)
            continue
        put_wcs_into(path, [(k, v, c) for k, (v, c) in cards.items()],
                     remove=[k for k in header if k and is_wcs_key(k)])
        done.append(path)
    if done:
        log.info("solution_applied", products=[p.name for p in done], ra=round(result.ra, 5), dec=round(result.dec, 5))
    return done


def catalogue_stars(ra: float, dec: float, radius_deg: float, *,
                    settings: SolverSettings = SolverSettings()) -> CatalogueStars:
    """The stars the installed index files hold within ``radius_deg`` of (``ra``, ``dec``), each once, brightest
    first (astrometry.net's ``query-starkd`` over every index file). Raises SolveError when it cannot run."""
    files = find_index_files(settings.all_index_dirs)
    with scratch_folder("astrod-catalogue-") as folder:
        answers = []
        for i, index in enumerate(files):
            answer = folder / f"stars-{i}.fits"
            cmd = ["query-starkd", "-r", f"{ra:.8f}", "-d", f"{dec:.8f}", "-R", f"{radius_deg:.6f}", "-T",
                   "-o", str(answer), str(index.path)]
            try:
                subprocess.run(cmd, cwd=folder, capture_output=True, timeout=60, check=True)
            except (OSError, subprocess.SubprocessError) as err:
                raise SolveError(f"{index.path}: query-starkd failed: {err}") from err
            answers.append(answer)
        return read_catalogue_table(answers)


def wcs_copy_name(path: Path) -> str:
    """``NAME.wcs.fits`` for a frame ``NAME.fits`` (or .fit, .fits.gz, a raw file's extension, ...)."""
    name = path.name
    lower = name.lower()
    ext = max((e for e in FITS_EXTENSIONS if lower.endswith(e)), key=len, default=path.suffix)
    return f"{name[: len(name) - len(ext)] if ext else name}.wcs.fits"


def solve_path(path: Path, *, settings: SolverSettings, rename: Mapping[str, str] | None = None,
               use_wcs_hints: bool = True, previous_scale: float | None = None,
               running: RunningSolves | None = None) -> SolveResult:
    """Solve the frame file ``path`` as it is on disk (a session's reference frame: a raw Bayer mosaic solves as
    well as a calibrated frame); nothing is written. The function a background solve of a session's reference
    calls. Raises SolveError or FrameReadError with a one-line reason."""
    return _solve_path(path, settings=settings, rename=rename, use_wcs_hints=use_wcs_hints,
                       previous_scale=previous_scale, running=running)[2]


def _solve_path(path: Path, *, settings: SolverSettings, rename: Mapping[str, str] | None, use_wcs_hints: bool,
                previous_scale: float | None = None, running: RunningSolves | None = None,
                ) -> tuple[Frame, Mapping[str, Any], SolveResult]:
    frame = read_frame(path, rename=rename)
    header: Mapping[str, Any] = read_fits_header(path) if is_fits_name(path) else {}
    result = solve_frame(frame.data, frame.meta, header, settings=settings, name=str(path),
                         use_wcs_hints=use_wcs_hints, previous_scale=previous_scale, running=running)
    return frame, header, result


@dataclass(frozen=True, slots=True)
class SolvedFile:
    """A frame file solved: the copy carrying the WCS, and the solution."""

    path: Path
    output: Path
    result: SolveResult


def solve_file(path: Path, *, settings: SolverSettings, output_dir: Path | None = None,
               rename: Mapping[str, str] | None = None, use_wcs_hints: bool = True) -> SolvedFile:
    """Solve the frame file ``path`` and write a copy of it with the WCS in its header as ``NAME.wcs.fits`` into
    ``output_dir`` (default: beside the frame). The frame itself is never changed. Raises SolveError or
    FrameReadError with a one-line reason."""
    frame, header, result = _solve_path(path, settings=settings, rename=rename, use_wcs_hints=use_wcs_hints)
    target = (output_dir if output_dir is not None else path.parent) / wcs_copy_name(path)
    cards = (*result.cards, ("PLTSOLVD", True, f"plate-solved by astrod (astrometry.net, {result.index})"))
    write_with_wcs(path, target, cards, remove=[k for k in header if k and is_wcs_key(k)], pixels=frame.data)
    log.info("solution_written", frame=str(path), output=str(target))
    return SolvedFile(path=path, output=target, result=result)
