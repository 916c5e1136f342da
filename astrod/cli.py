"""Command-line front: ``astrod inspect|config|demo ...``. Each command returns its exit status."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from astrod import __version__
from astrod.config import Config, report_config_error
from astrod.errors import AstrodError, ConfigError
from astrod.io.config_file import load_config, load_config_or_exit
from astrod.io.kernel_cache import notice_if_cold
from astrod.library.commands import format_cell, table_lines
from astrod.library.commands import register as register_library
from astrod.pipeline.commands import register as register_stack
from astrod.pipeline.photometry_commands import register as register_photometry
from astrod.pipeline.project_commands import register as register_project
from astrod.service.capture_commands import register as register_capture
from astrod.service.reprocess_command import register as register_reprocess
from astrod.service.solve_commands import register as register_solve

Command = Callable[[argparse.Namespace], int]

ACK_TIMEOUT_S = 15.0  # how long `session close` waits for the daemon to take its request
ACK_POLL_S = 0.2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe

INSPECT_FIELDS = ("path", "source_format", "kind", "exposure", "gain", "offset", "temperature", "set_temperature",
                  "filter", "camera", "binning", "bayer", "object", "date_obs", "width", "height")


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
    extra = ("serial", "iso", "readout_mode", "bayer_offset", "ra", "dec", "pier_side", "planes", "stack_count",
             "software", "notes")
    record.update({k: full[k] for k in extra})
    return record


def cmd_inspect(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    from astrod.io.frames import expand_frame_paths

    records = [_inspect_record(p, config) for p in expand_frame_paths(args.files)]
    if args.json:
        json.dump(records, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        cols = ("path", "source_format", "kind", "exposure", "gain", "offset", "temperature", "set_temperature",
                "filter", "camera", "binning", "bayer", "object", "date_obs", "planes")
        heads = ("file", "format", "kind", "exp", "gain", "offset", "temp", "set", "filter", "camera", "bin", "bayer",
                 "object", "date-obs", "planes")
        rows: list[tuple[str, ...]] = [heads]
        for r in records:
            if "error" in r:
                continue
            cells = [format_cell(r[c]) for c in cols]
            cells[0] = Path(cells[0]).name
            rows.append(tuple(cells))
        for line in table_lines(rows):
            print(line)
        for r in records:  # what the file itself did not say (date from the file's time, exposure unknown)
            for note in r.get("notes", ()):
                print(f"note: {Path(r['path']).name}: {note}")
        for r in records:
            if "error" in r:
                print(f"error: {r['error']}", file=sys.stderr)
    return 1 if any("error" in r for r in records) or not records else 0


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        return report_config_error(err, prefix="", stream=sys.stdout)
    where = args.config or "defaults (no config file)"
    print(f"config OK: {where}; state {config.state_dir()}, library {config.library_dir()}")
    return 0


def _folder_problems(config: Config) -> list[str]:
    """Folders the daemon must create files in (or watch) that it cannot: under systemd a relative path resolves
    into /etc/astrod, which ProtectSystem=strict makes read-only, and the daemon would fail later, mid-night."""
    from astrod.io.atomic import folder_problem

    folders = [("watch", p, False) for p in config.paths.watch]
    folders += [("output", config.paths.output, True), ("state", config.state_dir(), True),
                ("library", config.library_dir(), True)]
    problems = []
    for key, folder, write in folders:
        reason = folder_problem(folder, write=write)
        if reason is not None:
            what = "writable" if write else "usable"
            problems.append(f"{key} folder {folder} is not {what}: {reason} (set [paths] {key} to an absolute path "
                            f"astrod may {'write' if write else 'read'})")
    return problems


def cmd_run(args: argparse.Namespace) -> int:
    from astrod.service.logging import configure_logging
    from astrod.service.run import run_daemon

    config = load_config_or_exit(args.config)
    problems = _folder_problems(config)
    if problems:
        return report_config_error(ConfigError(problems))
    configure_logging(level=config.log.level, fmt=config.log.format)
    notice_if_cold()
    return run_daemon(config, config_path=Path(args.config) if args.config else None)


def _age(iso: str | None) -> str:
    from datetime import UTC, datetime

    if not iso:
        return "never"
    seconds = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def cmd_status(args: argparse.Namespace) -> int:
    from astrod.service.paths import read_status

    config = load_config_or_exit(args.config, check_disk=False)
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
        print(f"  {s['label']} [{s['id']}]: {s['stacked']} stacked, {s['rejected']} rejected, "
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
    if "library" in status:  # (a short status, written while the state disk is full, has no library)
        masters = status["library"].get("masters")
        print(f"library {status['library'].get('path')}: "
              + (", ".join(f"{k} {v}" for k, v in sorted(masters.items())) if masters else "no masters"))
    for problem in status.get("problems", []):
        print(f"  PROBLEM since {problem.get('since', '?')[:19]}: {problem.get('problem')}")
    if status.get("status_file_error"):
        print(f"  PROBLEM: {status['status_file_error']}")
    for r in status.get("recent_rejections", [])[:5]:
        print(f"  {r.get('status')}: {r.get('reason') or r.get('path')}")
    for err in status.get("errors", [])[-5:]:
        print(f"  error {err['where']}: {err['error']}")
    return 0


_SESSION_FIELDS = ("id", "label", "stacked", "rejected", "queue", "closing")


def _open_sessions(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: s.get(k) for k in _SESSION_FIELDS} for s in status.get("sessions", []) if isinstance(s, dict)]


def _session_line(s: dict[str, Any]) -> str:
    return (f"{s['id']}  {s['label']}: {s['stacked'] or 0} stacked, {s['rejected'] or 0} rejected, "
            f"queue {s['queue'] or 0}" + (", closing" if s["closing"] else ""))


def cmd_session_list(args: argparse.Namespace) -> int:
    """The open sessions, one per line. When the daemon is down, the ones its status file last showed: they are
    still open in its journal and resume when it starts again."""
    from astrod.service.paths import read_status

    config = load_config_or_exit(args.config, check_disk=False)
    status = read_status(config)
    sessions = [] if status is None else _open_sessions(status)
    running = status is not None and bool(status["running"])
    if args.json:
        json.dump({"running": running, "pid": None if status is None else status.get("pid"),
                   "updated_at": None if status is None else status.get("updated_at"), "sessions": sessions},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if status is None:
        print(f"astrod is not running (no status in {config.state_dir()}): no session known", file=sys.stderr)
        return 0
    if not running:
        print(f"astrod is not running (pid {status.get('pid')}, status written {_age(status.get('updated_at'))}); "
              + ("the sessions open when it stopped, resumed when it starts again:" if sessions
                 else "no session was open when it stopped"), file=sys.stderr)
    elif not sessions:
        print("no open session", file=sys.stderr)
    for s in sessions:
        print(_session_line(s))
    return 0


def _resolve_session(sessions: list[dict[str, Any]], name: str) -> str | None:
    """The id of the open session ``name`` names (its id, or its label when only one session has it); None,
    after saying why, when there is none or more than one."""
    if any(s["id"] == name for s in sessions):
        return name
    labelled = [s for s in sessions if s["label"] == name]
    if len(labelled) == 1:
        return str(labelled[0]["id"])
    if labelled:
        print(f"{len(labelled)} open sessions are labelled {name!r}; name one by its id:", file=sys.stderr)
        listed = labelled
    elif sessions:
        print(f"no open session {name!r}; open sessions:", file=sys.stderr)
        listed = sessions
    else:
        print(f"no open session {name!r}; no session is open", file=sys.stderr)
        listed = []
    for s in listed:
        print(f"  {s['id']}  ({s['label']})", file=sys.stderr)
    return None


def cmd_session_close(args: argparse.Namespace) -> int:
    from astrod.service.paths import daemon_paths, read_status, request_close

    config = load_config_or_exit(args.config, check_disk=False)
    status = read_status(config)
    if status is None or not status["running"]:
        print("astrod is not running: nothing to close (open sessions are closed when it starts again and "
              "goes idle)", file=sys.stderr)
        return 1
    if not args.all and not args.session:
        print("name a session or use --all", file=sys.stderr)
        return 2
    session: str | None = None
    what = "all sessions"
    if not args.all:
        sessions = _open_sessions(status)
        session = _resolve_session(sessions, args.session)
        if session is None:
            return 1
        label = next(s["label"] for s in sessions if s["id"] == session)
        what = f"{label} ({session})"
    try:
        request = request_close(config, session)
    except OSError as err:
        where = err.filename or daemon_paths(config).control
        print(f"cannot write the close request: {where}: {err.strerror or err}", file=sys.stderr)
        return 1
    pid = status.get("pid")
    deadline = time.monotonic() + ACK_TIMEOUT_S
    while True:
        current = read_status(config)
        if current is not None and request.name in (current.get("control_handled") or []):
            print(f"close requested for {what} (acknowledged by the daemon)")
            return 0
        if current is not None and not current["running"]:
            print(f"astrod (pid {current.get('pid')}) stopped before it took the request (left in {request})",
                  file=sys.stderr)
            return 1
        if time.monotonic() >= deadline:
            break
        time.sleep(ACK_POLL_S)
    print(f"the daemon (pid {pid}) did not acknowledge the request within {ACK_TIMEOUT_S:g} s: is it stuck? "
          "see `journalctl -u astrod`", file=sys.stderr)
    return 1


def cmd_demo(args: argparse.Namespace) -> int:
    from astrod.demo import run_demo, run_indi_demo

    notice_if_cold()
    if args.indi:
        return run_indi_demo(workdir=Path(args.workdir) if args.workdir else None, clean=args.clean)
    return run_demo(workdir=Path(args.workdir) if args.workdir else None, clean=args.clean, interval=args.interval)


def cmd_warmup(args: argparse.Namespace) -> int:
    from astrod.demo.warmup import warm_up
    from astrod.service.logging import configure_logging

    configure_logging(level="warning")  # not the synthetic night's events: the lines printed below say it all
    result = warm_up(force=args.force, say=lambda line: print(f"astrod warmup: {line}", flush=True))
    if result.skipped:
        print("astrod warmup: the kernels are compiled already (--force compiles them again)")
    else:
        print(f"astrod warmup: {result.compiled} kernels compiled, {result.loaded} loaded from the cache, in "
              f"{result.seconds:.0f} s ({result.stamp})")
    return 0


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
    c = ssub.add_parser("list", help="the open sessions: id, label, counts, queue, closing")
    c.add_argument("--config", help="config file")
    c.add_argument("--json", action="store_true", help="machine-readable")
    c.set_defaults(func=cmd_session_list)
    c = ssub.add_parser("close", help="close a session (final stack now) or all of them; waits until the daemon "
                                      "takes the request")
    c.add_argument("session", nargs="?", help="session id or label (see astrod session list)")
    c.add_argument("--all", action="store_true", help="close every open session")
    c.add_argument("--config", help="config file")
    c.set_defaults(func=cmd_session_close)

    p = sub.add_parser("demo", help="run the built-in demo on synthetic frames")
    p.add_argument("--workdir", help="folder for the demo observatory (default: a new temporary folder)")
    p.add_argument("--clean", action="store_true", help="remove the demo's folder at the end")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between lights (default 1)")
    p.add_argument("--indi", action="store_true", help="capture through INDI's CCD simulator instead")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("warmup", help="compile the numba kernels into numba's cache now, so that the first frame "
                                      "does not wait for them (make setup runs it; quick when they are)")
    p.add_argument("--force", action="store_true", help="compile even when the cache looks complete")
    p.set_defaults(func=cmd_warmup)

    # command groups that live beside the code they drive
    register_library(sub)
    register_stack(sub)
    register_photometry(sub)
    register_project(sub)
    register_capture(sub)
    register_solve(sub)
    register_reprocess(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from astrod.service.logging import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging()
    if getattr(args, "small_pages", False):
        from astrod.service.memory import prefer_small_pages

        prefer_small_pages()
    func: Command = args.func
    try:
        code = func(args)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `astrod status | head`: the reader left. As the Python docs recommend, point stdout at devnull so the
        # final flush at exit cannot raise again, and leave quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
