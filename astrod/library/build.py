"""``astrod library build``: scan folders of calibration frames, group them, write one master per group.

The build is idempotent and safe to kill. Each master's FITS file is written atomically, then its index row
is committed in one transaction; a killed build leaves at worst a master file without a row, which the next
build writes again (byte for byte the same: master files carry no wall-clock time). By default only missing
masters are built; ``refresh`` rebuilds every master whose sources or recipe changed and never deletes a master
whose sources are gone. Bad-pixel maps are derived from the masters and follow them: a map is rebuilt whenever
the masters it comes from, or its recipe (:class:`BadPixelParams`), changed. A master dark keeps, in its image
extension ``NOISE``, each pixel's temporal scatter over the frames it was combined from: the bad-pixel map needs it
to tell the pixels the dark cannot correct (unstable ones) from steady warm pixels it corrects.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import structlog
from astropy.io import fits

from astrod import __version__
from astrod.config import Config
from astrod.core.calibrate import BadPixels, find_bad_pixels
from astrod.core.combine import CenFunc, CombineResult, Method, StdFunc, combine, combine_flats, frame_medians
from astrod.errors import AstrodError, FrameReadError, LibraryError
from astrod.io.bands import RowLayout, open_rows, read_band
from astrod.io.files import files_matching, remove_folder, walk_files
from astrod.io.fits import is_fits_name, read_fits, read_fits_extension, read_fits_header, write_fits
from astrod.io.frames import is_frame_name, is_raw_name, read_meta
from astrod.io.headers import PathRule, normalise, rules_from_config
from astrod.io.index import INDEX_NAME, MasterIndex, file_digest, file_stamp, library_lock, remove_stale_temporaries
from astrod.io.provenance import ParamValue, Provenance, put_card, write_provenance
from astrod.library.keys import (
    CalibrationKey,
    MasterKind,
    badpixel_key,
    key_of,
    safe_name,
    sort_key,
)
from astrod.library.match import MatchRules, choose_bias, choose_dark
from astrod.library.progress import NoProgress, Progress
from astrod.library.records import MasterRecord
from astrod.model import FrameKind, FrameMeta

FloatArray = npt.NDArray[np.float32]
Status = Literal["new", "rebuilt", "exists", "up to date", "failed"]
SPOOL_NAME = ".spool"
NOISE_EXTNAME = "NOISE"  # the image extension of a master dark holding its per-pixel temporal noise
NOISE_RECIPE = 1  # in a dark's build hash: darks made before they kept a noise map are rebuilt by --refresh
RUNTIME_RESERVE = 320 * 1024 * 1024  # interpreter, numpy, numba, astropy: what a build process holds anyway


# ------------------------------------------------------------------------------------------------ options


@dataclass(frozen=True, slots=True)
class CombineParams:
    """How the frames of a master are combined (see :func:`astrod.core.combine.combine`)."""

    method: Method = "sigma_clip"
    kappa: float = 3.0
    maxiters: int | None = 5
    cenfunc: CenFunc = "median"
    stdfunc: StdFunc = "std"
    nlow: int = 1
    nhigh: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "kappa": self.kappa, "maxiters": self.maxiters, "cenfunc": self.cenfunc,
                "stdfunc": self.stdfunc, "nlow": self.nlow, "nhigh": self.nhigh}


@dataclass(frozen=True, slots=True)
class BadPixelParams:
    """How bad pixels are told from good ones (see :func:`astrod.core.calibrate.find_bad_pixels`); part of a
    bad-pixel map's build hash, so a map made under other numbers is rebuilt."""

    unstable_factor: float = 3.0
    hot_noise_factor: float = 5.0
    saturation_fraction: float = 0.8
    stuck_factor: float = 4.0
    hot_sigma: float = 5.0
    cold_fraction: float = 0.5
    column_fraction: float = 0.5
    column_sigma: float = 5.0
    recipe: int = 2  # 1: hot pixels from the master dark alone; 2: from its temporal noise map

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def kwargs(self) -> dict[str, float]:
        return {k: v for k, v in self.as_dict().items() if k != "recipe"}


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """Everything a build needs besides its sources and library folder."""

    refresh: bool = False
    jobs: int = 1
    min_frames: int = 5
    memory_cap_bytes: int = 2048 * 1024 * 1024
    temperature_bucket: float = 1.0
    combine: CombineParams = field(default_factory=CombineParams)
    rules: MatchRules = field(default_factory=MatchRules)
    rename: Mapping[str, str] = field(default_factory=dict)
    path_rules: tuple[PathRule, ...] = ()
    badpixels: BadPixelParams = field(default_factory=BadPixelParams)

    @classmethod
    def from_config(cls, config: Config, *, refresh: bool = False, jobs: int = 1,
                    min_frames: int | None = None) -> BuildOptions:
        lib = config.library
        method: Method = lib.combine  # type: ignore[assignment]  # validated by the config's choices
        return cls(refresh=refresh, jobs=max(1, jobs), min_frames=lib.min_frames if min_frames is None else min_frames,
                   memory_cap_bytes=lib.memory_cap_mb * 1024 * 1024, temperature_bucket=lib.temperature_bucket,
                   combine=CombineParams(method=method, kappa=lib.kappa), rules=MatchRules.from_config(config),
                   rename=dict(config.headers.rename), path_rules=rules_from_config(config.headers))


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file the build did not use, and why (one line)."""

    path: Path
    reason: str


@dataclass(frozen=True, slots=True)
class BuiltMaster:
    """What the build did for one master key."""

    key: CalibrationKey
    status: Status
    path: Path | None
    n_frames: int
    low_n: bool = False
    note: str = ""
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "kind": self.key.kind.value, "key": self.key.describe(),
                "key_id": self.key.key_id, "path": None if self.path is None else str(self.path),
                "n_frames": self.n_frames, "low_n": self.low_n, "note": self.note, "warnings": list(self.warnings)}


@dataclass(frozen=True, slots=True)
class BuildReport:
    """The outcome of a build: one entry per master key seen, the files skipped, and counts."""

    masters: tuple[BuiltMaster, ...]
    skipped: tuple[Skipped, ...]
    scanned: int
    lights_ignored: int

    def count(self, status: Status) -> int:
        return sum(1 for m in self.masters if m.status == status)


@dataclass(frozen=True, slots=True)
class SourceFrame:
    """A calibration frame found by the scan, with the stamp (size, mtime) its source hash is made of."""

    path: Path
    meta: FrameMeta
    size: int
    mtime_ns: int


# ------------------------------------------------------------------------------------------------- scan


def _list_files(sources: Sequence[Path], *, exclude: Path) -> list[Path]:
    found: set[Path] = set()
    for source in sources:
        if source.is_file():
            found.add(source.resolve())
            continue
        if not source.is_dir():
            raise LibraryError(f"{source}: source folder does not exist")
        found.update(walk_files(source, keep=is_frame_name, exclude=exclude))
    return sorted(found)


def _is_master_header(header: Mapping[str, Any]) -> str | None:
    if "ASTRDKEY" in header:
        return "an astrod master, not a source frame"
    for key in ("IMAGETYP", "FRAME", "FRAMETYP"):
        value = str(header.get(key, "") or "")
        if "master" in value.lower():
            return f"{key}={value.strip()!r}: a master, not a source frame"
    return None


def _read_source(path: Path, *, rename: Mapping[str, str], rules: tuple[PathRule, ...]) -> SourceFrame | Skipped:
    try:
        size, mtime_ns = file_stamp(path)
        if is_fits_name(path) and not is_raw_name(path):
            header = read_fits_header(path)
            why = _is_master_header(header)
            if why is not None:
                return Skipped(path, why)
            meta = normalise(header, path, rename=rename, rules=rules)
        else:
            meta = read_meta(path, rename=rename, rules=rules)
    except (AstrodError, OSError) as err:
        return Skipped(path, str(err).removeprefix(f"{path}: "))
    if meta.kind is FrameKind.UNKNOWN:
        return Skipped(path, f"kind unknown: {meta.kind_reason}")
    if meta.kind is FrameKind.LIGHT:
        return SourceFrame(path, meta, size, mtime_ns)  # counted, then ignored
    if meta.stack_count > 1:
        return Skipped(path, f"already combined from {meta.stack_count} frames (NCOMBINE/STACKCNT)")
    if meta.planes != 1:
        return Skipped(path, f"{meta.planes}-plane image: masters need single-plane sensor data")
    if meta.width <= 0 or meta.height <= 0:
        return Skipped(path, "no image size in the header")
    if meta.kind in (FrameKind.DARK, FrameKind.DARKFLAT) and not (meta.exposure is not None and meta.exposure >= 0):
        return Skipped(path, f"{meta.kind.value} without an exposure time")
    return SourceFrame(path, meta, size, mtime_ns)


def scan_sources(sources: Sequence[Path], *, library: Path, options: BuildOptions,
                 progress: Progress) -> tuple[list[SourceFrame], list[Skipped], int]:
    """Every calibration frame under ``sources`` (recursively; the library folder itself excluded), the files
    skipped with their reasons, and the number of lights ignored. Headers are read by ``options.jobs``
    threads at most (a bounded pool that ends with the scan)."""
    paths = _list_files(sources, exclude=library)
    progress.start("scan", len(paths))
    frames: list[SourceFrame] = []
    skipped: list[Skipped] = []
    lights = 0

    def read(p: Path) -> SourceFrame | Skipped:
        return _read_source(p, rename=options.rename, rules=options.path_rules)

    results: Iterable[SourceFrame | Skipped]
    with contextlib.ExitStack() as stack:
        if options.jobs > 1 and len(paths) > 1:
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=options.jobs, thread_name_prefix="astrod-scan"))
            results = pool.map(read, paths)
        else:
            results = map(read, paths)
        for result in results:
            progress.advance(result.path.name)
            if isinstance(result, Skipped):
                skipped.append(result)
            elif result.meta.kind is FrameKind.LIGHT:
                lights += 1
            else:
                frames.append(result)
    progress.finish()
    return frames, skipped, lights


def group_frames(frames: Iterable[SourceFrame], *, temperature_bucket: float,
                 longitude: float | None) -> dict[CalibrationKey, list[SourceFrame]]:
    """Frames grouped by the key of the master they go into, each group sorted by path."""
    groups: dict[CalibrationKey, list[SourceFrame]] = defaultdict(list)
    for frame in frames:
        kind = MasterKind.of_frame(frame.meta.kind)
        if kind is None:
            continue
        groups[key_of(frame.meta, kind, temperature_bucket=temperature_bucket, longitude=longitude)].append(frame)
    return {k: sorted(v, key=lambda f: str(f.path)) for k, v in groups.items()}


# ------------------------------------------------------------------------------------------------ hashes


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def source_hash(frames: Sequence[SourceFrame]) -> str:
    """A hash of the source list: every path with its size and modification time."""
    return _sha(sorted([str(f.path), f.size, f.mtime_ns] for f in frames))


def _build_hash(key: CalibrationKey, src_hash: str, options: BuildOptions, extra: Mapping[str, Any]) -> str:
    return _sha({"key": key.key_id, "sources": src_hash, "combine": options.combine.as_dict(),
                 "min_frames": options.min_frames, "version": __version__, **extra})


# ------------------------------------------------------------------------------------------------ headers


def _put(header: fits.Header, key: str, value: Any, comment: str = "") -> None:
    put_card(header, key, value, comment)


def _master_header(key: CalibrationKey, frames: Sequence[SourceFrame], *, n: int, low_n: bool,
                   options: BuildOptions, description: str, rejected: float, src_hash: str, build_hash: str,
                   extra: Mapping[str, tuple[Any, str]]) -> fits.Header:
    metas = [f.meta for f in frames]
    temps = [m.temperature for m in metas if m.temperature is not None]
    dates = sorted(m.date_obs for m in metas if m.date_obs is not None)
    first = metas[0]
    h = fits.Header()
    _put(h, "IMAGETYP", key.kind.title, "astrod master")
    _put(h, "ASTRDKEY", key.key_id, "astrod master key id")
    _put(h, "ASTRDKJS", json.dumps(key.as_dict(), sort_keys=True), "grouping key (JSON)")
    c = options.combine
    params: dict[str, tuple[ParamValue, str]] = {
        "LOW_N": (low_n, f"fewer than {options.min_frames} frames"),
        "MINFRAME": (options.min_frames, "frames a master should have")}
    if c.method == "sigma_clip":
        params["COMBKAPP"] = (c.kappa, "sigma-clip threshold (low and high)")
        params["COMBITER"] = (-1 if c.maxiters is None else c.maxiters, "sigma-clip iterations (-1: to convergence)")
        params["COMBCEN"] = (c.cenfunc, "sigma-clip centre")
        params["COMBDEV"] = (c.stdfunc, "sigma-clip deviation")
    if c.method == "minmax":
        params["COMBNLOW"] = (c.nlow, "lowest values dropped")
        params["COMBNHI"] = (c.nhigh, "highest values dropped")
    params["COMBDESC"] = (description, "how the frames were combined")
    params["REJFRAC"] = (round(rejected, 6), "fraction of samples rejected")
    _put(h, "INSTRUME", key.camera, "camera")
    _put(h, "CAMSERNO", key.serial, "camera serial number")
    _put(h, "GAIN", key.gain, "sensor gain")
    _put(h, "OFFSET", key.offset, "sensor offset")
    _put(h, "XBINNING", key.binning[0], "binning in x")
    _put(h, "YBINNING", key.binning[1], "binning in y")
    if key.roi_x or key.roi_y:
        _put(h, "XORGSUBF", key.roi_x, "ROI origin x")
        _put(h, "YORGSUBF", key.roi_y, "ROI origin y")
    _put(h, "READOUTM", key.readout_mode, "readout mode")
    _put(h, "SET-TEMP", key.temperature, "[degC] set temperature (bucket)")
    if temps:
        _put(h, "CCD-TEMP", round(float(np.mean(temps)), 3), "[degC] mean sensor temperature of the sources")
    if key.kind is MasterKind.BIAS:
        _put(h, "EXPTIME", 0.0, "[s] exposure")
    elif key.exposure is not None:
        _put(h, "EXPTIME", key.exposure, "[s] exposure")
    elif key.kind is MasterKind.FLAT:
        exposures = [m.exposure for m in metas if m.exposure is not None]
        if exposures:
            _put(h, "EXPTIME", round(float(np.median(exposures)), 6), "[s] median exposure of the flats")
    _put(h, "FILTER", key.filter, "filter")
    _put(h, "NIGHT", None if key.night is None else key.night.isoformat(), "night (local noon to noon)")
    if dates:
        _put(h, "DATE-OBS", dates[0].strftime("%Y-%m-%dT%H:%M:%S.%f"), "first source frame (UTC)")
        _put(h, "DATE-END", dates[-1].strftime("%Y-%m-%dT%H:%M:%S.%f"), "last source frame (UTC)")
    if first.bayer:
        _put(h, "BAYERPAT", first.bayer, "CFA pattern")
        _put(h, "XBAYROFF", first.bayer_offset[0], "CFA x offset")
        _put(h, "YBAYROFF", first.bayer_offset[1], "CFA y offset")
    for name, (value, comment) in extra.items():
        params[name] = (value, comment)
    params["SRCHASH"] = (src_hash, "")  # SHA-256 of the source list; no room left for a comment
    params["BLDHASH"] = (build_hash, "")  # SHA-256 of the sources and the recipe
    # HISTORY 'source <name>' per frame: _reindex reads them back
    return write_provenance(h, Provenance(
        kind=f"master {key.kind.value}", inputs=tuple(f.path.name for f in frames), method=c.method,
        method_card="COMBMETH", method_comment="combination method", ncombine=n, parameters=params,
        software_cards=("SWCREATE",)))


# ------------------------------------------------------------------------------------------------- builder


def master_path(library: Path, key: CalibrationKey) -> Path:
    """Where the master of ``key`` lives: ``masters/<kind>/<camera>/<name>.fits`` (bad-pixel maps under
    ``badpixels/<camera>/``)."""
    camera = safe_name(key.camera or "unknown camera")
    name = f"{key.file_stem()}.fits"
    if key.kind is MasterKind.BADPIXELS:
        return Path(library, "badpixels", camera, name)
    return Path(library, "masters", key.kind.value, camera, name)


@dataclass(frozen=True, slots=True)
class FlatCalibration:
    """The masters a group of flats is calibrated with before combination."""

    bias: MasterRecord | None
    dark: MasterRecord | None

    def hashes(self) -> dict[str, str]:
        return {role: r.content_hash for role, r in (("bias", self.bias), ("dark", self.dark)) if r is not None}


class _Builder:
    """One build run: holds the index, the options, the progress sink and the log."""

    def __init__(self, library: Path, index: MasterIndex, options: BuildOptions, progress: Progress) -> None:
        self.library = library
        self.index = index
        self.options = options
        self.progress = progress
        self.log = structlog.get_logger().bind(library=str(library))
        self.skipped: list[Skipped] = []
        self.spool = library / SPOOL_NAME

    # -- index access

    def records(self) -> list[MasterRecord]:
        return [MasterRecord.from_row(row, self.library) for row in self.index.rows()]

    def existing(self, key: CalibrationKey) -> MasterRecord | None:
        row = self.index.get(key.key_id)
        if row is None:
            return None
        record = MasterRecord.from_row(row, self.library)
        try:
            size, _ = file_stamp(record.path)
        except LibraryError:
            return None  # the file is gone: the master is missing, whatever the index says
        return record if size == record.info.get("file_size", size) else None

    def commit(self, key: CalibrationKey, path: Path, *, n: int, low_n: bool, src_hash: str, build_hash: str,
               info: dict[str, Any]) -> MasterRecord:
        size, _ = file_stamp(path)
        record = MasterRecord(key=key, path=path, n_frames=n, low_n=low_n, source_hash=src_hash,
                              build_hash=build_hash, content_hash=file_digest(path), created=datetime.now(UTC),
                              info={**info, "file_size": size})
        self.index.put(record.to_row(self.library))
        return record

    # -- frames

    def open_layouts(self, frames: Sequence[SourceFrame], key: CalibrationKey,
                     ) -> tuple[list[SourceFrame], list[RowLayout]]:
        kept: list[SourceFrame] = []
        layouts: list[RowLayout] = []
        for f in frames:
            try:
                lay = open_rows(f.path, spool_dir=self.spool)
            except FrameReadError as err:
                self.skip(f.path, str(err).removeprefix(f"{f.path}: "))
                continue
            if lay.shape != (key.height, key.width):
                self.skip(f.path, f"image is {lay.width}x{lay.height}, its header says {key.width}x{key.height}")
                continue
            if (lay.size, lay.mtime_ns) != (f.size, f.mtime_ns) and lay.path == f.path:
                self.skip(f.path, "changed since the scan")
                continue
            kept.append(f)
            layouts.append(lay)
        return kept, layouts

    def band_budget(self, held: int) -> int:
        """What the combination may use of the memory cap: the cap less what the process holds besides the bands
        (``held`` bytes of masters, and a reserve for the interpreter, numba and one frame's decoded rows)."""
        cap = self.options.memory_cap_bytes
        reserve = min(RUNTIME_RESERVE, cap // 4)
        return max(cap - reserve - held, cap // 8)

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append(Skipped(path, reason))
        self.log.warning("frame_skipped", path=str(path), reason=reason)

    # -- combination

    def _combine_kwargs(self, n: int) -> tuple[dict[str, Any], str | None]:
        c = self.options.combine
        method: Method = c.method
        note = None
        if method == "minmax" and c.nlow + c.nhigh >= n:
            method = "median"
            note = f"{n} frames are too few to drop {c.nlow}+{c.nhigh} extremes: median used"
        return ({"method": method, "sigma_low": c.kappa, "sigma_high": c.kappa, "maxiters": c.maxiters,
                 "cenfunc": c.cenfunc, "stdfunc": c.stdfunc, "nlow": c.nlow, "nhigh": c.nhigh}, note)

    def combine_plain(self, key: CalibrationKey, layouts: Sequence[RowLayout]) -> tuple[CombineResult, list[str]]:
        """Combine bias, dark or dark-flat frames; a dark of two or more frames also gets its temporal noise map
        (in the same pass), which tells the bad-pixel map the pixels that dark cannot correct."""
        kwargs, note = self._combine_kwargs(len(layouts))
        noise = key.kind is MasterKind.DARK and len(layouts) >= 2
        result = combine(lambda r0, r1: read_band(layouts, r0, r1), n_frames=len(layouts),
                         shape=(key.height, key.width), memory_cap_bytes=self.band_budget(0), noise=noise, **kwargs)
        return result, [note] if note else []

    def flat_calibration(self, meta: FrameMeta) -> FlatCalibration:
        """The masters that calibrate a group of flats like ``meta`` (bias, dark-flat), chosen by the rules."""
        records = self.records()
        rules = self.options.rules
        bias_choice, _ = choose_bias(meta, records, rules)
        dark_choice, _, _, _, _ = choose_dark(meta, records, rules, bias=bias_choice,
                                              kinds=(MasterKind.DARKFLAT, MasterKind.DARK))
        return FlatCalibration(bias=None if bias_choice is None else bias_choice.record,
                               dark=None if dark_choice is None else dark_choice.record)

    def combine_flat(self, key: CalibrationKey, frames: list[SourceFrame], layouts: list[RowLayout],
                     cal: FlatCalibration) -> tuple[CombineResult, list[str], dict[str, tuple[Any, str]]]:
        """Calibrate each flat (bias or dark-flat, scaled to its own exposure if needed), scale by 1/median,
        combine, normalise to 1. Returns the result, warnings and header cards. Drops (from ``frames`` and
        ``layouts``) flats whose calibrated median is not positive."""
        meta = frames[0].meta
        warnings: list[str] = []
        bias = self._load(cal.bias) if cal.bias else None
        dark = self._load(cal.dark) if cal.dark else None
        cards: dict[str, tuple[Any, str]] = {}
        if cal.bias:
            cards["CALBIAS"] = (cal.bias.name, "master bias subtracted from each flat")
        if cal.dark:
            cards["CALDARK"] = (cal.dark.name, "master dark(-flat) subtracted from each flat")
        t_dark = None if cal.dark is None else cal.dark.key.exposure
        # per flat: subtract base + k * current, with k = t_flat / t_dark when the dark must be scaled
        base: FloatArray | None
        current: FloatArray | None = None
        ks = np.zeros(len(frames), dtype=np.float32)
        if dark is not None:
            exposures = [f.meta.exposure for f in frames]
            same = all(e is not None and t_dark is not None and abs(e - t_dark) <= 1e-3 * max(t_dark, 1e-3)
                       for e in exposures)
            if same or bias is None or not t_dark:
                base = dark
                if not same:
                    warnings.append("flat exposures differ from the dark-flat's and there is no bias to scale it: "
                                    "dark-flat subtracted as it is")
            else:
                base = bias
                current = (dark - bias).astype(np.float32)
                ks = np.array([float(e or 0.0) / t_dark for e in exposures], dtype=np.float32)
                cards["CALDSCAL"] = ("exposure", "dark-flat scaled to each flat's exposure")
        elif bias is not None:
            base = bias
        else:
            base = None
            warnings.append("flats combined without calibration: no bias or dark-flat for them")

        def calibrated(r0: int, r1: int) -> npt.NDArray[np.generic]:
            band = read_band(layouts, r0, r1)
            if base is not None:
                band -= base[r0:r1][np.newaxis]
            if current is not None:
                for i in range(band.shape[0]):
                    if ks[i]:
                        band[i] -= ks[i] * current[r0:r1]
            return band

        shape = (key.height, key.width)
        held = sum(a.nbytes for a in (bias, dark, current) if a is not None)
        cap = self.band_budget(held)
        medians = frame_medians(calibrated, n_frames=len(frames), shape=shape, memory_cap_bytes=cap)
        good = [i for i, m in enumerate(medians) if np.isfinite(m) and m > 0]
        for i in sorted(set(range(len(frames))) - set(good)):
            self.skip(frames[i].path, f"calibrated median {medians[i]:.4g} is not positive: not a usable flat")
        if not good:
            raise LibraryError("no usable flat in the group")
        if len(good) < len(frames):
            frames[:] = [frames[i] for i in good]
            layouts[:] = [layouts[i] for i in good]
            ks = ks[good]
            medians = medians[good]
        kwargs, note = self._combine_kwargs(len(frames))
        result = combine_flats(calibrated, n_frames=len(frames), shape=shape, medians=medians, bayer=meta.bayer,
                               bayer_offset=meta.bayer_offset, memory_cap_bytes=cap, **kwargs)
        if note:
            warnings.append(note)
        return result, warnings, cards

    def _load(self, record: MasterRecord) -> FloatArray:
        return self._load_with_header(record)[0]

    def _load_with_header(self, record: MasterRecord) -> tuple[FloatArray, fits.Header]:
        try:
            return read_fits(record.path)
        except FrameReadError as err:
            raise LibraryError(f"{record.path}: cannot read the master: {err}") from err

    def _load_noise(self, record: MasterRecord) -> FloatArray | None:
        """A master dark's temporal noise map, None when it has none (one frame, or an older library)."""
        try:
            found = read_fits_extension(record.path, NOISE_EXTNAME)
        except FrameReadError as err:
            raise LibraryError(f"{record.path}: cannot read the master's noise map: {err}") from err
        return None if found is None else found[0]

    # -- one master

    def build(self, key: CalibrationKey, frames: list[SourceFrame]) -> BuiltMaster:
        existing = self.existing(key)
        if existing is not None and not self.options.refresh:
            note = "" if existing.source_hash == source_hash(frames) else "sources changed; --refresh rebuilds it"
            return BuiltMaster(key, "exists", existing.path, existing.n_frames, existing.low_n, note=note)
        frames, layouts = self.open_layouts(frames, key)
        if not frames:
            return BuiltMaster(key, "failed", None, 0, note="no readable frame")
        cal = self.flat_calibration(frames[0].meta) if key.kind is MasterKind.FLAT else None
        # a flat's recipe includes the masters that calibrate it; a dark's, that it keeps a noise map
        extra: dict[str, Any] = {} if cal is None else {"calibrated_with": cal.hashes()}
        if key.kind is MasterKind.DARK:
            extra["noise_map"] = NOISE_RECIPE
        src_hash = source_hash(frames)
        build_hash = _build_hash(key, src_hash, self.options, extra)
        if existing is not None and existing.build_hash == build_hash:
            return BuiltMaster(key, "up to date", existing.path, existing.n_frames, existing.low_n)
        try:
            if cal is not None:
                result, warnings, cards = self.combine_flat(key, frames, layouts, cal)
                if src_hash != source_hash(frames):  # unusable flats were dropped
                    src_hash = source_hash(frames)
                    build_hash = _build_hash(key, src_hash, self.options, extra)
            else:
                result, warnings = self.combine_plain(key, layouts)
                cards = _dark_cards(frames, layouts, result) if key.kind is MasterKind.DARK else {}
        except (AstrodError, ValueError) as err:
            self.log.error("master_failed", kind=key.kind.value, key=key.describe(), reason=str(err))
            return BuiltMaster(key, "failed", None, len(frames), note=str(err))
        n = len(frames)
        low_n = n < self.options.min_frames
        path = master_path(self.library, key)
        header = _master_header(key, frames, n=n, low_n=low_n, options=self.options, description=result.description,
                                rejected=result.rejected_fraction, src_hash=src_hash, build_hash=build_hash,
                                extra=cards)
        extensions = [] if result.noise is None else [(NOISE_EXTNAME, result.noise, _noise_header(n))]
        write_fits(path, result.image.astype(np.float32, copy=False), header, extensions=extensions)
        temps = [f.meta.temperature for f in frames if f.meta.temperature is not None]
        first_date = min((f.meta.date_obs for f in frames if f.meta.date_obs), default=None)
        info: dict[str, Any] = {
                "method": result.method, "description": result.description, "kappa": self.options.combine.kappa,
                "rejected_fraction": round(result.rejected_fraction, 6), "sources": [str(f.path) for f in frames],
                "temperature_mean": round(float(np.mean(temps)), 3) if temps else None,
                "bayer": frames[0].meta.bayer, "bayer_offset": list(frames[0].meta.bayer_offset),
                "date_obs": first_date.isoformat() if first_date else None, "warnings": warnings, **extra}
        record = self.commit(key, path, n=n, low_n=low_n, src_hash=src_hash, build_hash=build_hash, info=info)
        status: Status = "new" if existing is None else "rebuilt"
        self.log.info("master_written", kind=key.kind.value, key=key.describe(), n=n, low_n=low_n, status=status,
                      path=str(record.path))
        for w in warnings:
            self.log.warning("master_warned", kind=key.kind.value, key=key.describe(), warning=w)
        return BuiltMaster(key, status, record.path, n, low_n, warnings=tuple(warnings))

    # -- bad-pixel maps

    def badpixel_plans(self) -> dict[CalibrationKey, dict[str, MasterRecord]]:
        records = self.records()
        plans: dict[CalibrationKey, dict[str, MasterRecord]] = {}
        by_key: dict[CalibrationKey, list[MasterRecord]] = defaultdict(list)
        for r in records:
            if r.kind in (MasterKind.DARK, MasterKind.FLAT):
                by_key[badpixel_key(r.key)].append(r)
        for bkey, members in sorted(by_key.items(), key=lambda kv: kv[0].key_id):
            plan: dict[str, MasterRecord] = {}
            darks = [r for r in members if r.kind is MasterKind.DARK]
            if darks:
                # the longest dark shows hot pixels best
                dark = max(darks, key=lambda r: (r.key.exposure or 0.0, r.n_frames, r.key_id))
                plan["dark"] = dark
                biases = [r for r in records if r.kind is MasterKind.BIAS and badpixel_key(r.key) == bkey
                          and r.key.offset == dark.key.offset]
                if biases:
                    plan["bias"] = min(biases, key=lambda r: (abs((r.key.temperature or 0.0)
                                                                  - (dark.key.temperature or 0.0)), r.key_id))
            flats = [r for r in members if r.kind is MasterKind.FLAT]
            if flats:
                plan["flat"] = max(flats, key=lambda r: (r.key.night.toordinal() if r.key.night else 0,
                                                         r.n_frames, r.key_id))
            plans[bkey] = plan
        return plans

    def find_badpixels(self, plan: Mapping[str, MasterRecord]) -> tuple[BadPixels, list[str]]:
        """The bad pixels of the masters in ``plan``, and warnings. The dark is judged by its temporal noise
        map when it has one; without it (a dark of one frame, or from an older library) by the master alone,
        conservatively (see :func:`astrod.core.calibrate.find_bad_pixels`)."""
        warnings: list[str] = []
        dark: FloatArray | None = None
        noise: FloatArray | None = None
        saturation: float | None = None
        gain: float | None = None
        if "dark" in plan:
            record = plan["dark"]
            dark, header = self._load_with_header(record)
            noise = self._load_noise(record)
            saturation = _number(header.get("SATURATE"))
            gain = _number(header.get("EGAIN"))
            if noise is None:
                refresh = "; 'library build --refresh' rebuilds it with one" if record.n_frames > 1 else ""
                warnings.append(f"master dark {record.name} has no noise map: hot pixels judged by the master "
                                f"alone (conservative: every warm pixel flagged){refresh}")
            if "bias" in plan:
                bias = self._load(plan["bias"])
                dark = (dark - bias).astype(np.float32)
                if saturation is not None:
                    saturation -= float(np.nanmedian(bias))
        flat = self._load(plan["flat"]) if "flat" in plan else None
        cfa = any(r.bayer for r in plan.values())
        found = find_bad_pixels(master_dark=dark, master_flat=flat, dark_noise=noise, saturation=saturation,
                                gain=gain, cfa=cfa, **self.options.badpixels.kwargs())
        return found, warnings

    def build_badpixels(self, bkey: CalibrationKey, plan: Mapping[str, MasterRecord]) -> BuiltMaster:
        used = {role: r.content_hash for role, r in sorted(plan.items())}
        build_hash = _sha({"key": bkey.key_id, "masters": used, "version": __version__, "kind": "badpixels",
                           "rules": self.options.badpixels.as_dict()})
        existing = self.existing(bkey)
        if existing is not None and existing.build_hash == build_hash:
            return BuiltMaster(bkey, "up to date", existing.path, existing.n_frames)
        try:
            found, warnings = self.find_badpixels(plan)
        except (AstrodError, ValueError) as err:
            self.log.error("master_failed", kind="badpixels", key=bkey.describe(), reason=str(err))
            return BuiltMaster(bkey, "failed", None, 0, note=str(err))
        mask = found.mask
        n_bad = found.n_bad
        h = fits.Header()
        _put(h, "IMAGETYP", MasterKind.BADPIXELS.title, "1 = bad pixel")
        _put(h, "ASTRDKEY", bkey.key_id, "astrod master key id")
        _put(h, "ASTRDKJS", json.dumps(bkey.as_dict(), sort_keys=True), "grouping key (JSON)")
        _put(h, "INSTRUME", bkey.camera, "camera")
        _put(h, "CAMSERNO", bkey.serial, "camera serial number")
        _put(h, "GAIN", bkey.gain, "sensor gain")
        _put(h, "XBINNING", bkey.binning[0], "binning in x")
        _put(h, "YBINNING", bkey.binning[1], "binning in y")
        _put(h, "NBADPIX", n_bad, "bad pixels")
        params: dict[str, tuple[ParamValue, str]] = {}
        for role, card in (("dark", "BPMDARK"), ("bias", "BPMBIAS"), ("flat", "BPMFLAT")):
            if role in plan:
                params[card] = (plan[role].name, f"master {role} the map comes from")
        for card, value, comment in _badpixel_cards(found):
            params[card] = (value, comment)
        if found.rule == "master-only":
            h.add_comment("The dark has no noise map: master-only rule (conservative, every")
            h.add_comment("pixel that stands out of the master dark is flagged, steady or not).")
            if plan["dark"].n_frames > 1:
                h.add_comment("'astrod library build --refresh' rebuilds the dark with a noise map.")
        params["SRCHASH"] = (_sha(used), "")  # SHA-256 of the masters used
        params["BLDHASH"] = (build_hash, "")  # SHA-256 of the masters used and the recipe
        rule, rule_comment = params.pop("BPMRULE")
        write_provenance(h, Provenance(
            kind="bad-pixel map", inputs=tuple(r.name for _, r in sorted(plan.items())), method=str(rule),
            method_card="BPMRULE", method_comment=rule_comment, ncombine=len(plan),
            ncombine_comment="masters the map comes from", parameters=params))
        path = master_path(self.library, bkey)
        write_fits(path, mask.astype(np.uint8), h)
        info = {"from": {role: str(r.path) for role, r in plan.items()}, "bad_pixels": n_bad,
                "rule": found.rule, "reasons": dict(found.counts), "bad_columns": found.n_columns,
                "bayer": next((r.bayer for r in plan.values() if r.bayer), None),
                "bayer_offset": [0, 0], "sources": [str(r.path) for r in plan.values()], "warnings": warnings}
        record = self.commit(bkey, path, n=len(plan), low_n=False, src_hash=_sha(used), build_hash=build_hash,
                             info=info)
        status: Status = "new" if existing is None else "rebuilt"
        self.log.info("master_written", kind="badpixels", key=bkey.describe(), bad=n_bad, rule=found.rule,
                      **{f"n_{name}": count for name, count in found.counts.items()}, status=status,
                      path=str(record.path))
        for w in warnings:
            self.log.warning("master_warned", kind="badpixels", key=bkey.describe(), warning=w)
        reasons = ", ".join(f"{count} {name}" for name, count in found.counts.items() if count)
        rule = f"{found.rule} rule"
        if found.rule == "master-only" and plan["dark"].n_frames > 1:
            rule += " (the dark has no noise map: --refresh rebuilds it with one)"
        note = f"{n_bad} bad pixels, {rule}" + (f": {reasons}" if reasons else "")
        return BuiltMaster(bkey, status, record.path, len(plan), note=note, warnings=tuple(warnings))


def _number(value: Any) -> float | None:
    """A header value as a finite float, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if np.isfinite(value) else None


def _adc_ceiling(frames: Sequence[SourceFrame], layouts: Sequence[RowLayout]) -> float | None:
    """The highest value the source frames can hold: the camera's white level where the reader knows it
    (camera raw), else the top of the FITS integer type (``BZERO + BSCALE * its maximum``); None for float
    data, whose ceiling is unknown."""
    whites = [f.meta.white_level for f in frames if f.meta.white_level]
    if whites:
        return float(max(whites))
    tops: list[float] = []
    for lay in layouts:
        if lay.bitpix not in (8, 16, 32) or lay.bscale <= 0:
            return None
        top = 255 if lay.bitpix == 8 else 2 ** (lay.bitpix - 1) - 1
        tops.append(lay.bzero + lay.bscale * top)
    return max(tops) if tops else None


def _dark_cards(frames: Sequence[SourceFrame], layouts: Sequence[RowLayout],
                result: CombineResult) -> dict[str, tuple[Any, str]]:
    """Header cards a master dark carries for its bad-pixel map: the sources' ceiling, gain and noise map."""
    cards: dict[str, tuple[Any, str]] = {}
    ceiling = _adc_ceiling(frames, layouts)
    if ceiling is not None:
        cards["SATURATE"] = (ceiling, "[ADU] ceiling of the source frames' data")
    gains = {f.meta.egain for f in frames}
    if len(gains) == 1 and (gain := gains.pop()) is not None and gain > 0:
        cards["EGAIN"] = (gain, "[e-/ADU] gain of the source frames")
    if result.noise is not None:
        cards["NOISEMAP"] = (True, f"temporal noise per pixel in extension {NOISE_EXTNAME}")
    return cards


def _noise_header(n: int) -> fits.Header:
    h = fits.Header()
    _put(h, "BUNIT", "adu", "temporal standard deviation per pixel")
    _put(h, "NCOMBINE", n, "frames it is measured over")
    for line in ("Per pixel: standard deviation (ddof=1) over the frames of the samples",
                 "the master averaged (after rejection); NaN where fewer than two were",
                 "kept. The bad-pixel map reads it to find the pixels whose dark changes",
                 "between frames, which subtracting the master cannot correct."):
        h.add_comment(line)
    return h


def _badpixel_cards(found: BadPixels) -> list[tuple[str, Any, str]]:
    """How many pixels each reason flagged and the numbers it used, for the bad-pixel map's header."""
    c = found.counts
    t = found.thresholds
    rule_comment = {"temporal": "dark judged by its temporal noise map",
                    "master-only": "no noise map: dark judged by the master alone",
                    "flat-only": "from the flat alone"}[found.rule]
    cards: list[tuple[str, Any, str]] = [
        ("BPMRULE", found.rule, rule_comment),
        ("NBADHOT", c["hot"], "hot: too hot to use" if found.rule == "temporal" else "hot in the master"),
        ("NBADUNST", c["unstable"], "unstable: dark changes between frames"),
        ("NBADSAT", c["saturated"], "saturated or near the ceiling in the dark"),
        ("NBADSTCK", c["stuck"], "stuck low: no temporal noise, far below"),
        ("NBADCOLD", c["cold"], "cold or dead in the flat"),
        ("NBADCOL", c["column"], "pixels of bad columns"),
        ("NCOLBAD", found.n_columns, "bad columns"),
    ]
    named = (("unstable_factor", "BPMUNSTF", "unstable: scatter over model sigma above"),
             ("hot_noise_factor", "BPMHOTF", "hot: shot noise over typical noise above"),
             ("hot_excess", "BPMHOTL", "[ADU] hot: dark above its median by more"),
             ("saturated_level", "BPMSATL", "[ADU] saturated: dark at or above"),
             ("stuck_factor", "BPMSTKF", "stuck: scatter under model sigma over"),
             ("hot_sigma", "BPMHOTS", "[sigma] hot (master) / stuck (below) threshold"),
             ("cold_fraction", "BPMCOLDF", "cold: flat under this of its local level"),
             ("column_fraction", "BPMCOLF", "column bad when this fraction is flagged"),
             ("column_sigma", "BPMCOLS", "column deviation threshold, robust sigmas"))
    for name, card, comment in named:
        if name in t:
            value = t[name]
            cards.append((card, round(value, 3) if np.isfinite(value) else "inf", comment))
    if found.model is not None:
        m = found.model
        cards += [("BPMNFLR", round(math.sqrt(m.floor), 4), "[ADU] typical temporal sigma of a dark pixel"),
                  ("BPMNSLP", round(m.slope, 5), "noise model: variance per ADU of dark excess"),
                  ("BPMNSRC", m.slope_from, "slope from warm pixels, gain, or assumed 1"),
                  ("BPMNWARM", m.n_warm, "warm pixels the slope was fitted on")]
    return cards


def build_library(library: str | os.PathLike[str], sources: Sequence[str | os.PathLike[str]], *,
                  options: BuildOptions | None = None, progress: Progress | None = None) -> BuildReport:
    """Build (or complete) the master library in ``library`` from the frames under ``sources``.

    Raises LibraryError when a source folder is missing or another build holds the library; a frame that
    cannot be used is skipped with a one-line reason and the build goes on.
    """
    opts = options if options is not None else BuildOptions()
    sink = progress if progress is not None else NoProgress()
    root = Path(library)
    source_paths = [Path(s) for s in sources]
    with library_lock(root):
        for stale in remove_stale_temporaries(root):
            structlog.get_logger().info("temporary_removed", path=str(stale))
        remove_folder(root / SPOOL_NAME)
        frames, skipped, lights = scan_sources(source_paths, library=root, options=opts, progress=sink)
        groups = group_frames(frames, temperature_bucket=opts.temperature_bucket, longitude=opts.rules.longitude)
        lost = not (root / INDEX_NAME).exists()
        with MasterIndex.open(root) as index:
            if lost:
                _reindex(root, index)
            builder = _Builder(root, index, opts, sink)
            for s in skipped:
                builder.skip(s.path, s.reason)
            ordered = sorted(groups.items(), key=lambda kv: sort_key(kv[0]))
            sink.start("build", len(ordered))
            done: list[BuiltMaster] = []
            try:
                for key, members in ordered:
                    done.append(builder.build(key, list(members)))
                    sink.advance(key.describe())
                sink.finish()
                plans = builder.badpixel_plans()
                sink.start("badpix", len(plans))
                for bkey, plan in plans.items():
                    done.append(builder.build_badpixels(bkey, plan))
                    sink.advance(bkey.describe())
                sink.finish()
            finally:
                remove_folder(root / SPOOL_NAME)
        report = BuildReport(masters=tuple(done), skipped=tuple(builder.skipped), scanned=len(frames) + len(skipped)
                             + lights, lights_ignored=lights)
    kept = report.count("exists") + report.count("up to date")
    structlog.get_logger().info("library_built", library=str(root), new=report.count("new"),
                                rebuilt=report.count("rebuilt"), kept=kept, failed=report.count("failed"),
                                skipped=len(report.skipped))
    return report


def reindex(library: str | os.PathLike[str]) -> int:
    """Rebuild a lost index from the masters' provenance headers; returns how many masters were indexed."""
    root = Path(library)
    with library_lock(root), MasterIndex.open(root) as index:
        return _reindex(root, index)


def _reindex(root: Path, index: MasterIndex) -> int:
    count = 0
    log = structlog.get_logger()
    for folder in (root / "masters", root / "badpixels"):
        for path in files_matching(folder, "*.fits", recursive=True):
            try:
                header = read_fits_header(path)
                key = CalibrationKey.from_dict(json.loads(str(header["ASTRDKJS"])))
            except (AstrodError, KeyError, ValueError, TypeError) as err:
                log.warning("master_unindexable", path=str(path), reason=str(err))
                continue
            if key.key_id != header.get("ASTRDKEY"):
                log.warning("master_unindexable", path=str(path), reason="key id does not match the key")
                continue
            size, mtime_ns = file_stamp(path)
            sources = [str(v).removeprefix("source ") for v in header.get("HISTORY", [])
                       if str(v).startswith("source ")]
            info: dict[str, Any] = {
                "sources": sources, "file_size": size, "reindexed": True,
                "temperature_mean": header.get("CCD-TEMP"), "bayer": header.get("BAYERPAT"),
                "bayer_offset": [int(header.get("XBAYROFF", 0)), int(header.get("YBAYROFF", 0))],
                "method": header.get("COMBMETH"), "description": header.get("COMBDESC")}
            record = MasterRecord(key=key, path=path, n_frames=int(header.get("NCOMBINE", 0) or 0),
                                  low_n=bool(header.get("LOW_N", False)), source_hash=str(header.get("SRCHASH", "")),
                                  build_hash=str(header.get("BLDHASH", "")), content_hash=file_digest(path),
                                  created=datetime.fromtimestamp(mtime_ns / 1e9, UTC), info=info)
            index.put(record.to_row(root))
            count += 1
    if count:
        log.info("index_rebuilt", library=str(root), masters=count)
    return count


def describe_outcome(master: BuiltMaster) -> str:
    """One line per master for the build summary."""
    flag = " LOW_N" if master.low_n else ""
    extra = f"  ({master.note})" if master.note else ""
    return f"{master.status:<10} {master.key.describe()}  n={master.n_frames}{flag}{extra}"

