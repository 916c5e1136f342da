"""Reading the config file: its text read here, parsed and checked by `astrod.config.parse_config`."""

from __future__ import annotations

import os
from pathlib import Path

from astrod.config import Config, parse_config, report_config_error, with_base
from astrod.errors import ConfigError
from astrod.io.files import read_text


def load_config(path: str | os.PathLike[str] | None = None, *, check_disk: bool = True) -> Config:
    """The config from ``path``: relative folders, written or default, resolve against the file's folder.
    With no file (None) everything is default and the watch and output folders resolve against the working
    folder."""
    if path is None:
        return with_base(Config(), Path.cwd())
    p = Path(path)
    try:
        text = read_text(p)
    except OSError as err:
        raise ConfigError([f"{p}: cannot read: {err.strerror or err}"]) from err
    except UnicodeDecodeError as err:
        raise ConfigError([f"{p}: not UTF-8 text: {err}"]) from err
    return parse_config(text, base=p.resolve().parent, source=str(p), check_disk=check_disk)


def load_config_or_exit(path: str | os.PathLike[str] | None, *, check_disk: bool = True) -> Config:
    """:func:`load_config`, or report the problems and exit with EX_CONFIG (``SystemExit``)."""
    try:
        return load_config(path, check_disk=check_disk)
    except ConfigError as err:
        raise SystemExit(report_config_error(err)) from err
