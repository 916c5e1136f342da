"""``astrod capture --plan F [--config F]``: run a capture plan in the foreground, without the daemon.

The frames land in the capture folder; a running daemon (or a later one) ingests them. Ctrl-C stops after the
current exposure; running the same plan again resumes it. Unlike the daemon's runner, which reconnects for as long
as it runs, this one-shot command gives up after ``CONNECT_ATTEMPTS`` failed connections in a row (at the start or
after losing the server) and exits 1 with the reason.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from astrod.config import EX_CONFIG, report_config_error
from astrod.errors import ConfigError

CONNECT_ATTEMPTS = 3  # failed connections in a row before the command gives up
CONNECT_DELAYS_S = (1.5, 3.0)  # first and longest wait between them: ~5 s in all against a refusing port


def register(subparsers: Any) -> None:
    """Add the ``capture`` command to the CLI's subparsers."""
    p = subparsers.add_parser("capture", help="run a capture plan through INDI (frames go to the capture folder)")
    p.add_argument("--plan", help="plan TOML ([capture] name and [[capture.steps]]); default: the config's plan")
    p.add_argument("--config", help="config file ([indi], [paths], [site])")
    p.add_argument("--json", action="store_true", help="print the final status as JSON")
    p.set_defaults(func=cmd_capture)


def cmd_capture(args: argparse.Namespace) -> int:
    from astrod.io.config_file import load_config
    from astrod.service.capture import Backoff, CaptureRunner, load_plan
    from astrod.service.indi import pyindi_available
    from astrod.service.logging import configure_logging

    try:
        config = load_config(args.config)
        plan = load_plan(Path(args.plan)) if args.plan else config.capture
    except ConfigError as err:
        return report_config_error(err)
    if not plan.steps:
        print("no capture plan: give --plan F or [[capture.steps]] in the config", file=sys.stderr)
        return EX_CONFIG
    if not pyindi_available():
        print("pyindi-client is not installed (pip install --no-deps pyindi-client)", file=sys.stderr)
        return 1
    configure_logging(level=config.log.level, fmt=config.log.format)
    first, cap = CONNECT_DELAYS_S
    runner = CaptureRunner(config, plan=plan, connect_attempts=CONNECT_ATTEMPTS,
                           backoff=Backoff(first=first, factor=2.0, cap=cap))
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    runner.start()
    try:
        while not runner.join(timeout=0.5):
            if stop.is_set():
                runner.stop()
                break
    finally:
        runner.stop()
    status = runner.status()
    if args.json:
        json.dump(status, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    if status["state"] == "failed":
        print(f"capture plan {status['plan']} failed: {status['last_error']}", file=sys.stderr)
    elif not args.json:
        print(f"plan {status['plan']}: {status['state']}, {status['frames_done']}/{status['frames_total']} frames"
              + (f"; last error: {status['last_error']}" if status.get("last_error") else ""))
    return 0 if status["state"] == "finished" else 1
