"""``astrod solve FILE... [-o DIR] [--json]``: plate-solve frames and write a copy of each with its WCS."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from astrod.errors import AstrodError
from astrod.io.config_file import load_config_or_exit
from astrod.io.frames import expand_frame_paths
from astrod.service.solver import SolvedFile, SolverSettings, solve_file

JSON_FIELDS = ("path", "output", "ra", "dec", "scale_arcsec", "rotation_deg", "width_deg", "height_deg", "index",
               "seconds", "error")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``solve`` command to the CLI's subparsers."""
    p = subparsers.add_parser(
        "solve", help="plate-solve frames (astrometry.net, offline) and write a copy of each with the WCS",
        description="Detect each frame's stars, solve them with astrometry.net's solve-field (hints from the "
                    "header: RA/Dec, focal length and pixel size; a time limit from [solve] timeout_s, blind_timeout_s "
                    "without RA/Dec) and write "
                    "a copy of the frame with the WCS in its header as NAME.wcs.fits. The frame itself is never "
                    "changed. Exit status 1 when a frame cannot be solved, with the reason.")
    p.add_argument("files", nargs="+", metavar="FILE", help="frame files or folders")
    p.add_argument("-o", "--output", metavar="DIR", help="folder for the copies (default: beside each frame)")
    p.add_argument("--json", action="store_true", help="one JSON array of objects {" + ", ".join(JSON_FIELDS) + "}")
    p.add_argument("--config", metavar="FILE", help="config file ([solve], [headers])")
    p.set_defaults(func=cmd_solve)


def _sexagesimal(value: float, *, hours: bool) -> str:
    sign = "-" if value < 0 else ("" if hours else "+")
    total = abs(value) / (15.0 if hours else 1.0)
    decimals = 2 if hours else 1
    units = round(total * 3600.0, decimals)
    d, rest = divmod(units, 3600.0)
    m, s = divmod(rest, 60.0)
    sep = ":"
    return f"{sign}{int(d):02d}{sep}{int(m):02d}{sep}{s:0{3 + decimals}.{decimals}f}"


def _record(path: Path, solved: SolvedFile | None, error: str | None) -> dict[str, Any]:
    record: dict[str, Any] = dict.fromkeys(JSON_FIELDS)
    record["path"] = str(path)
    if solved is not None:
        record.update({k: v for k, v in solved.result.as_dict().items() if k in JSON_FIELDS})
        record["output"] = str(solved.output)
    record["error"] = error
    return record


def _line(solved: SolvedFile) -> str:
    r = solved.result
    return (f"{solved.path.name}: centre RA {_sexagesimal(r.ra, hours=True)} Dec {_sexagesimal(r.dec, hours=False)} "
            f"({r.ra:.5f} {r.dec:+.5f}), {r.scale_arcsec:.3f}\"/px, rotation {r.rotation_deg:.2f}° E of N"
            f"{' (mirrored)' if r.mirrored else ''}, field {r.width_deg * 60:.1f}′ × {r.height_deg * 60:.1f}′, "
            f"index {r.index or '?'}, {r.seconds:.1f} s -> {solved.output}")


def cmd_solve(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    settings = SolverSettings.from_config(config.solve)
    output = Path(args.output) if args.output else None
    paths = expand_frame_paths(args.files)
    records = []
    for path in paths:
        solved: SolvedFile | None = None
        error: str | None = None
        try:
            solved = solve_file(path, settings=settings, output_dir=output, rename=config.headers.rename)
        except AstrodError as err:
            error = str(err)
        records.append(_record(path, solved, error))
        if not args.json:
            if solved is not None:
                print(_line(solved), flush=True)
            else:
                print(f"error: {error}", file=sys.stderr, flush=True)
    if args.json:
        json.dump(records, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    if not paths:
        print("error: no frame files given", file=sys.stderr)
    return 1 if not records or any(r["error"] for r in records) else 0
