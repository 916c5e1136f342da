"""The ``astrod photometry`` command: light curves of targets over a folder of frames, after the fact.

Each frame goes through the live pipeline (calibration with ``--library``, measurement, gates, registration)
and `PhotometrySeries` measures it, as the daemon does during capture. Exit status: 0 when the light curve
was written; 1 when no frame could be measured; 2 when the arguments, frames or library cannot be used;
78 for a bad config file.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from astrod.config import Config, report_config_error
from astrod.errors import AstrodError, ConfigError
from astrod.io.config_file import load_config
from astrod.io.files import ensure_folder, scratch_folder
from astrod.io.frames import expand_frame_paths
from astrod.io.headers import rules_from_config
from astrod.io.lightcurves import write_lightcurve, write_plot
from astrod.library.masters import MasterLibrary
from astrod.library.progress import progress_for
from astrod.pipeline.calibration import library_calibrator
from astrod.pipeline.live import Calibrator, PipelineSettings
from astrod.pipeline.oneshot import stack_files
from astrod.pipeline.photometry import (
    CSV_COLUMNS,
    PhotometrySeries,
    PhotometrySettings,
    Target,
    header_locate,
    parse_coords,
    settings_from_config,
)
from astrod.pipeline.photometry_plot import plot_png
from astrod.pipeline.photometry_times import Site

EXIT_NOTHING = 1
EXIT_UNUSABLE = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``photometry`` command to the CLI's subparsers."""
    p = subparsers.add_parser(
        "photometry", help="differential aperture photometry of targets over light frames: a light curve (CSV)",
        description="Calibrate (with --library), measure and register each light frame as `astrod stack` does, "
                    "and measure the targets with an automatic ensemble of comparison stars (or --comparison) on "
                    "the calibrated, unwarped frames. Target positions are on the first frame (or --reference), "
                    "1-based as ds9 and FITS count. Writes one CSV per target (NAME inserted before the suffix "
                    "when there are several) with a comment line naming the comparison stars and aperture.")
    p.add_argument("files", nargs="+", metavar="LIGHTS", help="light frame files or folders")
    p.add_argument("--target", action="append", required=True, metavar="NAME@X,Y|NAME=RA,DEC",
                   help="a target by pixel position on the reference frame, or by coordinates (needs a WCS in "
                        "the reference frame's header); repeat for several")
    p.add_argument("--target-coords", metavar="RA,DEC",
                   help="coordinates of targets given by pixel position (for BJD_TDB and airmass)")
    p.add_argument("--comparison", action="append", default=[], metavar="X,Y",
                   help="a comparison star (1-based pixels on the reference frame); repeat; default: automatic")
    p.add_argument("--aperture", type=float, default=None, metavar="K",
                   help="aperture radius in FWHM of the reference frame (default: the config's, 1.5)")
    p.add_argument("--library", metavar="DIR", help="calibrate with this master library's matching masters")
    p.add_argument("--reference", metavar="FILE", help="the frame target positions refer to (default: the first)")
    p.add_argument("--site", metavar="LAT,LON[,ELEV]", help="observatory (default: the config's [site])")
    p.add_argument("--gain", type=float, default=None, metavar="E_PER_ADU",
                   help="gain for the errors (default: the config's, else EGAIN, else 1)")
    p.add_argument("-o", "--output", required=True, metavar="lightcurve.csv", help="the light curve to write")
    p.add_argument("--plot", metavar="lc.png", help="a plot of the light curve (PNG)")
    p.add_argument("--config", metavar="FILE", help="config file ([photometry], [site], [stack], [headers])")
    p.set_defaults(func=cmd_photometry)


def photometry_settings(config: Config, args: argparse.Namespace) -> PhotometrySettings:
    """The command's settings: the config's [photometry] and [site], with the command line's over them."""
    base = settings_from_config(config)
    targets = tuple(Target.parse(t) for t in args.target)
    comparisons = tuple(_xy(c) for c in args.comparison)
    site = Site.parse(args.site) if args.site else base.site
    coords = parse_coords(args.target_coords) if args.target_coords else None
    return replace(base, targets=targets, comparisons=comparisons or base.comparisons, site=site, coords=coords,
                   aperture_fwhm=args.aperture if args.aperture else base.aperture_fwhm,
                   gain=args.gain if args.gain else base.gain)


def _xy(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError as err:
        raise ValueError(f"comparison {text!r}: expected X,Y") from err
    return x, y


def output_paths(output: Path, names: list[str], suffix: str) -> dict[str, Path]:
    """One file per target: ``output`` itself for one target, NAME inserted before the suffix for several."""
    if len(names) == 1:
        return {names[0]: output.with_suffix(suffix) if suffix != output.suffix else output}
    return {n: output.with_name(f"{output.stem}_{Target(n, x=0, y=0).file_name}{suffix}") for n in names}


def cmd_photometry(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        return report_config_error(err)
    try:
        psettings = photometry_settings(config, args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    paths = expand_frame_paths(args.files)
    reference = Path(args.reference) if args.reference else None
    if not paths and reference is None:
        print("error: no frame files found", file=sys.stderr)
        return EXIT_UNUSABLE
    # no re-pick: positions refer to the first frame (they would stay right, but the work is not needed)
    settings = replace(PipelineSettings.from_config(config), final_rejection="none", reference_repick_after=0)
    series = PhotometrySeries(psettings, locate=header_locate)
    output = Path(args.output)
    library: MasterLibrary | None = None
    try:
        ensure_folder(output.parent)
        with scratch_folder(".astrod-photometry-", parent=output.parent) as cache:
            calibrator: Calibrator | None = None
            if args.library:
                library = MasterLibrary.open(args.library, config=config, scratch=cache / "masters")
                calibrator = library_calibrator(library, in_place=True)
            stack_files(paths, settings, calibrator=calibrator, reference=reference, cache_dir=cache,
                        rename=config.headers.rename, rules=rules_from_config(config.headers),
                        progress=progress_for(), observer=series)
    except AstrodError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_NOTHING if library is not None or not args.library else EXIT_UNUSABLE
    finally:
        if library is not None:
            library.close()
    for note in series.notes:
        print(f"note: {note}", file=sys.stderr)
    names = list(series.target_names)
    if not names or series.frames == 0:
        print("error: no frame measured", file=sys.stderr)
        return EXIT_NOTHING
    csvs = output_paths(output, names, output.suffix or ".csv")
    plots = output_paths(Path(args.plot), names, ".png") if args.plot else {}
    for name in names:
        curve = series.curve(name)
        write_lightcurve(csvs[name], curve.comment, curve.rows, CSV_COLUMNS)
        if name in plots:
            write_plot(plots[name], plot_png(curve))
        print(f"{name}: {len(curve.rows)} frames, {len(curve.comparisons)} comparison stars -> {csvs[name]}")
    return 0
