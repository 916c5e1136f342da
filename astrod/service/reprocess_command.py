"""The ``astrod reprocess`` command; :func:`register` adds it to the CLI.

Exit status: 0 when every session to do was written (or nothing was to do); 1 when tasks of a session failed
(logged; the next run does it again); 2 for unusable arguments (no frame files, a bad date, the library or the
scheduler unusable); 78 for a bad config file.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

from astrod.config import report_config_error
from astrod.errors import AstrodError, ConfigError
from astrod.io.config_file import load_config
from astrod.library.progress import progress_for
from astrod.pipeline.commands import settings_for

EXIT_FAILED = 1
EXIT_UNUSABLE = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``reprocess`` command to the CLI's subparsers."""
    p = subparsers.add_parser(
        "reprocess", help="stack an archive of nights again, as Dask tasks on this PC or a cluster",
        description="Walk archive folders (read-only), classify every frame as the daemon does, build or "
                    "refresh the masters, group the lights into the daemon's sessions and write each session's "
                    "products (stack, frames.csv, session.json, finished picture, report, the reference frame's "
                    "plate solution with [solve] enabled, and light curves when [[photometry.targets]] are "
                    "configured) under the daemon's folder layout, then the "
                    "targets' composites and projects. Sessions whose frames, masters and settings have not "
                    "changed since the last run are skipped.")
    p.add_argument("archives", nargs="+", metavar="ARCHIVE_DIR", help="folders of frames (searched recursively)")
    p.add_argument("-o", "--output", metavar="DIR", help="products folder (default: the config's [paths] output)")
    p.add_argument("--library", metavar="DIR", help="master library folder (default: the config's)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="a running Dask scheduler (tcp://host:8786); its workers must see the archive, the "
                            "library and the output at the same paths")
    where.add_argument("--workers", type=int, default=2, metavar="N",
                       help="processes of the local Dask cluster (default 2)")
    p.add_argument("--since", metavar="DATE", help="only the nights from this date on (YYYY-MM-DD)")
    p.add_argument("--dry-run", action="store_true", help="print the plan; build nothing, submit nothing")
    p.add_argument("--config", metavar="FILE", help="config file")
    p.set_defaults(func=cmd_reprocess)


def cmd_reprocess(args: argparse.Namespace) -> int:
    from astrod.service.reprocess import ReprocessRequest, run_reprocess  # Dask is loaded for this command only

    try:
        config = load_config(args.config)
    except ConfigError as err:
        return report_config_error(err)
    try:
        since = date.fromisoformat(args.since) if args.since else None
    except ValueError:
        print(f"error: --since {args.since!r} is not a date (YYYY-MM-DD)", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return EXIT_UNUSABLE
    archives = tuple(Path(a) for a in args.archives)
    missing = [a for a in archives if not a.is_dir()]
    if missing:
        print(f"error: {missing[0]}: not a folder", file=sys.stderr)
        return EXIT_UNUSABLE
    settings = settings_for(config, method=None, kappa=None)  # as `astrod stack`: a full re-integration
    request = ReprocessRequest(
        archives=archives, output=Path(args.output) if args.output else config.paths.output,
        library=Path(args.library) if args.library else config.library_dir(), config=config,
        settings=settings, scheduler=args.scheduler, workers=args.workers, since=since,
        dry_run=args.dry_run)
    try:
        report = run_reprocess(request, progress=progress_for())
    except (AstrodError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(f"{len(report.written)} sessions written, {len(report.skipped)} already done, {report.frames} frames, "
          f"{report.tasks} tasks, {report.seconds:.1f} s -> {request.output}")
    if report.failed:
        print(f"error: tasks failed in {len(report.failed)} sessions (done again by the next run): "
              + ", ".join(report.failed), file=sys.stderr)
        return EXIT_FAILED
    return 0
