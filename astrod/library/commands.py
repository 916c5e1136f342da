"""The ``astrod library build|list|match`` commands and ``astrod calibrate``; :func:`register` adds them to the CLI.

Exit status: 0 when all is well; 1 when a master failed to build, a frame lacks a required master or cannot be
read; 2 when the library cannot be used (no index, a build already running, a source folder missing);
78 for a bad config file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from astrod.config import Config
from astrod.errors import AstrodError, LibraryError
from astrod.io.config_file import load_config_or_exit
from astrod.io.frames import expand_frame_paths, read_meta
from astrod.io.headers import describe, rules_from_config
from astrod.library.build import BuildOptions, build_library, describe_outcome
from astrod.library.calibration import calibrate_files, used_masters
from astrod.library.keys import sort_key
from astrod.library.masters import MasterLibrary
from astrod.library.match import MatchResult
from astrod.library.progress import progress_for
from astrod.library.records import MasterRecord

EXIT_MISSING = 1
EXIT_LIBRARY = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``library`` command group and the ``calibrate`` command to the CLI's subparsers."""
    p = subparsers.add_parser("library", help="the master calibration library (build, list, match)")
    lsub = p.add_subparsers(dest="library_command", required=True, metavar="ACTION")

    b = lsub.add_parser("build", help="scan folders of calibration frames and write the missing masters",
                        description="Group bias, dark, dark-flat and flat frames found under the source folders "
                                    "and write one master per group (only missing ones unless --refresh).")
    b.add_argument("--source", action="append", required=True, metavar="DIR",
                   help="folder scanned recursively for calibration frames (repeatable)")
    _library_options(b)
    b.add_argument("--refresh", action="store_true",
                   help="rebuild every master whose sources or recipe changed (never deletes a master)")
    b.add_argument("-j", "--jobs", type=_positive_int, default=2, metavar="N",
                   help="threads reading source headers (default 2)")
    b.add_argument("--min-frames", type=_positive_int, default=None, metavar="N",
                   help="masters from fewer frames are marked LOW_N (default: config, 5)")
    b.add_argument("--json", action="store_true", help="print the outcome as JSON")
    b.set_defaults(func=cmd_library_build)

    ls = lsub.add_parser("list", help="list the masters in the library")
    _library_options(ls)
    ls.add_argument("--json", action="store_true", help="one JSON object per master")
    ls.set_defaults(func=cmd_library_list)

    m = lsub.add_parser("match", help="show which masters calibrate each frame, and why (exit 1 if any is missing)")
    m.add_argument("files", nargs="+", help="frame files or folders")
    _library_options(m)
    m.add_argument("--json", action="store_true", help="one JSON object per frame")
    m.set_defaults(func=cmd_library_match)

    c = subparsers.add_parser("calibrate", help="calibrate frames with the library's masters into a folder")
    c.add_argument("files", nargs="+", help="frame files or folders")
    c.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the calibrated FITS files")
    _library_options(c)
    c.add_argument("--cosmic", action="store_true", help="clean cosmic rays (L.A.Cosmic, needs astroscrappy)")
    c.add_argument("--electrons", action="store_true", help="multiply by EGAIN: output in electrons")
    c.add_argument("--no-bad-pixels", action="store_true", help="do not replace the bad-pixel map's pixels")
    c.set_defaults(func=cmd_calibrate)


def _library_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--library", metavar="DIR", help="library folder (default: the config's)")
    p.add_argument("--config", metavar="FILE", help="config file (library options, header rules, site)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _config(args: argparse.Namespace) -> Config:
    return load_config_or_exit(args.config)


def _library_dir(args: argparse.Namespace, config: Config) -> Path:
    return Path(args.library) if args.library else config.library_dir()


def table_lines(rows: Sequence[Sequence[str]]) -> list[str]:
    """``rows`` as left-aligned columns two spaces apart, trailing blanks stripped."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


# ------------------------------------------------------------------------------------------------- build


def cmd_library_build(args: argparse.Namespace) -> int:
    config = _config(args)
    library = _library_dir(args, config)
    options = BuildOptions.from_config(config, refresh=args.refresh, jobs=args.jobs, min_frames=args.min_frames)
    try:
        report = build_library(library, [Path(s) for s in args.source], options=options,
                               progress=progress_for(sys.stderr))
    except LibraryError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_LIBRARY
    if args.json:
        json.dump({"library": str(library), "masters": [m.as_dict() for m in report.masters],
                   "skipped": [{"path": str(s.path), "reason": s.reason} for s in report.skipped],
                   "scanned": report.scanned, "lights_ignored": report.lights_ignored}, sys.stdout, indent=2,
                  ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        kept = report.count("exists") + report.count("up to date")
        print(f"library {library}: {report.count('new')} new, {report.count('rebuilt')} rebuilt, {kept} kept, "
              f"{report.count('failed')} failed; {report.scanned} files scanned, {len(report.skipped)} skipped, "
              f"{report.lights_ignored} lights ignored")
        for master in report.masters:
            print(describe_outcome(master))
    for s in report.skipped:
        print(f"skipped: {s.path}: {s.reason}", file=sys.stderr)
    return EXIT_MISSING if report.count("failed") else 0


# -------------------------------------------------------------------------------------------------- list


def format_cell(value: Any, suffix: str = "") -> str:
    """A table cell: "-" for None, floats in %g, lists joined with "x" (binning), then ``suffix``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}{suffix}"
    if isinstance(value, list):
        return "x".join(str(v) for v in value) + suffix
    return f"{value}{suffix}"


def _list_row(r: MasterRecord) -> tuple[str, ...]:
    k = r.key
    flags = "LOW_N" if r.low_n else ""
    return (k.kind.value, k.camera or "-", format_cell(k.gain), format_cell(k.offset), f"{k.binning[0]}x{k.binning[1]}",
            f"{k.width}x{k.height}", format_cell(k.temperature, " °C"), format_cell(k.exposure, " s"), k.filter or "-",
            "-" if k.night is None else k.night.isoformat(), str(r.n_frames), flags, r.path.name)


def cmd_library_list(args: argparse.Namespace) -> int:
    config = _config(args)
    library = _library_dir(args, config)
    try:
        with MasterLibrary.open(library, config=config) as lib:
            records = sorted(lib.records(), key=lambda r: sort_key(r.key))
    except LibraryError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_LIBRARY
    if args.json:
        json.dump([r.as_dict() for r in records], sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    if not records:
        print(f"library {library}: no masters")
        return 0
    head = ("kind", "camera", "gain", "offset", "bin", "size", "temp", "exp", "filter", "night", "n", "flags", "file")
    for line in table_lines([head, *(_list_row(r) for r in records)]):
        print(line)
    return 0


# ------------------------------------------------------------------------------------------------- match


def _match_lines(path: Path, result: MatchResult) -> list[str]:
    lines = [f"{path}: {describe(result.meta)} ({result.meta.kind.value})"]
    for choice in result.choices():
        flag = " LOW_N" if choice.record.low_n else ""
        lines.append(f"  {choice.role:<9} {choice.record.name}{flag}  ({choice.reason})")
    lines.extend(f"  missing   {m}" for m in result.missing)
    lines.extend(f"  warning   {w}" for w in result.warnings)
    lines.extend(f"  note      {n}" for n in result.notes)
    return lines


def cmd_library_match(args: argparse.Namespace) -> int:
    config = _config(args)
    library = _library_dir(args, config)
    rules = rules_from_config(config.headers)
    records: list[dict[str, Any]] = []
    status = 0
    try:
        with MasterLibrary.open(library, config=config) as lib:
            for path in expand_frame_paths(args.files):
                try:
                    meta = read_meta(path, rename=config.headers.rename, rules=rules)
                except AstrodError as err:
                    status = EXIT_MISSING
                    records.append({"path": str(path), "error": str(err)})
                    if not args.json:
                        print(f"error: {err}", file=sys.stderr)
                    continue
                result = lib.match(meta)
                if not result.ok:
                    status = EXIT_MISSING
                records.append({"path": str(path), **result.as_dict()})
                if not args.json:
                    print("\n".join(_match_lines(path, result)))
    except LibraryError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_LIBRARY
    if args.json:
        json.dump(records, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    if not records:
        print("error: no frame files given", file=sys.stderr)
        return EXIT_MISSING
    return status


# --------------------------------------------------------------------------------------------- calibrate


def cmd_calibrate(args: argparse.Namespace) -> int:
    config = _config(args)
    library = _library_dir(args, config)
    paths = expand_frame_paths(args.files)
    if not paths:
        print("error: no frame files given", file=sys.stderr)
        return EXIT_MISSING
    try:
        with MasterLibrary.open(library, config=config) as lib:
            outcomes = calibrate_files(paths, Path(args.output), lib, rename=config.headers.rename,
                                       rules=rules_from_config(config.headers), cosmic=args.cosmic,
                                       electrons=args.electrons, bad_pixels=not args.no_bad_pixels)
    except LibraryError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_LIBRARY
    for o in outcomes:
        if o.error is not None:
            print(f"error: {o.error}", file=sys.stderr)
            continue
        assert o.match is not None
        used = ", ".join(f"{c.role} ({c.reason})" for c in used_masters(o.match, bad_pixels=not args.no_bad_pixels))
        used = used or "no masters"
        print(f"{o.path} -> {o.output}: {used}")
        for m in o.match.missing:
            print(f"  missing   {m}")
        for w in o.match.warnings:
            print(f"  warning   {w}")
    return 0 if all(o.ok for o in outcomes) else EXIT_MISSING
