"""``astrod project list|rebuild``: see and redo the projects across nights (`astrod.pipeline.project`)."""

from __future__ import annotations

import argparse
import sys

from astrod.config import report_config_error
from astrod.errors import AstrodError, ConfigError
from astrod.io.config_file import load_config
from astrod.pipeline.project import PROJECTS, list_projects, rebuild_project
from astrod.pipeline.settings import PipelineSettings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``project`` command group to the CLI's subparsers."""
    p = subparsers.add_parser("project", help="stacks of one target and filter across nights",
                              description="A project combines every night's stack of a target in a filter into "
                                          f"<output>/{PROJECTS}/<target>/<filter>/ (rebuilt when a session closes).")
    sub = p.add_subparsers(dest="project_command", required=True)
    q = sub.add_parser("list", help="targets and filters with their nights and exposure")
    q.add_argument("--config", metavar="FILE", help="config file ([paths] output)")
    q.set_defaults(func=cmd_project_list)
    q = sub.add_parser("rebuild", help="build the projects again (all, or one target, or one target and filter)")
    q.add_argument("target", nargs="?", help="target folder name, e.g. M_31")
    q.add_argument("filter", nargs="?", help="filter folder name, e.g. L")
    q.add_argument("--config", metavar="FILE", help="config file ([paths] output, [finish], [output] formats)")
    q.set_defaults(func=cmd_project_rebuild)


def cmd_project_list(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        return report_config_error(err)
    projects = list_projects(config.paths.output)
    for (target, band), nights in projects.items():
        exposure = sum(n.exposure for n in nights)
        built = (config.paths.output / PROJECTS / target / band / "stack.fits").is_file()
        print(f"{target}/{band}: {len(nights)} night(s), {exposure / 3600:.2f} h "
              f"({', '.join(n.night for n in nights)}){'' if built or len(nights) < 2 else ' - not built yet'}")
    if not projects:
        print(f"no stacks under {config.paths.output}")
    return 0


def cmd_project_rebuild(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        return report_config_error(err)
    settings = PipelineSettings.from_config(config).finish
    chosen = [k for k in list_projects(config.paths.output)
              if (args.target is None or k[0] == args.target) and (args.filter is None or k[1] == args.filter)]
    status = 0
    for target, band in chosen:
        try:
            written = rebuild_project(config.paths.output, target, band, settings, formats=config.output.formats)
        except AstrodError as err:
            print(f"error: {target}/{band}: {err}", file=sys.stderr)
            status = 1
            continue
        print(f"{target}/{band}: " + (", ".join(p.name for p in written) if written else "one night: no project"))
    if not chosen:
        print("no matching stacks", file=sys.stderr)
        return 1
    return status
