"""Command-line front: ``astrod inspect|config|demo ...``. Each command returns its exit status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from astrod import __version__
from astrod.config import EX_CONFIG, Config, load_config
from astrod.errors import AstrodError, ConfigError
from astrod.library.commands import register as register_library
from astrod.pipeline.commands import register as register_stack
from astrod.service.capture_commands import register as register_capture

Command = Callable[[argparse.Namespace], int]

INSPECT_FIELDS = ("path", "kind", "exposure", "gain", "offset", "temperature", "set_temperature", "filter",
                  "camera", "binning", "bayer", "object", "date_obs", "width", "height")


def _inspect_record(path: Path, config: Config) -> dict[str, Any]:
    from astrod.io.frames import read_meta
    from astrod.io.headers import rules_from_config

    try:
        meta = read_meta(path, rename=config.headers.rename, rules=rules_from_config(config.headers))
    except AstrodError as err:
        return {"path": str(path), "error": str(err)}
    record: dict[str, Any] = {"path": str(path)}
    full = meta.as_dict()
    for name in INSPECT_FIELDS[1:]:
        record[name] = full[name]
    record["kind_reason"] = meta.kind_reason
    extra = ("serial", "iso", "readout_mode", "bayer_offset", "ra", "dec", "pier_side", "planes", "stack_count")
    record.update({k: full[k] for k in extra})
    return record


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return str(value)


def cmd_inspect(args: argparse.Namespace) -> int:
    config = _config_or_exit(args.config)
    from astrod.io.frames import expand_frame_paths

    records = [_inspect_record(p, config) for p in expand_frame_paths(args.files)]
    if args.json:
        json.dump(records, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        cols = ("path", "kind", "exposure", "gain", "offset", "temperature", "set_temperature", "filter",
                "camera", "binning", "bayer", "object", "date_obs")
        heads = ("file", "kind", "exp", "gain", "offset", "temp", "set", "filter", "camera", "bin", "bayer",
                 "object", "date-obs")
        rows: list[tuple[str, ...]] = [heads]
        for r in records:
            if "error" in r:
                continue
            cells = [_fmt(r[c]) for c in cols]
            cells[0] = Path(cells[0]).name
            rows.append(tuple(cells))
        widths = [max(len(row[i]) for row in rows) for i in range(len(heads))]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        for r in records:
            if "error" in r:
                print(f"error: {r['error']}", file=sys.stderr)
    return 1 if any("error" in r for r in records) or not records else 0


def _config_or_exit(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as err:
        for problem in err.problems:
            print(f"config error: {problem}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from err


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        for problem in err.problems:
            print(problem)
        return EX_CONFIG
    where = args.config or "defaults (no config file)"
    print(f"config OK: {where}; state {config.state_dir()}, library {config.library_dir()}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from astrod.service.daemon import Daemon
    from astrod.service.logging import configure_logging

    config = _config_or_exit(args.config)
    configure_logging(level=config.log.level, fmt=config.log.format)
    daemon = Daemon(config, config_path=Path(args.config) if args.config else None)
    return daemon.run()


def _age(iso: str | None) -> str:
    from datetime import UTC, datetime

    if not iso:
        return "never"
    seconds = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def cmd_status(args: argparse.Namespace) -> int:
    from astrod.service.daemon import read_status

    config = _config_or_exit(args.config)
    status = read_status(config)
    if args.json:
        json.dump(status if status is not None else {"running": False, "sessions": []}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if status is None:
        print(f"astrod is not running (no status in {config.state_dir()})")
        return 0
    state = "running" if status["running"] else "not running"
    print(f"astrod {state} (pid {status['pid']}, status written {_age(status.get('updated_at'))})")
    files = status.get("files", {})
    print("files: " + (", ".join(f"{k} {v}" for k, v in sorted(files.items())) or "none yet")
          + f"; queue {status.get('queue', 0)}")
    for s in status.get("sessions", []):
        last = s.get("last_frame") or {}
        print(f"  {s['label']}: {s['stacked']} stacked, {s['rejected']} rejected, "
              f"{s['total_exposure_s'] / 60:.1f} min, queue {s['queue']}"
              + (f", last {Path(str(last.get('path'))).name} {last.get('status')}" if last else ""))
    for s in status.get("closed_sessions", [])[-5:]:
        print(f"  closed {s.get('label')}: {s.get('stacked', 0)} stacked -> {s.get('output')}")
    capture = status.get("capture")
    if capture:
        temp = capture.get("camera_temperature")
        print(f"capture plan {capture.get('plan')}: {capture.get('state')}, step {capture.get('step')}, "
              f"{capture.get('frames_done')}/{capture.get('frames_total')} frames"
              + (f", next exposure {capture['next_exposure_eta']}" if capture.get("next_exposure_eta") else "")
              + (f", camera {temp:.1f} °C" if isinstance(temp, int | float) else "")
              + (f"; last error: {capture['last_error']}" if capture.get("last_error") else ""))
    masters = status.get("library", {}).get("masters")
    print(f"library {status.get('library', {}).get('path')}: "
          + (", ".join(f"{k} {v}" for k, v in sorted(masters.items())) if masters else "no masters"))
    for err in status.get("errors", [])[-5:]:
        print(f"  error {err['where']}: {err['error']}")
    return 0


def cmd_session_close(args: argparse.Namespace) -> int:
    from astrod.service.daemon import read_status, request_close

    config = _config_or_exit(args.config)
    status = read_status(config)
    if status is None or not status["running"]:
        print("astrod is not running: nothing to close (open sessions are closed when it starts again and "
              "goes idle)", file=sys.stderr)
        return 1
    if not args.all and not args.session:
        print("name a session or use --all", file=sys.stderr)
        return 2
    request_close(config, None if args.all else args.session)
    print("close requested for " + ("all sessions" if args.all else args.session))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from astrod.demo import run_demo, run_indi_demo

    if args.indi:
        return run_indi_demo(workdir=Path(args.workdir) if args.workdir else None, clean=args.clean)
    return run_demo(workdir=Path(args.workdir) if args.workdir else None, clean=args.clean, interval=args.interval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="astrod", description="Unattended calibration and live stacking.")
    parser.add_argument("--version", action="version", version=f"astrod {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="print the normalised metadata of frames")
    p.add_argument("files", nargs="+", help="frame files or folders")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.add_argument("--config", help="config file (header renames and folder rules)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("check", help="validate a config file; prints every problem, exits 78 if any")
    c.add_argument("--config", help="config file (default: none, all defaults)")
    c.set_defaults(func=cmd_config_check)

    p = sub.add_parser("run", help="run the daemon in the foreground (systemd runs this)")
    p.add_argument("--config", help="config file (default: none, all defaults)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="the daemon's state (works when it is down)")
    p.add_argument("--config", help="config file")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("session", help="session tools")
    ssub = p.add_subparsers(dest="session_command", required=True, metavar="ACTION")
    c = ssub.add_parser("close", help="close a session (final stack now) or all of them")
    c.add_argument("session", nargs="?", help="session id (see astrod status)")
    c.add_argument("--all", action="store_true", help="close every open session")
    c.add_argument("--config", help="config file")
    c.set_defaults(func=cmd_session_close)

    p = sub.add_parser("demo", help="run the built-in demo on synthetic frames")
    p.add_argument("--workdir", help="folder for the demo observatory (default: a new temporary folder)")
    p.add_argument("--clean", action="store_true", help="remove the demo's folder at the end")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between lights (default 1)")
    p.add_argument("--indi", action="store_true", help="capture through INDI's CCD simulator instead")
    p.set_defaults(func=cmd_demo)

    # command groups that live beside the code they drive
    register_library(sub)
    register_stack(sub)
    register_capture(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from astrod.service.logging import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging()
    func: Command = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
