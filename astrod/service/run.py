"""``astrod run``: the daemon in the foreground until SIGTERM, started again in the same process when it found
its journal damaged while running."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path

import structlog

from astrod.config import Config
from astrod.errors import ConfigError
from astrod.io.config_file import load_config
from astrod.io.state_lock import StateLocked
from astrod.service.daemon import RESTART, Daemon, StoppedBeforeStart
from astrod.service.preload import start_kernel_preload

log = structlog.get_logger()


def run_daemon(config: Config, *, config_path: Path | None = None) -> int:
    """``astrod run``: the daemon until SIGTERM; started again in this process when it found its journal
    damaged (the new start rebuilds it). Another daemon on the same state folder: one line and exit 1."""
    rebuild = False
    start_kernel_preload()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while True:
        try:
            daemon = Daemon(config, config_path=config_path, rebuild_journal=rebuild, stop=stop)
        except StateLocked as err:
            log.error("state_locked", reason=str(err))
            print(f"astrod: {err}", file=sys.stderr)
            return 1
        except StoppedBeforeStart:
            log.info("daemon_stopped", before="start")
            return 0
        status = daemon.run()
        if status != RESTART:
            return status
        log.warning("daemon_restarting", reason="journal damaged while running")
        rebuild = True
        if config_path is not None:
            with contextlib.suppress(ConfigError):  # a broken file: the config the daemon ran with
                config = load_config(config_path)
