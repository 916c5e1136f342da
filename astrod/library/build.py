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

import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from astrod import __version__
from astrod.core.badpixels import BadPixels, find_bad_pixels
from astrod.core.combine import CombineResult, Method, combine, combine_flats, frame_medians
from astrod.errors import AstrodError, FrameReadError, LibraryError
from astrod.io.bands import RowLayout, open_rows, read_band
from astrod.io.files import files_matching, remove_folder
from astrod.io.fits import Header, read_fits, read_fits_extension, read_fits_header, write_fits
from astrod.io.index import INDEX_NAME, MasterIndex, file_digest, file_stamp, library_lock, remove_stale_temporaries
from astrod.io.provenance import ParamValue, Provenance, write_provenance
from astrod.library.keys import CalibrationKey, MasterKind, badpixel_key, safe_name, sort_key
from astrod.library.master_headers import NOISE_EXTNAME as NOISE_EXTNAME
from astrod.library.master_headers import _badpixel_cards, _dark_cards, _master_header, _noise_header, _number, _put
from astrod.library.match import choose_bias, choose_dark
from astrod.library.options import BadPixelParams as BadPixelParams
from astrod.library.options import BuildOptions as BuildOptions
from astrod.library.options import BuildReport as BuildReport
from astrod.library.options import BuiltMaster as BuiltMaster
from astrod.library.options import CombineParams as CombineParams
from astrod.library.options import Skipped as Skipped
from astrod.library.options import Status as Status
from astrod.library.progress import NoProgress, Progress
from astrod.library.records import MasterRecord
from astrod.library.sources import SourceFrame as SourceFrame
from astrod.library.sources import _sha
from astrod.library.sources import group_frames as group_frames
from astrod.library.sources import scan_sources as scan_sources
from astrod.library.sources import source_hash as source_hash
from astrod.model import FrameMeta

FloatArray = npt.NDArray[np.float32]
SPOOL_NAME = ".spool"
NOISE_RECIPE = 1  # in a dark's build hash: darks made before they kept a noise map are rebuilt by --refresh
RUNTIME_RESERVE = 320 * 1024 * 1024  # interpreter, numpy, numba, astropy: what a build process holds anyway


# ------------------------------------------------------------------------------------------------ hashes


def _build_hash(key: CalibrationKey, src_hash: str, options: BuildOptions, extra: Mapping[str, Any]) -> str:
    return _sha({"key": key.key_id, "sources": src_hash, "combine": options.combine.as_dict(),
                 "min_frames": options.min_frames, "version": __version__, **extra})


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

    def _load_with_header(self, record: MasterRecord) -> tuple[FloatArray, Header]:
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
        h = Header()
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
