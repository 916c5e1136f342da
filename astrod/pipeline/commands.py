"""The ``astrod stack`` command; :func:`register` adds it to the CLI.

Exit status: 0 when the stack was written; 1 when no frame could be stacked; 2 when there is nothing to
stack or the library cannot be used; 78 for a bad config file.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

from astrod.config import Config, report_config_error
from astrod.errors import AstrodError, ConfigError
from astrod.io.config_file import load_config
from astrod.io.files import ensure_folder, scratch_folder, writable_folder
from astrod.io.frames import expand_frame_paths
from astrod.io.headers import rules_from_config
from astrod.io.kernel_cache import notice_if_cold
from astrod.library.masters import PREPARED_FOLDER, MasterLibrary
from astrod.library.progress import progress_for
from astrod.pipeline.calibration import library_calibrator
from astrod.pipeline.finishing import plan_finish, write_finished
from astrod.pipeline.live import Calibrator, PipelineSettings, write_outputs
from astrod.pipeline.oneshot import stack_files
from astrod.pipeline.outputs import stack_writer

EXIT_NOTHING_STACKED = 1
EXIT_UNUSABLE = 2
# one band of the final integration: 1152 rows of 12 frames of 26 MP mono, so each frame is read 4 times
BAND_BYTES = 352 * 2**20
METHODS = ("mean", "online", "sigma", "winsorized", "linear_fit")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``stack`` command to the CLI's subparsers."""
    p = subparsers.add_parser(
        "stack", help="stack light frames (files or folders) into one FITS through the live pipeline",
        description="Calibrate (with --library), measure, gate, register onto the reference and stack light "
                    "frames; write the stack (FITS float32, colour as a 3-plane cube) with its provenance, and "
                    "optionally an auto-stretched preview and the per-frame table.")
    p.add_argument("files", nargs="+", metavar="LIGHTS", help="light frame files or folders")
    p.add_argument("-o", "--output", required=True, metavar="OUT.fits",
                   help="the stack to write: .fits (float32), .tif (16-bit, scaled) or .xisf (float32) by suffix")
    p.add_argument("--library", metavar="DIR", help="calibrate with this master library's matching masters")
    p.add_argument("--reference", metavar="FILE", help="registration reference (default: the first good frame)")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="mean (no rejection), online (the live kappa-sigma stack), or a full re-integration "
                        "with sigma, winsorized (default) or linear_fit clipping")
    p.add_argument("--kappa", type=_positive_float, default=None, metavar="K",
                   help="rejection threshold in sigma (default: the config's, 3)")
    p.add_argument("--preview", metavar="OUT.png", help="auto-stretched preview, PNG or JPEG by suffix")
    p.add_argument("--frames-table", metavar="OUT.csv", help="per-frame table (CSV)")
    p.add_argument("--finish", action="store_true",
                   help="also write the finished picture beside OUT: OUT-stem.final.fits (cropped, gradient removed, "
                        "colour calibrated) and .jpg/.tif per [output] formats, OUT-stem.final-background.fits "
                        "([finish] options)")
    p.add_argument("--config", metavar="FILE", help="config file ([stack], [quality], [headers], [library])")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="scratch folder for registered frames (default: a temporary folder beside OUT)")
    # its many short-lived frame-sized arrays are cheaper in small pages (`astrod.service.memory`)
    p.set_defaults(func=cmd_stack, small_pages=True)


def _prepared_folder(library: Path, cache: Path) -> tuple[Path, bool]:
    """Where a stack keeps its prepared masters, and whether other processes share it: the library's own
    `PREPARED_FOLDER`, or the run's scratch folder when the library's cannot be made (a read-only share)."""
    folder = library / PREPARED_FOLDER
    return (folder, True) if writable_folder(folder) else (cache / "masters", False)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from err
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def settings_for(config: Config, *, method: str | None, kappa: float | None) -> PipelineSettings:
    """The pipeline settings of ``astrod stack``: the config's, with the command's method and κ."""
    settings = PipelineSettings.from_config(config)
    if kappa is not None:
        settings = replace(settings, kappa=kappa)
    if method is None:
        method = config.stack.final_rejection if config.stack.final_rejection != "none" else "winsorized"
    if method == "mean":
        return replace(settings, kappa=math.inf, final_rejection="none")
    if method == "online":
        return replace(settings, final_rejection="none")
    return replace(settings, final_rejection=method)  # type: ignore[arg-type]


def cmd_stack(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        return report_config_error(err)
    settings = settings_for(config, method=args.method, kappa=args.kappa)
    output = Path(args.output)
    if stack_writer(output) is None:
        print(f"error: {output}: no stack writer for {output.suffix or 'no suffix'!r}; use .fits, .tif or .xisf",
              file=sys.stderr)
        return EXIT_UNUSABLE
    reference = Path(args.reference) if args.reference else None
    if reference is not None and not reference.is_file():
        print(f"error: reference {reference} is not a file", file=sys.stderr)
        return EXIT_UNUSABLE
    paths = expand_frame_paths(args.files)
    if not paths and reference is None:
        print("error: no frame files found", file=sys.stderr)
        return EXIT_UNUSABLE
    cache_root = Path(args.cache_dir) if args.cache_dir else output.parent
    notice_if_cold()
    # Two-pass (astrod.pipeline.twopass): no live stack state is held while the final integration reads its
    # bands, so a band may be large (fewer re-reads of each frame) and the peak still stays under 1 GB.
    settings = replace(settings, final_memory_bytes=BAND_BYTES)
    library: MasterLibrary | None = None
    try:
        ensure_folder(cache_root)
        with scratch_folder(".astrod-stack-", parent=cache_root) as cache:
            calibrator: Calibrator | None = None
            if args.library:
                try:
                    # prepared masters mapped from scratch files: a band of rows resident while a frame is
                    # calibrated; kept in the library for the next run, or this run's own when it cannot be
                    prepared, shared = _prepared_folder(Path(args.library), cache)
                    library = MasterLibrary.open(args.library, config=config, scratch=prepared,
                                                 scratch_shared=shared)
                except AstrodError as err:
                    print(f"error: {err}", file=sys.stderr)
                    return EXIT_UNUSABLE
                calibrator = library_calibrator(library, in_place=True)
            product = stack_files(paths, settings, calibrator=calibrator, reference=reference, cache_dir=cache,
                                  rename=config.headers.rename, rules=rules_from_config(config.headers),
                                  progress=progress_for())
            if library is not None:
                library.close()  # its maps go before the outputs are written (and before the folder is)
                library = None
    except AstrodError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_NOTHING_STACKED
    finally:
        if library is not None:
            library.close()
    stacked = int(product.header["NCOMBINE"][0])
    plan = plan_finish(product, settings.finish, frames=stacked) if args.finish else None
    if plan is not None:  # the stack's header names the factors its finished picture used
        product = replace(product, header={**product.header, **plan.cards()})
    write_outputs(product, stack_path=output, preview_path=Path(args.preview) if args.preview else None,
                  table_path=Path(args.frames_table) if args.frames_table else None)
    if plan is not None:
        formats = tuple(dict.fromkeys(("fits", *config.output.formats)))
        written, _ = write_finished(product, plan, output.parent, formats=formats, in_place=True,
                                    name=f"{output.stem}.final")
        print("finished: " + ", ".join(p.name for p in written))
    rejected = int(product.header["NREJECT"][0])
    exposure = product.header.get("EXPTOTAL")
    print(f"stacked {stacked} of {stacked + rejected} frames ({product.header['STACKMTH'][0]}, "
          f"{f'{exposure[0]:g} s' if exposure else 'exposure unknown'}) -> {output}")
    for row in product.rows:
        if row["status"] == "rejected":
            print(f"  rejected {Path(str(row['path'])).name}: {row['reason']}")
    return 0
