"""structlog setup: JSON lines for journald and pipes, coloured key=value on a terminal.

Events are past-tense verbs with bound keys: ``log.info("frame_stacked", frame=..., session=..., ms=412)``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import IO, Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def wants_json(stream: IO[str], env: Mapping[str, str], fmt: str = "auto") -> bool:
    """JSON when asked, under systemd (JOURNAL_STREAM set) or when the stream is not a terminal."""
    if fmt != "auto":
        return fmt == "json"
    return bool(env.get("JOURNAL_STREAM")) or not stream.isatty()


def configure_logging(*, level: str = "info", fmt: str = "auto", stream: TextIO | None = None,
                      env: Mapping[str, str] | None = None) -> None:
    """Configure structlog once for the process (the CLI calls this before anything logs)."""
    out = stream if stream is not None else sys.stderr
    as_json = wants_json(out, os.environ if env is None else env, fmt)
    renderer: Any = (structlog.processors.JSONRenderer(sort_keys=False) if as_json
                     else structlog.dev.ConsoleRenderer(colors=out.isatty()))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # exifread warns through the standard library ("PNG file does not have exif data.") for every picture
    # without EXIF, printed raw on stderr; what a frame lacks is in its notes (`astrod inspect`) instead.
    logging.getLogger("exifread").setLevel(logging.ERROR)
